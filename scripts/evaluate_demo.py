"""Measure a model with the interactive evaluation on the demo model's test sets.

    python scripts/evaluate_demo.py MODEL --out DIR [--sets synthetic corrupted real]

* ``synthetic``: held-out synthetic volumes (stream 10,001: never trained or validated on),
  as the demo model was trained, box then 5 clicks, stock memory policy;
* ``corrupted``: held-out synthetic volumes with a fifth of their slices corrupted (heavy
  noise, streaks, dropped slices; stream 10,002), stock and confidence policies side by side;
* ``real``: the real MR volumes in ``../shared/data`` (brain1, breast1), when present.

Each set writes the evaluation's files into ``DIR/<set>/`` (summary.md holds the tables that
docs/training.md quotes). MODEL is a registry name or a checkpoint file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_samed2.evaluation import EvalCase, evaluate_cases, find_pairs
from napari_samed2.training.synthetic import SyntheticConfig, held_out_eval_cases

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--out", required=True)
    parser.add_argument("--sets", nargs="+", default=["synthetic", "corrupted", "real"])
    parser.add_argument("--count", type=int, default=6, help="held-out synthetic volumes per set")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--absent", action="store_true",
                        help="the simulated user may press 'Not on this slice' (EvalProtocol.absent)")
    args = parser.parse_args()
    out = Path(args.out)
    runs = {
        "synthetic": lambda: (held_out_eval_cases(args.count, seed=10_001), ["stock"], 5),
        "corrupted": lambda: (
            held_out_eval_cases(args.count, SyntheticConfig(corrupted_fraction=0.2), 10_002), ["stock", "confidence"], 3
        ),
        "real": lambda: ([EvalCase.from_files(*pair) for pair in find_pairs(SHARED_DATA)], ["stock"], 5),
    }
    for name in args.sets:
        if name == "real" and not SHARED_DATA.is_dir():
            print(f"skipping the real volumes: {SHARED_DATA} is absent")
            continue
        cases, policies, clicks = runs[name]()
        evaluate_cases(
            args.model, cases, policies=policies, clicks=clicks, device=args.device, out=out / name, overwrite=True,
            absent=args.absent,
            progress=lambda e: print(f"{name}: {e.steps_done}/{e.steps_total} {e.record.case} "
                                     f"{e.record.policy} object {e.record.object_id} step {e.record.step}: "
                                     f"Dice {e.record.dice:.3f}", flush=True),
        )
        print((out / name / "summary.md").read_text())


if __name__ == "__main__":
    main()
