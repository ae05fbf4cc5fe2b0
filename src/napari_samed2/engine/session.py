"""A segmentation session: one model on one volume, with objects, prompts and memory.

The data path follows sam2's video predictor step for step (so that, with the stock memory
policy, masks are identical to ``SAM2VideoPredictor``'s), with three differences that make it
an annotation tool rather than a benchmark loop:

* frames are read lazily and their image embeddings cached (see :mod:`.embedding_cache`);
* a corrected frame becomes a conditioning frame (sam2's ``add_all_frames_to_correct_as_cond``)
  and :meth:`Session.repropagate` recomputes only the frames that derive from it;
* per frame and object only what memory attention can use is kept (bf16 memory features,
  the object pointer, the low-resolution logits), so memory stays small as volumes grow;
* every user step is recorded as a difference (:mod:`.history`): :meth:`Session.undo` and
  :meth:`Session.redo` put prompts, memory, stale frames and results back exactly.

What does not need prompts or memory lives beside it: image features and their cache in
:mod:`.slice_features`, saving and opening in :mod:`.persistence`, the retrieval library's
rows and tokens in :mod:`.library`. The tracking step itself is :mod:`.step`, shared with
training.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from napari_samed2.engine.converge import ConvergeStop
from napari_samed2.engine.embedding_cache import EmbeddingCache, default_cache_dir
from napari_samed2.engine.heap import release_freed_memory
from napari_samed2.engine.history import DEFAULT_MAX_BYTES, DEFAULT_MAX_STEPS, History, Recorder, Rewind, Step
from napari_samed2.engine.library import LibraryEntry, MemoryLibrary, library_row, library_tokens_in, memory_tokens
from napari_samed2.engine.memory import (
    EntrySource,
    EntryStatus,
    MemoryEntry,
    MemoryPolicy,
    MemoryView,
    ObjectMemory,
    make_policy,
    object_id_number,
)
from napari_samed2.engine.persistence import load_session, save_session
from napari_samed2.engine.prompts import FramePrompt
from napari_samed2.engine.results import FrameResult, ObjectResult
from napari_samed2.engine.slice_features import SliceFeatures
from napari_samed2.engine.step import encode_prompt_memory, track_step
from napari_samed2.engine.volume import Volume, as_volume, frame_number
from napari_samed2.errors import HistoryError, ObjectError, PromptError, SessionError
from napari_samed2.models.loading import LoadedModel

Direction = Literal["forward", "backward", "both"]
_LOGIT_CLAMP = 32.0  # sam2 clamps previous logits fed back with new clicks


class _Run:
    """One propagation: its frames are recorded as one undo step."""

    def __init__(self, description: str):
        self.description = description


class Session:
    """Objects, prompts, memory and results for one (volume, model) pair.

    ``volume`` is a :class:`Volume` or an array (``axis`` and the other :class:`Volume`
    options apply then). ``policy`` chooses which memories each frame attends to
    (``"stock"`` or ``"confidence"``, see :mod:`.memory`). With a ``library``, the
    ``library_k`` best matching confirmed memories of earlier cases join each tracked frame's
    memory; they are listed with negative frame numbers (``-1 - library index``).
    ``undo_steps`` and ``undo_bytes`` bound the undo history (``undo_steps=0``: none).
    Without a ``cache``, image features live in memory and a temporary folder, and those
    already in :func:`~napari_samed2.engine.embedding_cache.default_cache_dir` (where
    ``python -m napari_samed2.cohort embed`` puts a cohort's) are read from there.
    """

    def __init__(
        self,
        model: LoadedModel,
        volume,
        *,
        axis: int = 0,
        policy: str | MemoryPolicy = "stock",
        cache: EmbeddingCache | None = None,
        library: MemoryLibrary | None = None,
        library_k: int = 2,
        undo_steps: int = DEFAULT_MAX_STEPS,
        undo_bytes: int = DEFAULT_MAX_BYTES,
        **volume_options,
    ):
        for name, value in (
            ("library_k (library memories per frame)", library_k),
            ("undo_steps (steps kept for undo)", undo_steps),
            ("undo_bytes (memory kept for undo)", undo_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise SessionError(f"{name} must be a whole number >= 0, got {value!r}")
        self.model = model
        self.volume: Volume = as_volume(volume, axis, **volume_options)
        self.policy = make_policy(policy)
        self.library = library
        self.library_k = library_k
        self.memories: dict[int, ObjectMemory] = {}
        self.prompts: dict[int, dict[int, FramePrompt]] = {}
        self.stale: dict[int, set[int]] = {}
        self._maskmem_pos_enc: list[torch.Tensor] | None = None
        # The GUI propagates in a worker thread while the user may click: every change of
        # state holds this lock, for one frame at a time, so clicks land between frames.
        self.lock = threading.RLock()
        cache = cache if cache is not None else EmbeddingCache(shared=default_cache_dir())
        self.features = SliceFeatures(model, self.volume, cache, self.lock)
        self.history = History(undo_steps, undo_bytes)
        self._runs = 0  # propagations started and not finished or closed

    # objects -----------------------------------------------------------------------------
    @property
    def object_ids(self) -> list[int]:
        return sorted(self.memories)

    def add_object(self, object_id: int | None = None) -> int:
        """A new object (ids are stable positive integers: its value in the Labels layer)."""
        if object_id is None:
            object_id = next(i for i in itertools.count(1) if i not in self.memories)
        object_id = object_id_number(object_id)
        if object_id in self.memories:
            raise ObjectError(f"object {object_id} exists already; add_object() without an id picks a free one")
        with self._step(f"add object {object_id}") as record:
            record.object(object_id)
            self.memories[object_id] = ObjectMemory(object_id)
            self.prompts[object_id] = {}
            self.stale[object_id] = set()
        return object_id

    def remove_object(self, object_id: int) -> None:
        object_id = self._memory(object_id).object_id
        with self._step(f"remove object {object_id}") as record:
            record.object(object_id)
            for table in (self.memories, self.prompts, self.stale):
                del table[object_id]

    def _memory(self, object_id: int) -> ObjectMemory:
        object_id = object_id_number(object_id)
        try:
            return self.memories[object_id]
        except KeyError:
            raise ObjectError(f"no object {object_id}; objects are {self.object_ids} (add_object() makes one)") from None

    # prompts -----------------------------------------------------------------------------
    def segment_frame(self, frame: int, object_id: int, prompt: FramePrompt) -> FrameResult:
        """Segment ``object_id`` on ``frame`` from ``prompt`` now, without propagating.

        The prompt replaces the object's earlier prompt on that frame and makes the frame a
        conditioning frame. If the frame was already tracked, the earlier result and memory
        are used as context (sam2's correction clicks), and the frames that derived from it
        become stale until :meth:`repropagate`.
        """
        object_id = self._memory(object_id).object_id
        frame = self._check_frame(frame)
        if not isinstance(prompt, FramePrompt):
            raise PromptError(f"prompt must be a FramePrompt, e.g. FramePrompt.clicks([[row, col]]); got {prompt!r}")
        prompt.validate(self.volume.frame_shape)
        kind = "mask" if prompt.mask is not None else "box" if prompt.box is not None else "clicks"
        with self._step(f"{kind} of object {object_id} on slice {frame}"):
            return self._segment_frame(frame, object_id, prompt)

    def _segment_frame(self, frame: int, object_id: int, prompt: FramePrompt) -> FrameResult:
        memory = self._memory(object_id)
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
        record = self.history.recorder
        record.pending(object_id, frame)
        record.prompt(object_id, frame)
        record.stale(object_id)
        memory.pending[frame] = entry
        self.prompts[object_id][frame] = prompt
        self.stale[object_id] |= self._derived_frames(memory, frame)
        self.stale[object_id].discard(frame)
        return self.result(frame)

    def clear_prompt(self, frame: int, object_id: int) -> None:
        """Remove the object's prompt on ``frame``. A frame that was propagated keeps its
        mask but becomes an ordinary tracked frame, stale with what derived from it; the
        last prompt of an object cannot be removed (remove the object instead)."""
        frame = frame_number(frame)
        with self.lock:
            memory = self._memory(object_id)
            prompts = self.prompts[object_id]
            if frame not in prompts:
                raise KeyError(f"object {object_id} has no prompt on frame {frame}")
            if len(prompts) == 1:
                raise ValueError(
                    f"frame {frame} holds object {object_id}'s only prompt: every mask of the object "
                    "derives from it. Remove the object instead, or add another prompt first."
                )
            with self._step(f"clear the prompt of object {object_id} on slice {frame}") as record:
                for touch in (record.prompt, record.pending, record.entry):
                    touch(object_id, frame)
                record.stale(object_id)
                del prompts[frame]
                memory.pending.pop(frame, None)
                entry = memory.entries.get(frame)
                if frame not in memory.tracked:
                    memory.entries.pop(frame, None)
                elif entry is not None:
                    memory.entries[frame] = replace(entry, conditioning=False)
                    self.stale[object_id] |= {frame} | self._derived_frames(memory, frame)

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
        if direction not in ("forward", "backward", "both"):
            raise SessionError(f"direction must be 'forward', 'backward' or 'both', not {direction!r}")
        if limits is None:
            limits = (0, len(self.volume) - 1)
        if isinstance(limits, str) or not hasattr(limits, "__len__") or len(limits) != 2:
            raise SessionError(f"limits must be two frames (first, last), got {limits!r}")
        first, last = (self._check_frame(f) for f in limits)
        if first > last:
            raise SessionError(f"limits must be (first, last) with first <= last, got {limits}")
        if start is not None and not first <= self._check_frame(start) <= last:
            raise SessionError(f"start frame {start} lies outside limits {tuple(limits)}; start within them")
        ids = self._prompted(object_ids)
        if start is None:
            starts = [f for i in ids for f in self.prompts[i] if first <= f <= last]
            if not starts:
                raise PromptError(f"no prompt between frames {first} and {last}: add a click there first")
            start = min(starts)
        start = int(start)
        objects = {i: self.memories[i] for i in ids}
        run = _Run(f"propagate {direction} from slice {start}")
        with self._running():
            if direction in ("forward", "both"):
                yield from self._run(objects, range(start, last + 1), reverse=False, run=run)
            if direction in ("backward", "both") and start > 0:
                yield from self._run(objects, range(start, first - 1, -1), reverse=True, run=run)

    def repropagate(self, converge: ConvergeStop | None = None) -> Iterator[FrameResult]:
        """Recompute exactly the stale frames (those derived from a changed frame), each run
        from the prompted frame it derives from; stopping early leaves the rest stale.

        With ``converge``, each run stops once that many consecutive recomputed frames
        reproduce their earlier masks (see :class:`.ConvergeStop`): the frames after keep
        their earlier masks and stay in :attr:`stale`, which is how a caller tells what was
        kept; a later ``repropagate()`` recomputes them from where the run stopped."""
        run = _Run("re-propagate stale slices")
        with self._running():
            for object_id in self.object_ids:
                memory = self.memories.get(object_id)
                if memory is None:  # removed while an earlier object ran
                    continue
                for first, last, reverse in self._stale_runs(object_id):
                    step = -1 if reverse else 1
                    frames = range(first, last + step, step)
                    yield from self._run({object_id: memory}, frames, reverse=reverse, run=run, converge=converge)

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """Count a propagation as running from its first frame until it ends or is closed
        (undo is refused meanwhile: it would pull memory from under it)."""
        with self.lock:
            self._runs += 1
        try:
            yield
        finally:
            with self.lock:
                self._runs -= 1

    def _stale_runs(self, object_id: int) -> list[tuple[int, int, bool]]:
        """An object's stale frames as ``(first, last, reverse)`` runs of consecutive frames
        in their tracking direction. A run starts at the frame just before it when that is a
        prompted frame (as sam2 does when propagating from a prompt), else at its own first
        frame, whose predecessor's memory is still valid."""
        memory = self.memories[object_id]
        runs = []
        for reverse, step in ((False, 1), (True, -1)):
            frames = sorted((f for f in self.stale[object_id] if memory.tracked.get(f) is reverse), reverse=reverse)
            groups: list[list[int]] = []
            for f in frames:
                if groups and f == groups[-1][-1] + step:
                    groups[-1].append(f)
                else:
                    groups.append([f])
            for group in groups:
                anchor = group[0] - step
                runs.append((anchor if anchor in self.prompts[object_id] else group[0], group[-1], reverse))
        return runs

    def _prompted(self, object_ids: Iterable[int] | None) -> list[int]:
        if isinstance(object_ids, str) or not (object_ids is None or isinstance(object_ids, Iterable)):
            raise ObjectError(f"object_ids must be a list of object ids, e.g. [1, 2]; got {object_ids!r}")
        ids = self.object_ids if object_ids is None else sorted({self._memory(i).object_id for i in object_ids})
        prompted = [i for i in ids if self.prompts[i]]
        if not prompted:
            raise PromptError("no object has a prompt yet: click on the object in a slice first")
        return prompted

    def _run(
        self, objects: dict[int, ObjectMemory], order: range, reverse: bool, run: _Run,
        converge: ConvergeStop | None = None,
    ) -> Iterator[FrameResult]:
        """Track ``objects`` over ``order``. Each frame is recorded as a step of ``run``; the
        steps of one run merge into one undo step, however far the run gets. With
        ``converge``, the run ends after ``converge.frames`` consecutive frames on which every
        object was recomputed and agrees with its earlier entry.

        Objects removed between two frames (by the GUI, while this runs in a worker) leave the
        run at the next frame; objects added, or removed and added again under the same id,
        are not part of it. Such a change is an undo step of its own, between the run's steps
        before and after it."""
        with self.lock, self._step(run.description, run=run):
            self._commit_pending([i for i, memory in objects.items() if self.memories.get(i) is memory])
        agreeing = 0  # consecutive frames that reproduced their earlier masks
        for frame in order:
            with self.lock, self.model.inference(), self._step(run.description, run=run) as record:
                objects = {i: memory for i, memory in objects.items() if self.memories.get(i) is memory}
                if not objects:
                    return
                agrees = converge is not None
                for object_id, memory in objects.items():
                    entry = memory.entries.get(frame)
                    record.tracked(object_id, frame)
                    record.stale(object_id)
                    if entry is not None and entry.conditioning:
                        agrees = False  # not recomputed: it says nothing about convergence
                    else:
                        new = self._track(memory, frame, is_init_cond_frame=False, reverse=reverse, encode_memory=True)
                        agrees = agrees and converge.agrees(entry, new, self.model.spec.mask_threshold)
                        if entry is not None:
                            new.status = entry.status  # the user's pin or evict outlives a re-run
                        record.entry(object_id, frame)
                        memory.entries[frame] = new
                        bound = getattr(self.policy, "bound", None)
                        if bound is not None:
                            for dropped in bound(memory) or ():
                                record.entry(object_id, dropped.frame, before=dropped)
                    memory.tracked[frame] = reverse
                    self.stale[object_id].discard(frame)
                result = self.result(frame)
            release_freed_memory()
            yield result
            agreeing = agreeing + 1 if agrees else 0
            if converge is not None and agreeing >= converge.frames:
                return

    def _commit_pending(self, object_ids: list[int]) -> None:
        """Encode the memory of prompted frames, as sam2 does when propagation starts."""
        record = self.history.recorder
        for object_id in object_ids:
            memory = self.memories[object_id]
            encoded = self._encode_pending(memory)
            for frame, entry in encoded.items():
                record.pending(object_id, frame)
                record.entry(object_id, frame)
                memory.entries[frame] = entry
            memory.pending.clear()

    def _encode_pending(self, memory: ObjectMemory, keep_pos_enc: list | None = None) -> dict[int, MemoryEntry]:
        """The object's pending prompt results with their memory encoded, as new entries.
        The session is not changed, except that the memory position encoding is remembered
        the first time; with ``keep_pos_enc`` (a one-item list) it is put there instead."""
        encoded = {}
        with self.model.inference():
            for frame, entry in sorted(memory.pending.items()):
                features = self.features[frame]
                maskmem, pos_enc = encode_prompt_memory(
                    self.model.sam, features, entry.low_res_logits.to(self.model.device),
                    torch.tensor([[entry.object_score]], device=self.model.device),
                )
                encoded[frame] = replace(entry, maskmem_features=maskmem.to(torch.bfloat16))
                if keep_pos_enc is None:
                    self._remember_pos_enc(pos_enc)
                elif keep_pos_enc[0] is None:
                    keep_pos_enc[0] = [p[0:1].clone() for p in pos_enc]
        return encoded

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
        features = self.features[frame]
        descriptor = features.descriptor
        view = self.policy.view(memory, frame, reverse, sam, descriptor)
        extra = None if is_init_cond_frame else self._retrieve(memory, descriptor, features.feat_sizes[-1])
        with library_tokens_in(sam.memory_attention, extra):
            out = track_step(
                sam, features, view.to_sam2(self._maskmem_pos_enc or []), frame, len(self.volume),
                is_init_cond_frame=is_init_cond_frame, reverse=reverse, point_inputs=point_inputs,
                mask_inputs=mask_inputs, prev_logits=prev_logits, encode_memory=encode_memory,
            )
        ious, low_res, obj_ptr, object_score = out.ious, out.low_res, out.obj_ptr, out.object_score
        if sam.fill_hole_area > 0:
            from sam2.utils.misc import fill_holes_in_mask_scores

            low_res = fill_holes_in_mask_scores(low_res, sam.fill_hole_area)
        maskmem = out.maskmem_features
        if maskmem is not None:
            self._remember_pos_enc(out.maskmem_pos_enc)
            maskmem = maskmem.to(torch.bfloat16)
        # One device-to-host transfer for the numbers the bank keeps on the CPU: each
        # transfer waits for the GPU, and stock sam2 waits once a frame.
        summary = torch.cat([ious.float().max().reshape(1), object_score.float().max().reshape(1),
                             descriptor.float()]).cpu()
        return MemoryEntry(
            object_id=memory.object_id,
            frame=frame,
            conditioning=conditioning,
            reverse=reverse,
            predicted_iou=float(summary[0]),
            object_score=float(summary[1]),
            low_res_logits=low_res.float(),
            obj_ptr=obj_ptr,
            maskmem_features=maskmem,
            descriptor=summary[2:].to(torch.float16),
        )

    def _retrieve(self, memory: ObjectMemory, descriptor: torch.Tensor, feat_size) -> tuple | None:
        """Library memories for this step: pinned ones plus the best ``library_k`` others."""
        if self.library is None or not len(self.library) or self._maskmem_pos_enc is None:
            return None
        evicted = {i for i, e in memory.library.items() if e.status is EntryStatus.EVICTED}
        # (an index past the end: the library shrank, e.g. another session undid an addition)
        pinned = [i for i, e in memory.library.items() if e.status is EntryStatus.PINNED and i < len(self.library)]
        ranked = [i for i, _ in self.library.retrieve(descriptor, len(self.library)) if i not in evicted]
        chosen = pinned + [i for i in ranked if i not in pinned][: self.library_k]
        if not chosen:
            return None
        for index in chosen:
            if index not in memory.library:
                self.history.recorder.library_row(memory.object_id, index)
                memory.library[index] = library_row(memory.object_id, index, self.library.entries[index])
        entries = [self.library.entries[i] for i in chosen]
        return memory_tokens(entries, feat_size, self._maskmem_pos_enc[-1], self.model.device, torch.float32)

    def _remember_pos_enc(self, pos_enc: list[torch.Tensor]) -> None:
        # identical for every frame and object: sam2 keeps one copy, so do we
        if self._maskmem_pos_enc is None:
            self.history.recorder.pos_enc()
            self._maskmem_pos_enc = [p[0:1].clone() for p in pos_enc]

    # image features ------------------------------------------------------------------------
    @property
    def cache(self) -> EmbeddingCache:
        return self.features.cache

    @property
    def frames_encoded(self) -> int:
        """Image-encoder runs so far, for tests and benchmarks."""
        return self.features.frames_encoded

    def cache_key(self, frame: int) -> str:
        return self.features.cache_key(frame)

    def encoded_with(self, frame: int) -> tuple[int, ...]:
        return self.features.encoded_with(frame)

    def prefetch(self, frames: int | Sequence[int]) -> tuple[int, ...]:
        """Put the image features of ``frames`` (one frame, or several for one batch) into the
        cache with one encoder run, without holding :attr:`lock` while it runs; see
        :meth:`.SliceFeatures.prefetch`."""
        asked = [frames] if isinstance(frames, int | np.integer) else list(frames)
        return self.features.prefetch([self._check_frame(f) for f in asked])

    def encode(self, frames: Iterable[int] | None = None) -> Iterator[int]:
        """Put the image features of ``frames`` (default: every frame) into the cache,
        yielding each frame once it is there; frames already cached are not read back.
        With a persistent cache this is what makes a later session on the volume instant
        (``python -m napari_samed2.cohort embed`` runs it over a cohort); to encode nearest
        to a moving position first (the GUI's background encoding), see :mod:`.prefetch`."""
        frames = range(len(self.volume)) if frames is None else frames
        for frame in frames:
            frame = self._check_frame(frame)
            self.prefetch(frame)
            yield frame

    # memory bank ---------------------------------------------------------------------------
    def memory_entries(self, object_id: int | None = None) -> list[MemoryEntry]:
        """Every memory entry (session frames, then retrieved library entries), by object."""
        rows = []
        for i in self.object_ids if object_id is None else [object_id]:
            memory = self._memory(i)
            rows += [memory.entries[f] for f in sorted(memory.entries)]
            rows += [memory.library[k] for k in sorted(memory.library)]
        return rows

    def pin(self, object_id: int, frame: int) -> None:
        """Always attend to this entry for its object, like a prompted frame."""
        self._set_status(object_id, frame, EntryStatus.PINNED)

    def evict(self, object_id: int, frame: int) -> None:
        """Never attend to this entry again (its mask stays as the frame's result)."""
        self._set_status(object_id, frame, EntryStatus.EVICTED)

    def restore(self, object_id: int, frame: int) -> None:
        """Undo a pin or an evict: the policy decides again."""
        self._set_status(object_id, frame, EntryStatus.AUTO)

    def _set_status(self, object_id: int, frame: int, status: EntryStatus) -> None:
        object_id, frame = self._memory(object_id).object_id, frame_number(frame)  # before the step names them
        verb = {EntryStatus.PINNED: "pin", EntryStatus.EVICTED: "evict", EntryStatus.AUTO: "restore"}[status]
        where = f"library #{-1 - frame}" if frame < 0 else f"slice {frame}"
        with self.lock, self._step(f"{verb} {where} of object {object_id}"):
            self._apply_status(object_id, frame, status)

    def _apply_status(self, object_id: int, frame: int, status: EntryStatus) -> None:
        memory = self._memory(object_id)
        entry = memory.entries.get(frame) if frame >= 0 else memory.library.get(-1 - frame)
        if entry is None:
            raise KeyError(f"object {object_id} has no memory entry for frame {frame}; propagate first")
        if entry.status is status:
            return
        if status is EntryStatus.PINNED:
            if entry.conditioning:
                raise ValueError(
                    f"frame {frame} holds a prompt of object {object_id}: prompted frames are always "
                    "attended to, so pinning it would change nothing; pin a tracked frame instead"
                )
            if entry.maskmem_features is None:
                raise ValueError(f"frame {frame} has no stored memory to pin (it was dropped or not propagated yet)")
            pinned = [e for e in memory.entries.values() if e.status is EntryStatus.PINNED]
            if len(pinned) >= self.model.sam.num_maskmem - 1:
                raise ValueError(
                    f"object {object_id} already has {len(pinned)} pinned frames, as many as SAM-2 has "
                    "memory slots; restore one before pinning another"
                )
        if status is EntryStatus.EVICTED and entry.conditioning:
            others = [e for e in memory.entries.values() if e.conditioning and e.attendable and e is not entry]
            if not others:
                raise ValueError(
                    f"frame {frame} is the only prompted frame in object {object_id}'s memory and "
                    "cannot be evicted; change or remove its prompt instead"
                )
        record = self.history.recorder
        record.stale(object_id)
        if frame >= 0:
            record.entry(object_id, frame)
            memory.entries[frame] = replace(entry, status=status)
        else:
            record.library_row(object_id, -1 - frame)
            memory.library[-1 - frame] = replace(entry, status=status)
        if entry.source is EntrySource.LIBRARY:  # library memories guide every tracked frame
            self.stale[object_id] |= set(memory.tracked) - set(self.prompts[object_id])
        else:
            self.stale[object_id] |= self._derived_frames(memory, frame)

    def set_policy(self, policy: str | MemoryPolicy, **options) -> None:
        """Switch memory policy (e.g. ``"confidence", min_iou=0.7``); every tracked,
        unprompted frame becomes stale, since its memory may now be chosen differently."""
        policy = make_policy(policy, **options)
        with self.lock, self._step(f"memory policy {policy.name}") as record:
            record.policy()
            self.policy = policy
            for object_id, memory in self.memories.items():
                record.stale(object_id)
                self.stale[object_id] |= set(memory.tracked) - set(self.prompts[object_id])

    def memory_view(self, object_id: int, frame: int, reverse: bool = False) -> MemoryView:
        """What the policy would let ``frame`` attend to now (for the inspector and tests)."""
        frame = self._check_frame(frame)
        with self.model.inference():
            descriptor = self.features[frame].descriptor
        return self.policy.view(self._memory(object_id), frame, reverse, self.model.sam, descriptor)

    def add_to_library(
        self, object_id: int, *, min_confidence: float = 0.8, max_entries: int = 8, label: str = "", case: str = ""
    ) -> int:
        """Store this object's most confident, not evicted memories in the library (the
        user confirms the case is right). Returns how many entries the library kept."""
        if self.library is None:
            raise ValueError("this session has no library: pass library=MemoryLibrary() or MemoryLibrary.load(folder)")
        candidates = sorted(
            (
                e for e in self._memory(object_id).entries.values()
                if e.attendable and e.descriptor is not None and e.confidence >= min_confidence
            ),
            key=lambda e: -e.confidence,
        )[:max_entries]
        kept = 0
        with self.lock, self._step(f"add object {object_id} to the library") as record:
            for e in candidates:
                placement = self.library.place(LibraryEntry(e.maskmem_features, e.descriptor, e.predicted_iou, label, case))
                if placement is not None:
                    record.library(placement)
                    kept += 1
        return kept

    def confirm(self, store, **options):
        """The whole volume is right: see :func:`napari_samed2.training.continual.confirm`."""
        from napari_samed2.training.continual import confirm

        return confirm(self, store, **options)

    # saving ----------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write prompts, memory entries (with their status) and tracking state to ``folder``
        (``session.json`` + ``tensors.safetensors``) so work can resume later on the same
        volume and model. Prompt results still pending are written with their memory encoded,
        as a propagation would store them; the session itself is not changed. A save that
        fails leaves an earlier save in ``folder`` as it was."""
        return save_session(self, folder)

    @classmethod
    def load(cls, folder: str | Path, model: LoadedModel, volume, **options) -> Session:
        """A session saved with :meth:`save`, on the same volume (checked frame by frame)."""
        return load_session(cls, folder, model, volume, **options)

    # undo ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _step(self, description: str, run: _Run | None = None) -> Iterator[Recorder]:
        """Record what the block changes as one undo step (joins a step already open)."""
        with self.lock, self.history.record(self, description, run=run) as record:
            yield record

    def undo(self) -> Rewind | None:
        """Put the session back as it was before its last step: prompts, memory entries (with
        their pin / evict status), stale frames, policy, results, and what the step added to
        the library. ``None`` when there is nothing to undo. Refused (:class:`HistoryError`)
        while a propagation runs: finish it or close its generator first."""
        with self.lock:
            self._check_idle("undo")
            return self.history.undo(self)

    def redo(self) -> Rewind | None:
        """Do again the last step undone (``None`` when there is none)."""
        with self.lock:
            self._check_idle("redo")
            return self.history.redo(self)

    def begin_step(self, description: str) -> None:
        """Until :meth:`end_step`, every change is part of one undo step (the GUI's jobs)."""
        with self.lock:
            self.history.begin_group(description)

    def end_step(self, tag=None) -> Step | None:
        """Close the step begun with :meth:`begin_step`; ``tag`` is kept with it for the caller."""
        with self.lock:
            return self.history.end_group(tag)

    def _check_idle(self, what: str) -> None:
        if self._runs:
            raise HistoryError(
                f"cannot {what} while a propagation is running: let it finish, or stop it "
                f"(close its generator), then {what}"
            )

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

    def _check_frame(self, frame: int) -> int:
        return self.volume.check_frame(frame)
