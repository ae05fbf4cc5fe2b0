"""The output label volume: engine results written frame by frame, with undo/redo, never over
a frame the user edited by hand unless asked.

The array is the user's annotation (in the GUI, the output Labels layer's data), so every
change is recorded as an undoable step, and a frame whose content is no longer what the plugin
last wrote there (the user painted it, or it held labels before) is left alone: ``write``
reports it instead, and the caller asks the user before writing again with ``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from napari_samed2.engine.results import FrameResult
from napari_samed2.engine.volume import Volume

DEFAULT_UNDO_BYTES = 256 * 2**20


def _digest(frame: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(frame).data, digest_size=16).digest()


@dataclass
class _FrameChange:
    before: bytes  # zlib-compressed frame content (label images compress ~100x)
    after: bytes
    digest_before: bytes
    digest_after: bytes
    written_before: bytes | None  # what the plugin had recorded as its own content before


@dataclass
class LabelEdit:
    """One undoable step: a propagation, a click's result, an object removed."""

    description: str
    changes: dict[int, _FrameChange] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(len(c.before) + len(c.after) for c in self.changes.values())


@dataclass(frozen=True)
class WriteReport:
    written: list[int]
    skipped_edited: list[int]  # frames edited by hand, left as they were


class LabelVolume:
    """``data`` (a writable array with the image's spatial shape) seen frame by frame as the
    image ``volume`` is: same slicing axis, same fixed indices.

    Each object id is its label value. Writing a frame replaces only the pixels of the objects
    in the result; other labels on the frame stay.
    """

    def __init__(self, data: np.ndarray, volume: Volume, *, max_undo_bytes: int = DEFAULT_UNDO_BYTES):
        if tuple(data.shape) != volume.spatial_shape:
            raise ValueError(f"labels of shape {tuple(data.shape)} do not match the image's {volume.spatial_shape}")
        if not isinstance(data, np.ndarray) or not data.flags.writeable:
            raise ValueError("the output labels must be a writable numpy array (load a lazy label file into memory)")
        if not np.issubdtype(data.dtype, np.integer):
            raise ValueError(f"the output labels must have an integer dtype, not {data.dtype}")
        self.data = data
        self.volume = volume
        self.max_undo_bytes = max_undo_bytes
        self._written: dict[int, bytes] = {}  # frame -> digest of what the plugin wrote last
        self._undo: list[LabelEdit] = []
        self._redo: list[LabelEdit] = []
        self._open: LabelEdit | None = None

    def frame(self, frame: int) -> np.ndarray:
        return self.data[self.volume.frame_index(frame)]

    def edited_by_hand(self, frame: int) -> bool:
        """The frame holds labels the plugin did not write (or changed since it wrote them)."""
        current = self.frame(frame)
        if frame in self._written:
            return _digest(current) != self._written[frame]
        return bool(current.any())

    def written_frames(self) -> list[int]:
        """The frames that hold what the plugin last wrote there (not edited by hand since)."""
        return sorted(f for f in self._written if not self.edited_by_hand(f))

    def adopt(self, frames: Iterable[int]) -> None:
        """Count the current content of ``frames`` as what the plugin wrote there (a resumed
        session's own results), so that new results may replace it; other frames stay protected."""
        for frame in frames:
            self._written[frame] = _digest(self.frame(frame))

    def snapshot(self) -> LabelVolume:
        """A copy of the data that knows which frames the plugin wrote, without undo history
        (what a background save reads while the original goes on changing)."""
        copy = LabelVolume(self.data.copy(), self.volume, max_undo_bytes=self.max_undo_bytes)
        copy._written = dict(self._written)
        return copy

    # writing ---------------------------------------------------------------------------
    def begin(self, description: str) -> None:
        """Group the following writes into one undo step, until :meth:`end`."""
        self.end()
        self._open = LabelEdit(description)

    def end(self) -> LabelEdit | None:
        """Close the step begun with :meth:`begin`; returns it, or ``None`` if it changed nothing."""
        edit, self._open = self._open, None
        if edit is None or not edit.changes:
            return None
        self._undo.append(edit)
        self._redo.clear()
        while len(self._undo) > 1 and sum(e.nbytes for e in self._undo) > self.max_undo_bytes:
            self._undo.pop(0)
        return edit

    def write(
        self,
        results: FrameResult | Iterable[FrameResult],
        *,
        overwrite: bool = False,
        clear: Iterable[int] = (),
        description: str = "segment",
    ) -> WriteReport:
        """Write each result's object masks into its frame; objects in ``clear`` without a
        result there lose their label on the frame. Frames edited by hand are skipped and
        reported unless ``overwrite``. Outside :meth:`begin`/:meth:`end` the call is its own
        undo step."""
        clear = set(clear)
        results = [results] if isinstance(results, FrameResult) else list(results)
        own_step = self._open is None
        if own_step:
            self.begin(description)
        written, skipped = [], []
        for result in results:
            if not overwrite and self.edited_by_hand(result.frame):
                skipped.append(result.frame)
                continue
            new = self.frame(result.frame).copy()
            new[np.isin(new, list(clear - set(result.objects)))] = 0
            for object_id, obj in sorted(result.objects.items()):
                new[new == object_id] = 0
                new[obj.mask] = object_id
            self._replace(result.frame, new)
            written.append(result.frame)
        if own_step:
            self.end()
        return WriteReport(written, skipped)

    def remove_object(self, object_id: int) -> list[int]:
        """Clear ``object_id``'s label everywhere (one undo step); returns the frames changed."""
        self.begin(f"remove object {object_id}")
        frames = [f for f in range(len(self.volume)) if (self.frame(f) == object_id).any()]
        for f in frames:
            new = self.frame(f).copy()
            new[new == object_id] = 0
            self._replace(f, new)
        self.end()
        return frames

    def _replace(self, frame: int, new: np.ndarray) -> None:
        view = self.frame(frame)
        if np.array_equal(view, new):
            self._written[frame] = _digest(view)
            return
        change = self._open.changes.get(frame)
        if change is None:
            change = _FrameChange(
                zlib.compress(np.ascontiguousarray(view).data, 1), b"", _digest(view), b"", self._written.get(frame)
            )
            self._open.changes[frame] = change
        view[...] = new
        change.after = zlib.compress(np.ascontiguousarray(new).data, 1)
        change.digest_after = self._written[frame] = _digest(new)

    # undo ------------------------------------------------------------------------------
    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def next_undo(self) -> LabelEdit | None:
        """The step :meth:`undo` would undo (callers tie it to steps of their own)."""
        return self._undo[-1] if self._undo else None

    @property
    def next_redo(self) -> LabelEdit | None:
        return self._redo[-1] if self._redo else None

    @property
    def undo_description(self) -> str | None:
        return self._undo[-1].description if self._undo else None

    def undo(self) -> WriteReport:
        """Put back the frames of the last step. A frame changed by hand since that step is
        left as it is (reported), so undo never loses the user's own painting."""
        return self._move(self._undo, self._redo, forward=False)

    def redo(self) -> WriteReport:
        return self._move(self._redo, self._undo, forward=True)

    def _move(self, source: list[LabelEdit], target: list[LabelEdit], forward: bool) -> WriteReport:
        self.end()
        if not source:
            return WriteReport([], [])
        edit = source.pop()
        report = self._swap(edit, forward)
        target.append(edit)
        return report

    def _swap(self, edit: LabelEdit, forward: bool) -> WriteReport:
        written, skipped = [], []
        for frame, change in sorted(edit.changes.items()):
            view = self.frame(frame)
            expected = change.digest_before if forward else change.digest_after
            if _digest(view) != expected:
                skipped.append(frame)
                continue
            blob = change.after if forward else change.before
            view[...] = np.frombuffer(zlib.decompress(blob), dtype=view.dtype).reshape(view.shape)
            recorded = change.digest_after if forward else change.written_before
            if recorded is None:
                self._written.pop(frame, None)
            else:
                self._written[frame] = recorded
            written.append(frame)
        return WriteReport(written, skipped)
