"""Converge-stop for re-propagation: stop recomputing once the new masks agree with the old.

A correction usually changes the masks near it and little further away: after a few frames
the re-run reproduces what was there. :class:`ConvergeStop` says when to stop (``frames``
consecutive recomputed frames whose new mask has IoU >= ``iou`` with the frame's mask from
before the re-run); :meth:`Session.repropagate <napari_samed2.engine.session.Session.repropagate>`
keeps the frames after that point as they were, still stale, so a plain re-run finishes them.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from napari_samed2.engine.memory import MemoryEntry
from napari_samed2.errors import SessionError


@dataclass(frozen=True)
class ConvergeStop:
    """Stop a stale run after ``frames`` consecutive recomputed frames with IoU >= ``iou``
    between their new and their earlier mask."""

    iou: float = 0.98
    frames: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.iou, bool) or not isinstance(self.iou, numbers.Real) or not 0 < self.iou <= 1:
            raise SessionError(f"ConvergeStop iou must be a number in (0, 1], e.g. 0.98; got {self.iou!r}")
        if isinstance(self.frames, bool) or not isinstance(self.frames, numbers.Integral) or self.frames < 1:
            raise SessionError(f"ConvergeStop frames must be a whole number >= 1, e.g. 3; got {self.frames!r}")

    def agrees(self, before: MemoryEntry | None, after: MemoryEntry, threshold: float) -> bool:
        """Whether ``after`` reproduces ``before``'s mask (logits > ``threshold``, at the
        low resolution the entries keep). Two empty masks agree; no earlier entry does not."""
        if before is None or before.low_res_logits is None:
            return False
        return mask_iou(before.low_res_logits > threshold, after.low_res_logits > threshold) >= self.iou


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of two boolean masks; 1.0 when both are empty (they agree)."""
    a, b = a.to(b.device), b
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union
