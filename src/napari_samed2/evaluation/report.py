"""Per-object summaries of the step records, and the files a run leaves: results.csv (one
row per case, object, policy and step), summary.csv, summary.md and dice_per_click.png.

Each file is written to a temporary name and moved into place when complete, so an
interrupted run never leaves a file that looks finished.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from napari_samed2.evaluation.metrics import clicks_to_reach, curve_auc
from napari_samed2.evaluation.protocol import EvalProtocol, StepRecord
from napari_samed2.io._files import replacing

RESULTS_CSV = "results.csv"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
PLOT_PNG = "dice_per_click.png"
OUTPUT_FILES = (RESULTS_CSV, SUMMARY_CSV, SUMMARY_MD, PLOT_PNG)


@dataclass(frozen=True)
class ObjectSummary:
    """One object of one case under one policy, over all its steps: a row of summary.csv."""

    case: str
    object_id: int
    policy: str
    library: bool
    dice_auc: float
    nsd_auc: float
    final_dice: float
    final_nsd: float
    clicks_to_target: int
    seconds: float


def summarize(records: Sequence[StepRecord], protocol: EvalProtocol) -> list[ObjectSummary]:
    """Dice/NSD AUC over the steps, final scores, clicks to ``protocol.dice_target``."""
    groups: dict[tuple, list[StepRecord]] = {}
    for record in records:
        groups.setdefault((record.case, record.object_id, record.policy, record.library), []).append(record)
    summaries = []
    for (case, object_id, policy, library), steps in groups.items():
        steps = sorted(steps, key=lambda r: r.step)
        dices, nsds = [r.dice for r in steps], [r.nsd for r in steps]
        summaries.append(ObjectSummary(
            case, object_id, policy, library, curve_auc(dices), curve_auc(nsds), dices[-1], nsds[-1],
            clicks_to_reach(dices, protocol.dice_target), sum(r.seconds for r in steps),
        ))
    return summaries


@dataclass(frozen=True)
class EvaluationResults:
    """What :func:`~napari_samed2.evaluation.evaluate` returns: every step, plus summaries."""

    records: tuple[StepRecord, ...]
    protocol: EvalProtocol
    model: str
    notes: tuple[str, ...] = ()

    @property
    def summaries(self) -> list[ObjectSummary]:
        return summarize(self.records, self.protocol)

    def to_dataframe(self):
        """The step records as a pandas DataFrame (pandas comes with napari)."""
        import pandas as pd

        return pd.DataFrame([astuple(r) for r in self.records], columns=[f.name for f in fields(StepRecord)])


def write_rows(path: Path, rows: Iterable, row_type: type, *, append: bool = False) -> None:
    """CSV rows of a dataclass type; the header is written with the first row of a new file."""
    new = not append or not path.exists()
    with path.open("a" if append else "w", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow([f.name for f in fields(row_type)])
        for row in rows:
            writer.writerow([_csv_value(v) for v in astuple(row)])


def write_report(results: EvaluationResults, out: str | Path, *, overwrite: bool = False) -> list[Path]:
    """results.csv, summary.csv, summary.md and the plot in ``out``; returns their paths."""
    out = Path(out)
    summaries = results.summaries
    written = []
    for name, write in (
        (RESULTS_CSV, lambda p: write_rows(p, results.records, StepRecord)),
        (SUMMARY_CSV, lambda p: write_rows(p, summaries, ObjectSummary)),
        (SUMMARY_MD, lambda p: p.write_text(summary_markdown(results, summaries))),
        (PLOT_PNG, lambda p: plot_dice_per_click(results.records, p)),
    ):
        with replacing(out / name, overwrite=overwrite) as partial:
            write(partial)
        written.append(out / name)
    return written


def summary_markdown(results: EvaluationResults, summaries: Sequence[ObjectSummary]) -> str:
    protocol = results.protocol
    lines = [
        "# Interactive evaluation",
        "",
        f"Model: {results.model}. Protocol: start with a {protocol.start} on the middle slice of each object, "
        f"then {protocol.clicks} correction clicks (each at the centre of the largest 3D error, followed by "
        f"re-propagation). NSD tolerance {protocol.nsd_tolerance_mm:g} mm; clicks to Dice "
        f"{protocol.dice_target:g} are capped at {protocol.clicks + 1} when never reached. Seed {protocol.seed}. "
        + ("Intensity window: the volume's 0.5-99.5 % percentiles." if protocol.window is None else
           f"Intensity window: {protocol.window.low:g} to {protocol.window.high:g}."),
        "",
        f"Protocol {protocol.name}: {_repropagation(protocol)}",
        "",
    ]
    lines += [f"- {note}" for note in results.notes]
    if results.notes:
        lines.append("")
    lines += [
        "## By policy (median over objects, mean in parentheses)",
        "",
        "| policy | objects | Dice AUC | NSD AUC | final Dice | final NSD | clicks to Dice "
        f"{protocol.dice_target:g} | seconds per object |",
        "| --- | ---: | --- | --- | --- | --- | --- | --- |",
    ]
    for key, group in _by_policy(summaries).items():
        cells = [
            _median_mean([getattr(s, name) for s in group])
            for name in ("dice_auc", "nsd_auc", "final_dice", "final_nsd", "clicks_to_target", "seconds")
        ]
        lines.append(f"| {key} | {len(group)} | " + " | ".join(cells) + " |")
    steps = sorted({r.step for r in results.records})
    lines += [
        "",
        "## Mean Dice per step",
        "",
        "| policy | " + " | ".join(_step_name(s, protocol) for s in steps) + " |",
        "| --- | " + " | ".join("---:" for _ in steps) + " |",
    ]
    for key, records in _by_policy(results.records).items():
        means = [statistics.fmean(r.dice for r in records if r.step == s) for s in steps]
        lines.append(f"| {key} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    lines += [
        "",
        "## Per object",
        "",
        "| case | object | policy | Dice AUC | NSD AUC | final Dice | final NSD | clicks to target | seconds |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summaries:
        lines.append(
            f"| {s.case} | {s.object_id} | {_policy_name(s)} | {s.dice_auc:.3f} | {s.nsd_auc:.3f} | "
            f"{s.final_dice:.3f} | {s.final_nsd:.3f} | {s.clicks_to_target} | {s.seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot_dice_per_click(records: Sequence[StepRecord], path: Path) -> None:
    """Mean Dice per step for each policy, with the range between the 25th and 75th
    percentile of objects shaded. A bare ``Figure``, not pyplot: no GUI backend is touched."""
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=120)
    axes = figure.subplots()
    steps: list[int] = []
    for key, group in _by_policy(records).items():
        steps = sorted({r.step for r in group})
        values = [[r.dice for r in group if r.step == s] for s in steps]
        axes.plot(steps, [np.mean(v) for v in values], marker="o", label=key)
        axes.fill_between(
            steps, [np.percentile(v, 25) for v in values], [np.percentile(v, 75) for v in values], alpha=0.2
        )
    axes.set_xticks(steps, ["start"] + [str(s) for s in steps[1:]])
    axes.set_xlabel("correction clicks")
    axes.set_ylabel("Dice")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(title="memory policy")
    figure.tight_layout()
    figure.savefig(path, format="png")


def _policy_name(row) -> str:
    return f"{row.policy} + library" if row.library else row.policy


def _by_policy(rows: Iterable) -> dict[str, list]:
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(_policy_name(row), []).append(row)
    return groups


def _median_mean(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.3g} ({statistics.fmean(values):.3g})"


def _repropagation(protocol: EvalProtocol) -> str:
    converge = protocol.converge
    if converge is None:
        return "each re-propagation recomputes every stale slice."
    return (
        f"each re-propagation stops once {converge.frames} consecutive slices agree with their earlier "
        f"masks (IoU >= {converge.iou:g}), keeping the rest."
    )


def _step_name(step: int, protocol: EvalProtocol) -> str:
    return protocol.start if step == 0 else f"click {step}"


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value
