"""Saving a session to a folder and opening it again (:meth:`Session.save`, :meth:`Session.load`).

A saved session is ``session.json`` (prompts, entry metadata, tracking state, policy) beside
``tensors.safetensors`` (memory features, logits, object pointers, fingerprints, prompt
masks), written as a pair by :mod:`.saved` so a failed save keeps the earlier one. Opening
checks the volume frame by frame and the model's signature: memories made on other pixels or
by another model would silently mislead the tracker.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from napari_samed2.engine.library import library_row
from napari_samed2.engine.memory import EntryStatus, MemoryEntry, make_policy
from napari_samed2.engine.prompts import FramePrompt
from napari_samed2.engine.saved import consistent, read_pair, write_pair
from napari_samed2.errors import SavedStateError, VolumeError
from napari_samed2.models.loading import LoadedModel

if TYPE_CHECKING:
    from napari_samed2.engine.session import Session

SESSION_JSON, SESSION_TENSORS = "session.json", "tensors.safetensors"
_SAVED_FIELDS = ("model", "volume_shape", "frame_keys", "policy", "policy_options", "objects")
_ENTRY_TENSORS = ("maskmem_features", "low_res_logits", "obj_ptr", "descriptor")


def save_session(session: Session, folder: str | Path) -> Path:
    """Write ``session`` to ``folder``; see :meth:`Session.save`."""
    tensors: dict[str, torch.Tensor] = {}
    objects = {}
    pos_enc = [session._maskmem_pos_enc]
    for object_id, memory in session.memories.items():
        rows = []
        with session.lock:
            entries = {**memory.entries, **session._encode_pending(memory, pos_enc)}
        for frame, entry in sorted(entries.items()):
            prefix = f"{object_id}.{frame}"
            for name in _ENTRY_TENSORS:
                value = getattr(entry, name)
                if value is not None:
                    tensors[f"{prefix}.{name}"] = value.detach().contiguous().cpu()
            rows.append({
                "frame": frame, "conditioning": entry.conditioning, "reverse": entry.reverse,
                "predicted_iou": entry.predicted_iou, "object_score": entry.object_score,
                "status": entry.status.value,
            })
        prompts = {}
        for frame, prompt in session.prompts[object_id].items():
            prompts[frame] = {"points": prompt.points.tolist(), "labels": prompt.labels.tolist(), "box": prompt.box}
            if prompt.mask is not None:
                tensors[f"{object_id}.{frame}.prompt_mask"] = torch.from_numpy(prompt.mask.copy())
        objects[object_id] = {
            "entries": rows,
            "prompts": prompts,
            "tracked": memory.tracked,
            "stale": sorted(session.stale[object_id]),
            "library_status": {i: e.status.value for i, e in memory.library.items()},
        }
    if pos_enc[0] is not None:
        tensors["maskmem_pos_enc"] = pos_enc[0][-1].contiguous().cpu()
    volume, policy = session.volume, session.policy
    state = {
        "model": session.model.signature,
        "volume_shape": list(volume.shape),
        "frame_keys": [volume.frame_key(f) for f in range(len(volume))],
        "policy": policy.name,
        "policy_options": {k: v for k, v in vars(policy).items() if k != "name"},
        "objects": objects,
    }
    return write_pair(folder, SESSION_JSON, state, SESSION_TENSORS, tensors)


def load_session(session_class: type[Session], folder: str | Path, model: LoadedModel, volume, **options) -> Session:
    """A new ``session_class`` holding what :func:`save_session` wrote; see :meth:`Session.load`."""
    folder = Path(folder)
    state, tensors = read_pair(folder, SESSION_JSON, SESSION_TENSORS, "session", _SAVED_FIELDS)
    session = session_class(model, volume, **options)
    keys = [session.volume.frame_key(f) for f in range(len(session.volume))]
    if keys != state["frame_keys"]:
        raise VolumeError(
            f"{folder} was saved for a different volume (shape {tuple(state['volume_shape'])}); "
            "open the image it was made on"
        )
    if state["model"] != model.signature:
        raise SavedStateError(f"{folder} was saved with another model or settings; load that model first")
    with consistent(folder, "session"):
        if "maskmem_pos_enc" in tensors:
            session._maskmem_pos_enc = [tensors["maskmem_pos_enc"].to(model.device)]
        for key, saved in state["objects"].items():
            object_id = session.add_object(int(key))
            memory = session.memories[object_id]
            for row in saved["entries"]:
                prefix = f"{object_id}.{row['frame']}"
                memory.entries[row["frame"]] = MemoryEntry(
                    object_id=object_id, frame=row["frame"], conditioning=row["conditioning"],
                    reverse=row["reverse"], predicted_iou=row["predicted_iou"], object_score=row["object_score"],
                    status=EntryStatus(row["status"]),
                    descriptor=tensors.get(f"{prefix}.descriptor"),  # fingerprints live on the CPU
                    low_res_logits=tensors[f"{prefix}.low_res_logits"].to(model.device),  # every entry has a mask
                    **{
                        name: tensors[f"{prefix}.{name}"].to(model.device) if f"{prefix}.{name}" in tensors else None
                        for name in ("maskmem_features", "obj_ptr")  # dropped by a bounded bank
                    },
                )
            for frame, prompt in saved["prompts"].items():
                mask = tensors.get(f"{object_id}.{frame}.prompt_mask")
                session.prompts[object_id][int(frame)] = FramePrompt(
                    prompt["points"], prompt["labels"], box=tuple(prompt["box"]) if prompt["box"] else None,
                    mask=None if mask is None else mask.numpy(),
                )
            memory.tracked = {int(f): r for f, r in saved["tracked"].items()}
            session.stale[object_id] = set(saved["stale"])
            for index, status in saved["library_status"].items():
                if session.library is not None and int(index) < len(session.library):
                    row = library_row(object_id, int(index), session.library.entries[int(index)])
                    row.status = EntryStatus(status)
                    memory.library[int(index)] = row
        session.policy = make_policy(state["policy"], **state["policy_options"])
    session.history.clear()  # a loaded session starts with nothing to undo
    return session
