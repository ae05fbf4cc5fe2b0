"""The segmentation panel's Save / Open / Export buttons, autosave and the resume offer.

A mixin of :class:`~napari_samed2._widgets.segmentation_panel.SegmentationPanel`, split from it
by what it does: these handlers turn the buttons into :mod:`.session_files` calls (the folder
format, Qt-free) and report on the panel's status line. They use the panel's shared state
(``session``, ``labels``, ``state``, ``work``), its widgets and its ``_say``, ``_begin`` and
``busy``.
"""

from __future__ import annotations

import os
from pathlib import Path

from qtpy.QtCore import QSignalBlocker
from qtpy.QtWidgets import QFileDialog

from napari_samed2._widgets.feedback import USER_ERRORS, plain, summary
from napari_samed2._widgets.session_files import (
    SavedSession,
    find_autosaves,
    load_session_folder,
    read_saved,
    volume_fingerprint,
    write_session_folder,
)
from napari_samed2.engine import Volume
from napari_samed2.errors import SamEd2Error, SessionMismatchError


class SessionFilesMixin:
    """Saving, opening and autosaving the panel's segmentation; see the module docstring."""

    def save_session(self, folder: str | os.PathLike | None = None) -> bool:
        """Save the segmentation (prompts, objects, memory with pins and evictions, the output
        labels) into ``folder`` (asked for with a file dialog when not given)."""
        if self.session is None:
            self._say("Nothing to save yet: press New segmentation first.")
            return False
        if folder is None:
            suggestion = self._dialog_folder() / f"{self.state.image_layer.name} session"
            folder, _ = QFileDialog.getSaveFileName(self, "Save the session as a folder", str(suggestion))
            if not folder:
                return False
        try:
            written = write_session_folder(folder, self.session, self.labels, self._save_context())
        except (SamEd2Error, OSError) as exc:
            self._say(f"Could not save the session: {exc}")
            return False
        self._say(f"Saved the session in {written} ({summary(self.session)}); Open session... resumes it.")
        return True

    def export_prompts(self, path: str | os.PathLike | None = None) -> bool:
        """Write the session's boxes and clicks as a cohort prompts file (asked for with a save
        dialog when not given), for ``cohort segment`` to run again on the image with any model
        or policy. A file given by a script is never replaced (the dialog asks first)."""
        from napari_samed2.cohort.prompts import export_prompts  # the cohort package brings in dask

        if self.session is None or not any(self.session.prompts.values()):
            self._say("No prompts to export yet: press New segmentation, then click on an object or draw a box.")
            return False
        overwrite = path is None
        if path is None:
            suggestion = self._dialog_folder() / f"{self.state.image_layer.name}.json"
            path, _ = QFileDialog.getSaveFileName(self, "Export the prompts as", str(suggestion), "Prompts (*.json)")
            if not path:
                return False
        try:
            written = export_prompts(self.session, path, overwrite=overwrite)
        except (SamEd2Error, OSError) as exc:
            self._say(f"Could not export the prompts: {exc}")
            return False
        self._say(
            f"Exported the prompts ({summary(self.session)}) to {written}. For a cohort, put it in the cohort's "
            "prompts/ folder named after the image: python -m napari_samed2.cohort segment runs it."
        )
        return True

    def open_session(self, folder: str | os.PathLike | None = None) -> bool:
        """Resume a saved session (asked for with a folder dialog when not given) on the chosen
        image with the loaded model: its objects, prompts (drawn in new prompt layers), memory
        entries with their status and output labels. A session of another image or model, or a
        damaged folder, is refused with the reason, and nothing in the viewer changes."""
        if self._refuse_to_resume():
            return False
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Open a saved session", str(self._dialog_folder()))
            if not folder:
                return False
        return self._resume(Path(folder), autosaved=False)

    def resume_offered(self) -> bool:
        """Resume the autosave offered when the segmentation started."""
        offer = self.work.offer
        if offer is None:
            self._say("No autosave is offered: press New segmentation on the image to look for one.")
            return False
        if self._refuse_to_resume():
            return False
        if self.image_choice.value is not self.state.image_layer and self.state.image_layer is not None:
            self.image_choice.value = self.state.image_layer
        return self._resume(offer.folder, autosaved=True)

    def dismiss_offer(self) -> None:
        self.work.offer = None
        self._show_offer()

    def _refuse_to_resume(self) -> bool:
        if self.state.model is None:
            self._say("Load a model in the Model panel first: the one the session was saved with.")
        elif self.image_choice.value is None:
            self._say("Open the image the session was made on first, and choose it in Layer.")
        elif self.busy:
            self._say("Wait for the running job to end (or Cancel it) before opening a session.")
        else:
            return False
        return True

    def _resume(self, folder: Path, autosaved: bool) -> bool:
        image, model = self.image_choice.value, self.state.model
        try:
            saved = read_saved(folder)
            shape = saved.image.get("shape")
            if shape is not None and tuple(shape) != tuple(image.data.shape):
                raise SessionMismatchError(
                    f"{folder} was saved for the image {saved.image.get('name')!r} of shape {tuple(shape)}, and "
                    f"{image.name!r} has shape {tuple(image.data.shape)}: choose the image it was made on in Layer"
                )
            axis = int(saved.image.get("axis", self.axis_choice.value()))
            fixed = saved.image.get("fixed")
            fixed = {int(k): int(v) for k, v in fixed.items()} if fixed is not None else self._fixed_indices(image, axis)
            window, normalise = saved.window()
            volume = Volume(image.data, axis, rgb=image.rgb, fixed=fixed, normalise=normalise)
            fingerprint = volume_fingerprint(volume)
            library, notes = self._library_for(saved)
            loaded = load_session_folder(folder, model, volume, fingerprint, library=library)
        except USER_ERRORS as exc:
            self._say(f"Cannot open the session: {plain(exc)}. Nothing was changed.")
            return False
        if library is not self.state.library:  # the session's own library, loaded with it
            self.state.library, self.state.library_changed = library, False
            self.state.library_folder = Path(saved.meta["library"]["folder"])
            self._show_library()
        pristine = self._pristine_layers()
        self._begin(image, loaded.session, fingerprint, labels=loaded.labels, written=loaded.written,
                    autosaved=folder if autosaved else None, window=window)
        for layer in pristine:  # the empty layers of a segmentation that had not begun
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.state.memory_changed.emit()
        self._say(" ".join([f"Resumed the session in {folder}: {summary(loaded.session)}.", *notes,
                            "Undo starts from here."]))
        return True

    def _pristine_layers(self) -> list:
        """The layers of the open segmentation when nothing was done in it yet (they would only
        clutter the viewer once another session replaces it)."""
        session = self.session
        if session is None or any(session.prompts.values()) or session.memory_entries():
            return []
        layers = [self.output_layer, self.points_layer, self.shapes_layer]
        if any(layer is None for layer in layers) or self.output_layer.data.any():
            return []
        if len(self.points_layer.data) or len(self.shapes_layer.data):
            return []
        return layers

    def _save_context(self) -> dict:
        """What a save records beside the session: the image it was made on, the library."""
        session = self.session
        return {
            "image_name": self.state.image_layer.name if self.state.image_layer is not None else None,
            "image_path": self.work.image_path,
            "fingerprint": self.work.fingerprint,
            "window": self.work.window,
            "library": self.state.library_folder if session.library is not None and session.library is self.state.library else None,
        }

    def _dialog_folder(self) -> Path:
        return self.work.image_path.parent if self.work.image_path is not None else Path.home()

    # autosave ----------------------------------------------------------------------------
    def _request_autosave(self) -> None:
        """After a completed step: save in the background (nothing while a job runs; its end
        saves). A copy of the output labels is taken here, on the GUI thread."""
        autosave = self.work.autosave
        if self.session is None or self.labels is None or self.busy or not autosave.enabled:
            return
        if autosave.folder is None and not any(self.session.prompts.values()):
            return  # nothing worth saving yet
        session, labels, context = self.session, self.labels.snapshot(), self._save_context()
        autosave.request(lambda folder: write_session_folder(folder, session, labels, context))

    def _autosave_toggled(self, on: bool) -> None:
        self.work.autosave.enabled = on
        if on:
            self._request_autosave()
        self._show_autosave()

    def _autosaved(self, _folder) -> None:
        self._show_autosave()

    def _autosave_failed(self, message: str) -> None:
        """Said once (until a save works again); the work goes on."""
        self._show_autosave()
        self._say(f"{self.status.text()} Autosave failed: {message}. Annotation goes on; Save session... "
                  "keeps your work.".strip())

    def _show_autosave(self) -> None:
        autosave = self.work.autosave
        with QSignalBlocker(self.autosave_check):
            self.autosave_check.setChecked(autosave.enabled)
        folder = autosave.folder
        if not autosave.enabled:
            text = "Autosave is off."
        elif autosave.error is not None:
            text = f"Autosave failed: {autosave.error}"
        elif folder is not None and autosave.last_saved is not None:
            where = "next to the image" if folder.parent.parent.name.endswith(".samed2") else "in your data folder"
            text = f"Autosaved at {autosave.last_saved:%H:%M:%S}, {where}."
        elif folder is not None:
            text = "Resumed from an autosave: new steps are saved there."
        else:
            text = "Autosaves after each step." if self.session is not None else ""
        self.autosave_status.setText(text)
        self.autosave_status.setToolTip(str(folder) if folder is not None else "")

    def _offer_resume(self) -> None:
        """Look for autosaves of the image just started and offer the newest that the loaded
        model can resume (a notice with a button, no dialog)."""
        work, model = self.work, self.state.model
        try:
            found = find_autosaves(work.image_path, work.fingerprint)
        except OSError:
            found = []
        usable = [saved for saved in found if saved.model.get("signature") == model.signature]
        work.offer = usable[0] if usable else None
        self._show_offer(found[0] if found and not usable else None)

    def _show_offer(self, other: SavedSession | None = None) -> None:
        offer = self.work.offer
        if offer is not None:
            self.resume_label.setText(f"This image has an autosaved session: {offer.describe()}.")
            self.resume_label.setToolTip(str(offer.folder))
        elif other is not None:
            self.resume_label.setText(
                f"This image has an autosaved session made with another model: {other.describe()}. Load that model, "
                "then press New segmentation again to resume it."
            )
            self.resume_label.setToolTip(str(other.folder))
        self.resume_button.setVisible(offer is not None)
        self.resume_box.setVisible(offer is not None or other is not None)
