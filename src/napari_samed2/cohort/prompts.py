"""Prompt files: what a volume's objects were prompted with, to segment it again unattended.

Two formats are read:

* a session saved by :meth:`Session.save <napari_samed2.engine.session.Session.save>` (its
  folder, or the ``session.json`` in it): its prompts only, mask prompts included; its
  memory is not used, so the cohort may run another model or policy on it;
* the prompts format, JSON written by hand, by a script or by :func:`export_prompts`::

      {"format": "napari-samed2-prompts", "version": 1, "shape": [40, 256, 256],
       "objects": {"1": {"12": {"box": [20, 30, 44, 61], "positive": [[32, 45]]},
                         "30": {"negative": [[40, 60]]}},
                   "2": {"18": {"points": [[100, 80], [90, 70]], "labels": [1, 0]}}}}

  Objects are label values (positive integers), their keys slice numbers along the
  volume's slicing axis, counted from 0 in the image as the plugin's readers return it
  (NIfTI turned to the display orientation, see docs/io.md). Per slice: ``box`` as
  ``[row0, col0, row1, col1]``; clicks as ``positive`` / ``negative`` lists of
  ``[row, col]``, or as ``points`` with ``labels`` (1 positive, 0 negative) to keep their
  order. ``shape`` (optional) is the volume's shape: a file made for another volume is
  refused instead of segmenting the wrong thing. Masks need the session format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from napari_samed2.engine.prompts import FramePrompt
from napari_samed2.errors import PromptError, PromptFileError
from napari_samed2.io._files import replacing

PROMPTS_FORMAT = "napari-samed2-prompts"
PROMPTS_VERSION = 1
SESSION_FILE = "session.json"  # what Session.save writes, beside tensors.safetensors
SESSION_TENSORS = "tensors.safetensors"

Prompts = Mapping[int, Mapping[int, FramePrompt]]
"""object id -> slice -> prompt, as :attr:`Session.prompts` holds them."""


@dataclass(frozen=True)
class VolumePrompts:
    """The prompts of one volume and the shape of the volume they were made on, if known."""

    objects: dict[int, dict[int, FramePrompt]]
    shape: tuple[int, ...] | None
    source: Path

    def check(self, shape: tuple[int, ...], frames: int, frame_shape: tuple[int, int]) -> None:
        """Refuse prompts that do not fit the volume (its ``shape``, its number of slices and
        their size), naming the file, before any model work."""
        if self.shape is not None and tuple(self.shape) != tuple(shape):
            raise PromptFileError(
                f"{self.source} was made on a volume of shape {tuple(self.shape)}, not this one's {tuple(shape)}: "
                "is it the prompt file of another image?"
            )
        if not any(self.objects.values()):
            raise PromptFileError(f"{self.source} holds no prompt: add a box or a click for at least one object")
        for object_id, slices in self.objects.items():
            for frame, prompt in slices.items():
                if not 0 <= frame < frames:
                    raise PromptFileError(
                        f"{self.source}: object {object_id} is prompted on slice {frame}, but the volume has "
                        f"{frames} slices (0 to {frames - 1}) along its slicing axis"
                    )
                try:
                    prompt.validate(frame_shape)
                except PromptError as exc:
                    raise PromptFileError(f"{self.source}: object {object_id}, slice {frame}: {exc}") from None


def read_prompts(path: str | Path) -> VolumePrompts:
    """The prompts in ``path``: a saved session (folder or its ``session.json``) or a prompts
    file (see the module's documentation)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / SESSION_FILE
    if not path.is_file():
        raise PromptFileError(f"the prompt file {path} does not exist; check the cohort's prompts entry")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PromptFileError(f"{path} is not a readable JSON file ({exc}); export the prompts again") from None
    if isinstance(state, dict) and state.get("format") == PROMPTS_FORMAT:
        return _from_prompts_file(state, path)
    if isinstance(state, dict) and isinstance(state.get("objects"), dict) and "frame_keys" in state:
        return _from_session(state, path)
    raise PromptFileError(
        f"{path} is neither a prompts file (\"format\": \"{PROMPTS_FORMAT}\") nor a saved session "
        "(Session.save's session.json): see docs/cohort.md for the format"
    )


def write_prompts(path: str | Path, prompts: Prompts, *, shape: tuple[int, ...] | None = None,
                  overwrite: bool = False) -> Path:
    """Write ``prompts`` (object -> slice -> :class:`FramePrompt`) as a prompts file, whole
    or not at all. Clicks keep their order (``points`` + ``labels``). A mask prompt cannot be
    written: save the session instead (its folder is a prompt file too)."""
    path = Path(path).expanduser()
    objects: dict[str, dict[str, dict]] = {}
    for object_id, slices in sorted(prompts.items()):
        rows = {}
        for frame, prompt in sorted(slices.items()):
            if prompt.mask is not None:
                raise PromptFileError(
                    f"object {object_id} is prompted with a mask on slice {frame}, which a prompts file cannot "
                    "hold: save the session (Session.save) and give its folder as the prompts instead"
                )
            row: dict = {}
            if prompt.box is not None:
                row["box"] = [float(v) for v in prompt.box]
            if len(prompt.points):
                row["points"] = prompt.points.astype(float).tolist()
                row["labels"] = prompt.labels.astype(int).tolist()
            rows[str(int(frame))] = row
        if rows:
            objects[str(int(object_id))] = rows
    state = {"format": PROMPTS_FORMAT, "version": PROMPTS_VERSION, "objects": objects}
    if shape is not None:
        state["shape"] = [int(s) for s in shape]
    with replacing(path, overwrite=overwrite) as partial:
        partial.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    return path


def export_prompts(session, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a session's prompts as a prompts file (what the segmentation panel's export
    writes), so that ``cohort segment`` can run them again with any model or policy."""
    with session.lock:
        prompts = {i: dict(slices) for i, slices in session.prompts.items()}
    return write_prompts(path, prompts, shape=session.volume.shape, overwrite=overwrite)


def _from_prompts_file(state: dict, path: Path) -> VolumePrompts:
    version = state.get("version", PROMPTS_VERSION)
    if version != PROMPTS_VERSION:
        raise PromptFileError(
            f"{path} is a version {version} prompts file; this napari-samed2 reads version {PROMPTS_VERSION}: update it"
        )
    objects = _mapping(state.get("objects"), path, "objects")
    read: dict[int, dict[int, FramePrompt]] = {}
    for object_key, slices in objects.items():
        object_id = _number(object_key, path, "object")
        read[object_id] = {}
        for frame_key, row in _mapping(slices, path, f"object {object_id}").items():
            frame = _number(frame_key, path, f"object {object_id}: slice", minimum=0)
            where = f"object {object_id}, slice {frame}"
            row = _mapping(row, path, where)
            unknown = set(row) - {"box", "positive", "negative", "points", "labels"}
            if unknown:
                raise PromptFileError(f"{path}: {where} has unknown keys {sorted(unknown)}; use box, positive, "
                                      "negative (or points and labels)")
            try:
                if "points" in row or "labels" in row:
                    if "positive" in row or "negative" in row:
                        raise PromptError("give clicks either as points + labels or as positive / negative, not both")
                    prompt = FramePrompt(row.get("points", []), row.get("labels", []), box=row.get("box"))
                else:
                    clicks = FramePrompt.clicks(row.get("positive", []), row.get("negative", []))
                    prompt = FramePrompt(clicks.points, clicks.labels, box=row.get("box"))
            except PromptError as exc:
                raise PromptFileError(f"{path}: {where}: {exc}") from None
            if prompt.is_empty:
                raise PromptFileError(f"{path}: {where} has no box and no click; add one or remove the slice")
            read[object_id][frame] = prompt
    return VolumePrompts(read, _shape(state.get("shape"), path), path)


def _from_session(state: dict, path: Path) -> VolumePrompts:
    masks = {}
    tensors = path.parent / SESSION_TENSORS
    wants_masks = any(
        not p.get("points") and not p.get("box")
        for saved in state["objects"].values() if isinstance(saved, dict)
        for p in saved.get("prompts", {}).values() if isinstance(p, dict)
    )
    if wants_masks:
        from safetensors import SafetensorError, safe_open

        try:  # only the masks: the memory beside them (bfloat16) is not needed
            with safe_open(str(tensors), framework="pt") as stored:
                masks = {k: stored.get_tensor(k).numpy() for k in stored.keys() if k.endswith(".prompt_mask")}
        except (OSError, SafetensorError) as exc:
            raise PromptFileError(
                f"{path} has mask prompts, kept in {tensors.name} beside it, which cannot be read ({exc}); "
                "copy the whole session folder"
            ) from None
    read: dict[int, dict[int, FramePrompt]] = {}
    try:
        for object_key, saved in state["objects"].items():
            object_id = int(object_key)
            read[object_id] = {}
            for frame_key, p in saved["prompts"].items():
                frame = int(frame_key)
                mask = masks.get(f"{object_id}.{frame}.prompt_mask")
                read[object_id][frame] = FramePrompt(
                    p["points"], p["labels"], box=tuple(p["box"]) if p.get("box") else None, mask=mask,
                )
    except (KeyError, TypeError, ValueError) as exc:  # PromptError is a ValueError
        raise PromptFileError(f"{path} is a damaged session file ({type(exc).__name__}: {exc}); save it again") from None
    return VolumePrompts(read, _shape(state.get("volume_shape"), path), path)


def _mapping(value, path: Path, what: str) -> dict:
    if not isinstance(value, dict):
        raise PromptFileError(f"{path}: {what} must be a JSON object ({{...}}), not {type(value).__name__}")
    return value


def _number(key: str, path: Path, what: str, minimum: int = 1) -> int:
    try:
        number = int(key)
    except ValueError:
        number = None
    if number is None or str(number) != key.strip() or number < minimum:
        kind = "a label value (1, 2, ...)" if minimum == 1 else "a slice number (0, 1, ...)"
        raise PromptFileError(f"{path}: {what} key {key!r} must be {kind}")
    return number


def _shape(value, path: Path) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and v > 0 for v in value):
        raise PromptFileError(f"{path}: shape must be a list of positive whole numbers, not {value!r}")
    return tuple(value)

