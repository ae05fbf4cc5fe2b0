"""Memory entries (what the engine keeps per object per frame) and memory-selection policies.

sam2 reads past frames in exactly one place, ``SAM2Base._prepare_memory_conditioned_features``,
through the ``output_dict`` it is given. A policy builds that dict as a *view* holding the
entries it chose, so the selection rule is replaceable without copying sam2's code:

* ``stock``: every entry sam2 would read, at its own position, which reproduces SAM-2 exactly;
* ``confidence`` (SAMed-2): prompted frames, plus the most trusted earlier frames, ranked by
  image similarity + confidence, never frames below the IoU / object-score thresholds.

The user's choices apply to both: a *pinned* entry is attended like a prompted frame (SAM-2's
conditioning memory, the way DAM4SAM promotes trusted frames), an *evicted* one never.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Protocol

import torch
import torch.nn.functional as F

from napari_samed2.errors import ObjectError, SessionError


class EntryStatus(str, Enum):
    AUTO = "auto"  # the policy decides
    PINNED = "pinned"  # always attended, like a prompted frame
    EVICTED = "evicted"  # never attended


class EntrySource(str, Enum):
    SESSION = "session"
    LIBRARY = "library"


def confidence_of(predicted_iou: float, object_score: float) -> float:
    """``predicted IoU x sigmoid(object score)``, in [0, 1].

    High only when the model both expects its mask to be accurate and is sure the object is
    on the frame; a confident mask of an absent object (score < 0) is not trusted.
    """
    return float(predicted_iou) / (1.0 + math.exp(-float(object_score)))


def image_descriptor(image_embedding: torch.Tensor) -> torch.Tensor:
    """A small fingerprint of a frame's image embedding (``[1, C, H, W]``) for similarity
    ranking: 4x4 average-pooled, flattened, float16 (8 KiB), where SAMed-2 keeps the full
    256x64x64 embedding (4 MiB) per entry. It stays on the embedding's device: the engine
    brings it to the CPU with the step's other numbers, in one transfer."""
    return F.adaptive_avg_pool2d(image_embedding.float(), 4).flatten().to(torch.float16)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float().flatten().cpu(), b.float().flatten().cpu(), dim=0))


@dataclass(eq=False)
class MemoryEntry:
    """One object on one frame: its mask output and what future frames can attend to.

    The session never changes an entry once it is stored: a pin, an evict or dropped features
    put a changed copy (``dataclasses.replace``, the tensors shared) in its place, so the undo
    history can keep the replaced entry by reference.

    ``maskmem_features`` are stored in bfloat16 as sam2 does (``None`` while a prompt's
    memory is not yet encoded, or after a bounded bank dropped it); ``low_res_logits`` are
    the mask logits at a quarter of the model's resolution, from which full-resolution
    masks are derived on demand.
    """

    object_id: int
    frame: int
    conditioning: bool
    reverse: bool
    predicted_iou: float
    object_score: float
    low_res_logits: torch.Tensor | None
    obj_ptr: torch.Tensor | None
    maskmem_features: torch.Tensor | None = None
    descriptor: torch.Tensor | None = None
    status: EntryStatus = EntryStatus.AUTO
    source: EntrySource = EntrySource.SESSION

    @property
    def confidence(self) -> float:
        return confidence_of(self.predicted_iou, self.object_score)

    @property
    def attendable(self) -> bool:
        return self.maskmem_features is not None and self.status is not EntryStatus.EVICTED

    def as_sam2_output(self, maskmem_pos_enc: list[torch.Tensor]) -> dict:
        """The fields sam2's memory attention reads from a frame output.

        Features go back to float32 here. sam2 relies on ``torch.cat`` promoting them next to
        float32 object pointers (the same values), but when a frame has no pointer (an object
        prompted only on a later frame) stock sam2 fails on the CPU with a dtype error.
        """
        return {
            "maskmem_features": self.maskmem_features.float(),
            "maskmem_pos_enc": maskmem_pos_enc,
            "obj_ptr": self.obj_ptr,
        }


def object_id_number(object_id) -> int:
    """An object id as an int: a positive whole number, the object's value in a label volume."""
    if isinstance(object_id, bool) or not isinstance(object_id, numbers.Integral) or object_id < 1:
        raise ObjectError(
            f"object ids are positive whole numbers (their label value), got {object_id!r}; "
            "use the id add_object() returned"
        )
    return int(object_id)


@dataclass
class ObjectMemory:
    """All entries of one object, plus prompt outputs whose memory is not encoded yet.

    ``pending`` mirrors sam2's temporary outputs: a click's result is shown at once, but
    enters memory only when propagation starts, so several clicks on one frame make one
    memory. ``tracked`` records the direction each frame was last propagated in.
    """

    object_id: int
    entries: dict[int, MemoryEntry] = field(default_factory=dict)
    pending: dict[int, MemoryEntry] = field(default_factory=dict)
    tracked: dict[int, bool] = field(default_factory=dict)  # frame -> tracked in reverse
    library: dict[int, MemoryEntry] = field(default_factory=dict)  # library index -> entry

    def latest(self, frame: int) -> MemoryEntry | None:
        """The newest output on ``frame``: a pending click result first, then the stored one."""
        return self.pending.get(frame) or self.entries.get(frame)


@dataclass(frozen=True)
class MemoryView:
    """The frames a policy lets sam2 see for one step, keyed as sam2's ``output_dict``.

    Keys are the positions sam2 reads them at; a policy may place an entry at a position
    other than its own frame (the confidence policy fills the memory slots that way).
    """

    cond_frame_outputs: dict[int, MemoryEntry]
    non_cond_frame_outputs: dict[int, MemoryEntry]

    def to_sam2(self, maskmem_pos_enc: list[torch.Tensor]) -> dict:
        return {
            "cond_frame_outputs": {f: e.as_sam2_output(maskmem_pos_enc) for f, e in self.cond_frame_outputs.items()},
            "non_cond_frame_outputs": {
                f: e.as_sam2_output(maskmem_pos_enc) for f, e in self.non_cond_frame_outputs.items()
            },
        }

    def attended_frames(self, frame: int, reverse: bool, sam: torch.nn.Module) -> list[int]:
        """The frames (of the entries) whose mask memory sam2 attends to for ``frame``."""
        step = 1 if reverse else -1
        slots = range(1, sam.num_maskmem)
        picked = [e.frame for e in self.cond_frame_outputs.values()]
        picked += [
            self.non_cond_frame_outputs[frame + step * t].frame
            for t in slots
            if frame + step * t in self.non_cond_frame_outputs
        ]
        return sorted(set(picked))


class MemoryPolicy(Protocol):
    name: str

    def view(self, memory: ObjectMemory, frame: int, reverse: bool, sam: torch.nn.Module,
             descriptor: torch.Tensor | None = None) -> MemoryView:
        """Entries sam2 may attend to when segmenting ``frame`` of ``memory``'s object."""


def reach(sam: torch.nn.Module) -> int:
    """How far (in frames) sam2 looks back for non-conditioning memories and object pointers."""
    stride = max(1, int(getattr(sam, "memory_temporal_stride_for_eval", 1)))
    return max(sam.num_maskmem * stride, sam.max_obj_ptrs_in_encoder)


def _conditioning(memory: ObjectMemory) -> dict[int, MemoryEntry]:
    """Prompted and pinned entries: always attended (unless evicted)."""
    return {
        f: e for f, e in memory.entries.items()
        if e.attendable and (e.conditioning or e.status is EntryStatus.PINNED)
    }


class StockPolicy:
    """SAM-2's own rule: every conditioning frame, plus the nearest earlier frames.

    Only entries within sam2's reach are put in the view; sam2 would not read the others,
    so its choice, and the masks, are unchanged. Evicted entries leave a gap, as a frame
    never segmented would.
    """

    name = "stock"

    def view(self, memory, frame, reverse, sam, descriptor=None) -> MemoryView:
        window = reach(sam)
        cond = _conditioning(memory)
        non_cond = {
            f: e for f, e in memory.entries.items()
            if f not in cond and e.attendable and not e.conditioning and 0 < abs(f - frame) <= window
        }
        return MemoryView(cond, non_cond)


@dataclass
class ConfidencePolicy:
    """SAMed-2's confidence-driven memory: trust only frames the model was sure about.

    Candidates are earlier frames (in the direction of travel) of the object with predicted
    IoU >= ``min_iou`` and object score > ``min_object_score``. When there are more than
    sam2's memory slots, they are ranked as in SAMed-2 by ``clamp(cos, 0) + confidence``:
    similarity of their image fingerprint to the current frame's, plus confidence. The best
    go into the slots, the nearest in time into the most recent slot; the next best supply
    the extra object pointers sam2 reads. ``capacity`` bounds how many entries per object
    keep their memory features: beyond it the least confident automatic ones are dropped.
    """

    min_iou: float = 0.5
    min_object_score: float = 0.0
    capacity: int = 64
    name: str = field(default="confidence", init=False)

    def trusted(self, entry: MemoryEntry) -> bool:
        return entry.predicted_iou >= self.min_iou and entry.object_score > self.min_object_score

    def view(self, memory, frame, reverse, sam, descriptor=None) -> MemoryView:
        if descriptor is not None:
            descriptor = descriptor.cpu()  # once, not once per candidate
        cond = _conditioning(memory)
        earlier = (lambda f: f > frame) if reverse else (lambda f: f < frame)
        candidates = [
            e for f, e in memory.entries.items()
            if f not in cond and e.attendable and not e.conditioning and earlier(f) and self.trusted(e)
        ]

        def score(entry: MemoryEntry) -> float:
            similarity = 0.0
            if descriptor is not None and entry.descriptor is not None:
                similarity = max(cosine(descriptor, entry.descriptor), 0.0)
            return similarity + entry.confidence

        ranked = sorted(candidates, key=lambda e: (-score(e), abs(e.frame - frame)))
        chosen = ranked[: sam.max_obj_ptrs_in_encoder - 1]
        slots = sam.num_maskmem - 1
        masks = sorted(chosen[:slots], key=lambda e: abs(e.frame - frame))
        pointers = sorted(chosen[slots:], key=lambda e: abs(e.frame - frame))
        step = 1 if reverse else -1
        non_cond = {frame + step * (t + 1): e for t, e in enumerate(masks + pointers)}
        return MemoryView(cond, non_cond)

    def bound(self, memory: ObjectMemory) -> list[MemoryEntry]:
        """Drop the memory features of the least confident automatic entries beyond capacity.

        Each such entry is replaced by a copy without features (entries are never changed in
        place, so that undo can keep the old one); returns the entries replaced."""
        keep = [e for e in memory.entries.values() if e.maskmem_features is not None]
        droppable = sorted(
            (e for e in keep if e.status is EntryStatus.AUTO and not e.conditioning),
            key=lambda e: e.confidence,
        )
        dropped = droppable[: max(0, len(keep) - self.capacity)]
        for entry in dropped:
            memory.entries[entry.frame] = replace(entry, maskmem_features=None, obj_ptr=None)
        return dropped


POLICIES: dict[str, type] = {"stock": StockPolicy, "confidence": ConfidencePolicy}


def make_policy(policy: str | MemoryPolicy, **options) -> MemoryPolicy:
    if not isinstance(policy, str):
        if not callable(getattr(policy, "view", None)):
            raise SessionError(f"policy must be one of {sorted(POLICIES)} or a memory policy object, got {policy!r}")
        return policy
    try:
        return POLICIES[policy](**options)
    except KeyError:
        raise SessionError(f"unknown memory policy {policy!r}; choose one of {sorted(POLICIES)}") from None
    except TypeError as exc:
        raise SessionError(f"policy {policy!r} does not take {sorted(options)}: {exc}") from None
