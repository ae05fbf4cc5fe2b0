"""Array checks shared by the readers, the writers and the engine.

They work on numpy arrays, memory maps and dask arrays alike and never read a lazy volume
whole just to inspect it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from napari_samed2.errors import VolumeError
from napari_samed2.io._files import split_suffix

#: What an npe2 reader returns per layer: ``(data, layer kwargs, layer type)``.
LayerData = tuple[Any, dict[str, Any], str]

#: Volumes larger than this (bytes, as napari will see them) stay lazy when the format allows.
LAZY_BYTES = 512 * 2**20

MAX_SAMPLE_VOXELS = 2_000_000

#: An integer image with at most this many distinct values (in a sample) opens as labels.
MAX_LABEL_VALUES = 64

# Whole words only: "brain_mask" and "case1_seg" are labels, "T1_masked" is an image.
_LABEL_NAME = re.compile(r"(?<![a-z])(label|labels|lbl|seg|segmentation|mask|masks)(?![a-z])")


def strided_sample(data: Any, max_voxels: int = MAX_SAMPLE_VOXELS, seed: int = 0) -> np.ndarray:
    """At most about ``max_voxels`` values on a regular grid with a random offset, as float64.

    A strided read touches only the slices it needs, so a memory map or dask volume is not
    loaded whole.
    """
    size = int(np.prod(data.shape))
    if size <= max_voxels:
        return np.asarray(data, dtype=np.float64).ravel()
    step = int(np.ceil((size / max_voxels) ** (1 / data.ndim)))
    start = np.random.default_rng(seed).integers(0, step, size=data.ndim)
    index = tuple(slice(int(s), None, step) for s in start)
    return np.asarray(data[index], dtype=np.float64).ravel()


def looks_like_labels(path: str | Path, data: Any) -> bool:
    """Whether a file holds a segmentation rather than an image.

    Labels are whole numbers (any dtype) and either the file name says so (a word "label",
    "labels", "lbl", "seg", "segmentation", "mask" or "masks") or a sample of the voxels has at
    most ``MAX_LABEL_VALUES`` distinct values. An MR or CT image has hundreds to thousands.
    """
    named = bool(_LABEL_NAME.search(split_suffix(path)[0].lower()))
    if named and data.dtype.kind in "iub":
        return True
    if data.dtype.kind not in "iubf":
        return False
    sample = strided_sample(data)
    if not np.all(np.isfinite(sample)) or not np.array_equal(sample, np.round(sample)):
        return False
    return named or np.unique(sample).size <= MAX_LABEL_VALUES


def label_dtype(data: Any) -> np.dtype:
    """The smallest of uint8, uint16, int32 that holds every label value.

    Raises VolumeError for values that are not whole numbers or do not fit int32.
    """
    values = np.asarray(data)
    if values.size == 0:
        return np.dtype(np.uint8)
    if values.dtype.kind == "f" and not (
        np.all(np.isfinite(values)) and np.array_equal(values, np.round(values))
    ):
        raise VolumeError(
            "labels must be whole numbers, but this layer has fractional or NaN values; "
            "threshold or round it (or convert it to a Labels layer) before saving"
        )
    if values.dtype.kind not in "iubf":
        raise VolumeError(f"labels must be integers, got dtype {values.dtype}; convert the layer to Labels")
    low, high = values.min(), values.max()
    for dtype in (np.uint8, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    raise VolumeError(
        f"label values span [{low}, {high}], which does not fit 32-bit integers; "
        "renumber the labels (e.g. skimage.segmentation.relabel_sequential) before saving"
    )


def as_label_array(data: Any) -> np.ndarray:
    """Labels in memory with the dtype from :func:`label_dtype` (uint8 for most masks)."""
    values = np.asarray(data)
    return values.astype(label_dtype(values), copy=False)


def require_volume(data: Any, *, rgb: bool = False) -> tuple[int, int, int]:
    """Check that ``data`` is one volume the engine can segment; return its ``(z, y, x)`` size.

    A volume is a stack of 2D slices, slice axis first: ``(z, y, x)``, or ``(z, y, x, c)``
    with 3 or 4 colour channels when ``rgb`` (video frames). Readers open 2D images and 4D
    series too (napari can show them); the engine and widgets call this before segmenting.
    """
    shape = tuple(int(n) for n in data.shape)
    spatial = shape[:-1] if rgb else shape
    if rgb and (len(shape) < 1 or shape[-1] not in (3, 4)):
        raise VolumeError(
            f"an RGB layer needs 3 or 4 colour channels on its last axis, got shape {shape}; "
            "open the file again as a grayscale image"
        )
    if len(spatial) < 3:
        raise VolumeError(
            f"a single 2D image of shape {shape} cannot be propagated through slices: segmenting "
            "needs a volume (z, y, x); open a 3D file, or stack the 2D images into one file"
        )
    if len(spatial) > 3:
        raise VolumeError(
            f"the layer has {len(spatial)} spatial/time axes (shape {shape}); segmenting works on "
            "one volume (z, y, x): take one time point or channel first, e.g. layer.data[0]"
        )
    if min(spatial) < 1:
        raise VolumeError(f"the volume of shape {shape} is empty; open a file with voxels in it")
    return spatial  # type: ignore[return-value]


def layer_geometry(
    scale: Any, translate: Any, shape: tuple[int, ...]
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """napari ``scale`` and ``translate`` for labels of ``shape``, checked before writing: one
    finite number per axis, voxel sizes above 0 (a file cannot store a size of 0 or NaN)."""
    checked = []
    for name, values, what in (("scale", scale, "voxel size"), ("translate", translate, "offset")):
        if values is None:
            checked.append(None)
            continue
        try:
            array = np.asarray(values, dtype=np.float64)
            valid = array.shape == (len(shape),) and np.isfinite(array).all()
            valid = valid and not (name == "scale" and (array <= 0).any())
        except (TypeError, ValueError):  # not numbers
            valid = False
        if not valid:
            raise VolumeError(
                f"{name} must be one finite {what}{' above 0' if name == 'scale' else ''} per axis of the "
                f"labels (shape {shape}), got {values!r}"
            )
        checked.append(tuple(float(v) for v in array))
    return checked[0], checked[1]
