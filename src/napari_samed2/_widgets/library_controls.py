"""The segmentation panel's memory-library controls: load, save, add a confirmed object.

A mixin of :class:`~napari_samed2._widgets.segmentation_panel.SegmentationPanel`, split from it
by what it does. The viewer's library lives in the shared state (``state.library``, its folder
and whether it changed), so every segmentation of the viewer draws on the same one; these
handlers use the panel's ``session``, widgets and ``_say``.
"""

from __future__ import annotations

import os
from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from napari_samed2._widgets.feedback import USER_ERRORS, plain
from napari_samed2._widgets.session_files import SavedSession
from napari_samed2.engine.library import MemoryLibrary
from napari_samed2.errors import SamEd2Error


class LibraryMixin:
    """The viewer's memory library, from the segmentation panel; see the module docstring."""

    def load_library(self, folder: str | os.PathLike | None = None) -> bool:
        """Load a memory library folder; it guides this viewer's segmentations."""
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Load a memory library", str(self._dialog_folder()))
            if not folder:
                return False
        try:
            library = MemoryLibrary.load(folder)
        except (SamEd2Error, OSError, ValueError, KeyError, TypeError) as exc:
            self._say(f"Could not load the memory library: {exc}")
            return False
        self.state.library, self.state.library_folder, self.state.library_changed = library, Path(folder), False
        note = self._attach_library(library)
        self._show_library()
        self._update_buttons()
        self._say(f"Loaded the memory library in {folder} ({len(library)} entries). {note}".strip())
        return True

    def _attach_library(self, library: MemoryLibrary) -> str:
        """Give the open segmentation ``library`` unless it already draws on another one."""
        session = self.session
        if session is None:
            return "It guides the next segmentation."
        if session.library is library:
            return ""
        if session.library is not None and any(memory.library for memory in session.memories.values()):
            return ("This segmentation keeps the library it already uses (its entries are in the inspector); the "
                    "loaded one guides the next segmentation.")
        with session.lock:
            session.library = library
        return "It guides the slices segmented from now on (Propagate again to use it on slices already done)."

    def _library_for(self, saved: SavedSession) -> tuple[MemoryLibrary | None, list[str]]:
        """The library to resume ``saved`` with, and what to say about it: the loaded one, or
        the one it was saved with when none is loaded (the state changes only once it opened)."""
        used = saved.meta.get("library") or {}
        folder, loaded = used.get("folder"), self.state.library
        if not used or self.state.library_folder is not None and str(self.state.library_folder) == folder:
            return loaded, []
        if loaded is None and folder:
            try:
                return MemoryLibrary.load(folder), [f"Loaded its memory library from {folder}."]
            except (SamEd2Error, OSError, ValueError, KeyError, TypeError):
                pass
        return loaded, [f"It was saved with the memory library in {folder or 'a folder never saved'}, which is not "
                        "the one loaded: pins and evictions of library entries may not carry over."]

    def save_library(self, folder: str | os.PathLike | None = None) -> bool:
        library = self.state.library
        if library is None:
            self._say("No memory library to save: load one, or Add confirmed object to start one.")
            return False
        if folder is None:
            suggestion = self.state.library_folder or self._dialog_folder() / "memory library"
            folder, _ = QFileDialog.getSaveFileName(self, "Save the memory library as a folder", str(suggestion))
            if not folder:
                return False
        try:
            library.save(folder)
        except (SamEd2Error, OSError) as exc:
            self._say(f"Could not save the memory library: {exc}")
            return False
        self.state.library_folder, self.state.library_changed = Path(folder), False
        self._show_library()
        self._say(f"Saved the memory library ({len(library)} entries) in {folder}.")
        return True

    def add_confirmed(self, object_id: int | None = None) -> int | None:
        """The object is right: add its most confident memories (at least the chosen confidence,
        not evicted) to the memory library, which is started if none is loaded. One undo step."""
        session = self.session
        object_id = object_id if object_id is not None else self.current_object
        if session is None or object_id is None:
            self._say("Press New segmentation first.")
            return None
        if self._refuse_while_busy():
            return None
        started = self.ensure_library()
        minimum = self.min_confidence.value()
        try:
            kept = session.add_to_library(
                object_id, min_confidence=minimum, label=f"object {object_id}",
                case=self.state.image_layer.name if self.state.image_layer is not None else "",
            )
        except USER_ERRORS as exc:
            self._say(plain(exc))
            return None
        if kept and session.library is self.state.library:
            self.state.library_changed = True
        self._show_library()
        self.state.memory_changed.emit()  # the undo button; an autosave
        if not kept:
            self._say(
                f"{started}No memory of object {object_id} is at least {minimum:.2f} confident (evicted ones do not "
                "count): nothing was added. Propagate and check the slices, or lower the confidence."
            )
        else:
            self._say(
                f"{started}Added {kept} memories of object {object_id} to the memory library (now {len(session.library)} "
                "entries); Save library... keeps them, Undo takes them out."
            )
        return kept

    def ensure_library(self) -> str:
        """Give the session the viewer's memory library, starting one if there is none (what
        confirmed memories go into); returns a note for the status line if one was started."""
        session, started = self.session, ""
        if session.library is None:
            if self.state.library is None:
                self.state.library, self.state.library_folder = MemoryLibrary(), None
                started = "Started a new memory library. "
            with session.lock:
                session.library = self.state.library
        return started

    def _show_library(self) -> None:
        library, folder = self.state.library, self.state.library_folder
        if library is None:
            text = "No memory library loaded (Add confirmed object starts one)."
        elif folder is None:
            text = f"Memory library: {len(library)} entries, not saved yet."
        else:
            changed = ", changed since saved" if self.state.library_changed else ""
            text = f"Memory library: {len(library)} entries from {folder.name}{changed}."
        self.library_status.setText(text)
        self.library_status.setToolTip(str(folder) if folder is not None else "")
