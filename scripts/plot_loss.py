"""Plot a training run's loss curve (and validation Dice) from its log.csv.

    python scripts/plot_loss.py runs/demo/log.csv docs/training_loss.png
"""

from __future__ import annotations

import csv
import sys

import numpy as np
from matplotlib.figure import Figure


def main(log: str, png: str, window: int = 50) -> None:
    with open(log) as handle:
        rows = list(csv.DictReader(handle))
    steps = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    figure = Figure(figsize=(7, 3.5), dpi=120)
    ax = figure.subplots()
    ax.plot(steps, loss, color="0.8", linewidth=0.5, label="loss per step")
    ax.plot(steps[window - 1 :], smooth, color="C0", label=f"mean of {window} steps")
    ax.set_yscale("log")
    ax.set_xlabel("step (one 8-slice clip)")
    ax.set_ylabel("loss (20 focal + dice + IoU + object score)")
    validated = [(int(r["step"]), float(r["val_dice"])) for r in rows if r.get("val_dice")]
    if validated:
        right = ax.twinx()
        right.plot(*zip(*validated, strict=True), "o-", color="C1", label="validation Dice (box)")
        right.set_ylim(0, 1)
        right.set_ylabel("held-out validation Dice")
        right.legend(loc="center right")
    ax.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(png)


if __name__ == "__main__":
    main(*sys.argv[1:3])
