"""A synthetic MR-like volume with known labels, for demos, docs and tests without patient data.

Made of a body (an elliptic cylinder), two ellipsoidal "organs" (labels 1 and 2) and a tube
(label 3, a vessel) that runs obliquely through most slices, times a smooth multiplicative
bias field (as an MR receive coil gives), plus Gaussian noise. Everything scales with
``shape``, so any reasonably sized volume has every structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_samed2.io.arrays import LayerData

ORGAN_1, ORGAN_2, TUBE = 1, 2, 3
_INTENSITY = {"background": 10.0, "body": 300.0, ORGAN_1: 700.0, ORGAN_2: 500.0, TUBE: 1000.0}


@dataclass(frozen=True, eq=False)
class SyntheticVolume:
    """``image`` (float32, z, y, x), ``labels`` (uint8, same shape) and voxel ``spacing`` (mm)."""

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]


def synthetic_volume(
    shape: tuple[int, int, int] = (48, 128, 128),
    seed: int = 0,
    spacing: tuple[float, float, float] = (2.5, 1.0, 1.0),
) -> SyntheticVolume:
    """Build the volume; the same ``seed`` gives the same arrays, another moves and noises them."""
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be (z, y, x) with at least 8 voxels per axis, got {shape}")
    rng = np.random.default_rng(seed)
    # Normalised coordinates in [-1, 1] per axis.
    axes = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    jitter = rng.uniform(-0.05, 0.05, size=(2, 3))

    body = np.broadcast_to((y / 0.85) ** 2 + (x / 0.9) ** 2 <= 1.0, shape)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[_ellipsoid(z, y, x, (0.0, -0.2, -0.35) + jitter[0], (0.45, 0.35, 0.3))] = ORGAN_1
    labels[_ellipsoid(z, y, x, (-0.1, 0.3, 0.35) + jitter[1], (0.35, 0.25, 0.25))] = ORGAN_2
    # The tube's centre moves across the plane from slice to slice, from z = -0.8 to z = 0.8.
    centre_y, centre_x = 0.45 * z, 0.1 - 0.1 * z
    tube = ((y - centre_y) ** 2 + (x - centre_x) ** 2 <= 0.06**2) & (np.abs(z) <= 0.8)
    labels[tube] = TUBE

    image = np.where(body, _INTENSITY["body"], _INTENSITY["background"]).astype(np.float32)
    for label in (ORGAN_1, ORGAN_2, TUBE):
        image[labels == label] = _INTENSITY[label]
    # Bias: brightness drifts by about +-20 % along a random direction, with a little curvature.
    a, b, c = 0.2 * _unit_vector(rng)
    image *= np.exp(a * z + b * y + c * x + 0.1 * x * y).astype(np.float32)
    image += rng.normal(0.0, 20.0, size=shape).astype(np.float32)
    return SyntheticVolume(image=image, labels=labels, spacing=tuple(float(s) for s in spacing))


def synthetic_sample() -> list[LayerData]:
    """npe2 sample data: the default synthetic volume as an image and a labels layer."""
    volume = synthetic_volume()
    return [
        (volume.image, {"name": "synthetic MR", "scale": volume.spacing}, "image"),
        # the answer key: there to compare with, hidden so that it is not mistaken for a result
        (volume.labels, {"name": "synthetic MR labels", "scale": volume.spacing, "visible": False}, "labels"),
    ]


def _ellipsoid(z, y, x, centre, radii) -> np.ndarray:
    return sum(((c - c0) / r) ** 2 for c, c0, r in zip((z, y, x), centre, radii, strict=True)) <= 1.0


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    direction = rng.normal(size=3)
    return direction / np.linalg.norm(direction)
