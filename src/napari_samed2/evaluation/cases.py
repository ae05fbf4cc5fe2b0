"""Evaluation cases: an image, its label volume and the voxel spacing in mm, checked up front.

Every check runs before any model work, so a bad pair stops a run before it has written
anything, with a message that names the file and says what to do.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_samed2.errors import ImageFileError, LabelError, VolumeError
from napari_samed2.io import read_image
from napari_samed2.io._files import NIFTI_SUFFIXES, TIFF_SUFFIXES, split_suffix

ASSUMED_SPACING = (1.0, 1.0, 1.0)
_MM_PER_UNIT = {"mm": 1.0, "µm": 1e-3, "nm": 1e-6, "cm": 10.0, "m": 1000.0}
# Pairs in one folder: "<name>_image.nii.gz" + "<name>_label.nii.gz" (also img/seg/mask spellings).
_IMAGE_TAG = re.compile(r"^(?P<case>.+?)[_-](image|img)$", re.IGNORECASE)
_LABEL_TAGS = ("label", "labels", "seg", "mask", "gt")
_LABEL_NAME = re.compile(rf"^.+[_-]({'|'.join(_LABEL_TAGS)})$", re.IGNORECASE)
# ... or nnU-Net / Medical Segmentation Decathlon folders: same file names in two subfolders.
_SUBFOLDERS = (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs"), ("images", "labels"))


class SpacingAssumedWarning(UserWarning):
    """The image gave no voxel size: NSD is computed with 1 mm voxels."""


@dataclass(frozen=True, eq=False)
class EvalCase:
    """One volume to evaluate: ``image`` and ``label`` of the same 3D shape, ``spacing`` in
    mm along the arrays' axes. ``spacing_assumed`` says the source gave none (1 mm used)."""

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    spacing_assumed: bool = False

    @property
    def object_ids(self) -> list[int]:
        """The label values present (objects 1..n; gaps allowed)."""
        return [int(v) for v in np.unique(self.label) if v != 0]

    @classmethod
    def from_arrays(cls, image, label, spacing: Sequence[float] | None = None, name: str = "case") -> EvalCase:
        assumed = spacing is None
        if assumed:
            warnings.warn(
                f"{name}: no voxel spacing given; NSD assumes {ASSUMED_SPACING} mm. Pass spacing=(z, y, x) in mm.",
                SpacingAssumedWarning, stacklevel=2,
            )
        case = cls(name, np.asarray(image), np.asarray(label),
                   tuple(float(s) for s in (ASSUMED_SPACING if assumed else spacing)), assumed)
        case.check()
        return case

    @classmethod
    def from_files(cls, image_path: str | Path, label_path: str | Path, name: str | None = None) -> EvalCase:
        """Read a NIfTI or TIFF pair with the plugin's readers (same orientation for both)."""
        image, scale, unit = read_volume(image_path, "image")
        label, _, _ = read_volume(label_path, "label")
        name = name or case_name(Path(image_path))
        assumed = unit is None
        if assumed:
            warnings.warn(
                f"{Path(image_path).name} gives no voxel size; NSD assumes {ASSUMED_SPACING} mm",
                SpacingAssumedWarning, stacklevel=2,
            )
            spacing = ASSUMED_SPACING
        else:
            spacing = tuple(float(s) * _MM_PER_UNIT[unit] for s in scale)
        case = cls(name, np.asarray(image), np.asarray(label), spacing, assumed)
        case.check(f"{Path(image_path).name} / {Path(label_path).name}")
        return case

    def check(self, where: str | None = None) -> None:
        """Refuse what would give meaningless numbers, before any model work."""
        where = where or self.name
        if self.image.ndim != 3:
            raise VolumeError(
                f"{where}: the image has shape {self.image.shape}; evaluation needs one 3D volume "
                "(slices, rows, columns): take one time point or channel first"
            )
        if min(self.image.shape) < 1:
            raise VolumeError(f"{where}: the image of shape {self.image.shape} has no voxels")
        if self.label.shape != self.image.shape:
            raise LabelError(
                f"{where}: label shape {self.label.shape} differs from image shape {self.image.shape}; "
                "pair each image with the label volume drawn on it"
            )
        if len(self.spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise VolumeError(f"{where}: voxel spacing {self.spacing} must be three positive numbers (mm)")
        if not np.issubdtype(self.image.dtype, np.number) or not np.isfinite(self.image).all():
            raise VolumeError(f"{where}: the image holds NaN, infinite or non-numeric values; fix or mask them first")
        label = self.label
        if label.dtype.kind == "f" and not np.array_equal(label, np.round(label)):
            raise LabelError(
                f"{where}: the label volume has fractional values (e.g. {label[label != np.round(label)].flat[0]}); "
                "is it an image or a probability map? Give integer labels 0 (background), 1..n (objects)"
            )
        if label.dtype.kind not in "biuf" or (label.dtype.kind in "if" and label.min() < 0):
            raise LabelError(f"{where}: label values must be integers >= 0 (0 background, 1..n objects)")
        if not self.object_ids:
            raise LabelError(f"{where}: the label volume is empty (all zero): there is no object to evaluate")
        for object_id in self.object_ids:
            inside = self.image[label == object_id]
            if inside.min() == inside.max():
                raise LabelError(
                    f"{where}: object {object_id} lies where the image is uniform (value {inside.min()}): "
                    "the image has nothing there to segment. Is this the label of another image?"
                )


def find_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """Image/label pairs in ``folder``: ``imagesTr``+``labelsTr`` (or ``images``+``labels``)
    subfolders holding the same file names, or ``<case>_image.*`` beside ``<case>_label.*``."""
    folder = _folder(folder)
    for images, labels in _SUBFOLDERS:
        if (folder / images).is_dir() and (folder / labels).is_dir():
            pairs = list(_subfolder_images(folder / images, folder / labels, labels_required=True))
            if pairs:
                return pairs
    pairs = list(_tagged_images(folder, labels_required=True))
    if not pairs:
        raise ImageFileError(
            f"no image/label pairs in {folder}: name them <case>_image{NIFTI_SUFFIXES[0]} and "
            f"<case>_label{NIFTI_SUFFIXES[0]}, or put them in images/ and labels/ subfolders with equal names"
        )
    return pairs


def find_images(folder: str | Path) -> list[tuple[Path, Path | None]]:
    """Every image in ``folder`` with its label file, or ``None`` where it has none: the
    layouts of :func:`find_pairs` with labels optional (an ``images`` subfolder alone will
    do), else every NIfTI or TIFF file not named like a label (``*_label``, ``*_seg``...),
    with a label beside it when there is one. A cohort is often images only."""
    folder = _folder(folder)
    for images, labels in _SUBFOLDERS:
        if (folder / images).is_dir():
            found = list(_subfolder_images(folder / images, folder / labels, labels_required=False))
            if found:
                return found
    found = list(_tagged_images(folder, labels_required=False))
    if found:
        return found
    return [
        (path, _label_beside(folder, split_suffix(path)[0], split_suffix(path)[1]))
        for path in sorted(_volume_files(folder))
        if not _LABEL_NAME.match(split_suffix(path)[0])
    ]


def _folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageFileError(f"{folder} is not a folder; give IMAGE LABEL pairs or a folder of them")
    return folder


def _subfolder_images(images: Path, labels: Path, *, labels_required: bool) -> Iterable[tuple[Path, Path | None]]:
    """Images in an ``images`` subfolder, each with the same-named file in ``labels``."""
    for image in sorted(_volume_files(images)):
        label = labels / _strip_channel(image.name)
        if not label.exists():
            if labels_required:
                raise ImageFileError(f"{image} has no label file {label}; add it or remove the image")
            label = None
        yield image, label


def _tagged_images(folder: Path, *, labels_required: bool) -> Iterable[tuple[Path, Path | None]]:
    """``<case>_image.*`` files, each with ``<case>_label.*`` (or _seg, _mask...) beside it."""
    for image in sorted(_volume_files(folder)):
        stem, suffix = split_suffix(image)
        match = _IMAGE_TAG.match(stem)
        if not match:
            continue
        label = _label_beside(folder, match["case"], suffix)
        if label is None and labels_required:
            example = f"{match['case']}_{_LABEL_TAGS[0]}{suffix}"
            raise ImageFileError(f"{image.name} has no label file beside it (e.g. {example})")
        yield image, label


def _label_beside(folder: Path, case: str, suffix: str) -> Path | None:
    candidates = (folder / f"{case}{sep}{tag}{suffix}" for tag in _LABEL_TAGS for sep in "_-")
    return next((c for c in candidates if c.exists()), None)


def pairs_from_arguments(paths: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """The command line's ``IMAGE LABEL [IMAGE LABEL ...]`` or folders, as pairs, in the
    order given."""
    pairs: list[tuple[Path, Path]] = []
    pending: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            if pending:
                raise ImageFileError(f"{pending[0].name} is followed by the folder {path}, not by its label file")
            pairs += find_pairs(path)
        else:
            pending.append(path)
            if len(pending) == 2:
                pairs.append((pending[0], pending[1]))
                pending = []
    if pending:
        raise ImageFileError(
            f"{pending[0].name} has no label file after it; give files in pairs, each image followed by its label"
        )
    if not pairs:
        raise ImageFileError("no cases given: pass IMAGE LABEL pairs or a folder of them")
    return pairs


def read_volume(path: str | Path, role: str = "image") -> tuple[Any, tuple[float, ...], str | None]:
    """One NIfTI or TIFF volume as its reader gives it (lazy for big files), its voxel size
    (napari ``scale``) and the unit of that size (``None`` when the file names none)."""
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{role} file {path} does not exist; check the path")
    layers = read_image(path)
    if len(layers) != 1:
        raise ImageFileError(f"{path.name} holds {len(layers)} layers; give a file with one volume")
    data, kwargs, _ = layers[0]
    unit = kwargs.get("metadata", {}).get("unit")
    if unit is not None and unit not in _MM_PER_UNIT:
        raise ImageFileError(f"{path.name}: unknown length unit {unit!r}; give voxel sizes in mm or µm")
    return data, tuple(kwargs.get("scale", ASSUMED_SPACING)), unit


def _volume_files(folder: Path) -> Iterable[Path]:
    suffixes = NIFTI_SUFFIXES + TIFF_SUFFIXES
    return (p for p in folder.iterdir() if p.is_file() and split_suffix(p)[1] in suffixes)


def _strip_channel(name: str) -> str:
    """nnU-Net names images ``case_0000.nii.gz`` and labels ``case.nii.gz``."""
    return re.sub(r"_\d{4}(\.[^_]+)$", r"\1", name)


def case_name(image_path: Path) -> str:
    """The case an image file is of: ``brain_001`` for ``brain_001_image.nii.gz``."""
    stem = split_suffix(image_path)[0]
    match = _IMAGE_TAG.match(stem)
    return match["case"] if match else stem
