"""Open medical images by file name: the entry point for napari (npe2) and for scripts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari_samed2.errors import ImageFileError
from napari_samed2.io._files import NIFTI_SUFFIXES, TIFF_SUFFIXES, split_suffix
from napari_samed2.io.arrays import LayerData
from napari_samed2.io.nifti import read_nifti
from napari_samed2.io.tiff import read_tiff

ReaderFunction = Callable[[str | list[str]], list[LayerData]]


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


def get_reader(path: str | list[str]) -> ReaderFunction | None:
    """npe2 reader hook: a reader if every path is a NIfTI or TIFF file, else None.

    Returning None lets napari try other plugins; errors in a file we claimed are raised
    by the reader as ImageFileError with a message for the user.
    """
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(split_suffix(p)[1] for p in paths):
        return None
    return _read_paths


def _read_paths(path: str | list[str]) -> list[LayerData]:
    paths = [path] if isinstance(path, str) else path
    return [layer for p in paths for layer in read_image(p)]
