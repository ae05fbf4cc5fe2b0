"""TIFF stacks, ImageJ hyperstacks and OME-TIFF, with their voxel size as napari ``scale``.

The first image series is read, in the axis order tifffile reports (``series.axes``, e.g.
``ZYX``; ``TZYX`` shows time as a slider). Voxel size comes from OME-XML ``PhysicalSize*``
or from ImageJ metadata (``spacing`` for Z, the X/Y resolution tags for the plane); axes
without a size get 1. ``metadata["unit"]`` names the unit ("µm", "mm", or None when the file
gives none) and ``metadata["tiff"]["axes"]`` the axis letters. There is no patient
orientation in TIFF: the array is shown as stored.

napari ``units`` are not set: napari warns when layers' units differ, and Labels layers
made by the widgets have none.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_samed2.errors import ImageFileError
from napari_samed2.io._files import TIFF_SUFFIXES, replacing, require_voxels, split_suffix
from napari_samed2.io.arrays import LAZY_BYTES, LayerData, as_label_array, layer_geometry, looks_like_labels

METADATA_KEY = "tiff"
_AXES = "TZYX"
# Spellings of length units in TIFF metadata -> OME-XML unit symbols.
_UNITS = {
    "mm": "mm", "µm": "µm", "um": "µm", "micron": "µm", "\\u00B5m": "µm", "nm": "nm", "cm": "cm", "m": "m"
}
LENGTH_UNITS = frozenset(_UNITS.values())
_READ_ERRORS = (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError, EOFError)


def read_tiff(path: str | Path) -> list[LayerData]:
    """One layer for the first series of a TIFF file (``labels`` if it looks like a segmentation).

    Contiguous uncompressed data are memory-mapped copy-on-write; compressed series larger
    than ``LAZY_BYTES`` are read page by page through dask; smaller ones are read at once.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{path} does not exist or is not a file; check the path")
    try:
        with _logged_damage() as damage, tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape, dtype = series.axes, tuple(series.shape), series.dtype
            sizes, unit = _voxel_size(tif)
            lazy = np.prod(shape) * dtype.itemsize > LAZY_BYTES
            data = _memmap(path) if series.dataoffset is not None else None
            if data is None:
                data = _pages_lazily(path, series) if lazy else series.asarray()
    except _READ_ERRORS as exc:
        raise _unreadable(path, f"{type(exc).__name__}: {exc}") from exc
    if damage.messages:
        raise _unreadable(path, damage.messages[0])
    require_voxels(path, shape)
    rgb = axes.endswith("S")  # colour samples: napari's rgb axis, which has no scale
    is_labels = not rgb and looks_like_labels(path, data)
    if is_labels and not (isinstance(data, np.ndarray) and data.dtype.kind in "iu"):
        data = as_label_array(data)
    shown_axes = axes[:-1] if rgb else axes
    kwargs = {
        "name": split_suffix(path)[0],
        "scale": tuple(float(sizes.get(axis, 1.0)) for axis in shown_axes),
        "metadata": {METADATA_KEY: {"axes": axes}, "source": str(path), "unit": unit},
    }
    return [(data, kwargs, "labels" if is_labels else "image")]


def write_tiff_labels(
    path: str | Path,
    labels: Any,
    *,
    scale: tuple[float, ...] | None = None,
    unit: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a 2D to 4D labels array (``[T][Z]YX``) as a zlib-compressed OME-TIFF.

    ``scale`` (napari's, one value per axis) becomes OME ``PhysicalSizeX/Y/Z`` in ``unit``
    (OME's default, micrometres, when None). The dtype is the smallest of uint8/uint16/int32
    that fits. An existing file is replaced only with ``overwrite=True``.
    """
    path = Path(path)
    if split_suffix(path)[1] not in TIFF_SUFFIXES:
        raise ImageFileError(f"cannot save {path.name} as TIFF: name the file *.tif, *.tiff or *.ome.tif")
    values = as_label_array(labels)
    if not 2 <= values.ndim <= 4:
        raise ImageFileError(
            f"labels of shape {values.shape} cannot be saved as TIFF: 2 to 4 axes ([T][Z]YX) are supported"
        )
    axes = _AXES[-values.ndim :]
    metadata: dict[str, Any] = {"axes": axes}
    scale, _ = layer_geometry(scale, None, values.shape)
    if scale is not None:
        for axis, size in zip(axes, scale, strict=True):
            if axis in "ZYX":
                metadata[f"PhysicalSize{axis}"] = float(size)
                if unit is not None:
                    metadata[f"PhysicalSize{axis}Unit"] = unit
    with replacing(path, overwrite=overwrite) as partial:
        tifffile.imwrite(
            partial, values, ome=True, compression="zlib", photometric="minisblack", metadata=metadata
        )
    return path


def _voxel_size(tif: tifffile.TiffFile) -> tuple[dict[str, float], str | None]:
    """Physical size per axis letter (``{"Z": 2.0, "Y": 0.5, "X": 0.5}``) and its unit."""
    if tif.is_ome and tif.ome_metadata:
        images = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        pixels = (images[0] if isinstance(images, list) else images)["Pixels"]
        sizes = {axis: float(pixels[f"PhysicalSize{axis}"]) for axis in "ZYX"
                 if f"PhysicalSize{axis}" in pixels}
        return sizes, _UNITS.get(pixels.get("PhysicalSizeXUnit", "µm")) if sizes else None
    if tif.is_imagej and tif.imagej_metadata is not None:
        meta = tif.imagej_metadata
        sizes = {}
        per_unit_x, per_unit_y = tif.pages.first.get_resolution()
        if per_unit_x > 0 and per_unit_y > 0:
            sizes.update(X=1.0 / per_unit_x, Y=1.0 / per_unit_y)
        if "spacing" in meta:
            sizes["Z"] = float(meta["spacing"])
        return sizes, _UNITS.get(str(meta.get("unit", ""))) if sizes else None
    return {}, None


def _unreadable(path: Path, reason: str) -> ImageFileError:
    return ImageFileError(
        f"cannot read {path.name} as TIFF ({reason}); the file may be truncated or not a TIFF "
        "image: copy or export it again"
    )


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _logged_damage() -> Iterator[_Collect]:
    """tifffile logs, rather than raises, most damage it meets (a truncated file opens as fewer
    pages); collect those errors so a damaged file is refused instead of shown incomplete."""
    handler = _Collect()
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _memmap(path: Path) -> np.memmap | None:
    """Copy-on-write memory map of contiguous uncompressed data, or None if not mappable."""
    try:
        return tifffile.memmap(path, mode="c")
    except ValueError:
        return None


def _pages_lazily(path: Path, series: tifffile.TiffPageSeries) -> Any:
    """A dask array over the series, one TIFF page per chunk, read on demand."""
    import dask
    import dask.array as da

    reader = _PageReader(path)
    page_shape = tuple(series.keyframe.shape)
    pages = [
        da.from_delayed(dask.delayed(reader)(index), page_shape, series.dtype)
        for index in range(len(series.pages))
    ]
    return da.stack(pages).reshape(series.shape)


class _PageReader:
    """Reads pages of the first series, keeping the file open between reads (one at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._tif: tifffile.TiffFile | None = None

    def __call__(self, index: int) -> np.ndarray:
        with self._lock:
            if self._tif is None:
                self._tif = tifffile.TiffFile(self.path)
            return self._tif.asarray(key=index, series=0)
