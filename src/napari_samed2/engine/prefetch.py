"""Image features ready before they are needed: a volume's slices encoded nearest to where
the user looks first.

The image encoder is most of a tracked frame's time on a CPU (~0.38 s of ~0.6 s a slice,
SAM2.1 tiny at 512 px on 2 cores), so a volume whose slices are already in the embedding
cache propagates ~2.7x faster the first time. :class:`Prefetcher` encodes one slice a step
(batching does not pay on a CPU: 0.35 s a slice alone, 0.38 in fours) through
:meth:`Session.prefetch <napari_samed2.engine.session.Session.prefetch>`, which runs the
encoder without holding the session's lock, so clicks and propagations in other threads go
on meanwhile. The features are the ones the session computes itself (same call, batch of one
or SAMed-2's pair), so masks do not change.

The caller decides when it runs: iterate :meth:`Prefetcher.steps` in a worker and stop
iterating to pause; a later :meth:`~Prefetcher.steps` goes on where it stopped. The GUI's
background encoding (:mod:`napari_samed2._widgets.prefetch`) does so around its jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from napari_samed2.engine.session import Session


@dataclass(frozen=True)
class Prefetched:
    """One step: ``frame`` is in the cache now; ``encoded`` are the frames the image encoder
    ran for at this step (empty when it was cached already, by a propagation for instance);
    ``done`` of the volume's ``total`` frames are known to be cached."""

    frame: int
    encoded: tuple[int, ...]
    done: int
    total: int

    @property
    def finished(self) -> bool:
        return self.done == self.total


def nearest(position: int, frames: set[int]) -> int:
    """The frame of ``frames`` closest to ``position``; of two as close, the one after it,
    since a propagation in both directions runs forward first."""
    return min(frames, key=lambda f: (abs(f - position), -f))


class Prefetcher:
    """Encodes every frame of ``session`` once, nearest to ``position()`` first.

    ``position`` is read again before each frame (the slice on screen, say), so moving it
    re-prioritises what is left. Frames found in the cache are skipped, not encoded again.
    """

    def __init__(self, session: Session, position: Callable[[], int] = lambda: 0):
        self.session = session
        self.position = position
        self.remaining: set[int] = set(range(len(session.volume)))

    @property
    def total(self) -> int:
        return len(self.session.volume)

    @property
    def done(self) -> int:
        return self.total - len(self.remaining)

    def steps(self) -> Iterator[Prefetched]:
        """Encode frame after frame, yielding after each; stop iterating to pause."""
        last = self.total - 1
        while self.remaining:
            frame = nearest(min(max(int(self.position()), 0), last), self.remaining)
            encoded = self.session.prefetch(frame)
            self.remaining.difference_update({frame, *encoded})
            yield Prefetched(frame, encoded, self.done, self.total)
