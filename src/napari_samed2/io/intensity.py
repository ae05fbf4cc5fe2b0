"""Intensity windows: how raw voxel values (HU, MR units, counts, RGB) become [0, 1] frames.

One window is chosen per volume, not per slice, so a structure keeps its brightness from
slice to slice: the model's memory relies on that.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass

import numpy as np

from napari_samed2.errors import VolumeError
from napari_samed2.io.arrays import strided_sample

# (level, width) in Hounsfield units; the usual radiology presets.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "liver": (60.0, 160.0),
}


@dataclass(frozen=True)
class IntensityWindow:
    """Map ``[low, high]`` linearly to ``[0, 1]`` and clip; NaN and +-inf become 0 and 1.

    Non-finite voxels are reported once (a ``RuntimeWarning`` naming the count) rather than
    crashing or poisoning the whole frame.
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (_finite_number(self.low) and _finite_number(self.high)):
            raise VolumeError(f"intensity window bounds must be finite numbers, got {self.low!r}, {self.high!r}")
        if self.high < self.low:
            raise VolumeError(f"intensity window high ({self.high}) is below low ({self.low})")

    @classmethod
    def ct(cls, level: float, width: float) -> IntensityWindow:
        if not (_finite_number(level) and _finite_number(width) and width > 0):
            raise VolumeError(
                f"CT window width must be positive, and level and width finite numbers (HU); got "
                f"level={level!r}, width={width!r}"
            )
        return cls(level - width / 2, level + width / 2)

    @classmethod
    def preset(cls, name: str) -> IntensityWindow:
        try:
            return cls.ct(*CT_PRESETS[name])
        except KeyError:
            raise VolumeError(f"unknown CT preset {name!r}; choose one of {sorted(CT_PRESETS)}") from None

    @classmethod
    def from_percentiles(
        cls, data: np.ndarray, lower: float = 0.5, upper: float = 99.5, seed: int = 0
    ) -> IntensityWindow:
        """Robust window for MR and microscopy: percentiles of the finite values.

        Large (or lazy, dask) volumes are sampled: at most about two million voxels are read.
        When both percentiles coincide (e.g. a mostly empty image) the window spans the
        finite minimum to maximum instead, so the few other voxels stay visible.
        """
        if not 0 <= lower < upper <= 100:
            raise VolumeError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
        sample = strided_sample(data, seed=seed)
        finite = sample[np.isfinite(sample)]
        if finite.size == 0:
            raise VolumeError(
                "the image has no finite intensities (all NaN or inf); check the file or "
                "the layer's data before segmenting"
            )
        low, high = np.percentile(finite, [lower, upper])
        if low == high:  # mostly one value (a sparse image): use the full range, not a threshold
            low, high = finite.min(), finite.max()
        return cls(float(low), float(high))

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """The frame (any shape: a 2D slice, an RGB ``(H, W, 3)`` frame, a volume) in [0, 1]."""
        values = np.asarray(frame, dtype=np.float32)
        span = self.high - self.low
        if span == 0:  # constant image: everything at or above the level is "bright"
            out = (values >= self.high).astype(np.float32)
        else:
            out = (values - np.float32(self.low)) * np.float32(1.0 / span)
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            warnings.warn(
                f"{bad} non-finite voxel(s) in a frame were set to the window's bounds "
                "(NaN and -inf to 0, +inf to 1)",
                RuntimeWarning,
                stacklevel=2,
            )
            np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
        return np.clip(out, 0.0, 1.0, out=out)


WINDOW_CHOICES: dict[str, str] = {
    "auto": "Auto (0.5-99.5 % of the volume)",
    "display": "As displayed (the layer's contrast limits)",
    **{
        f"ct:{name}": f"CT {name.replace('_', ' ')} (L {level:g}, W {width:g})"
        for name, (level, width) in CT_PRESETS.items()
    },
}
"""How the Segmentation panel may window an image, by key: what the model sees should be
what the user chose to see. A CT in HU holds air and bone, so its percentile window squeezes
soft tissue into a few percent of the range, where a model cannot tell organs apart."""


def chosen_window(choice: str, contrast_limits=None) -> IntensityWindow | None:
    """The window a :data:`WINDOW_CHOICES` key names: ``None`` for ``auto`` (the volume's own
    percentile window), ``contrast_limits`` (low, high) for ``display``, else a CT preset."""
    if choice == "auto":
        return None
    if choice == "display":
        limits = tuple(contrast_limits) if contrast_limits is not None else ()
        if len(limits) != 2:
            raise VolumeError(f"'As displayed' needs the layer's contrast limits (low, high), got {contrast_limits!r}")
        return IntensityWindow(*(float(v) if _finite_number(v) else v for v in limits))
    if choice.startswith("ct:"):
        return IntensityWindow.preset(choice.removeprefix("ct:"))
    raise VolumeError(f"unknown intensity window {choice!r}; choose one of {list(WINDOW_CHOICES)}")


def as_window(window) -> IntensityWindow | None:
    """A window as scripts and commands give it: ``None`` (the volume's percentiles), a
    :data:`WINDOW_CHOICES` key such as ``"ct:soft_tissue"``, ``(low, high)``, or an
    :class:`IntensityWindow`."""
    if window is None or isinstance(window, IntensityWindow):
        return window
    if isinstance(window, str):
        if window == "display":
            raise VolumeError("'display' is the panel's layer contrast limits; give the window's (low, high) instead")
        return chosen_window(window)
    bounds = tuple(window)
    if len(bounds) != 2:
        raise VolumeError(f"an intensity window is (low, high), got {window!r}")
    return IntensityWindow(*bounds)


def _finite_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and bool(np.isfinite(value))
