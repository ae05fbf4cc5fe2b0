"""Prompts on one frame for one object, in the frame's own pixel coordinates.

Coordinates are ``(row, column)``, the order numpy and napari index an image in; the engine
converts them to sam2's ``(x, y)`` at the model's resolution. The GUI converts napari world
coordinates (scale, translate) to these pixels before calling the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from napari_samed2.errors import PromptError

POSITIVE, NEGATIVE = 1, 0
_BOX_CORNER_LABELS = (2, 3)  # how SAM-2 was trained to read a box: two labelled corner points


@dataclass(frozen=True, eq=False)
class FramePrompt:
    """Positive/negative clicks and/or a box, or a mask, for one object on one frame.

    ``points``: ``(N, 2)`` rows and columns; ``labels``: ``(N,)`` 1 positive, 0 negative;
    ``box``: ``(row0, col0, row1, col1)``; ``mask``: a boolean ``(H, W)`` array. A mask
    cannot be combined with clicks (sam2 reads it as the answer for that frame); an empty
    mask says the object is not on the frame (:meth:`absent`).

    What does not depend on the frame is checked here, so a wrong prompt fails where it is
    made; :meth:`validate` checks it against the frame.
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", _points(self.points, "points"))
        object.__setattr__(self, "labels", _labels(self.labels))
        if len(self.points) != len(self.labels):
            raise PromptError(f"{len(self.points)} points but {len(self.labels)} labels; give one label per point")
        if self.box is not None:
            object.__setattr__(self, "box", _box(self.box))
        if self.mask is not None:
            if len(self.points) or self.box is not None:
                raise PromptError("a mask prompt cannot be combined with clicks or a box on the same frame")
            object.__setattr__(self, "mask", _mask(self.mask))

    @classmethod
    def absent(cls, frame_shape: tuple[int, int]) -> FramePrompt:
        """"The object is not on this frame": an empty mask, which sam2 takes as the answer
        (object score -10, the no-object pointer in memory), so tracking past this frame
        remembers that the object ended. The correction that sticks where the model follows
        another structure after its object ended, which clicks alone may not undo."""
        return cls(mask=np.zeros(tuple(frame_shape), bool))

    @classmethod
    def clicks(cls, positive=(), negative=()) -> FramePrompt:
        positive, negative = _points(positive, "positive clicks"), _points(negative, "negative clicks")
        labels = [POSITIVE] * len(positive) + [NEGATIVE] * len(negative)
        return cls(np.concatenate([positive, negative]), np.array(labels, np.int32))

    @property
    def is_empty(self) -> bool:
        return len(self.points) == 0 and self.box is None and self.mask is None

    def validate(self, frame_shape: tuple[int, int]) -> None:
        """Refuse what sam2 would silently misread, with a message saying what to change."""
        height, width = frame_shape
        if self.is_empty:
            raise PromptError("the prompt is empty: add a click, a box or a mask for this object")
        if self.mask is not None:
            if self.mask.shape != (height, width):
                raise PromptError(f"mask of shape {self.mask.shape} does not match the {height}x{width} frame")
        outside = [
            tuple(p) for p in self.points.tolist()
            if not (-0.5 <= p[0] <= height - 0.5 and -0.5 <= p[1] <= width - 0.5)
        ]
        if outside:
            raise PromptError(f"points {outside} lie outside the {height}x{width} frame")
        if self.box is not None:
            r0, c0, r1, c1 = self.box
            if r1 < -0.5 or c1 < -0.5 or r0 > height - 0.5 or c0 > width - 0.5:
                raise PromptError(f"box {self.box} lies outside the {height}x{width} frame")

    def point_inputs(self, frame_shape: tuple[int, int], image_size: int, device) -> dict | None:
        """sam2's ``point_inputs``: ``(x, y)`` coordinates scaled to the model's image size.

        A box goes first as two corner points labelled 2 and 3, as sam2's predictor does.
        """
        if self.mask is not None:
            return None
        height, width = frame_shape
        xy = self.points[:, ::-1]
        labels = self.labels
        if self.box is not None:
            r0, c0, r1, c1 = self.box
            xy = np.concatenate([np.array([[c0, r0], [c1, r1]], np.float32), xy])
            labels = np.concatenate([np.array(_BOX_CORNER_LABELS, np.int32), labels])
        # same operations, in the same order, as sam2's predictor: bit-identical coordinates
        coords = torch.from_numpy(np.ascontiguousarray(xy, np.float32))
        coords = coords / torch.tensor([width, height]) * image_size
        return {
            "point_coords": coords[None].to(device),
            "point_labels": torch.from_numpy(labels.astype(np.int32))[None].to(device),
        }

    def mask_input(self, image_size: int, device) -> torch.Tensor | None:
        """sam2's ``mask_inputs``: the mask resized to the model's size and re-binarised."""
        if self.mask is None:
            return None
        mask = torch.from_numpy(self.mask)[None, None].float().to(device)
        if mask.shape[-2:] != (image_size, image_size):
            mask = torch.nn.functional.interpolate(
                mask, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
            )
            mask = (mask >= 0.5).float()
        return mask


def _numbers(value, name: str) -> np.ndarray:
    """``value`` as a float64 array of finite numbers, or a PromptError naming ``name``."""
    try:
        array = np.asarray(value)
    except ValueError:  # numpy refuses ragged nesting
        array = np.asarray(value, dtype=object)
    if array.dtype.kind not in "biuf":
        raise PromptError(f"{name} must be numbers, got {_brief(value)}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise PromptError(f"{name} must be finite numbers, got {_brief(value)}")
    return array


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _points(value, name: str) -> np.ndarray:
    """``(N, 2)`` float32 (row, column) pairs; one pair may be given flat."""
    array = _numbers(value, name)
    if array.size == 0:
        return np.zeros((0, 2), np.float32)
    if array.shape == (2,):
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 2:
        raise PromptError(
            f"{name} must be (row, column) pairs, an (N, 2) array, got shape {array.shape}. "
            "In a volume, pass the slice as segment_frame's frame and only (row, column) here."
        )
    return array.astype(np.float32)


def _labels(value) -> np.ndarray:
    array = _numbers(value, "labels").reshape(-1)
    if not np.isin(array, (POSITIVE, NEGATIVE)).all():
        raise PromptError(f"point labels must be 1 (positive) or 0 (negative), got {sorted(set(array.tolist()))}")
    return array.astype(np.int32)


def _box(value) -> tuple[float, float, float, float]:
    array = _numbers(value, "box")
    if array.shape != (4,):
        raise PromptError(f"a box is four numbers (row0, col0, row1, col1), got {_brief(value)}")
    r0, c0, r1, c1 = (float(v) for v in array)
    if not (r1 > r0 and c1 > c0):
        raise PromptError(
            f"box {_brief(value)} has no area; give (row0, col0, row1, col1) with row1 > row0 and col1 > col0"
        )
    return r0, c0, r1, c1


def _mask(value) -> np.ndarray:
    """A boolean ``(H, W)`` mask from booleans or 0/1 numbers (nothing else is read as a mask:
    a probability map or a label image would be misread by ``astype(bool)``)."""
    array = np.asarray(value)
    if array.ndim != 2:
        raise PromptError(f"a mask prompt is one frame, a 2D (H, W) array, got shape {array.shape}")
    if array.dtype != bool:
        values = _numbers(array, "mask values")
        if not np.isin(values, (0, 1)).all():
            raise PromptError(
                "mask values must be True/False or 0/1: threshold a probability map (mask > 0.5), "
                "or pick the object from a label image (labels == object_id)"
            )
        array = values.astype(bool)
    return array
