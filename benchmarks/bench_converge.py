"""Converge-stop against the full re-run, measured with the evaluation harness on a model that segments.

    .venv/bin/python benchmarks/bench_converge.py                 # demo model, 4 held-out volumes
    .venv/bin/python benchmarks/bench_converge.py --count 1 --clicks 2 --out /tmp/c.md   # quick

The simulated user of :mod:`napari_samed2.evaluation` (a box, then correction clicks at the
centre of the largest 3D error) runs twice on the same held-out synthetic volumes (stream
10,001, never trained on): once re-propagating every stale slice after each click (what
scripts do by default), once with converge-stop (what the GUI does by default). Same model,
same clicks while the masks are the same; the clicks may differ once they are not, as a user's
would. The report gives Dice after each step for both, the correction steps' time and the
slices they recomputed, and replaces the "Converge-stop" section of ``--out``
(docs/benchmarks.md); nothing else there changes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from datetime import date
from pathlib import Path

import torch

from bench_engine import replace_section

SECTION = "## Converge-stop"
HELD_OUT_STREAM = 10_001


def run(model: str, count: int, clicks: int, converge) -> list:
    from napari_samed2.evaluation import evaluate_cases
    from napari_samed2.training.synthetic import held_out_eval_cases

    cases = held_out_eval_cases(count, seed=HELD_OUT_STREAM)
    results = evaluate_cases(model, cases, clicks=clicks, device="cpu", converge=converge)
    return list(results.records)


def summary(records: list, clicks: int) -> dict:
    by_step = {s: [r.dice for r in records if r.step == s] for s in range(clicks + 1)}
    corrections = [r for r in records if r.step > 0 and r.prompt != "none"]
    return {
        "mean_dice": [statistics.fmean(by_step[s]) for s in range(clicks + 1)],
        "median_final": statistics.median(by_step[clicks]),
        "objects": len(by_step[0]),
        "correction_s": statistics.fmean(r.seconds for r in corrections) if corrections else float("nan"),
        "correction_frames": statistics.fmean(r.frames_tracked for r in corrections) if corrections else float("nan"),
        "corrections": len(corrections),
    }


def report(full: dict, converge: dict, args) -> str:
    steps = " | ".join(str(s) for s in range(args.clicks + 1))
    lines = [
        SECTION,
        "",
        f"`python benchmarks/bench_converge.py --model {args.model} --count {args.count} --clicks {args.clicks}`"
        f" on {date.today().isoformat()}, {platform.machine()} with {os.cpu_count()} CPU cores, torch"
        f" {torch.__version__}: the evaluation harness's simulated user (a box, then {args.clicks} correction"
        f" clicks) on {args.count} held-out synthetic volumes ({full['objects']} objects), re-propagating after"
        " each click either every stale slice (full) or with converge-stop (IoU >= 0.98 on 3 slices, the GUI's"
        " default). Mean Dice over objects after each step:",
        "",
        f"| re-propagation | {steps} | median final Dice | s per correction | slices recomputed per correction |",
        "| --- |" + " ---: |" * (args.clicks + 4),
    ]
    for name, s in (("full", full), ("converge-stop", converge)):
        lines.append(
            f"| {name} | " + " | ".join(f"{d:.3f}" for d in s["mean_dice"])
            + f" | {s['median_final']:.3f} | {s['correction_s']:.2f} | {s['correction_frames']:.1f} |"
        )
    gap = 100 * (converge["mean_dice"][-1] - full["mean_dice"][-1])
    lines += [
        "",
        f"Final mean Dice, converge-stop minus full: {gap:+.2f} points; corrections"
        f" {full['correction_s'] / converge['correction_s']:.1f}x faster"
        f" ({full['corrections']} and {converge['corrections']} correction steps).",
    ]
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="registry name or checkpoint (default: %(default)s)")
    parser.add_argument("--count", type=int, default=4, help="held-out synthetic volumes (default: %(default)s)")
    parser.add_argument("--clicks", type=int, default=5, help="correction clicks per object (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md")
    parser.add_argument("--note", default="", help="a paragraph added under the table (what the figures mean)")
    args = parser.parse_args()
    from napari_samed2.engine import ConvergeStop

    torch.set_num_threads(os.cpu_count() or 1)
    full = summary(run(args.model, args.count, args.clicks, None), args.clicks)
    converge = summary(run(args.model, args.count, args.clicks, ConvergeStop()), args.clicks)
    replace_section(args.out, report(full, converge, args), SECTION)
    print(f"wrote the {SECTION.removeprefix('## ')} section of {args.out}")


if __name__ == "__main__":
    main()
