"""Intensity windows: how raw voxel values (HU, MR units, counts, RGB) become [0, 1] frames.

One window is chosen per volume, not per slice, so a structure keeps its brightness from
slice to slice: the model's memory relies on that.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

# (level, width) in Hounsfield units; the usual radiology presets.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "liver": (60.0, 160.0),
}

_MAX_SAMPLE_VOXELS = 2_000_000


@dataclass(frozen=True)
class IntensityWindow:
    """Map ``[low, high]`` linearly to ``[0, 1]`` and clip; NaN and +-inf become 0 and 1.

    Non-finite voxels are reported once (a ``RuntimeWarning`` naming the count) rather than
    crashing or poisoning the whole frame.
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            raise ValueError(f"intensity window bounds must be finite, got {self.low}, {self.high}")
        if self.high < self.low:
            raise ValueError(f"intensity window high ({self.high}) is below low ({self.low})")

    @classmethod
    def ct(cls, level: float, width: float) -> IntensityWindow:
        if width <= 0:
            raise ValueError(f"CT window width must be positive, got {width}")
        return cls(level - width / 2, level + width / 2)

    @classmethod
    def preset(cls, name: str) -> IntensityWindow:
        try:
            return cls.ct(*CT_PRESETS[name])
        except KeyError:
            raise ValueError(f"unknown CT preset {name!r}; choose one of {sorted(CT_PRESETS)}") from None

    @classmethod
    def from_percentiles(
        cls, data: np.ndarray, lower: float = 0.5, upper: float = 99.5, seed: int = 0
    ) -> IntensityWindow:
        """Robust window for MR and microscopy: percentiles of the finite values.

        Large (or lazy, dask) volumes are sampled: at most about two million voxels are read.
        """
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
        sample = _sample(data, seed)
        finite = sample[np.isfinite(sample)]
        if finite.size == 0:
            raise ValueError(
                "the image has no finite intensities (all NaN or inf); check the file or "
                "the layer's data before segmenting"
            )
        low, high = np.percentile(finite, [lower, upper])
        return cls(float(low), float(high))

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        values = np.asarray(frame, dtype=np.float32)
        span = self.high - self.low
        if span == 0:  # constant image: everything at or above the level is "bright"
            out = (values >= self.high).astype(np.float32)
        else:
            out = (values - np.float32(self.low)) * np.float32(1.0 / span)
        bad = ~np.isfinite(values)
        if bad.any():
            warnings.warn(
                f"{int(bad.sum())} non-finite voxel(s) (NaN/inf) in a frame were set to the "
                "window's bounds (NaN to 0)",
                RuntimeWarning,
                stacklevel=2,
            )
            out = np.where(np.isnan(values), 0.0, np.where(values > 0, 1.0, out))
            out = np.where(np.isneginf(values), 0.0, out).astype(np.float32)
        return np.clip(out, 0.0, 1.0, out=out)


def _sample(data: np.ndarray, seed: int) -> np.ndarray:
    """A strided subset of at most ~2M voxels, read without loading a lazy volume whole."""
    size = int(np.prod(data.shape))
    if size <= _MAX_SAMPLE_VOXELS:
        return np.asarray(data, dtype=np.float64).ravel()
    step = int(np.ceil((size / _MAX_SAMPLE_VOXELS) ** (1 / data.ndim)))
    start = np.random.default_rng(seed).integers(0, step, size=data.ndim)
    index = tuple(slice(int(s), None, step) for s in start)
    return np.asarray(data[index], dtype=np.float64).ravel()
