"""Session folders as the Segmentation panel saves them, and where its autosaves go. No Qt here.

A session folder holds what :meth:`~napari_samed2.engine.Session.save` writes
(``session.json`` and ``tensors.safetensors``: objects, prompts, memory entries with their pin /
evict status), the output Labels layer (``labels.npz``, slices painted by hand included) and
``panel.json``: the image it was made on (name, file, slicing axis and a fingerprint of the
slices' content), the model (name, settings, signature), which slices hold the plugin's own
results, when it was saved, and a summary for the resume offer. Nothing is unpickled. A folder
that ``Session.save`` wrote from a script opens too (its labels are drawn from the session).

Autosaves go next to the image file (``scan.nii.gz`` -> ``scan.nii.gz.samed2/``) when the image
came from a file in a folder that can be written, else under the user's data directory
(``NAPARI_SAMED2_DATA_DIR`` overrides it). There, ``<fingerprint>-<model>-<signature>/`` holds
one folder per segmentation, named by when it started; the newest :data:`AUTOSAVES_KEPT` stay.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from napari_samed2.engine import Session, Volume
from napari_samed2.engine.labels import LabelVolume
from napari_samed2.errors import OutputFolderError, SamEd2Error, SavedStateError, SessionMismatchError, VolumeError
from napari_samed2.io.intensity import WINDOW_CHOICES, IntensityWindow

SESSION_FILES = ("tensors.safetensors", "session.json")  # what Session.save writes
LABELS_FILE = "labels.npz"
META_FILE = "panel.json"
DATA_DIR_ENV = "NAPARI_SAMED2_DATA_DIR"
AUTOSAVES_KEPT = 5  # per image and model; older autosaves are deleted
FORMAT = 1


# where ------------------------------------------------------------------------------------
def volume_fingerprint(volume: Volume) -> str:
    """A digest of the slices as a session sees them: shape, dtype, slicing axis, fixed
    indices and every voxel. The same image opened again has the same fingerprint."""
    digest = hashlib.blake2b(digest_size=16)
    layout = (volume.shape, str(np.dtype(volume.data.dtype)), volume.rgb, volume.axis, sorted(volume.fixed.items()))
    digest.update(repr(layout).encode())
    for frame in range(len(volume)):
        digest.update(np.ascontiguousarray(volume.raw_frame(frame)).data)
    return digest.hexdigest()


def user_data_dir() -> Path:
    """The plugin's folder in the user's data directory (``NAPARI_SAMED2_DATA_DIR`` overrides it)."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_data_dir as data_dir  # a napari dependency

    return Path(data_dir("napari-samed2", appauthor=False))


def _beside(image_path: str | os.PathLike | None) -> Path | None:
    if not image_path:
        return None
    path = Path(image_path)
    return path.parent / f"{path.name}.samed2" if path.exists() else None


def autosave_roots(image_path: str | os.PathLike | None) -> list[Path]:
    """Where autosaves of an image may go, preferred first: next to its file (when it came from
    a file in a folder that can be written), then the user's data directory."""
    beside = _beside(image_path)
    roots = [beside] if beside is not None and os.access(beside.parent, os.W_OK) else []
    return [*roots, user_data_dir() / "sessions"]


def model_key(model) -> str:
    """The model part of an autosave folder's name: its name and a short signature (weights
    file, image size, precision), so other settings never overwrite each other's autosaves."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", model.spec.name)
    return f"{name}-{model.signature[:8]}"


def autosave_folders(image_path, fingerprint: str, model, started: datetime) -> list[Path]:
    """The folders one segmentation autosaves to, preferred first (see :func:`autosave_roots`)."""
    name = started.strftime("%Y%m%d-%H%M%S-%f")
    return [root / f"{fingerprint[:16]}-{model_key(model)}" / name for root in autosave_roots(image_path)]


def find_autosaves(image_path, fingerprint: str) -> list[SavedSession]:
    """Autosaves of this image content (any model), newest first; unreadable ones are skipped."""
    roots = [r for r in (_beside(image_path), user_data_dir() / "sessions") if r is not None]
    found: dict[Path, SavedSession] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for meta_file in root.glob(f"{fingerprint[:16]}-*/*/{META_FILE}"):
            try:
                saved = read_saved(meta_file.parent)
            except SavedStateError:
                continue
            if saved.image.get("fingerprint") == fingerprint:
                found[saved.folder.resolve()] = saved
    return sorted(found.values(), key=lambda s: s.meta.get("saved_at", ""), reverse=True)


def prune_autosaves(folder: Path, keep: int = AUTOSAVES_KEPT) -> list[Path]:
    """Delete all but the ``keep`` newest autosaves beside ``folder`` (never ``folder`` itself)."""
    group = Path(folder).parent
    sessions = [p for p in group.iterdir() if p.is_dir() and (p / META_FILE).is_file()]
    sessions.sort(key=lambda p: (p / META_FILE).stat().st_mtime, reverse=True)
    removed = []
    for old in sessions[keep:]:
        if old.resolve() != Path(folder).resolve():
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    return removed


# writing ----------------------------------------------------------------------------------
def describe_model(model) -> dict:
    return {
        "name": model.spec.name,
        "title": model.spec.title,
        "image_size": model.image_size,
        "dtype": str(model.dtype).removeprefix("torch."),
        "checkpoint": str(model.checkpoint) if model.checkpoint is not None else None,
        "signature": model.signature,
    }


def window_record(choice: str, volume: Volume) -> dict:
    """The intensity window as saved: its choice, and its bounds unless the volume's own
    percentiles (``auto``, the same again when the image is opened again)."""
    if choice == "auto":
        return {"choice": "auto"}
    window = volume.normalise
    return {"choice": choice, "low": window.low, "high": window.high}


def session_meta(session: Session, labels: LabelVolume | None, context: dict) -> dict:
    """``panel.json``'s content. ``context``: ``image_name``, ``image_path``, ``fingerprint``,
    ``window`` (the :data:`~napari_samed2.io.WINDOW_CHOICES` key the volume was windowed by)
    and ``library`` (the library folder, if any), what the session itself does not know."""
    volume = session.volume
    segmented = {f for memory in session.memories.values() for f in (*memory.entries, *memory.pending) if f >= 0}
    library = session.library
    return {
        "format": FORMAT,
        "saved_at": datetime.now().isoformat(timespec="seconds"),
        "image": {
            "name": context.get("image_name"),
            "path": os.fspath(context["image_path"]) if context.get("image_path") else None,
            "shape": list(volume.shape),
            "axis": volume.axis,
            "fixed": {str(k): v for k, v in volume.fixed.items()},
            "rgb": volume.rgb,
            "fingerprint": context.get("fingerprint"),
            "window": window_record(context.get("window", "auto"), volume),
        },
        "model": describe_model(session.model),
        "objects": session.object_ids,
        "prompted": {str(o): sorted(frames) for o, frames in session.prompts.items()},
        "segmented": len(segmented),
        "written": labels.written_frames() if labels is not None else [],
        "library": None if library is None else {
            "folder": os.fspath(context["library"]) if context.get("library") else None,
            "entries": len(library),
        },
    }


def write_session_folder(folder: str | os.PathLike, session: Session, labels: LabelVolume, context: dict) -> Path:
    """Save ``session`` and its output ``labels`` into ``folder`` (created if needed). The files
    are written to a temporary folder inside it first and moved into place one by one, the
    panel's JSON last, so a save that fails leaves the earlier save as it was."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder))
    except OSError as exc:
        raise OutputFolderError(
            f"cannot write to {folder} ({exc.strerror or exc}): choose a folder you can write to"
        ) from exc
    try:
        with session.lock:  # a consistent picture, also while a propagation waits to go on
            session.save(partial)
            meta = session_meta(session, labels, context)
        with open(partial / LABELS_FILE, "wb") as file:
            np.savez_compressed(file, labels=labels.data)
        (partial / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        for name in (*SESSION_FILES, LABELS_FILE, META_FILE):
            os.replace(partial / name, folder / name)
    except OSError as exc:
        raise OutputFolderError(
            f"could not save the session in {folder} ({exc.strerror or exc}); an earlier save there is "
            "unchanged. Free some space or choose a folder you can write to."
        ) from exc
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


# reading ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SavedSession:
    """A session folder found on disk: where it is and its ``panel.json`` (empty for a folder
    that ``Session.save`` wrote alone)."""

    folder: Path
    meta: dict = field(default_factory=dict)

    @property
    def image(self) -> dict:
        return self.meta.get("image") or {}

    @property
    def model(self) -> dict:
        return self.meta.get("model") or {}

    @property
    def saved_at(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self.meta["saved_at"])
        except (KeyError, TypeError, ValueError):
            return None

    def window(self) -> tuple[str, IntensityWindow | None]:
        """The choice and window the session was segmented with (``auto`` for saves that
        predate the choice): the resumed session must see the image as the saved one did."""
        record = self.image.get("window") or {"choice": "auto"}
        choice = record.get("choice") if isinstance(record, dict) else None
        if choice == "auto":
            return "auto", None
        try:
            if choice not in WINDOW_CHOICES:
                raise VolumeError(f"unknown choice {choice!r}")
            return choice, IntensityWindow(record.get("low"), record.get("high"))
        except VolumeError as exc:
            raise SavedStateError(
                f"the intensity window saved in {self.folder / META_FILE} cannot be used ({exc}): the file was "
                "edited or damaged. Open another save (an autosave, or a backup of the folder)."
            ) from exc

    def model_title(self) -> str:
        model = self.model
        if not model:
            return "another model"
        return f"{model.get('title', model.get('name'))} ({model.get('image_size')} px, {model.get('dtype')})"

    def describe(self) -> str:
        """What it holds, for the resume offer: objects, slices, when and with which model."""
        objects = self.meta.get("objects", [])
        prompted = sorted({int(f) for frames in (self.meta.get("prompted") or {}).values() for f in frames})
        parts = [f"{len(objects)} object{'' if len(objects) == 1 else 's'}"]
        parts.append(f"prompts on slice{'' if len(prompted) == 1 else 's'} {_spans(prompted)}" if prompted else "no prompts")
        segmented = self.meta.get("segmented", 0)
        parts.append(f"{segmented} slice{'' if segmented == 1 else 's'} segmented")
        when = self.saved_at.strftime("%Y-%m-%d %H:%M") if self.saved_at else "at an unknown time"
        return f"{', '.join(parts)}; saved {when} with {self.model_title()}"


def _spans(frames: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    spans: list[list[int]] = []
    for f in frames:
        if spans and f == spans[-1][-1] + 1:
            spans[-1].append(f)
        else:
            spans.append([f])
    return ", ".join(str(s[0]) if len(s) == 1 else f"{s[0]}-{s[-1]}" for s in spans)


def read_saved(folder: str | os.PathLike) -> SavedSession:
    """The folder as a saved session, checked to hold the session's files."""
    folder = Path(folder)
    missing = [name for name in SESSION_FILES if not (folder / name).is_file()]
    if missing:
        raise SavedStateError(
            f"{folder} is not a saved session: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            "missing. Choose the folder the session was saved to (it holds session.json)."
        )
    meta: dict = {}
    if (folder / META_FILE).is_file():
        meta = _read_json(folder / META_FILE)
    return SavedSession(folder, meta)


def _read_json(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _damaged(path, exc) from exc
    if not isinstance(document, dict):
        raise _damaged(path, "not a JSON object")
    return document


def _damaged(path: Path, reason) -> SavedStateError:
    return SavedStateError(
        f"{path} cannot be read ({reason}): the file is truncated or was edited, so the session in "
        f"{path.parent} cannot be opened. Open another save (an autosave, or a backup of the folder)."
    )


def check_fits(saved: SavedSession, volume: Volume, fingerprint: str, model) -> None:
    """Refuse (:class:`SessionMismatchError`) a session saved for another image or model."""
    engine = _read_json(saved.folder / "session.json")
    image, name = saved.image, saved.image.get("name")
    shape = image.get("shape") or engine.get("volume_shape")
    made_for = f"the image {name!r}" if name else "another image"
    if shape is not None and tuple(shape) != tuple(volume.shape):
        raise SessionMismatchError(
            f"{saved.folder} was saved for {made_for} of shape {tuple(shape)}, and this image has shape "
            f"{tuple(volume.shape)}: choose the image it was made on in Layer, then open it again"
        )
    if image.get("fingerprint") and image["fingerprint"] != fingerprint:
        raise SessionMismatchError(
            f"{saved.folder} was saved for {made_for} (slicing axis {image.get('axis')}), whose content differs "
            "from this image's: choose the image it was made on in Layer, then open it again"
        )
    signature = saved.model.get("signature") or engine.get("model")
    if signature and signature != model.signature:
        raise SessionMismatchError(
            f"{saved.folder} was saved with {saved.model_title()}, not the loaded {model.spec.title} "
            f"({model.image_size} px, {str(model.dtype).removeprefix('torch.')}); its memory only works with "
            "the model it was made with. Load that model (same file, image size and precision) in the Model "
            "panel, then open the session again"
        )


@dataclass
class LoadedSession:
    """A session read back, with its output labels (in the image's spatial layout) and the
    slices that hold the plugin's own results."""

    session: Session
    labels: np.ndarray
    written: list[int]
    saved: SavedSession


def load_session_folder(folder, model, volume: Volume, fingerprint: str, **options) -> LoadedSession:
    """Read a session folder for ``volume`` and ``model`` (``options`` go to ``Session.load``).
    Raises :class:`SessionMismatchError` for another image or model and
    :class:`SavedStateError` for a damaged folder; nothing else is changed meanwhile."""
    saved = read_saved(folder)
    check_fits(saved, volume, fingerprint, model)
    folder = saved.folder
    try:
        session = Session.load(folder, model, volume, **options)
    except VolumeError as exc:  # frame by frame, the engine's own check
        raise SessionMismatchError(f"{folder} was saved for another image: {exc}") from exc
    except SamEd2Error:
        raise
    except Exception as exc:  # a truncated or edited file: safetensors', json's or a KeyError's message
        raise SavedStateError(
            f"the session in {folder} cannot be loaded ({type(exc).__name__}: {exc}): a file is truncated or "
            "was edited. Open another save (an autosave, or a backup of the folder)."
        ) from exc
    path = folder / LABELS_FILE
    if not path.is_file():  # saved from a script: the labels are the session's results
        labels = np.zeros(volume.spatial_shape, np.uint16)
        written = []
        for frame in range(len(volume)):
            result = session.result(frame)
            if result.objects:
                labels[volume.frame_index(frame)] = result.labels(volume.frame_shape)
                written.append(frame)
        return LoadedSession(session, labels, written, saved)
    try:
        with np.load(path, allow_pickle=False) as archive:
            labels = archive["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise _damaged(path, exc) from exc
    if labels.shape != tuple(volume.spatial_shape) or not np.issubdtype(labels.dtype, np.integer):
        raise _damaged(path, f"labels of shape {labels.shape} and dtype {labels.dtype}, not {volume.spatial_shape}")
    written = sorted({int(f) for f in saved.meta.get("written", []) if 0 <= int(f) < len(volume)})
    return LoadedSession(session, np.array(labels), written, saved)
