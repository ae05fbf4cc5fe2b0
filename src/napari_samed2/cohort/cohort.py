"""A cohort: the volumes to embed, segment or evaluate, each with optional label and prompts.

A cohort is read from a folder or from a CSV file. Nothing is opened here beyond listing
files: a file that is missing or damaged is one volume's failure, reported in the run's
CSV, not a reason to stop the other hundred volumes. What makes the whole cohort unusable
(no images, a CSV without an ``image`` column, two volumes of one name) is refused at once.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from napari_samed2.errors import CohortError, ImageFileError
from napari_samed2.evaluation.cases import case_name, find_images

CSV_COLUMNS = ("image", "label", "prompts", "name")
# Prompt files found beside an image (flat folder) or in a prompts/ subfolder, by case name.
PROMPT_NAMES = ("{case}.json", "{case}_prompts.json", "{case}_session", "{case}")
_CHANNEL = re.compile(r"_\d{4}$")  # nnU-Net's channel suffix: case_0000.nii.gz


@dataclass(frozen=True)
class CohortVolume:
    """One volume: its image file and, when the cohort has them, its label file (for
    ``evaluate``) and its prompt file (for ``segment``). ``name`` is unique in the cohort and
    names every output of the volume."""

    name: str
    image: Path
    label: Path | None = None
    prompts: Path | None = None


@dataclass(frozen=True)
class Cohort:
    """The volumes of a cohort in a fixed order, and where they were listed."""

    volumes: tuple[CohortVolume, ...]
    source: Path

    def __post_init__(self) -> None:
        if not self.volumes:
            raise CohortError(f"{self.source} lists no volumes: add NIfTI or TIFF images")
        seen: dict[str, Path] = {}
        for volume in self.volumes:
            if not volume.name or "/" in volume.name or volume.name in (".", ".."):
                raise CohortError(f"{volume.image}: {volume.name!r} cannot name output files; give another name")
            if volume.name in seen:
                raise CohortError(
                    f"two volumes are named {volume.name!r} ({seen[volume.name]} and {volume.image}), and "
                    "the name names their outputs: rename a file, or give a name column in the CSV"
                )
            seen[volume.name] = volume.image

    def __len__(self) -> int:
        return len(self.volumes)

    def __iter__(self) -> Iterator[CohortVolume]:
        return iter(self.volumes)


def read_cohort(path: str | Path) -> Cohort:
    """A cohort from a folder or a ``.csv`` file.

    CSV: a header row with an ``image`` column and optional ``label``, ``prompts`` and
    ``name`` columns; relative paths are relative to the CSV's folder, an empty cell means
    none. Folder: the layouts of :func:`~napari_samed2.evaluation.cases.find_images`
    (``images/`` + optional ``labels/``, ``<case>_image`` + ``<case>_label``, or plain image
    files), with prompt files found by case name (see :func:`find_prompts`).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return _from_folder(path)
    if path.suffix.lower() == ".csv":
        return _from_csv(path)
    if not path.exists():
        raise CohortError(f"the cohort {path} does not exist: give a folder of images or a CSV file listing them")
    raise CohortError(f"{path.name} is not a cohort: give a folder of images or a .csv file with an image column")


def volume_name(image: Path) -> str:
    """``brain_001`` for ``brain_001_image.nii.gz``, ``liver_003_0000.nii.gz`` or ``brain_001.tif``:
    the evaluation's case name, without nnU-Net's channel suffix (which labels do not have)."""
    return _CHANNEL.sub("", case_name(image))


def find_prompts(folder: Path, case: str) -> Path | None:
    """The prompt file of ``case`` in ``folder`` or its ``prompts/`` subfolder:
    ``<case>.json``, ``<case>_prompts.json``, or a folder ``<case>_session/`` or ``<case>/``
    written by :meth:`Session.save <napari_samed2.engine.session.Session.save>`."""
    for where in (folder / "prompts", folder):
        for pattern in PROMPT_NAMES:
            candidate = where / pattern.format(case=case)
            if candidate.is_file() and candidate.suffix == ".json":
                return candidate
            if candidate.is_dir() and (candidate / "session.json").is_file():
                return candidate
    return None


def _from_folder(folder: Path) -> Cohort:
    try:
        found = find_images(folder)
    except ImageFileError as exc:
        raise CohortError(str(exc)) from None
    if not found:
        raise CohortError(
            f"no images in {folder}: put NIfTI or TIFF files there (or in an images/ subfolder), or list them in a CSV"
        )
    volumes = []
    for image, label in found:
        name = volume_name(image)
        volumes.append(CohortVolume(name, image, label, find_prompts(folder, name)))
    return Cohort(tuple(volumes), folder)


def _from_csv(path: Path) -> Cohort:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = [c.strip().lower() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CohortError(f"cannot read the cohort file {path} ({exc}); give a UTF-8 CSV file") from None
    if "image" not in columns:
        raise CohortError(
            f"{path.name} has no 'image' column (columns: {', '.join(columns) or 'none'}); give a header row "
            f"with image and optionally {', '.join(CSV_COLUMNS[1:])}"
        )
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown:
        raise CohortError(f"{path.name}: unknown columns {unknown}; the columns are {', '.join(CSV_COLUMNS)}")
    volumes = []
    for number, row in enumerate(rows, start=2):
        cells = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        if not cells.get("image"):
            raise CohortError(f"{path.name}, line {number}: the image cell is empty; give the image file")
        image = _resolve(path.parent, cells["image"])
        volumes.append(CohortVolume(
            cells.get("name") or volume_name(image),
            image,
            _resolve(path.parent, cells["label"]) if cells.get("label") else None,
            _resolve(path.parent, cells["prompts"]) if cells.get("prompts") else None,
        ))
    return Cohort(tuple(volumes), path)


def _resolve(base: Path, cell: str) -> Path:
    path = Path(cell).expanduser()
    return path if path.is_absolute() else base / path
