"""Image features ready before they are needed: a volume's slices encoded nearest to where
the user looks first.

The image encoder is most of a tracked frame's time on a CPU (~0.38 s of ~0.6 s a slice,
SAM2.1 tiny at 512 px on 2 cores), so a volume whose slices are already in the embedding
cache propagates ~2.7x faster the first time. :class:`Prefetcher` encodes a batch of slices
a step through :meth:`Session.prefetch <napari_samed2.engine.session.Session.prefetch>`,
which runs the encoder without holding the session's lock, so clicks and propagations in
other threads go on meanwhile. The features are the ones the session computes itself (same
call; SAMed-2's slices still in their pairs), so masks do not change with batches of one;
larger batches agree to float rounding (a convolution over a batch may sum in another order).

On a CPU a batch is one slice (batching does not pay there: 0.35 s a slice alone, 0.38 in
fours). On a GPU, where a volume is known in advance, unlike a streaming video, ``batch="auto"``
encodes as many slices at once as half the free memory holds (:func:`auto_batch`), on a CUDA
stream of its own (:func:`on_side_stream`), so the encoder runs ahead of a propagation on the
same GPU instead of after it.

The caller decides when it runs: iterate :meth:`Prefetcher.steps` in a worker and stop
iterating to pause; a later :meth:`~Prefetcher.steps` goes on where it stopped. The GUI's
background encoding (:mod:`napari_samed2._widgets.prefetch`) does so around its jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

import torch

from napari_samed2.errors import SessionError

if TYPE_CHECKING:
    from napari_samed2.engine.session import Session
    from napari_samed2.models.loading import LoadedModel

T = TypeVar("T")
Batch = int | Literal["auto"]
MAX_BATCH = 32  # slices per encoder run: more gains nothing once the GPU is busy, and costs latency
ACTIVATION_FACTOR = 8  # the encoder's transient activations, in multiples of a slice's features
_STREAMS: dict[torch.device, torch.cuda.Stream] = {}  # one side stream per GPU, made on first use


@dataclass(frozen=True)
class Prefetched:
    """One step: ``frames`` (nearest first) are in the cache now; ``encoded`` are the frames
    the image encoder ran for at this step, in one batch (empty when all were cached already,
    by a propagation for instance); ``done`` of the volume's ``total`` frames are known to be
    cached."""

    frames: tuple[int, ...]
    encoded: tuple[int, ...]
    done: int
    total: int

    @property
    def frame(self) -> int:
        """The frame nearest to the position: the one a batch of one is made of."""
        return self.frames[0]

    @property
    def finished(self) -> bool:
        return self.done == self.total


def nearest(position: int, frames: set[int]) -> int:
    """The frame of ``frames`` closest to ``position``; of two as close, the one after it,
    since a propagation in both directions runs forward first."""
    return min(frames, key=lambda f: (abs(f - position), -f))


def check_batch(batch: Batch) -> Batch:
    """``batch`` if it is ``"auto"`` or a whole number >= 1 (:class:`SessionError` otherwise)."""
    if batch == "auto" or (isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1):
        return batch
    raise SessionError(f"batch must be 'auto' or a whole number of slices >= 1, got {batch!r}")


def slice_bytes(model: LoadedModel) -> int:
    """A simple estimate of the GPU memory one slice takes in an encoder run.

    Its features, as the cache keeps them: ``hidden_dim`` channels at strides 4, 8 and 16 of
    the input size, in float32 (bf16 autocast stores less: this errs on the safe side); and
    :data:`ACTIVATION_FACTOR` times as much again for the encoder's activations while it
    runs (the Hiera trunk's widest stage is at stride 4, with MLPs four times its width).
    SAM2.1 at 1024 px: 88 MB of features, ~0.8 GB a slice in all. A guess, not a
    measurement: ``torch.cuda.max_memory_allocated`` around one run on a GPU checks it.
    """
    size = model.image_size
    elements = model.sam.hidden_dim * sum((size // stride) ** 2 for stride in (4, 8, 16))
    return elements * 4 * (1 + ACTIVATION_FACTOR)


def auto_batch(model: LoadedModel) -> int:
    """Slices per encoder run for ``batch="auto"``: 1 off CUDA (batching does not pay on a CPU);
    on CUDA as many as half the free memory holds (:func:`slice_bytes` each; the other half
    is left to the tracker and to the cache's growth), 1 to :data:`MAX_BATCH`. Read again
    before every batch, since the cache and a propagation take memory as they go."""
    if model.device.type != "cuda":
        return 1
    free, _total = torch.cuda.mem_get_info(model.device)
    return max(1, min(MAX_BATCH, free // 2 // slice_bytes(model)))


def on_side_stream(device: torch.device, work: Callable[[], T], outputs: Callable[[T], Iterable[torch.Tensor]]) -> T:
    """``work()``, run on a CUDA stream of its own when ``device`` is a GPU (off CUDA, just
    ``work()``), its ``outputs`` made safe to hand to another thread's stream.

    Each CUDA line is needed:

    * a dedicated stream (priority 0, as the default stream's: CUDA has none lower): the
      encoder's kernels queue beside the tracker's on the default stream instead of behind
      them, so both run at once;
    * ``wait_stream``: the side stream starts after what the default stream queued before
      (weights loaded or changed there), as work on one stream would;
    * ``synchronize`` in the encoding thread, before the caller puts the outputs into the
      cache: a tracker reading them on the default stream never sees unfinished tensors,
      and the wait blocks only this thread, never under the session's lock;
    * ``record_stream`` of the default stream, which reads them later (the tracker, the
      cache's writer thread): memory made on the side stream is otherwise reused by the
      side stream as soon as the cache drops it, while reads queued on the default stream
      may not have run yet.
    """
    if device.type != "cuda":
        return work()
    stream = _STREAMS.get(device)
    if stream is None:
        stream = _STREAMS[device] = torch.cuda.Stream(device)
    reader = torch.cuda.default_stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        out = work()
    stream.synchronize()
    for tensor in outputs(out):
        tensor.record_stream(reader)
    return out


class Prefetcher:
    """Encodes every frame of ``session`` once, nearest to ``position()`` first, ``batch``
    frames an encoder run (``"auto"``: see :func:`auto_batch`).

    ``position`` is read again before each batch (the slice on screen, say), so moving it
    re-prioritises what is left. Frames found in the cache are skipped, not encoded again.
    A batch counts every slice the encoder runs for, SAMed-2's partners too, and takes
    whole pairs; it holds at least one frame (with its partner), whatever ``batch`` says.
    """

    def __init__(self, session: Session, position: Callable[[], int] = lambda: 0, batch: Batch = "auto"):
        self.session = session
        self.position = position
        self.batch = check_batch(batch)
        self.remaining: set[int] = set(range(len(session.volume)))

    @property
    def total(self) -> int:
        return len(self.session.volume)

    @property
    def done(self) -> int:
        return self.total - len(self.remaining)

    def steps(self) -> Iterator[Prefetched]:
        """Encode batch after batch, yielding after each; stop iterating to pause."""
        last = self.total - 1
        while self.remaining:
            frames = self._next_batch(min(max(int(self.position()), 0), last))
            encoded = self.session.prefetch(frames)
            self.remaining.difference_update({*frames, *encoded})
            yield Prefetched(tuple(frames), encoded, self.done, self.total)

    def _next_batch(self, position: int) -> list[int]:
        """The frames left nearest to ``position``, as many as fit in a batch with the
        partner slices the encoder runs for with them."""
        size = auto_batch(self.session.model) if self.batch == "auto" else self.batch
        left, frames, slices = set(self.remaining), [], set()
        while left:
            frame = nearest(position, left)
            unit = set(self.session.encoded_with(frame))
            if frames and len(slices | unit) > size:
                break
            frames.append(frame)
            slices |= unit
            left -= unit
        return frames
