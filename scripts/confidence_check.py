"""Does a model's confidence tell bad slices apart, and does the confidence policy pay with it?

    python scripts/confidence_check.py MODEL [--count 4]

On the held-out synthetic volumes of ``evaluate_demo.py`` (stream 10,001 clean, 10,002 with a
fifth of the slices corrupted): the mean Dice after the box under each memory policy, then,
for the box on each object's middle slice propagated both ways with the stock policy, how the
model's confidence (predicted IoU x sigmoid(object score)) relates to each slice's true IoU,
on clean and on corrupted slices. The confidence policy can only help a model whose
confidence is low where its masks are bad; docs/training.md (run 7) reads the figures.
"""

from __future__ import annotations

import argparse

import numpy as np

from napari_samed2 import load_model
from napari_samed2.engine import Session
from napari_samed2.evaluation import evaluate_cases
from napari_samed2.evaluation.prompts import start_prompt
from napari_samed2.training.synthetic import SyntheticConfig, held_out_cases, held_out_eval_cases

CORRUPTED = SyntheticConfig(corrupted_fraction=0.2)


def policy_dice(model, count: int) -> None:
    for name, cases in (("clean", held_out_eval_cases(count, seed=10_001)),
                        ("corrupted", held_out_eval_cases(count, CORRUPTED, 10_002))):
        results = evaluate_cases(model, cases, clicks=0, policies=["stock", "confidence"])
        for policy in ("stock", "confidence"):
            values = [r.dice for r in results.records if r.policy == policy]
            print(f"{name:9s} {policy:10s} Dice after the box: mean {np.mean(values):.3f}, median {np.median(values):.3f}")


def calibration(model, count: int) -> None:
    rows = []  # (corrupted slice, confidence, true IoU) on slices where the object is
    for case in held_out_cases(count, CORRUPTED, 10_002):
        corrupted = set(case.corrupted)
        for object_id in range(1, case.num_objects + 1):
            truth = case.labels == object_id
            middle, prompt = start_prompt(truth, case.spacing, np.random.default_rng(0), "box")
            session = Session(model, case.image)
            session.add_object(1)
            session.segment_frame(middle, 1, prompt)
            for result in session.propagate("both", start=middle):
                true, predicted = truth[result.frame], result.objects[1].mask
                if true.any():
                    iou = (true & predicted).sum() / (true | predicted).sum()
                    entry = session.memories[1].entries[result.frame]
                    rows.append((result.frame in corrupted, entry.confidence, iou))
    table = np.array(rows, dtype=float)
    for name, rows_of in (("clean", table[table[:, 0] == 0]), ("corrupted", table[table[:, 0] == 1])):
        print(f"{name:9s} slices {len(rows_of)}: mean true IoU {rows_of[:, 2].mean():.3f}, mean confidence "
              f"{rows_of[:, 1].mean():.3f}, correlation {np.corrcoef(rows_of[:, 1], rows_of[:, 2])[0, 1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="registry name or checkpoint file")
    parser.add_argument("--count", type=int, default=4, help="held-out volumes per set")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model = load_model(args.model, device=args.device, dtype="float32")
    policy_dice(model, args.count)
    calibration(model, args.count)


if __name__ == "__main__":
    main()
