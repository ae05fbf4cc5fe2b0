"""Background encoding for the Segmentation panel: the slices of the open segmentation are
encoded into the embedding cache while the user looks, so the first propagation waits only
on the memory path (see :mod:`napari_samed2.engine.prefetch`).

It has the lowest priority: it runs only while the panel has no job (a click being
segmented, a propagation, a re-propagation) and for a moment after the user last edited a
prompt, nearest to the slice on screen first. On a CUDA GPU it goes on during propagations
(:meth:`BackgroundEncoding.pauses_for`): the GPU runs both, the encoder in batches on a stream
of its own, ahead of the tracker it feeds; a click still waits for nothing but its slice. Pausing stops the worker after its current
slice (the engine's :class:`~napari_samed2.engine.prefetch.Prefetcher` keeps what is left)
and resuming starts another, so there is no pause/resume handshake with a running thread.
The workers run on a one-thread pool of their own (one for the process): they never share
a thread with the panel's jobs, since they lower its priority, and two never run at once. The
pool is no widget's child: Qt deleting a pool waits for its thread, and a window closed from
Python while a slice was encoding then deadlocked (the thread needed the GIL the close held).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, ClassVar

from qtpy.QtCore import QThreadPool, QTimer
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QWidget

from napari_samed2.engine.prefetch import Prefetched, Prefetcher

if TYPE_CHECKING:
    import napari

    from napari_samed2.engine import Session

QUIET_MS = 1500  # after a prompt edit, encoding waits this long: the next click usually follows
#: the panel's jobs that a CUDA GPU runs beside the encoder (it feeds them rather than competing)
PROPAGATIONS = frozenset({"propagate", "re-propagate", "full re-run"})
_POOL: list[QThreadPool] = []  # made on first use


def _pool() -> QThreadPool:
    if not _POOL:
        pool = QThreadPool()
        pool.setMaxThreadCount(1)
        _POOL.append(pool)
    return _POOL[0]


def _lower_priority() -> None:
    """Give the calling thread the lowest CPU priority (nice 19), on Linux only.

    Linux keeps a nice value per thread, and threads inherit it when created, so this covers
    the worker thread and the OpenMP threads PyTorch starts for it (libgomp keeps a team per
    calling thread): on a CPU a propagation running beside it gets nearly all of the cores.
    It does not cover work queued on a GPU (the GPU has no such priority: pausing for clicks
    is what keeps it out of their way there), PyTorch builds whose intra-op pool is shared between
    threads, or other systems (macOS and Windows have no per-thread nice; nothing is done).
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _encode(prefetcher: Prefetcher) -> Iterator[Prefetched]:
    """The worker's generator: the prefetcher's steps at the lowest priority."""
    _lower_priority()
    yield from prefetcher.steps()


class BackgroundEncoding(QWidget):
    """The panel's "Encode slices in the background" checkbox and progress line, and the
    worker behind them. ``where`` gives the slice on screen (read on the GUI thread when the
    viewer's position changes; the worker only reads the number kept)."""

    #: whether the checkbox starts checked (the GUI tests switch it off, see tests/gui/conftest.py)
    on_by_default: ClassVar[bool] = True

    def __init__(self, where: Callable[[], int], viewer: napari.Viewer | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self._where, self._viewer = where, viewer
        self.check = QCheckBox("Encode slices in the background")
        self.check.setToolTip(
            "Run the image encoder over the slices while you look, nearest to the slice on screen first, "
            "so that propagating waits less; it pauses while the panel segments or propagates "
            "(on a CUDA GPU it goes on during propagations, ahead of them)"
        )
        self.check.setChecked(self.on_by_default)
        self.check.toggled.connect(self._update)
        self.label = QLabel()
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.check)
        row.addWidget(self.label)
        row.addStretch()
        self._quiet = QTimer(self)
        self._quiet.setSingleShot(True)
        self._quiet.setInterval(QUIET_MS)
        self._quiet.timeout.connect(self._update)
        self._prefetcher: Prefetcher | None = None
        self._position = 0
        self._jobs: tuple[str, ...] = ()  # the panel's jobs, running and waiting
        self._error = ""
        self._worker = None  # the worker that should be running, if any
        self._workers: set = set()  # every worker not finished yet (quit ones end after their slice)
        self._alive = True  # False once the viewer closes or Qt deletes this widget: signals then go nowhere
        self.destroyed.connect(lambda: setattr(self, "_alive", False))
        self._show()

    # what the panel tells it ---------------------------------------------------------------
    def start(self, session: Session) -> None:
        """Encode ``session``'s slices (a new segmentation, a resumed one, a new model)."""
        self.stop()
        self._prefetcher, self._error = Prefetcher(session, lambda: self._position), ""
        self._moved()
        if self._viewer is not None:
            self._viewer.dims.events.current_step.connect(self._moved)
        self._update()

    def stop(self) -> None:
        """No more encoding for this session (it ended, or another replaces it)."""
        if self._prefetcher is not None and self._viewer is not None:
            self._viewer.dims.events.current_step.disconnect(self._moved)
        self._prefetcher = None
        self._update()

    def set_jobs(self, jobs: Iterable[str]) -> None:
        """The panel's jobs (names, running and waiting) changed: pause or resume."""
        self._jobs = tuple(jobs)
        self._update()

    @property
    def on_cuda(self) -> bool:
        """Whether the session's model runs on a CUDA GPU."""
        return self._prefetcher is not None and self._prefetcher.session.model.device.type == "cuda"

    def pauses_for(self, jobs: Iterable[str]) -> bool:
        """Whether the panel's ``jobs`` pause encoding. On a CPU every job does: encoder and
        tracker would share its cores. On CUDA propagations do not: the GPU runs both, and
        the encoder, batches ahead, feeds the tracker the features it will need; a click
        (or a prompt edit) still pauses it, since it waits on its one slice."""
        return any(not (self.on_cuda and job in PROPAGATIONS) for job in jobs)

    def hold(self) -> None:
        """The user is editing prompts: pause until they have stopped for a moment."""
        self._quiet.start()
        self._update()

    def shutdown(self, timeout_s: float) -> bool:
        """Stop, and wait (up to ``timeout_s``) for the worker to end its slice: the viewer is
        closing. True if no worker runs any more."""
        self.stop()
        self._quiet.stop()
        deadline = time.monotonic() + timeout_s
        while any(w.is_running for w in self._workers) and time.monotonic() < deadline:
            time.sleep(0.01)  # the worker ends its slice meanwhile (sleep releases the GIL)
        self._alive = False  # its signals still queued must not reach widgets Qt is deleting
        return not any(w.is_running for w in self._workers)

    @property
    def running(self) -> bool:
        """A worker is encoding (or finishing its slice after a pause)."""
        return bool(self._workers)

    # the worker ----------------------------------------------------------------------------
    def _wanted(self) -> bool:
        return (
            self._prefetcher is not None and bool(self._prefetcher.remaining) and self.check.isChecked()
            and not self.pauses_for(self._jobs) and not self._quiet.isActive() and not self._error
        )

    def _update(self, *_args) -> None:
        """Start a worker or ask the running one to stop, whichever the state calls for."""
        wanted = self._wanted()
        if wanted and self._worker is None:
            from napari.qt.threading import GeneratorWorker

            worker = self._worker = GeneratorWorker(_encode, self._prefetcher)
            self._workers.add(worker)  # referenced until it ends, also after a pause
            worker.yielded.connect(lambda step: self._alive and self._show(step))
            worker.errored.connect(lambda exc: self._alive and self._failed(exc))
            worker.finished.connect(lambda: self._alive and self._ended(worker))
            _pool().start(worker)  # after the previous worker's slice, if one is ending
        elif not wanted and self._worker is not None:
            self._worker.quit()  # after its current slice; _ended forgets it
            self._worker = None
        self._show()

    def _ended(self, worker) -> None:
        self._workers.discard(worker)
        if worker is self._worker:  # it ran out of slices, or failed
            self._worker = None
        self._update()

    def _failed(self, exc: Exception) -> None:
        self._error = str(exc) or type(exc).__name__
        self._show()

    def _moved(self, _event=None) -> None:
        if self._prefetcher is not None:
            with contextlib.suppress(Exception):  # a layer mid-removal: keep the last position
                self._position = int(self._where())

    def _show(self, _step: Prefetched | None = None) -> None:
        prefetcher = self._prefetcher
        if self._error:
            text = (f"Background encoding stopped: {self._error}. Slices are encoded when they are "
                    "needed instead; nothing else is affected.")
        elif prefetcher is None or not self.check.isChecked():
            text = ""
        elif not prefetcher.remaining:
            text = f"All {prefetcher.total} slices encoded"
        else:
            waiting = " (paused)" if self._worker is None else ""
            text = f"Slices encoded: {prefetcher.done}/{prefetcher.total}{waiting}"
        self.label.setText(text)
        self.label.setWordWrap(bool(self._error))
