"""Autosave: the segmentation written to its folder in a worker thread after each completed step.

The panel hands over a ``write(folder)`` function that saves what it captured on the GUI thread
(the session, a copy of the output labels); this object runs one save at a time, keeps only
the newest request of each segmentation while one runs (a segmentation replaced meanwhile
still gets its last save), falls back to the next folder when one cannot be written (next to
the image, then the user's data directory), and reports a failure once until a save works
again: annotation never waits for it and never stops because of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from qtpy.QtCore import QObject, Signal

from napari_samed2._widgets.session_files import prune_autosaves
from napari_samed2.errors import OutputFolderError

Write = Callable[[Path], Path]


@dataclass(frozen=True)
class _Request:
    write: Write
    candidates: list[Path]  # as they were when it was asked for
    generation: int


def _save(write: Write, candidates: list[Path]) -> Path:
    """Worker: the first folder that can be written gets the save."""
    error: Exception | None = None
    for folder in candidates:
        try:
            saved = write(folder)
        except OutputFolderError as exc:
            error = exc
            continue
        prune_autosaves(saved)
        return saved
    raise error if error is not None else OutputFolderError("no folder to autosave to")


class Autosaver(QObject):
    """One segmentation's autosaves. ``saved(folder)`` after each save; ``failed(message)``
    for the first failure after a save that worked (or after :meth:`reset`)."""

    saved = Signal(object)
    failed = Signal(str)

    def __init__(self):
        super().__init__()
        self.enabled = True
        self.candidates: list[Path] = []  # where the segmentation may autosave, preferred first
        self.folder: Path | None = None  # where the last save went
        self.last_saved: datetime | None = None
        self.error: str | None = None  # the last failure, until a save works
        self._worker = None
        self._pending: list[_Request] = []  # at most one per segmentation, oldest first
        self._generation = 0  # a save of an earlier segmentation reports nothing

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def reset(self, candidates: list[Path], saved: Path | None = None) -> None:
        """A new segmentation autosaves to the first of ``candidates`` that works (``saved``: a
        resumed autosave goes on in its own folder)."""
        self._generation += 1
        self.candidates = [saved] if saved is not None else list(candidates)
        self.folder, self.last_saved, self.error = saved, None, None

    def request(self, write: Write) -> bool:
        """Save now in a worker, or after the save that is running (only the newest waits)."""
        if not self.enabled or not self.candidates:
            return False
        request = _Request(write, list(self.candidates), self._generation)
        if self._worker is not None:
            self._pending = [r for r in self._pending if r.generation != request.generation] + [request]
        else:
            self._start(request)
        return True

    def _start(self, request: _Request) -> None:
        from napari.qt.threading import create_worker

        generation = request.generation
        self._worker = create_worker(
            _save, request.write, request.candidates,
            _connect={
                "returned": lambda folder: self._on_saved(folder, generation),
                "errored": lambda exc: self._on_failed(exc, generation),
                "finished": self._on_finished,
            },
        )

    def _on_saved(self, folder: Path, generation: int) -> None:
        if generation != self._generation:
            return
        self.candidates, self.folder, self.last_saved, self.error = [folder], folder, datetime.now(), None
        self.saved.emit(folder)

    def _on_failed(self, exc: Exception, generation: int) -> None:
        if generation != self._generation:
            return
        first = self.error is None
        self.error = str(exc) or type(exc).__name__
        if first:
            self.failed.emit(self.error)

    def _on_finished(self) -> None:
        self._worker = None
        if self._pending and self.enabled:
            self._start(self._pending.pop(0))
        else:
            self._pending.clear()
