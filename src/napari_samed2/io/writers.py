"""Save Labels layers as NIfTI or TIFF: the napari (npe2) writers, one function for code, and
the metadata a new Labels layer takes from its image so that it is saved on the image's grid.

No silent overwrite. :func:`write_labels` (for scripts, the engine and widgets) refuses an
existing file unless ``overwrite=True``. The npe2 writers are what napari's "Save layer"
dialog calls after the dialog itself asked the user before replacing a file, so they replace
exactly the path the user confirmed; if that path has no known suffix they add one, and then
refuse to replace a file of that new name, which the user never saw.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from napari_samed2.errors import ImageFileError
from napari_samed2.io._files import NIFTI_SUFFIXES, TIFF_SUFFIXES, split_suffix
from napari_samed2.io.nifti import METADATA_KEY, NiftiGeometry, write_nifti_labels
from napari_samed2.io.tiff import LENGTH_UNITS, write_tiff_labels


def write_labels(
    path: str | Path,
    labels: Any,
    *,
    metadata: dict[str, Any] | None = None,
    scale: Any = None,
    translate: Any = None,
    unit: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Save labels as NIfTI (``.nii.gz``/``.nii``) or OME-TIFF (``.tif``...), chosen by suffix.

    Pass the Labels layer's ``metadata``, ``scale`` and ``translate``. NIfTI places the labels
    on the source image's grid when ``metadata["nifti"]`` is there, else by scale/translate;
    TIFF records ``scale`` as the voxel size in ``unit`` (default: ``metadata["unit"]``).
    """
    suffix = split_suffix(path)[1]
    if suffix in NIFTI_SUFFIXES:
        return write_nifti_labels(
            path, labels, metadata=metadata, scale=scale, translate=translate, overwrite=overwrite
        )
    if suffix in TIFF_SUFFIXES:
        unit = unit or (metadata or {}).get("unit")
        return write_tiff_labels(path, labels, scale=scale, unit=unit, overwrite=overwrite)
    raise ImageFileError(
        f"cannot save labels as {Path(path).name}: name the file *.nii.gz, *.nii, *.tif or *.ome.tif"
    )


def labels_metadata(image_metadata: dict[str, Any] | None, shape: tuple[int, ...]) -> dict[str, Any]:
    """The ``metadata`` for a Labels layer of ``shape`` drawn on an image with ``image_metadata``.

    It carries what saving needs to put the labels on the image's grid: the NIfTI geometry
    (``"nifti"``: the source's affine and header, so a saved file has its sform/qform, their
    codes, pixdim and origin, not only the same world positions), kept only when ``shape`` is
    the image's displayed shape, and the ``"unit"`` of the layer's scale. Copied, so that
    changing one layer's metadata leaves the other's alone.
    """
    image_metadata = image_metadata or {}
    metadata = {}
    geometry = NiftiGeometry.from_metadata(image_metadata)
    if geometry is not None and geometry.display_shape == tuple(shape):
        metadata[METADATA_KEY] = copy.deepcopy(image_metadata[METADATA_KEY])
    if "unit" in image_metadata:
        metadata["unit"] = image_metadata["unit"]
    return metadata


def napari_write_labels_nifti(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: Labels -> NIfTI (see the module docstring on overwriting)."""
    return [str(_write_chosen(path, NIFTI_SUFFIXES, data, attributes))]


def napari_write_labels_tiff(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: Labels -> OME-TIFF (see the module docstring on overwriting)."""
    return [str(_write_chosen(path, TIFF_SUFFIXES, data, attributes))]


def _write_chosen(path: str, suffixes: tuple[str, ...], data: Any, attributes: dict[str, Any]) -> Path:
    """Write to the path chosen in napari's dialog, adding a suffix if it has none.

    Replacing is allowed only for the exact name the dialog confirmed.
    """
    chosen = Path(path)
    confirmed = split_suffix(chosen)[1] in suffixes
    target = chosen if confirmed else chosen.with_name(chosen.name + suffixes[0])
    return write_labels(
        target,
        data,
        metadata=attributes.get("metadata"),
        scale=attributes.get("scale"),
        translate=attributes.get("translate"),
        unit=_length_unit(attributes.get("units")),
        overwrite=confirmed,
    )


def _length_unit(units: Any) -> str | None:
    """The layer's length unit as an OME symbol ("mm", "µm"), or None (pixels, unknown)."""
    if not units:
        return None
    unit = units[-1]
    symbol = unit if isinstance(unit, str) else format(unit, "~")  # napari gives pint units
    return symbol if symbol in LENGTH_UNITS else None
