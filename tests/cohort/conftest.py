"""A small cohort on disk: two synthetic 6x64x64 NIfTI volumes with labels and prompt files,
and one damaged image, in the images/ + labels/ + prompts/ layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.evaluation.test_cases import write_nifti

SLICES, HEIGHT, WIDTH = 6, 64, 64
SPACING = (2.0, 1.0, 1.0)
GOOD, BROKEN = ("a", "b"), "c"


def synthetic(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipse drifting right through the slices over noise, and its label."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    row, col = 28 + 3 * seed, 20 + 2 * seed
    inside = np.stack([(((yy - row) / 10.0) ** 2 + ((xx - col - 2 * z) / 13.0) ** 2) < 1 for z in range(SLICES)])
    image = (200.0 * inside + rng.normal(0, 20, inside.shape)).astype(np.float32)
    return image, inside.astype(np.uint8)


def prompts_for(label: np.ndarray, frame: int = 2) -> dict:
    rows, cols = np.nonzero(label[frame])
    box = [float(rows.min()), float(cols.min()), float(rows.max()), float(cols.max())]
    centre = [float(rows.mean()), float(cols.mean())]
    return {"format": "napari-samed2-prompts", "version": 1, "shape": list(label.shape),
            "objects": {"1": {str(frame): {"box": box, "positive": [centre]}}}}


@pytest.fixture(scope="package")
def cohort_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    for sub in ("images", "labels", "prompts"):
        (root / sub).mkdir()
    for seed, name in enumerate(GOOD):
        image, label = synthetic(seed)
        write_nifti(root / "images" / f"{name}.nii.gz", image, SPACING, np.float32)
        write_nifti(root / "labels" / f"{name}.nii.gz", label, SPACING, np.uint8)
        (root / "prompts" / f"{name}.json").write_text(json.dumps(prompts_for(label)))
    image, label = synthetic(2)
    write_nifti(root / "labels" / f"{BROKEN}.nii.gz", label, SPACING, np.uint8)
    (root / "prompts" / f"{BROKEN}.json").write_text(json.dumps(prompts_for(label)))
    (root / "images" / f"{BROKEN}.nii.gz").write_bytes(b"\x1f\x8b not really a gzip stream")  # a damaged download
    return root
