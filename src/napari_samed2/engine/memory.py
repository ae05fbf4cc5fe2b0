"""Memory entries (what the engine keeps per object per frame) and memory-selection policies.

sam2 reads past frames in exactly one place, ``SAM2Base._prepare_memory_conditioned_features``,
through the ``output_dict`` it is given. A policy builds that dict as a *view* holding the
entries it chose, so the selection rule is replaceable without copying sam2's code. The
stock policy shows sam2 every entry it could read, which reproduces stock SAM-2 exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import torch


class EntryStatus(str, Enum):
    AUTO = "auto"  # the policy decides
    PINNED = "pinned"  # always used as memory for its object
    EVICTED = "evicted"  # never used as memory


class EntrySource(str, Enum):
    SESSION = "session"
    LIBRARY = "library"


@dataclass(eq=False)
class MemoryEntry:
    """One object on one frame: its mask output and what future frames can attend to.

    ``maskmem_features`` are stored in bfloat16 as sam2 does (``None`` while a prompt's
    memory is not yet encoded); ``low_res_logits`` are the mask logits at a quarter of the
    model's resolution, from which full-resolution masks are derived on demand.
    """

    object_id: int
    frame: int
    conditioning: bool
    reverse: bool
    predicted_iou: float
    object_score: float
    low_res_logits: torch.Tensor
    obj_ptr: torch.Tensor
    maskmem_features: torch.Tensor | None = None
    status: EntryStatus = EntryStatus.AUTO
    source: EntrySource = EntrySource.SESSION

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

    @property
    def conditioning_frames(self) -> list[int]:
        return sorted(f for f, e in self.entries.items() if e.conditioning)

    def latest(self, frame: int) -> MemoryEntry | None:
        """The newest output on ``frame``: a pending click result first, then the stored one."""
        return self.pending.get(frame) or self.entries.get(frame)


@dataclass(frozen=True)
class MemoryView:
    """The frames a policy lets sam2 see for one step, as sam2's ``output_dict``."""

    cond_frame_outputs: dict[int, MemoryEntry]
    non_cond_frame_outputs: dict[int, MemoryEntry]

    def to_sam2(self, maskmem_pos_enc: list[torch.Tensor]) -> dict:
        return {
            "cond_frame_outputs": {f: e.as_sam2_output(maskmem_pos_enc) for f, e in self.cond_frame_outputs.items()},
            "non_cond_frame_outputs": {
                f: e.as_sam2_output(maskmem_pos_enc) for f, e in self.non_cond_frame_outputs.items()
            },
        }


class MemoryPolicy(Protocol):
    name: str

    def view(self, memory: ObjectMemory, frame: int, reverse: bool, sam: torch.nn.Module) -> MemoryView:
        """Entries sam2 may attend to when segmenting ``frame`` of ``memory``'s object."""


def reach(sam: torch.nn.Module) -> int:
    """How far (in frames) sam2 looks back for non-conditioning memories and object pointers."""
    stride = max(1, int(getattr(sam, "memory_temporal_stride_for_eval", 1)))
    return max(sam.num_maskmem * stride, sam.max_obj_ptrs_in_encoder)


class StockPolicy:
    """SAM-2's own rule: every conditioning frame, plus the nearest earlier frames.

    Only entries within sam2's reach are put in the view; sam2 would not read the others,
    so its choice, and the masks, are unchanged.
    """

    name = "stock"

    def view(self, memory: ObjectMemory, frame: int, reverse: bool, sam: torch.nn.Module) -> MemoryView:
        window = reach(sam)
        cond, non_cond = {}, {}
        for f, entry in memory.entries.items():
            if entry.maskmem_features is None:
                continue
            if entry.conditioning:
                cond[f] = entry
            elif 0 < abs(f - frame) <= window:
                non_cond[f] = entry
        return MemoryView(cond, non_cond)


POLICIES: dict[str, type] = {"stock": StockPolicy}


def make_policy(policy: str | MemoryPolicy) -> MemoryPolicy:
    if not isinstance(policy, str):
        return policy
    try:
        return POLICIES[policy]()
    except KeyError:
        raise ValueError(f"unknown memory policy {policy!r}; choose one of {sorted(POLICIES)}") from None
