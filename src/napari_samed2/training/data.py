"""Training items: clips of consecutive slices with one object and a prompt on the first.

Three roles, as in sam2's training data: :func:`load_pairs` reads and checks (image, label)
volumes, :class:`ClipSampler` picks a volume, an object, a direction and K consecutive slices
from a seeded ``numpy.random.Generator``, and :func:`sample_prompt` draws the first slice's
prompt (a jittered box, a click, or the mask itself, with SAM-2's probabilities). Clicks come
from the one click simulator, :mod:`napari_samed2.evaluation.prompts`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_samed2.engine.prompts import FramePrompt
from napari_samed2.engine.volume import Volume
from napari_samed2.errors import TrainingError
from napari_samed2.evaluation.prompts import bounding_box, deepest_point
from napari_samed2.io.intensity import IntensityWindow

#: SAM-2's training mix (``prob_to_use_pt_input_for_train=0.5``, ``prob_to_use_box_input_for_train=0.5``):
#: half the clips start from the ground-truth mask, a quarter from a box, a quarter from a click.
PROMPT_PROBS: dict[str, float] = {"mask": 0.5, "box": 0.25, "click": 0.25}
PROMPT_KINDS = ("mask", "box", "click")
#: The prompt of a revival clip's first slice, where its object is not: "Not on this slice".
ABSENT = "absent"
BOX_NOISE = 0.1  # box corners move by N(0, 0.1 x box side) ...
BOX_NOISE_MAX_PX = 20.0  # ... at most 20 px, as in SAM-2's training


@dataclass(frozen=True, eq=False)
class VolumePair:
    """An image volume and its label volume, frames first (``(Z, Y, X)``), same shape.

    ``spacing``: voxel size in mm along (frames, rows, cols), used where the click simulator
    measures distances; ``objects``: the label values present, and for each the frames where
    it appears.
    """

    image: Any
    label: np.ndarray
    name: str
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    objects: dict[int, np.ndarray] = field(default_factory=dict)
    window: IntensityWindow | None = None

    def __len__(self) -> int:
        return int(self.image.shape[0])


def _read(source, what: str) -> tuple[Any, str, tuple | None]:
    """The array, a name for messages, and the voxel size a file states (napari ``scale``)."""
    if isinstance(source, str | os.PathLike):
        from napari_samed2.evaluation.cases import read_volume

        data, scale, _ = read_volume(source, what)
        return data, Path(source).name, scale
    if hasattr(source, "shape") and hasattr(source, "__getitem__"):
        return source, f"{what} array", None
    raise TrainingError(
        f"cannot read {what} {source!r}: give a NIfTI/TIFF file path or a numpy array (frames first)"
    )


def make_pair(image, label, *, name: str | None = None, axis: int = 0, spacing=None) -> VolumePair:
    """Check one (image, label) pair and index its objects; ``axis`` is the slicing axis,
    ``spacing`` the voxel size in mm per array axis (default: what an image file states, else 1)."""
    image, image_name, scale = _read(image, "image")
    label, _, _ = _read(label, "label")
    name = name or image_name
    if tuple(image.shape) != tuple(label.shape):
        raise TrainingError(
            f"image {name} has shape {tuple(image.shape)} but its label has shape {tuple(label.shape)}: "
            "pass the label volume that was drawn on this image (same voxels, same axis order)"
        )
    if len(image.shape) != 3:
        raise TrainingError(
            f"image {name} has shape {tuple(image.shape)}; training needs 3D volumes (slices, rows, columns)"
        )
    if not -3 <= axis < 3:
        raise TrainingError(f"axis must be 0, 1 or 2 (the slicing axis), not {axis}")
    image = np.moveaxis(image, axis, 0) if axis % 3 else image
    label = np.moveaxis(np.asarray(label), axis, 0)
    if label.dtype.kind not in "iub":
        if not np.all(np.mod(label, 1) == 0):
            raise TrainingError(f"the label of {name} holds fractional values; give integer object ids (0 = background)")
        label = label.astype(np.int64)
    objects = {}
    per_frame = label.reshape(len(label), -1)
    for value in np.unique(label):
        if value <= 0:
            continue
        objects[int(value)] = np.flatnonzero((per_frame == value).any(axis=1))
    if not objects:
        raise TrainingError(
            f"the label of {name} has no object (every voxel is 0 or negative): give a label volume "
            "with at least one object (positive integer values), or leave this image out"
        )
    if spacing is None:
        spacing = scale if scale is not None and len(scale) == 3 else (1.0, 1.0, 1.0)
    spacing = tuple(float(s) for s in spacing)
    if axis % 3:
        spacing = (spacing[axis], *(s for i, s in enumerate(spacing) if i != axis % 3))
    return VolumePair(image, label, name, spacing, objects, IntensityWindow.from_percentiles(image))


def load_pairs(images, labels=None, *, axis: int = 0) -> list[VolumePair]:
    """(image, label) pairs from parallel sequences of paths or arrays, one path or array each,
    or (with ``labels=None``) an iterable of ``(image, label)`` tuples, e.g. a generator."""
    if labels is None:
        if isinstance(images, str | os.PathLike) or hasattr(images, "shape"):
            raise TrainingError("labels are missing: pass labels=... with one label volume per image")
        items = list(images)
        if not all(isinstance(item, tuple) and len(item) == 2 for item in items):
            raise TrainingError("without labels=..., images must be (image, label) pairs")
        pairs = [make_pair(image, label, axis=axis, name=f"pair {i}") for i, (image, label) in enumerate(items)]
    else:
        images = [images] if isinstance(images, str | os.PathLike) or hasattr(images, "shape") else list(images)
        labels = [labels] if isinstance(labels, str | os.PathLike) or hasattr(labels, "shape") else list(labels)
        if len(images) != len(labels):
            raise TrainingError(f"{len(images)} images but {len(labels)} labels: give one label volume per image, in the same order")
        pairs = [make_pair(image, label, axis=axis) for image, label in zip(images, labels)]
    if not pairs:
        raise TrainingError("no training volumes were given")
    return pairs


@dataclass(frozen=True, eq=False)
class Clip:
    """K consecutive slices of one volume in tracking order, one object, a prompt on frame 0.

    ``volume``: the clip's slices (normalised with the whole source volume's window, so
    intensities match what the engine sees on that volume); ``masks``: ``(K, H, W)`` bool,
    the object on each clip frame (frame 0 holds it, except in a revival clip, whose prompt
    says it is absent there); ``prompt``: on frame 0; ``frames``: the source slice index of
    each clip frame (descending when ``reverse``); ``correct_at``: clip frames that must get
    correction clicks (a revival clip's first slice with the object).
    """

    volume: Volume
    masks: np.ndarray
    prompt: FramePrompt
    prompt_kind: str
    source: str
    object_id: int
    frames: tuple[int, ...]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    correct_at: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def reverse(self) -> bool:
        return len(self.frames) > 1 and self.frames[1] < self.frames[0]


def sample_prompt(
    mask: np.ndarray, kind: str, rng: np.random.Generator, spacing=(1.0, 1.0), box_noise: float = BOX_NOISE
) -> FramePrompt:
    """A prompt for one slice's object ``mask``: ``"box"`` (the tight box, each corner moved by
    ``N(0, box_noise x box side)``, at most :data:`BOX_NOISE_MAX_PX`; SAM-2 trains with 0.1),
    ``"click"`` (one positive click at the object's centre, as the click simulator places it)
    or ``"mask"`` (the mask itself)."""
    if kind == "mask":
        return FramePrompt(mask=mask)
    if kind == "click":
        return FramePrompt.clicks(positive=[deepest_point(mask, spacing, rng)])
    if kind == "box":
        r0, c0, r1, c1 = bounding_box(mask)
        sides = np.array([r1 - r0, c1 - c0, r1 - r0, c1 - c0], float)
        noise = np.clip(rng.normal(0.0, 1.0, 4) * box_noise * sides, -BOX_NOISE_MAX_PX, BOX_NOISE_MAX_PX)
        height, width = mask.shape
        lo = np.array([0, 0, 0, 0], float)
        hi = np.array([height - 1, width - 1, height - 1, width - 1], float)
        box = np.clip(np.array([r0, c0, r1, c1]) + noise, lo, hi)
        if box[2] <= box[0] or box[3] <= box[1]:  # jitter collapsed a thin box: keep the tight one
            box = np.array([r0, c0, r1, c1], float)
            if box[2] <= box[0] or box[3] <= box[1]:
                box[2:] = np.minimum(box[:2] + 1, hi[2:])
                box[:2] = np.maximum(box[2:] - 1, 0)
        return FramePrompt(box=tuple(float(v) for v in box))
    raise TrainingError(f"unknown prompt kind {kind!r}; choose from {PROMPT_KINDS}")


def check_share(name: str, value: float) -> None:
    """A probability setting must lie in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise TrainingError(f"{name} must lie in [0, 1], got {value}")


def check_box_noise(value: float) -> None:
    """Box jitter is a share of the box's side: 0 (tight boxes) up to 1."""
    if not 0.0 <= value <= 1.0:
        raise TrainingError(f"box_noise is a share of the box side in [0, 1] (SAM-2 trains with {BOX_NOISE}), got {value}")


def single_slice_prompt_probs(probs: Mapping[str, float]) -> dict[str, float]:
    """``probs`` without the mask prompt, for one-slice clips (a mask prompt passes through)."""
    kept = {k: v for k, v in probs.items() if k != "mask" and v > 0}
    if not kept:
        raise TrainingError(
            "single-slice clips need box or click prompts (a one-slice clip prompted with its own mask "
            f"has nothing to learn); prompt_probs gives only {sorted(probs)}"
        )
    total = sum(kept.values())
    return {k: v / total for k, v in kept.items()}


def check_prompt_probs(probs: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(probs) - set(PROMPT_KINDS))
    if unknown:
        raise TrainingError(f"unknown prompt kinds {unknown}; choose from {PROMPT_KINDS}")
    values = {k: float(v) for k, v in probs.items()}
    if any(v < 0 for v in values.values()) or sum(values.values()) <= 0:
        raise TrainingError(f"prompt probabilities must be >= 0 and not all zero, got {values}")
    total = sum(values.values())
    return {k: v / total for k, v in values.items()}


class ClipSampler:
    """An endless stream of :class:`Clip` from ``pairs``, reproducible from ``rng``.

    Each clip: a volume (uniformly), one of its objects (uniformly), a direction (backwards
    with ``reverse_prob``, SAM-2's time reversal), a first slice where the object is present,
    and up to ``clip_length`` slices from there (fewer only when the volume ends first).
    With ``middle_start_prob`` the first slice is the median of the slices the object is on
    (for an object without gaps, the evaluation's :func:`~napari_samed2.evaluation.prompts.
    middle_slice`, where it and most users prompt): the clip then runs past the object's end
    whenever the object is shorter than the clip, so the model learns to let a vanished object go instead
    of jumping to the next salient structure (measured: the demo model did exactly that).
    With ``end_start_prob`` the clip is one that shows an object end while another object
    goes on beside it: an object whose footprint on its last slice (in the tracking
    direction, widened by :data:`NEIGHBOUR_REACH` px) meets another object within the clip's
    length past that end, started no earlier than its middle and late enough that a third of
    the clip lies past the end (with no such end in ``pairs``, clips are drawn as without it).
    Measured on the demo model (run 7): past an object's end, 85 % of the wrongly predicted
    pixels lay on such a neighbour, and middle-started clips show that case too rarely to
    unlearn it. With ``single_slice_prob`` a clip is one slice where its object is (a box or
    a click, never the mask), so that one run trains the 2D model and tracking together: image
    steps alone after the tracking stages were measured to cost tracking what they gave 2D.
    With ``revive_prob`` a clip starts 1 to ``clip_length // 2`` slices before its object
    appears (in the tracking direction), prompted "not on this slice", and its first slice
    with the object gets correction clicks (``correct_at``): the model learns that a click
    revives an object its memory says is absent, and that the slices after follow it. Measured
    on the demo model (run 8): a positive click on a slice where tracking had lost the object
    fixed that slice alone, the next slices staying empty, so clicks added under a point each.
    ``box_noise``: the jitter of box prompts (see :func:`sample_prompt`).
    """

    def __init__(
        self,
        pairs: list[VolumePair],
        rng: np.random.Generator,
        *,
        clip_length: int = 8,
        prompt_probs: Mapping[str, float] = PROMPT_PROBS,
        reverse_prob: float = 0.5,
        middle_start_prob: float = 0.0,
        end_start_prob: float = 0.0,
        single_slice_prob: float = 0.0,
        revive_prob: float = 0.0,
        box_noise: float = BOX_NOISE,
    ):
        if clip_length < 1:
            raise TrainingError(f"clip_length must be at least 1, got {clip_length}")
        check_share("reverse_prob", reverse_prob)
        check_share("middle_start_prob", middle_start_prob)
        check_share("end_start_prob", end_start_prob)
        check_share("single_slice_prob", single_slice_prob)
        check_share("revive_prob", revive_prob)
        check_box_noise(box_noise)
        self.pairs = pairs
        self.rng = rng
        self.clip_length = clip_length
        self.prompt_probs = check_prompt_probs(prompt_probs)
        self.reverse_prob = reverse_prob
        self.middle_start_prob = middle_start_prob
        self.end_start_prob = end_start_prob
        self.single_slice_prob = single_slice_prob
        self.single_slice_probs = single_slice_prompt_probs(self.prompt_probs) if single_slice_prob else {}
        self.revive_prob = revive_prob
        self.box_noise = box_noise
        self.ends = neighboured_ends(pairs, clip_length) if end_start_prob else []

    def __iter__(self) -> Iterator[Clip]:
        while True:
            yield self.sample()

    def sample(self) -> Clip:
        rng = self.rng
        if self.single_slice_prob and rng.random() < self.single_slice_prob:
            return self._sample_single_slice()
        if self.ends and rng.random() < self.end_start_prob:
            return self._sample_end(self.ends[int(rng.integers(len(self.ends)))])
        if self.revive_prob and self.clip_length > 1 and rng.random() < self.revive_prob:
            revival = self._sample_revival()
            if revival is not None:
                return revival
        pair, object_id = self._pick_object()
        reverse = bool(rng.random() < self.reverse_prob)
        present = pair.objects[object_id]
        n, k = len(pair), self.clip_length
        if self.middle_start_prob and rng.random() < self.middle_start_prob:
            start = int(present[len(present) // 2])
        else:
            fits = present[present - (k - 1) >= 0] if reverse else present[present + k <= n]
            candidates = fits if len(fits) else present
            start = int(candidates[int(rng.integers(len(candidates)))])
        return make_clip(pair, object_id, self._frames(start, reverse, n), self._kind(), rng, self.box_noise)

    def _pick_object(self) -> tuple[VolumePair, int]:
        """A volume, then one of its objects, each uniformly."""
        pair = self.pairs[int(self.rng.integers(len(self.pairs)))]
        ids = sorted(pair.objects)
        return pair, ids[int(self.rng.integers(len(ids)))]

    def _sample_single_slice(self) -> Clip:
        pair, object_id = self._pick_object()
        present = pair.objects[object_id]
        frame = int(present[int(self.rng.integers(len(present)))])
        return make_clip(pair, object_id, (frame,), self._kind(self.single_slice_probs), self.rng, self.box_noise)

    def _sample_revival(self) -> Clip | None:
        """A clip started ``gap`` slices before its object's first slice (in the tracking
        direction), at most half the clip, with the "absent" prompt, its clicks due at clip
        frame ``gap``; ``None`` when the object starts on the volume's first slice that way."""
        pair, object_id = self._pick_object()
        reverse = bool(self.rng.random() < self.reverse_prob)
        present, n = pair.objects[object_id], len(pair)
        first = int(present.max()) if reverse else int(present.min())
        lead = min(n - 1 - first if reverse else first, self.clip_length // 2)
        if lead < 1:
            return None
        gap = int(self.rng.integers(1, lead + 1))
        start = first + gap if reverse else first - gap
        return make_clip(pair, object_id, self._frames(start, reverse, n), ABSENT, self.rng, self.box_noise,
                         correct_at=(gap,))

    def _frames(self, start: int, reverse: bool, n: int) -> tuple[int, ...]:
        """Up to ``clip_length`` slices from ``start`` in tracking order, within ``n`` slices."""
        k = self.clip_length
        return tuple(range(start, max(start - k, -1), -1)) if reverse else tuple(range(start, min(start + k, n)))

    def _kind(self, probs: Mapping[str, float] | None = None) -> str:
        probs = self.prompt_probs if probs is None else probs
        kinds = list(probs)
        return kinds[int(self.rng.choice(len(kinds), p=[probs[x] for x in kinds]))]

    def _sample_end(self, end: ObjectEnd) -> Clip:
        """A clip of ``end``'s object started no earlier than its middle and at most
        ``clip_length - 1 - clip_length // 3`` slices before its end, so that at least a third
        of the clip lies past the end."""
        pair, k = self.pairs[end.pair], self.clip_length
        present = pair.objects[end.object_id]
        middle = int(present[len(present) // 2])
        if end.reverse:
            lo, hi = int(present.min()), min(middle, int(present.min()) + k - 1 - k // 3)
        else:
            lo, hi = max(middle, int(present.max()) - (k - 1 - k // 3)), int(present.max())
        starts = present[(present >= lo) & (present <= hi)]  # never empty: the end itself is one
        start = int(starts[int(self.rng.integers(len(starts)))])
        return make_clip(pair, end.object_id, self._frames(start, end.reverse, len(pair)), self._kind(), self.rng, self.box_noise)


#: How far (px) beyond an object's last cross-section another object still counts as beside it.
NEIGHBOUR_REACH = 3


@dataclass(frozen=True)
class ObjectEnd:
    """Object ``object_id`` of ``pairs[pair]`` ends (going backwards when ``reverse``) with
    another object beside it further on."""

    pair: int
    object_id: int
    reverse: bool


def neighboured_ends(pairs: list[VolumePair], clip_length: int) -> list[ObjectEnd]:
    """Every object end of ``pairs`` where another object meets the end slice's footprint
    (widened by :data:`NEIGHBOUR_REACH` px) within ``clip_length - 1`` slices past the end."""
    from scipy import ndimage

    ends = []
    reach = ndimage.generate_binary_structure(2, 1)
    for index, pair in enumerate(pairs):
        label = np.asarray(pair.label)
        for object_id, present in pair.objects.items():
            for reverse, last in ((False, int(present.max())), (True, int(present.min()))):
                after = label[max(last - clip_length + 1, 0):last][::-1] if reverse else label[last + 1:last + clip_length]
                if not len(after):
                    continue
                footprint = ndimage.binary_dilation(label[last] == object_id, reach, NEIGHBOUR_REACH)
                beyond = after[:, footprint]
                if ((beyond > 0) & (beyond != object_id)).any():
                    ends.append(ObjectEnd(index, object_id, reverse))
    return ends


def make_clip(
    pair: VolumePair, object_id: int, frames: Iterable[int], kind: str, rng: np.random.Generator,
    box_noise: float = BOX_NOISE, correct_at: tuple[int, ...] = (),
) -> Clip:
    """The clip of ``pair`` over ``frames`` (in tracking order) for ``object_id``, prompted on
    its first frame with a prompt of ``kind`` (:data:`ABSENT`: the object is not there)."""
    frames = tuple(int(f) for f in frames)
    index = list(frames)
    images = np.stack([np.asarray(pair.image[f]) for f in index])
    masks = np.stack([np.asarray(pair.label[f]) == object_id for f in index])
    if kind == ABSENT:
        if masks[0].any():
            raise TrainingError(f"object {object_id} of {pair.name} is on slice {frames[0]}: an 'absent' prompt there is wrong")
        prompt = FramePrompt.absent(masks[0].shape)
    elif not masks[0].any():
        raise TrainingError(f"object {object_id} of {pair.name} is absent from slice {frames[0]}: a clip starts where its object is")
    else:
        prompt = sample_prompt(masks[0], kind, rng, pair.spacing[1:], box_noise)
    return Clip(
        volume=Volume(images, normalise=pair.window),
        masks=masks,
        prompt=prompt,
        prompt_kind=kind,
        source=pair.name,
        object_id=object_id,
        frames=frames,
        spacing=pair.spacing,
        correct_at=tuple(correct_at),
    )
