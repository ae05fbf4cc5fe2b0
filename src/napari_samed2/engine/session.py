"""A segmentation session: one model on one volume, with objects, prompts and memory.

The data path follows sam2's video predictor step for step (so that, with the stock memory
policy, masks are identical to ``SAM2VideoPredictor``'s), with three differences that make it
an annotation tool rather than a benchmark loop:

* frames are read lazily and their image embeddings cached (see :mod:`.embedding_cache`);
* a corrected frame becomes a conditioning frame (sam2's ``add_all_frames_to_correct_as_cond``)
  and :meth:`Session.repropagate` recomputes only the frames that derive from it;
* per frame and object only what memory attention can use is kept (bf16 memory features,
  the object pointer, the low-resolution logits), so memory stays small as volumes grow.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from napari_samed2.engine.embedding_cache import EmbeddingCache
from napari_samed2.engine.memory import MemoryEntry, MemoryPolicy, ObjectMemory, make_policy
from napari_samed2.engine.prompts import FramePrompt
from napari_samed2.engine.results import FrameResult, ObjectResult
from napari_samed2.engine.volume import Volume, as_volume
from napari_samed2.errors import PromptError
from napari_samed2.models.loading import LoadedModel

Direction = Literal["forward", "backward", "both"]
_LOGIT_CLAMP = 32.0  # sam2 clamps previous logits fed back with new clicks


@dataclass(frozen=True)
class _Features:
    """One frame's backbone features in the flattened form sam2's heads take."""

    vision_feats: list[torch.Tensor]
    vision_pos_embeds: list[torch.Tensor]
    feat_sizes: list[tuple[int, int]]


class Session:
    """Objects, prompts, memory and results for one (volume, model) pair.

    ``volume`` is a :class:`Volume` or an array (``axis`` and the other :class:`Volume`
    options apply then). ``policy`` chooses which memories each frame attends to.
    """

    def __init__(
        self,
        model: LoadedModel,
        volume,
        *,
        axis: int = 0,
        policy: str | MemoryPolicy = "stock",
        cache: EmbeddingCache | None = None,
        **volume_options,
    ):
        self.model = model
        self.volume: Volume = as_volume(volume, axis, **volume_options)
        self.policy = make_policy(policy)
        self.cache = cache if cache is not None else EmbeddingCache()
        self.memories: dict[int, ObjectMemory] = {}
        self.prompts: dict[int, dict[int, FramePrompt]] = {}
        self.stale: dict[int, set[int]] = {}
        self._pos_embeds: list[torch.Tensor] | None = None
        self._maskmem_pos_enc: list[torch.Tensor] | None = None
        self._model_key = model.signature
        self.frames_encoded = 0  # image-encoder runs, for tests and benchmarks

    # objects -----------------------------------------------------------------------------
    @property
    def object_ids(self) -> list[int]:
        return sorted(self.memories)

    def add_object(self, object_id: int | None = None) -> int:
        """A new object (ids are stable positive integers: its value in the Labels layer)."""
        if object_id is None:
            object_id = next(i for i in itertools.count(1) if i not in self.memories)
        if object_id < 1:
            raise ValueError(f"object ids are positive integers (label values), got {object_id}")
        if object_id in self.memories:
            raise ValueError(f"object {object_id} exists already")
        self.memories[object_id] = ObjectMemory(object_id)
        self.prompts[object_id] = {}
        self.stale[object_id] = set()
        return object_id

    def remove_object(self, object_id: int) -> None:
        self._memory(object_id)
        for table in (self.memories, self.prompts, self.stale):
            del table[object_id]

    def _memory(self, object_id: int) -> ObjectMemory:
        try:
            return self.memories[object_id]
        except KeyError:
            raise KeyError(f"no object {object_id}; objects are {self.object_ids}") from None

    # prompts -----------------------------------------------------------------------------
    def segment_frame(self, frame: int, object_id: int, prompt: FramePrompt) -> FrameResult:
        """Segment ``object_id`` on ``frame`` from ``prompt`` now, without propagating.

        The prompt replaces the object's earlier prompt on that frame and makes the frame a
        conditioning frame. If the frame was already tracked, the earlier result and memory
        are used as context (sam2's correction clicks), and the frames that derived from it
        become stale until :meth:`repropagate`.
        """
        memory = self._memory(object_id)
        self._check_frame(frame)
        prompt.validate(self.volume.frame_shape)
        is_init = frame not in memory.tracked
        reverse = memory.tracked.get(frame, False)
        previous = memory.latest(frame)
        prev_logits = None
        if previous is not None and prompt.mask is None:
            prev_logits = previous.low_res_logits.to(self.model.device).clamp(-_LOGIT_CLAMP, _LOGIT_CLAMP)
        size = self.model.image_size
        with self.model.inference():
            entry = self._track(
                memory,
                frame,
                is_init_cond_frame=is_init,
                reverse=reverse,
                point_inputs=prompt.point_inputs(self.volume.frame_shape, size, self.model.device),
                mask_inputs=prompt.mask_input(size, self.model.device),
                prev_logits=prev_logits,
                encode_memory=False,
                conditioning=True,
            )
        memory.pending[frame] = entry
        self.prompts[object_id][frame] = prompt
        self.stale[object_id] |= self._derived_frames(memory, frame)
        self.stale[object_id].discard(frame)
        return self.result(frame)

    def _derived_frames(self, memory: ObjectMemory, frame: int) -> set[int]:
        """Tracked frames whose memory chain runs through ``frame``: up to the next
        conditioning frame in each direction it was propagated away from."""
        derived = set()
        for step, reverse in ((1, False), (-1, True)):
            f = frame + step
            while memory.tracked.get(f) is reverse and f not in self.prompts[memory.object_id]:
                derived.add(f)
                f += step
        return derived

    # propagation -------------------------------------------------------------------------
    def propagate(
        self,
        direction: Direction = "both",
        *,
        start: int | None = None,
        limits: tuple[int, int] | None = None,
        object_ids: Iterable[int] | None = None,
    ) -> Iterator[FrameResult]:
        """Track the prompted objects through the volume, yielding each frame's result.

        Starts at ``start`` (default: the earliest prompted frame, as sam2) and runs to the
        ends of the volume, or of ``limits = (first, last)``; ``"both"`` runs forward, then
        backward, from the same start. Stop iterating at any time: frames already yielded
        keep their results.
        """
        ids = self._prompted(object_ids)
        first, last = limits if limits is not None else (0, len(self.volume) - 1)
        self._check_frame(first)
        self._check_frame(last)
        if start is None:
            starts = [f for i in ids for f in self.prompts[i] if first <= f <= last]
            if not starts:
                raise PromptError(f"no prompt between frames {first} and {last}: add a click there first")
            start = min(starts)
        self._check_frame(start)
        if direction not in ("forward", "backward", "both"):
            raise ValueError(f"direction must be 'forward', 'backward' or 'both', not {direction!r}")
        if direction in ("forward", "both"):
            yield from self._run(ids, range(start, last + 1), reverse=False)
        if direction in ("backward", "both") and start > 0:
            yield from self._run(ids, range(start, first - 1, -1), reverse=True)

    def repropagate(self) -> Iterator[FrameResult]:
        """Recompute exactly the stale frames (those derived from a changed frame)."""
        for object_id in self.object_ids:
            for anchor, last, reverse in self._stale_runs(object_id):
                step = -1 if reverse else 1
                yield from self._run([object_id], range(anchor, last + step, step), reverse=reverse)

    def _stale_runs(self, object_id: int) -> list[tuple[int, int, bool]]:
        """An object's stale frames as ``(prompted anchor, last stale frame, reverse)`` runs."""
        prompted = set(self.prompts[object_id])
        stale = self.stale[object_id]
        runs = []
        for anchor in sorted(prompted):
            for step, reverse in ((1, False), (-1, True)):
                f = anchor + step
                while f in stale and f not in prompted:
                    f += step
                if f != anchor + step:
                    runs.append((anchor, f - step, reverse))
        return runs

    def _prompted(self, object_ids: Iterable[int] | None) -> list[int]:
        ids = self.object_ids if object_ids is None else sorted(object_ids)
        for i in ids:
            self._memory(i)
        prompted = [i for i in ids if self.prompts[i]]
        if not prompted:
            raise PromptError("no object has a prompt yet: click on the object in a slice first")
        return prompted

    def _run(self, object_ids: list[int], order: range, reverse: bool) -> Iterator[FrameResult]:
        self._commit_pending(object_ids)
        for frame in order:
            with self.model.inference():
                for object_id in object_ids:
                    memory = self.memories[object_id]
                    entry = memory.entries.get(frame)
                    if entry is None or not entry.conditioning:
                        memory.entries[frame] = self._track(
                            memory, frame, is_init_cond_frame=False, reverse=reverse, encode_memory=True
                        )
                    memory.tracked[frame] = reverse
                    self.stale[object_id].discard(frame)
            yield self.result(frame)

    def _commit_pending(self, object_ids: list[int]) -> None:
        """Encode the memory of prompted frames, as sam2 does when propagation starts."""
        size = self.model.image_size
        with self.model.inference():
            for object_id in object_ids:
                memory = self.memories[object_id]
                for frame, entry in sorted(memory.pending.items()):
                    features = self._features(frame)
                    high_res = F.interpolate(
                        entry.low_res_logits.to(self.model.device), size=(size, size),
                        mode="bilinear", align_corners=False,
                    )
                    maskmem, pos_enc = self.model.sam._encode_new_memory(
                        current_vision_feats=features.vision_feats,
                        feat_sizes=features.feat_sizes,
                        pred_masks_high_res=high_res,
                        object_score_logits=torch.tensor([[entry.object_score]], device=self.model.device),
                        is_mask_from_pts=True,
                    )
                    entry.maskmem_features = maskmem.to(torch.bfloat16)
                    self._remember_pos_enc(pos_enc)
                    memory.entries[frame] = entry
                memory.pending.clear()

    # one step ----------------------------------------------------------------------------
    def _track(
        self,
        memory: ObjectMemory,
        frame: int,
        *,
        is_init_cond_frame: bool,
        reverse: bool,
        encode_memory: bool,
        point_inputs: dict | None = None,
        mask_inputs: torch.Tensor | None = None,
        prev_logits: torch.Tensor | None = None,
        conditioning: bool = False,
    ) -> MemoryEntry:
        """One sam2 tracking step for one object, with the policy's choice of memories."""
        sam = self.model.sam
        features = self._features(frame)
        view = self.policy.view(memory, frame, reverse, sam)
        current_out, sam_outputs, _, _ = sam._track_step(
            frame,
            is_init_cond_frame,
            features.vision_feats,
            features.vision_pos_embeds,
            features.feat_sizes,
            point_inputs,
            mask_inputs,
            view.to_sam2(self._maskmem_pos_enc or []),
            len(self.volume),
            reverse,
            prev_logits,
        )
        _, _, ious, low_res, high_res, obj_ptr, object_score = sam_outputs
        sam._encode_memory_in_output(
            features.vision_feats, features.feat_sizes, point_inputs, encode_memory,
            high_res, object_score, current_out,
        )
        if sam.fill_hole_area > 0:
            from sam2.utils.misc import fill_holes_in_mask_scores

            low_res = fill_holes_in_mask_scores(low_res, sam.fill_hole_area)
        maskmem = current_out["maskmem_features"]
        if maskmem is not None:
            self._remember_pos_enc(current_out["maskmem_pos_enc"])
            maskmem = maskmem.to(torch.bfloat16)
        return MemoryEntry(
            object_id=memory.object_id,
            frame=frame,
            conditioning=conditioning,
            reverse=reverse,
            predicted_iou=float(ious.float().max()),
            object_score=float(object_score.float().max()),
            low_res_logits=low_res.float(),
            obj_ptr=obj_ptr,
            maskmem_features=maskmem,
        )

    def _remember_pos_enc(self, pos_enc: list[torch.Tensor]) -> None:
        # identical for every frame and object: sam2 keeps one copy, so do we
        if self._maskmem_pos_enc is None:
            self._maskmem_pos_enc = [p[0:1].clone() for p in pos_enc]

    def _features(self, frame: int) -> _Features:
        """The frame's image features: from the cache, or the image encoder once."""
        sam = self.model.sam
        key = f"{self._model_key}-{self.volume.frame_key(frame)}"
        fpn = self.cache.get(key, self.model.device)
        if fpn is None or self._pos_embeds is None:
            image = self.volume.model_input(frame, self.model.image_size, self.model.spec.preprocessing)
            backbone = sam.forward_image(image[None].to(self.model.device))
            fpn = list(backbone["backbone_fpn"])
            self._pos_embeds = list(backbone["vision_pos_enc"])
            self.cache.put(key, fpn)
            self.frames_encoded += 1
        _, feats, pos, sizes = sam._prepare_backbone_features(
            {"backbone_fpn": fpn, "vision_pos_enc": self._pos_embeds}
        )
        return _Features(feats, pos, sizes)

    # results -----------------------------------------------------------------------------
    def result(self, frame: int) -> FrameResult:
        """The current masks on ``frame`` of every object that has one."""
        objects = {}
        for object_id, memory in self.memories.items():
            entry = memory.latest(frame)
            if entry is not None:
                objects[object_id] = ObjectResult(
                    object_id, self._full_res_mask(entry), entry.predicted_iou, entry.object_score
                )
        return FrameResult(frame, objects)

    def _full_res_mask(self, entry: MemoryEntry) -> np.ndarray:
        logits = F.interpolate(
            entry.low_res_logits, size=self.volume.frame_shape, mode="bilinear", align_corners=False
        )
        return (logits[0, 0] > self.model.spec.mask_threshold).cpu().numpy()

    def labels(self) -> np.ndarray:
        """The whole label volume (frames first), objects' ids on their pixels."""
        out = np.zeros((len(self.volume), *self.volume.frame_shape), dtype=np.uint16)
        for frame in range(len(self.volume)):
            result = self.result(frame)
            if result.objects:
                out[frame] = result.labels(self.volume.frame_shape)
        return out

    def _check_frame(self, frame: int) -> None:
        if not 0 <= frame < len(self.volume):
            raise IndexError(f"frame {frame} is outside the volume's {len(self.volume)} frames")
