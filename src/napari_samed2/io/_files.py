"""File names and safe writing: the suffixes this package reads and writes, no silent overwrite."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from napari_samed2.errors import ExistingFileError, ImageFileError, OutputFolderError, SamEd2Error

# Longer suffixes before the ones they end with; the first is the default for writing.
NIFTI_SUFFIXES = (".nii.gz", ".nii")
TIFF_SUFFIXES = (".ome.tif", ".ome.tiff", ".tif", ".tiff")


def split_suffix(path: str | Path) -> tuple[str, str]:
    """``("brain1_label", ".nii.gz")``: the name and its (lower-case) known suffix, or ``""``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES + TIFF_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


@contextmanager
def replacing(path: str | Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; move it onto ``path`` once complete.

    An existing ``path`` is replaced only with ``overwrite=True`` (else ExistingFileError),
    and a write that fails half way leaves neither a partial file nor a damaged original; the
    OutputFolderError it raises names ``path``, not the hidden temporary file. The temporary
    name ends like ``path`` so writers that pick compression from the suffix (nibabel's
    ``.gz``) behave the same.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExistingFileError(
            f"{path} already exists and was not replaced; choose another file name, or pass "
            "overwrite=True to replace it"
        )
    if not path.parent.is_dir():
        raise ImageFileError(f"cannot write {path}: the folder {path.parent} does not exist; create it first")
    partial = path.with_name(f".{uuid.uuid4().hex[:8]}.partial.{path.name}")
    existed = path.exists()
    try:
        yield partial
        os.replace(partial, path)
    except SamEd2Error:
        raise
    except OSError as exc:
        kept = f"the earlier {path.name} is unchanged. " if existed else ""
        raise OutputFolderError(
            f"cannot write {path} ({exc.strerror or exc}); {kept}Save to a folder you can "
            "write to, or free disk space."
        ) from exc
    finally:
        partial.unlink(missing_ok=True)


def require_voxels(path: str | Path, shape: tuple[int, ...]) -> None:
    """Refuse a file whose image has an axis of length 0, before napari or the engine see it."""
    if 0 in shape:
        raise ImageFileError(f"{Path(path).name} holds no voxels (shape {shape}); export the image again")


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any work."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputFolderError(
            f"cannot write to the output folder {str(folder)!r} ({exc.strerror or exc}): choose a folder "
            "you can write to (--out), or fix its permissions"
        ) from exc
    return folder
