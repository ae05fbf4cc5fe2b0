"""NIfTI (``.nii``, ``.nii.gz``) volumes and label maps, shown the way a radiologist reads them.

Display convention
------------------
NIfTI stores voxels in whatever order the scanner or converter chose; the affine says where
each voxel is in scanner (RAS+) space. The reader turns the voxel axes, by flips and
transposes only (no resampling), so that the array is ``(z, y, x)`` with

* axis 0 (slices, napari's slider) running inferior -> **superior**,
* axis 1 (rows, top -> bottom of the screen) running anterior -> **posterior**: anterior at the top,
* axis 2 (columns, left -> right of the screen) running right -> **left**: the patient's
  right on the left of the screen (radiological convention).

In nibabel terms the displayed voxel axes have orientation codes ``("S", "P", "L")``: the
transform is ``ornt_transform(io_orientation(affine), axcodes2ornt(("S", "P", "L")))``. An
oblique acquisition is turned to its closest such orientation (as
``nibabel.as_closest_canonical`` does); its tilt is not shown but is kept for writing. Every
volume is presented as an axial stack; napari's "roll axes" shows the other planes.

Geometry in napari
------------------
``scale`` is the voxel size in mm along (z, y, x). ``translate`` is the scanner position of
the first displayed voxel in the same frame, i.e. (S, P, L) = (z_RAS, -y_RAS, -x_RAS) in mm, so
napari's world coordinates are scanner millimetres and two files of the same scan overlay.

Metadata
--------
``layer.metadata["nifti"]`` keeps what is needed to write labels back on the file's own grid
(see :class:`NiftiGeometry`): the original affine (list of lists), the raw header bytes, the
orientation transform and the file's data shape. ``metadata["unit"]`` is the unit of
``scale`` ("mm" unless the header says otherwise) and ``metadata["source"]`` the file path.
Widgets that create a Labels layer for an image should give it
``labels_metadata(image.metadata, shape)`` (:mod:`napari_samed2.io.writers`) and the image's
scale and translate, so that it is saved with the image's header geometry.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from napari_samed2.errors import ImageFileError, VolumeError
from napari_samed2.io._files import NIFTI_SUFFIXES, replacing, require_voxels, split_suffix
from napari_samed2.io.arrays import LAZY_BYTES, LayerData, as_label_array, layer_geometry, looks_like_labels

METADATA_KEY = "nifti"
DISPLAY_AXCODES = ("S", "P", "L")
_DISPLAY_ORNT = axcodes2ornt(DISPLAY_AXCODES)
_IDENTITY_ORNT = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
# RAS+ scanner coordinates (x, y, z) -> the display frame (S, P, L).
_RAS_TO_DISPLAY = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])
_UNITS = {"meter": "m", "mm": "mm", "micron": "µm"}  # NIfTI xyzt_units; "unknown" means mm
_FORMATS = {
    nib.Nifti1Header.sizeof_hdr: (nib.Nifti1Header, nib.Nifti1Image),
    nib.Nifti2Header.sizeof_hdr: (nib.Nifti2Header, nib.Nifti2Image),
}
_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
)


@dataclass(frozen=True, eq=False)
class NiftiGeometry:
    """A NIfTI file's grid and the flips/transposes that turned it into the displayed array.

    ``transform`` is a nibabel orientation transform (rows ``[displayed axis, +1 or -1]`` per
    file axis): ``to_display`` applies it, ``from_display`` undoes it exactly. 2D files are
    handled as one-slice volumes and 4D files as (x, y, z, t) with time shown first (a single
    time point, as some converters write, is shown as a 3D volume).
    """

    affine: np.ndarray
    header: bytes
    transform: np.ndarray
    shape: tuple[int, ...]

    @classmethod
    def of(cls, img: nib.Nifti1Image) -> NiftiGeometry:
        start = io_orientation(img.affine)
        return cls(
            affine=np.asarray(img.affine, dtype=float),
            header=img.header.binaryblock,
            transform=ornt_transform(start, _DISPLAY_ORNT),
            shape=tuple(int(n) for n in img.shape),
        )

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any] | None) -> NiftiGeometry | None:
        """The geometry a reader put in ``metadata["nifti"]``, or None if there is none."""
        entry = (metadata or {}).get(METADATA_KEY)
        if entry is None:
            return None
        return cls(
            affine=np.asarray(entry["affine"], dtype=float),
            header=bytes(entry["header"]),
            transform=np.asarray(entry["transform"], dtype=float),
            shape=tuple(int(n) for n in entry["shape"]),
        )

    def to_metadata(self) -> dict[str, Any]:
        """Plain picklable values (lists, bytes) for ``layer.metadata["nifti"]``."""
        return {
            "affine": self.affine.tolist(),
            "header": self.header,
            "transform": self.transform.tolist(),
            "shape": list(self.shape),
        }

    @property
    def display_shape(self) -> tuple[int, ...]:
        return tuple(self.to_display(np.broadcast_to(np.uint8(0), self.shape)).shape)

    @property
    def _has_time(self) -> bool:
        """A 4D file with more than one volume; ``(x, y, z, 1)`` files are shown as 3D."""
        return len(self.shape) == 4 and self.shape[3] > 1

    @property
    def _squeezed_axis(self) -> int:
        """Where a 2D file's missing third axis lands among the displayed axes."""
        return int(self.transform[2, 0])

    def to_display(self, voxels: Any) -> Any:
        """File order -> displayed ``(z, y, x)`` (``(t, z, y, x)`` for 4D). Lazy arrays stay lazy."""
        if len(self.shape) == 2:
            voxels = voxels[..., np.newaxis]
        data = _reorient(voxels, self.transform)
        if len(self.shape) == 2:
            return data[tuple(0 if axis == self._squeezed_axis else slice(None) for axis in range(3))]
        if len(self.shape) == 4:
            data = np.moveaxis(data, 3, 0)
            return data if self._has_time else data[0]
        return data

    def from_display(self, data: Any) -> Any:
        """Displayed order -> the file's voxel order: the exact inverse of :meth:`to_display`."""
        if len(self.shape) == 2:
            data = np.expand_dims(data, self._squeezed_axis)
        if len(self.shape) == 4:
            data = np.moveaxis(data if self._has_time else data[np.newaxis], 0, 3)
        # ornt_transform(identity, t) is the inverse of t: it maps t's output axes back.
        voxels = _reorient(data, ornt_transform(_IDENTITY_ORNT, self.transform))
        return voxels[..., 0] if len(self.shape) == 2 else voxels

    def _display_affine(self) -> np.ndarray:
        """Voxel (displayed z, y, x) -> RAS+ mm."""
        spatial = (self.shape + (1,))[:3]
        return self.affine @ inv_ornt_aff(self.transform, spatial)

    def layer_transform(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """napari ``(scale, translate)`` for the displayed axes (see the module docstring)."""
        affine = self._display_affine()
        scale = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        translate = _RAS_TO_DISPLAY @ affine[:3, 3]
        if len(self.shape) == 2:
            scale, translate = (np.delete(v, self._squeezed_axis) for v in (scale, translate))
        if self._has_time:
            scale, translate = np.r_[1.0, scale], np.r_[0.0, translate]
        return tuple(float(v) for v in scale), tuple(float(v) for v in translate)

    def labels_image(self, labels: np.ndarray) -> nib.Nifti1Image:
        """A NIfTI image of ``labels`` (displayed order) on this grid, with this file's header."""
        if labels.shape != self.display_shape:
            raise VolumeError(
                f"labels of shape {labels.shape} do not match the image they belong to "
                f"({self.display_shape}); save labels drawn on that image, or remove "
                f"metadata[{METADATA_KEY!r}] to save them on their own grid"
            )
        header_class, image_class = _FORMATS[len(self.header)]
        header = header_class(self.header)
        header.set_data_dtype(labels.dtype)  # nibabel resets the image's scaling on save
        header["cal_min"] = header["cal_max"] = 0
        header.set_intent("label")
        return image_class(self.from_display(labels), self.affine, header)


def read_nifti(path: str | Path) -> list[LayerData]:
    """One layer for a NIfTI file: ``labels`` if it looks like a segmentation, else ``image``.

    Uncompressed, unscaled ``.nii`` files are memory-mapped (copy-on-write: painting never
    changes the file); big scaled ones are wrapped in dask, one slice per chunk. ``.nii.gz``
    files are decompressed once into memory: gzip has no random access, so reading them
    lazily would decompress the file again for every slice. See
    :func:`~napari_samed2.io.arrays.looks_like_labels` for the labels rule.
    """
    path = Path(path)
    img = _load(path)
    geometry = NiftiGeometry.of(img)
    try:
        data = geometry.to_display(_voxels(img, path, geometry))
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    is_labels = looks_like_labels(path, data)
    if is_labels and not (isinstance(data, np.ndarray) and data.dtype.kind in "iu"):
        data = as_label_array(data)
    scale, translate = geometry.layer_transform()
    unit = _UNITS.get(img.header.get_xyzt_units()[0], "mm")
    kwargs = {
        "name": split_suffix(path)[0],
        "scale": scale,
        "translate": translate,
        "metadata": {METADATA_KEY: geometry.to_metadata(), "source": str(path), "unit": unit},
    }
    return [(data, kwargs, "labels" if is_labels else "image")]


def write_nifti_labels(
    path: str | Path,
    labels: Any,
    *,
    metadata: dict[str, Any] | None = None,
    scale: tuple[float, ...] | None = None,
    translate: tuple[float, ...] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a labels array (displayed ``(z, y, x)`` order) as ``.nii.gz`` or ``.nii``.

    With ``metadata["nifti"]`` from :func:`read_nifti` the file gets the source image's grid:
    voxel order, affine and header (data type, scaling, intent and display range set for
    labels), so other tools overlay it on the original. Without it the grid comes from
    ``scale``/``translate`` (napari's, in mm in the display frame) and the voxels are stored in
    RAS+ order. The dtype is the smallest of uint8/uint16/int32 that fits. An existing file is
    replaced only with ``overwrite=True``.
    """
    path = Path(path)
    if split_suffix(path)[1] not in NIFTI_SUFFIXES:
        raise ImageFileError(f"cannot save {path.name} as NIfTI: name the file *.nii.gz or *.nii")
    values = as_label_array(labels)
    geometry = NiftiGeometry.from_metadata(metadata)
    img = geometry.labels_image(values) if geometry else _labels_on_grid(values, scale, translate)
    with replacing(path, overwrite=overwrite) as partial:
        nib.save(img, partial)
    return path


def _load(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise ImageFileError(f"{path} does not exist or is not a file; check the path")
    try:
        img = nib.load(path)
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    if not isinstance(img, nib.Nifti1Image):
        raise ImageFileError(f"{path.name} is not a single-file NIfTI image; convert it to .nii.gz first")
    if not 2 <= len(img.shape) <= 4:
        raise ImageFileError(
            f"{path.name} has {len(img.shape)} dimensions (shape {img.shape}); napari-samed2 opens "
            "2D images, 3D volumes and 4D (x, y, z, t) series. Save the volume you need on its "
            "own first, e.g. with nibabel: nib.save(img.slicer[..., 0, 0], 'volume.nii.gz')"
        )
    require_voxels(path, img.shape)
    _require_orientation(img, path)
    return img


def _require_orientation(img: nib.Nifti1Image, path: Path) -> None:
    """Refuse a file whose voxel-to-scanner transform cannot place voxels (all zeros, singular,
    not finite): nibabel fails on it deep in the orientation code, or yields NaN geometry."""
    if _usable(img.affine):
        return
    header = img.header
    sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    used = "sform" if sform_code > 0 else "qform" if qform_code > 0 else "voxel size (pixdim)"
    if used == "sform" and qform_code > 0 and _usable(header.get_qform()):
        fix = (
            "Its qform is valid; to use it, with nibabel: img = nib.load(path); "
            "img.set_sform(img.get_qform(), code=int(img.header['qform_code'])); nib.save(img, path)"
        )
    else:
        fix = "Export the image again from its source, or set its sform with nibabel (img.set_sform(affine, code=1))"
    raise ImageFileError(
        f"{path.name} has no usable orientation: its {used} does not map voxels to scanner positions "
        f"(the matrix is {_flaw(img.affine)}). {fix}."
    )


def _usable(affine: np.ndarray) -> bool:
    return bool(np.isfinite(affine).all()) and np.linalg.matrix_rank(affine[:3, :3]) == 3


def _flaw(affine: np.ndarray) -> str:
    if not np.isfinite(affine).all():
        return "not finite"
    return "all zeros" if not affine[:3, :3].any() else "singular: an axis has no extent"


def _voxels(img: nib.Nifti1Image, path: Path, geometry: NiftiGeometry) -> Any:
    """The voxel array in file order, as lazily as the file allows (see :func:`read_nifti`)."""
    proxy = img.dataobj
    scaled = not (proxy.slope == 1 and proxy.inter == 0)
    if path.name.lower().endswith(".gz") or not scaled:
        return np.asanyarray(proxy)
    out_dtype = proxy[(slice(0, 1),) * len(img.shape)].dtype
    if np.prod(img.shape) * out_dtype.itemsize <= LAZY_BYTES:
        return np.asanyarray(proxy)
    import dask.array as da

    slice_axis = int(np.flatnonzero(geometry.transform[:, 0] == 0)[0])
    chunks = tuple(1 if axis in (slice_axis, 3) else n for axis, n in enumerate(img.shape))
    return da.from_array(proxy, chunks=chunks, meta=np.empty((0,) * len(img.shape), out_dtype))


def _reorient(data: Any, ornt: np.ndarray) -> Any:
    """``nibabel.orientations.apply_orientation`` without its ``np.asarray``: views stay views.

    Works on numpy arrays, memory maps (no copy) and dask arrays (no compute).
    """
    for axis, flip in enumerate(ornt[:, 1]):
        if flip == -1:
            data = np.flip(data, axis)
    order = [*np.argsort(ornt[:, 0]), *range(3, data.ndim)]
    return data.transpose(order)


def _labels_on_grid(labels: np.ndarray, scale: Any, translate: Any) -> nib.Nifti1Image:
    """A RAS+-ordered NIfTI of displayed ``(z, y, x)`` labels placed by napari scale/translate."""
    if labels.ndim != 3:
        raise VolumeError(
            f"labels of shape {labels.shape} have no source NIfTI grid; only 3D (z, y, x) labels "
            "can be saved from scale/translate alone. Draw the labels on an image opened from NIfTI"
        )
    scale, translate = layer_geometry(scale, translate, labels.shape)
    scale = np.ones(3) if scale is None else np.asarray(scale)
    translate = np.zeros(3) if translate is None else np.asarray(translate)
    affine = np.eye(4)
    affine[:3, :3] = _RAS_TO_DISPLAY.T @ np.diag(scale)
    affine[:3, 3] = _RAS_TO_DISPLAY.T @ translate
    img = nib.as_closest_canonical(nib.Nifti1Image(labels, affine))
    img.header.set_intent("label")
    img.header.set_xyzt_units("mm")
    return img


def _unreadable(path: Path, exc: BaseException) -> ImageFileError:
    return ImageFileError(
        f"cannot read {path.name} as NIfTI ({type(exc).__name__}: {exc}); the file may be "
        "truncated or not a NIfTI file: copy or export it again"
    )
