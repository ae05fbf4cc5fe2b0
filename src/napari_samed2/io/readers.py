"""Open medical images by file name: the entry point for napari (npe2) and for scripts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari_samed2.errors import ImageFileError
from napari_samed2.io._files import NIFTI_SUFFIXES, TIFF_SUFFIXES, split_suffix
from napari_samed2.io.arrays import LayerData
from napari_samed2.io.nifti import read_nifti
from napari_samed2.io.tiff import read_tiff

PathOrPaths = str | Path | list[str] | list[Path]
ReaderFunction = Callable[[PathOrPaths], list[LayerData]]


def read_image(path: str | Path) -> list[LayerData]:
    """Layer data for one NIfTI or TIFF file, chosen by its suffix."""
    suffix = split_suffix(path)[1]
    if suffix in NIFTI_SUFFIXES:
        return read_nifti(path)
    if suffix in TIFF_SUFFIXES:
        return read_tiff(path)
    raise ImageFileError(
        f"{Path(path).name} is neither NIfTI nor TIFF; napari-samed2 reads "
        f"{', '.join(NIFTI_SUFFIXES + TIFF_SUFFIXES)} files"
    )


def get_reader(path: PathOrPaths) -> ReaderFunction | None:
    """npe2 reader hook: a reader if every path is a NIfTI or TIFF file, else None.

    Returning None lets napari try other plugins; errors in a file we claimed are raised
    by the reader as ImageFileError with a message for the user.
    """
    paths = _as_list(path)
    if not paths or not all(split_suffix(p)[1] for p in paths):
        return None
    return _read_paths


def _read_paths(path: PathOrPaths) -> list[LayerData]:
    return [layer for p in _as_list(path) for layer in read_image(p)]


def _as_list(path: PathOrPaths) -> list[str | Path]:
    return [path] if isinstance(path, str | Path) else list(path)
