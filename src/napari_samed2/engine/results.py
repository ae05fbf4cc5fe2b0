"""What the engine hands back for a frame: per-object masks at the volume's resolution."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ObjectResult:
    object_id: int
    mask: np.ndarray  # bool (H, W), the frame's own resolution
    predicted_iou: float
    object_score: float  # logit: > 0 means the model sees the object on this frame

    @property
    def present(self) -> bool:
        return self.object_score > 0


@dataclass(frozen=True)
class FrameResult:
    frame: int
    objects: dict[int, ObjectResult]

    def labels(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """One label image: each object's id on its pixels; where objects overlap, the later id wins."""
        if shape is None:
            if not self.objects:
                raise ValueError("no objects on this frame; pass the frame shape")
            shape = next(iter(self.objects.values())).mask.shape
        out = np.zeros(shape, dtype=np.uint16)
        for object_id, result in sorted(self.objects.items()):
            out[result.mask] = object_id
        return out
