"""A lazy view of an array as a sequence of model-ready frames.

Frames are read, windowed, resized and normalised one at a time: no JPEG round trip, no
temporary files, and never the whole preprocessed volume in memory (stock sam2 keeps every
frame as a float32 tensor, 12 MiB each at 1024 px).
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Callable, Mapping

import numpy as np
import torch
from scipy import ndimage
import torch.nn.functional as F

from napari_samed2.errors import FrameError, VolumeError
from napari_samed2.io.intensity import IntensityWindow
from napari_samed2.models.registry import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: the least input blur (pixels) applied; below it a frame is used as it is (a clean volume)
MIN_SMOOTHING_SIGMA = 0.3

Normaliser = Callable[[np.ndarray], np.ndarray]
"""Maps a raw frame to float32 in [0, 1]; the same mapping for every frame of a volume."""


class Volume:
    """Frames of ``data`` along ``axis``: a ``(Z, Y, X)`` volume, a ``(T, Y, X[, 3])`` video,
    or any N-D array with the extra axes held at ``fixed`` indices.

    ``normalise`` defaults to a percentile window (0.5-99.5 %) over the whole volume, or
    ``/255`` for 8-bit RGB; pass an :class:`IntensityWindow` (CT presets) to choose.
    """

    def __init__(
        self,
        data,
        axis: int = 0,
        *,
        rgb: bool | None = None,
        fixed: Mapping[int, int] | None = None,
        normalise: Normaliser | None = None,
    ):
        if not hasattr(data, "shape") or not hasattr(data, "__getitem__"):
            data = np.asarray(data)
        self.data = data
        shape = tuple(int(s) for s in data.shape)
        _check_dtype(np.dtype(data.dtype))
        self.rgb = bool(rgb) if rgb is not None else (len(shape) >= 3 and shape[-1] in (3, 4))
        if self.rgb and (not shape or shape[-1] not in (3, 4)):
            raise VolumeError(
                f"rgb=True needs 3 or 4 colour channels on the last axis, got shape {shape}; "
                "pass rgb=False for a grayscale volume"
            )
        spatial_ndim = len(shape) - (1 if self.rgb else 0)
        if spatial_ndim < 3:
            raise VolumeError(
                f"need at least 3 dimensions (slices or frames, then height and width), got shape "
                f"{shape}. For a single 2D image add an axis: data[None]."
            )
        self.axis = _axis(axis, spatial_ndim, "axis")
        self.fixed = {_axis(k, spatial_ndim, "fixed axis"): _whole(v, f"fixed[{k}]") for k, v in (fixed or {}).items()}
        plane = [d for d in range(spatial_ndim) if d != self.axis and d not in self.fixed]
        if len(plane) != 2 or self.axis in self.fixed:
            raise VolumeError(
                f"array of shape {shape} sliced along axis {axis} leaves {len(plane)} axes, not "
                f"height and width. Hold the extra axes at an index: fixed={{axis: index}}, e.g. "
                f"Volume(data, axis=1, fixed={{0: 0}}) for a (T, Z, Y, X) array."
            )
        for dim, index in self.fixed.items():
            if not 0 <= index < shape[dim]:
                raise VolumeError(f"fixed index {index} is outside axis {dim} of length {shape[dim]}")
        empty = [dim for dim in (self.axis, *plane) if shape[dim] == 0]
        if empty:
            raise VolumeError(
                f"the volume of shape {shape} is empty: axis {empty[0]} has length 0 (no "
                f"{'frames' if empty[0] == self.axis else 'pixels in a frame'}); open an image with voxels in it"
            )
        if normalise is not None and not callable(normalise):
            raise VolumeError(
                f"normalise must map a frame to [0, 1] (e.g. IntensityWindow.preset('lung')), got {normalise!r}"
            )
        self.plane_axes = tuple(plane)
        self.shape = shape
        self._normalise = normalise
        self._noise_level: float | None = None
        self._smoothed_windows: dict[float, IntensityWindow] = {}

    def __len__(self) -> int:
        return self.shape[self.axis]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.shape[self.plane_axes[0]], self.shape[self.plane_axes[1]]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The array's shape without the colour axis: the shape of its label volume."""
        return self.shape[:-1] if self.rgb else self.shape

    def frame_index(self, frame: int) -> tuple:
        """Where ``frame`` sits in the array's spatial axes (also indexes a label volume of
        the same spatial shape)."""
        index: list = [slice(None)] * len(self.spatial_shape)
        index[self.axis] = frame
        for dim, value in self.fixed.items():
            index[dim] = value
        return tuple(index)

    def check_frame(self, frame) -> int:
        """``frame`` as an int, if it is one of this volume's frames."""
        frame = frame_number(frame)
        if not 0 <= frame < len(self):
            raise FrameError(f"frame {frame} is outside the volume's {len(self)} frames (0 to {len(self) - 1})")
        return frame

    def raw_frame(self, frame: int) -> np.ndarray:
        """The frame as stored: ``(H, W)`` or ``(H, W, 3)``, in the array's own dtype."""
        frame = self.check_frame(frame)
        raw = np.asarray(self.data[self.frame_index(frame)])
        return raw[..., :3] if self.rgb else raw

    @property
    def normalise(self) -> Normaliser:
        if self._normalise is None:
            if self.rgb and np.dtype(self.data.dtype) == np.uint8:
                self._normalise = IntensityWindow(0.0, 255.0)
            else:
                sub = self.data[tuple(self.fixed.get(d, slice(None)) for d in range(len(self.spatial_shape)))]
                self._normalise = IntensityWindow.from_percentiles(sub)
        return self._normalise

    def unit_frame(self, frame: int) -> np.ndarray:
        """The frame mapped to float32 [0, 1] by the volume's window."""
        return self.normalise(self.raw_frame(frame))

    def model_input(self, frame: int, image_size: int, preprocessing: Preprocessing, smoothing: float = 0.0) -> torch.Tensor:
        """A ``[3, S, S]`` float32 tensor as the model expects it (aspect ratio not kept, as sam2).

        ``smoothing`` > 0 (a model setting, see :attr:`LoadedModel.input_smoothing`) blurs the
        frame in-plane by ``smoothing`` x :attr:`noise_level` pixels and stretches it again to
        the smoothed volume's 0.5-99.5 % range: speckled or shot-noisy volumes are smoothed,
        clean ones (noise level ~0.03: under 0.3 px at the strengths continual adaptation
        offers) are left exactly as they are."""
        unit = self.unit_frame(frame)
        sigma = self.smoothing_sigma(smoothing)
        if sigma:
            if sigma not in self._smoothed_windows:
                self._smoothed_windows[sigma] = self._smoothed_window(sigma)
            unit = self._smoothed_windows[sigma](self._blur(unit, sigma))
        unit = torch.from_numpy(np.ascontiguousarray(unit))
        image = unit.permute(2, 0, 1) if self.rgb else unit[None].expand(3, -1, -1)
        image = F.interpolate(
            image[None].float(), size=(image_size, image_size), mode="bilinear",
            align_corners=False, antialias=True,
        )[0]
        if preprocessing is Preprocessing.IMAGENET:
            mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
            std = torch.tensor(IMAGENET_STD)[:, None, None]
            image = (image - mean) / std
        return image

    @property
    def noise_level(self) -> float:
        """How noisy the volume is, relative to its signal: the median absolute difference
        between a frame and its 3x3 median, over the tissue, divided by the tissue's median
        intensity, on up to 8 evenly spaced frames (windowed to [0, 1]). Measured about 0.03
        on MR- and CT-like volumes, 0.12-0.29 on microscopy-like shot noise and 0.33 on
        ultrasound-like speckle (docs/continual.md)."""
        if self._noise_level is None:
            levels = []
            for frame in self._sample_frames():
                unit = self.unit_frame(frame)
                unit = unit.mean(axis=-1) if self.rgb else unit
                tissue = ndimage.gaussian_filter(unit, 2) > 0.1
                if tissue.sum() >= 64:
                    residual = np.abs(unit - ndimage.median_filter(unit, 3))[tissue]
                    levels.append(float(np.median(residual) / max(float(np.median(unit[tissue])), 1e-3)))
            self._noise_level = float(np.median(levels)) if levels else 0.0
        return self._noise_level

    def smoothing_sigma(self, smoothing: float) -> float:
        """The in-plane blur (pixels) that ``smoothing`` gives this volume; 0 under 0.3 px,
        where the frame is used as it is."""
        if smoothing <= 0:
            return 0.0
        sigma = round(smoothing * self.noise_level, 2)
        return sigma if sigma >= MIN_SMOOTHING_SIGMA else 0.0

    def _sample_frames(self, count: int = 8) -> list[int]:
        return sorted({int(round(f)) for f in np.linspace(0, len(self) - 1, min(count, len(self)))})

    def _blur(self, unit: np.ndarray, sigma: float) -> np.ndarray:
        return ndimage.gaussian_filter(unit, (sigma, sigma, 0) if self.rgb else sigma)

    def _smoothed_window(self, sigma: float) -> IntensityWindow:
        blurred = np.stack([self._blur(self.unit_frame(f), sigma) for f in self._sample_frames()])
        return IntensityWindow.from_percentiles(blurred)

    def frame_key(self, frame: int) -> str:
        """A digest of the frame's content and of how it is normalised: the embedding cache key."""
        raw = np.ascontiguousarray(self.raw_frame(frame))
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{raw.shape}{raw.dtype}{self.normalise!r}".encode())
        digest.update(raw.data)
        return digest.hexdigest()


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind == "c":
        raise VolumeError(
            f"the image holds complex numbers ({dtype}), which have no single brightness: pass "
            "np.abs(data) for the magnitude, or data.real"
        )
    if dtype.kind not in "biuf":
        raise VolumeError(f"the image must hold numbers, not {dtype}; convert it, e.g. data.astype(np.float32)")


def _is_whole(value) -> bool:
    """An int or numpy integer; floats and bools are not (they would be truncated or misread)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _whole(value, name: str) -> int:
    if not _is_whole(value):
        raise VolumeError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def frame_number(frame) -> int:
    """A frame index as an int (negative ones name library memories in a session's bank)."""
    if not _is_whole(frame):
        raise FrameError(
            f"frame must be a whole number (a slice index), got {frame!r}"
            + (f"; round it first: int(round({frame!r}))" if isinstance(frame, float | np.floating) else "")
        )
    return int(frame)


def _axis(axis, ndim: int, name: str) -> int:
    axis = _whole(axis, name)
    if not -ndim <= axis < ndim:
        raise VolumeError(f"{name} {axis} does not exist in an array with {ndim} spatial axes (0 to {ndim - 1})")
    return axis % ndim


def as_volume(data, axis: int = 0, **kwargs) -> Volume:
    return data if isinstance(data, Volume) else Volume(data, axis, **kwargs)
