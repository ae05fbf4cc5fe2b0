"""Interactive evaluation: a simulated user clicks, the engine segments, metrics per click.

``evaluate(model, image, label)`` scores one volume; ``evaluate_cases`` many, with the
options of ``python -m napari_samed2.evaluate``; ``run_evaluation`` is the same work as a
generator of progress events (for a progress bar or a GUI worker). Qt-free and napari-free.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from napari_samed2.engine.converge import ConvergeStop
from napari_samed2.engine.library import MemoryLibrary
from napari_samed2.errors import ExistingFileError
from napari_samed2.evaluation.cases import (
    EvalCase,
    SpacingAssumedWarning,
    find_images,
    find_pairs,
    pairs_from_arguments,
)
from napari_samed2.evaluation.metrics import clicks_to_reach, curve_auc, dice, normalized_surface_dice
from napari_samed2.evaluation.protocol import POLICIES, EvalProtocol, StepRecord, run_case
from napari_samed2.io._files import check_writable
from napari_samed2.evaluation.report import (
    OUTPUT_FILES,
    EvaluationResults,
    ObjectSummary,
    write_report,
    write_rows,
)
from napari_samed2.io.intensity import IntensityWindow, as_window
from napari_samed2.models.loading import LoadedModel

PARTIAL_CSV = "results.partial.csv"

__all__ = [
    "POLICIES",
    "EvalCase",
    "EvalProgress",
    "EvalProtocol",
    "EvaluationResults",
    "ObjectSummary",
    "SpacingAssumedWarning",
    "StepRecord",
    "clicks_to_reach",
    "curve_auc",
    "dice",
    "evaluate",
    "evaluate_cases",
    "find_images",
    "find_pairs",
    "normalized_surface_dice",
    "pairs_from_arguments",
    "run_evaluation",
]


@dataclass(frozen=True)
class EvalProgress:
    """One finished step: which case (of how many), policy, object and step, and its record."""

    case_index: int
    cases: int
    steps_done: int  # in the whole run
    steps_total: int
    record: StepRecord


def run_evaluation(
    model: LoadedModel,
    cases: Sequence[EvalCase],
    protocol: EvalProtocol,
    policies: Sequence[str] = ("stock",),
    *,
    library: bool | str | Path = False,
    axis: int = 0,
) -> Iterator[EvalProgress]:
    """Each case under each policy, one progress event per object and step.

    ``library``: ``True`` starts an empty memory library per policy, a folder path loads
    one; cases then run in order and each finished case's memories join the library.
    """
    policies = _check_policies(policies)
    libraries = {p: _library(library) for p in policies}
    total = sum(len(c.object_ids) for c in cases) * len(policies) * (protocol.clicks + 1)
    done = 0
    for index, case in enumerate(cases):
        for policy in policies:
            for record in run_case(model, case, protocol, policy, axis=axis, library=libraries[policy], case_index=index):
                done += 1
                yield EvalProgress(index, len(cases), done, total, record)


def evaluate_cases(
    model: LoadedModel | str | os.PathLike,
    cases: Sequence[EvalCase | tuple[str | os.PathLike, str | os.PathLike]],
    *,
    policies: Sequence[str] = ("stock",),
    library: bool | str | Path = False,
    image_size: int | None = None,
    device: str = "auto",
    axis: int = 0,
    clicks: int = 5,
    seed: int = 0,
    start: str = "box",
    nsd_tolerance_mm: float = 2.0,
    converge: ConvergeStop | None = None,
    absent: bool = False,
    window: str | IntensityWindow | Sequence[float] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress=None,
) -> EvaluationResults:
    """Evaluate ``cases`` (``EvalCase`` objects or ``(image file, label file)`` pairs).

    Every case and the output folder are checked before the model runs. With ``out``, each
    finished step is appended to ``results.partial.csv`` (kept if the run stops early), and
    the complete results.csv, summary.csv, summary.md and dice_per_click.png replace it at
    the end. ``progress`` is called with each :class:`EvalProgress`. ``converge``: the simulated
    user's re-propagation after a correction stops where masks agree again (``None``: full re-run).
    ``absent``: the simulated user marks a slice without the object *Not on this slice* where a
    negative click would go there (see :class:`EvalProtocol`). ``window``: the intensity window
    the images are seen through, as the panel's choice: ``None`` (the volume's percentiles), a
    CT preset key such as ``"ct:soft_tissue"``, ``(low, high)`` or an :class:`IntensityWindow`.
    """
    protocol = EvalProtocol(
        start=start, clicks=clicks, nsd_tolerance_mm=nsd_tolerance_mm, seed=seed, converge=converge, absent=absent,
        window=as_window(window),
    )
    policies = _check_policies(policies)
    cases = [c if isinstance(c, EvalCase) else EvalCase.from_files(*c) for c in cases]
    if not cases:
        raise ValueError("no cases to evaluate")
    if axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"axis must be 0, 1 or 2 (the slicing axis of a 3D volume), not {axis!r}")
    out = Path(out) if out is not None else None
    old_results = _check_output(out, overwrite) if out is not None else []
    model = _as_model(model, image_size, device)
    for path in old_results:  # replaced only once the run can start: a bad model loses nothing
        path.unlink()
    records = []
    for event in run_evaluation(model, cases, protocol, policies, library=library, axis=axis % 3):
        records.append(event.record)
        if out is not None:
            write_rows(out / PARTIAL_CSV, [event.record], StepRecord, append=True)
        if progress is not None:
            progress(event)
    notes = tuple(
        f"{c.name}: the image gives no voxel size; NSD assumed {c.spacing} mm" for c in cases if c.spacing_assumed
    )
    results = EvaluationResults(tuple(records), protocol, model.describe(), notes)
    if out is not None:
        write_report(results, out, overwrite=True)
        (out / PARTIAL_CSV).unlink(missing_ok=True)
    return results


def evaluate(
    model: LoadedModel | str | os.PathLike, image, label, *, spacing: Sequence[float] | None = None,
    name: str | None = None, **options,
) -> EvaluationResults:
    """Evaluate one volume (arrays, or file paths) with the options of :func:`evaluate_cases`.
    ``name`` labels the case in the results (default: the image file's name, or "case")."""
    if isinstance(image, str | os.PathLike) and isinstance(label, str | os.PathLike):
        case = EvalCase.from_files(image, label, name=name)
    else:
        case = EvalCase.from_arrays(image, label, spacing, name=name or "case")
    return evaluate_cases(model, [case], **options)


def _check_policies(policies: Sequence[str]) -> list[str]:
    policies = [policies] if isinstance(policies, str) else list(dict.fromkeys(policies))
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise ValueError(f"memory policies must be among {POLICIES}, got {policies}")
    return policies


def _library(library: bool | str | Path) -> MemoryLibrary | None:
    if library is False or library is None:
        return None
    return MemoryLibrary() if library is True else MemoryLibrary.load(library)


def _as_model(model, image_size: int | None, device: str) -> LoadedModel:
    if isinstance(model, LoadedModel):
        if image_size is not None and image_size != model.image_size:
            raise ValueError(
                f"the loaded model runs at {model.image_size} px, not image_size={image_size}; "
                "load it at that size, or pass its name or checkpoint instead"
            )
        return model
    from napari_samed2.models.loading import load_model

    return load_model(model, device=device, image_size=image_size)


def _check_output(out: Path, overwrite: bool) -> list[Path]:
    """Create ``out`` and check it is writable; the earlier results it holds, which only
    ``overwrite`` allows replacing."""
    check_writable(out)
    existing = [out / name for name in (*OUTPUT_FILES, PARTIAL_CSV) if (out / name).exists()]
    if existing and not overwrite:
        raise ExistingFileError(
            f"{out} already holds results ({', '.join(p.name for p in existing)}); choose another folder or "
            "pass overwrite=True (--overwrite) to replace them"
        )
    return existing
