"""Segmentation panel: prompts from napari layers, live single-slice results, propagation.

The panel only translates: layers and clicks become :class:`~napari_samed2.engine.Session`
calls (through :mod:`.coordinates`), results go into the output Labels layer through a
:class:`~napari_samed2.engine.labels.LabelVolume` (hand-painted slices protected).
Everything that takes model time runs in a napari worker, one job at a time, so the viewer
stays responsive; Cancel stops after the current slice and keeps what was done.

Undo and Redo step through the session's history (prompts, memory, stale slices; see
:mod:`napari_samed2.engine.history`): each job is one engine step, which carries the output
layer's step of the same job as its tag, so both move together; the prompt layers are redrawn
from the session's prompts, so an undone click is gone from the layers too.

What the panel works on (session, layers, job queue, autosave) lives in the viewer's shared
:class:`~napari_samed2._widgets.state.Segmentation`, not in the widget: a panel closed and
opened again reconnects to it. Sessions are saved and resumed through
:mod:`.session_files` (``Session.save`` / ``Session.load`` plus the output layer), and
autosaved after each completed step (:mod:`.autosave`); the buttons that do it are
:mod:`.saving_controls`, those of the memory library :mod:`.library_controls` (mixins of the
panel, split from it by what they do).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox
from qtpy.QtCore import QEvent, QObject, QThreadPool, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from napari_samed2._widgets.continual import ContinualSection
from napari_samed2._widgets.coordinates import (
    box_corners,
    mask_from_labels,
    prompt_keys_of_rows,
    prompts_from_layers,
    to_layer_data,
)
from napari_samed2._widgets.feedback import USER_ERRORS
from napari_samed2._widgets.layout import scrolling_layout
from napari_samed2._widgets.library_controls import LibraryMixin
from napari_samed2._widgets.prefetch import PROPAGATIONS, BackgroundEncoding
from napari_samed2._widgets.saving_controls import SessionFilesMixin
from napari_samed2._widgets.session_files import (
    autosave_folders,
    volume_fingerprint,
)
from napari_samed2._widgets.state import shared_state
from napari_samed2.engine import ConvergeStop, FramePrompt, FrameResult, Session, Volume
from napari_samed2.engine.labels import LabelVolume
from napari_samed2.engine.prompts import POSITIVE
from napari_samed2.errors import HistoryError, VolumeError
from napari_samed2.io.intensity import WINDOW_CHOICES, chosen_window
from napari_samed2.io.writers import labels_metadata

if TYPE_CHECKING:
    import napari

POSITIVE_COLOR, NEGATIVE_COLOR = "lime", "red"
#: viewer-wide shortcuts (napari's own single keys and Shift combinations stay untouched);
#: T also switches click polarity inside the clicks layer
SHORTCUTS = {
    "Alt-T": "switch positive/negative clicks",
    "Alt-N": "next object",
    "Alt-Shift-N": "previous object",
    "Alt-P": "propagate",
    "Alt-R": "re-propagate stale slices",
    "Alt-C": "cancel the running job",
}
INSPECTOR_REFRESH_S = 1.0  # during a run, the inspector refreshes at most this often
_ONCE = PROPAGATIONS  # jobs that would only repeat themselves if queued twice
#: the Re-propagate button's stop rule while "Stop where masks agree again" is on
CONVERGE = ConvergeStop()


@dataclass(frozen=True)
class _Step:
    """What a worker hands the GUI thread: a slice's result (and objects whose label must be
    cleared there when they have no result), or a note for the status line."""

    result: FrameResult | None = None
    cleared: tuple[int, ...] = ()
    note: str = ""
    reset: int | None = None  # an object whose labels must go from every slice


@dataclass
class _Job:
    """One queued piece of model work and what it has done so far."""

    name: str
    work: Callable[..., Iterator[_Step]]
    args: tuple = ()
    total: int = 0
    overwrite: bool = False  # write over slices edited by hand (the user asked for this slice)
    converge: bool = False  # a re-propagation that may stop where masks agree, keeping stale slices
    done: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    cancelled: bool = False
    error: Exception | None = None
    session: Session | None = None  # the session it works on (its undo step is open meanwhile)
    steps: Iterator[_Step] | None = None  # the running work, closed when the job ends


#: How long closing the viewer waits for a running job to stop after its current slice.
SHUTDOWN_WAIT_S = 60.0


def _drive(steps: Iterator[_Step]) -> Iterator[_Step]:
    """The worker's generator function: it runs ``steps``, which the panel keeps, so that a
    cancelled job's generators (a propagation's among them) are closed when it ends."""
    yield from steps


class _CloseWatcher(QObject):
    """Calls ``on_close`` when the window holding ``widget`` gets its close event, before Qt
    deletes the widgets a running worker would still signal to.

    It watches ``widget``'s chain of parents (the panel, its dock, napari's main window) and
    follows it when a parent changes, so it needs no handle on napari's window object: a dock
    added after the panel was built, or made floating, keeps the main window at its root. Only
    the root's close counts: closing the dock itself is not closing the viewer.
    """

    def __init__(self, on_close: Callable[[], None], widget: QWidget):
        super().__init__(widget)
        self._on_close = on_close
        self._widget = widget
        self._watch_ancestors()

    def _ancestors(self) -> list[QWidget]:
        chain = [self._widget]
        while chain[-1].parentWidget() is not None:
            chain.append(chain[-1].parentWidget())
        return chain

    def _watch_ancestors(self) -> None:
        # No list of watched widgets is kept (it would keep napari's window alive): a former
        # ancestor keeps the filter, and only the chain's root as it is now counts.
        for ancestor in self._ancestors():
            ancestor.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.ParentChange:
            self._watch_ancestors()
        elif event.type() == QEvent.Type.Close and watched is not self._widget and watched is self._ancestors()[-1]:
            self._on_close()
        return False


def _source_path(layer) -> Path | None:
    """The file a layer was read from, if it came from one that still exists."""
    path = getattr(getattr(layer, "source", None), "path", None)
    return Path(path) if path and Path(path).exists() else None


def _same_prompt(a: FramePrompt | None, b: FramePrompt | None) -> bool:
    if a is None or b is None:
        return a is b
    return (
        np.array_equal(a.points, b.points) and np.array_equal(a.labels, b.labels) and a.box == b.box
        and (a.mask is None) == (b.mask is None) and (a.mask is None or np.array_equal(a.mask, b.mask))
    )


class _Shared:
    """A panel attribute that lives in the viewer's shared ``Segmentation`` (``_jobs`` is its
    ``jobs``), so that it outlives the widget."""

    def __set_name__(self, owner, name: str) -> None:
        self.key = name.lstrip("_")

    def __get__(self, panel, owner=None):
        return self if panel is None else getattr(panel.work, self.key)

    def __set__(self, panel, value) -> None:
        setattr(panel.work, self.key, value)


class SegmentationPanel(SessionFilesMixin, LibraryMixin, QWidget):
    """Prompt, segment and propagate one image layer; see the module docstring."""

    work_finished = Signal(str)  # the status message shown when a job ends (tests wait on it)

    session: Session | None = _Shared()
    labels: LabelVolume | None = _Shared()
    output_layer = _Shared()
    points_layer = _Shared()
    shapes_layer = _Shared()
    _layer_prompts: dict[tuple[int, int], FramePrompt] = _Shared()  # as last applied from the layers
    _skipped_edited: set[int] = _Shared()
    _jobs = _Shared()
    _job: _Job | None = _Shared()  # the one running
    _worker = _Shared()
    _pending_model = _Shared()  # a model that arrived while a job ran, applied after it

    def __init__(self, napari_viewer: napari.Viewer | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = shared_state(napari_viewer)
        self.work = self.state.segmentation
        previous, self.work.panel = self.work.panel, self  # a panel opened again takes over
        if previous is not None and previous is not self:
            previous._detach()
        self._muted = False  # while the panel itself edits prompt layers
        self._last_refresh = 0.0  # when the inspector was last told about new results
        self._prompt_error = False  # the status line shows a complaint about the prompt layers

        self.image_choice = ComboBox(choices=lambda _w: self._layers_of("Image"), nullable=False)
        self.axis_choice = QSpinBox()
        self.window_choice = QComboBox()
        for key, label in WINDOW_CHOICES.items():
            self.window_choice.addItem(label, key)
        self.window_choice.setToolTip(
            "How the image's values reach the model. Choose a CT window for CT in HU (air and bone squeeze "
            "soft tissue in the automatic window), or 'As displayed' to use the layer's contrast limits "
            "(choose it again after changing them). During a segmentation the prompted slices are segmented again."
        )
        self.window_choice.activated.connect(self._window_activated)
        self.start_button = QPushButton("New segmentation")
        self.start_button.setToolTip("Create the prompt and output layers for this image and start with object 1")
        self.start_button.clicked.connect(self.start)

        self.object_choice = QComboBox()
        self.object_choice.currentIndexChanged.connect(self._object_selected)
        self.add_object_button = QPushButton("Add object")
        self.add_object_button.clicked.connect(lambda: self.add_object())
        self.delete_object_button = QPushButton("Delete object")
        self.delete_object_button.clicked.connect(lambda: self.delete_object())

        self.polarity_button = QPushButton()
        self.polarity_button.setCheckable(True)
        self.polarity_button.setToolTip("Press T in the prompt layer to switch between positive and negative clicks")
        self.polarity_button.toggled.connect(self._polarity_changed)
        self.live_mode = QCheckBox("Live: segment the slice on each click")
        self.live_mode.setChecked(True)
        self.mask_choice = ComboBox(choices=lambda _w: self._layers_of("Labels"), nullable=False)
        self.points_choice = ComboBox(choices=lambda _w: self._layers_of("Points"), nullable=False)
        self.points_choice.changed.connect(self.use_prompt_layer)
        self.shapes_choice = ComboBox(choices=lambda _w: self._layers_of("Shapes"), nullable=False)
        self.shapes_choice.changed.connect(self.use_prompt_layer)
        self.use_mask_button = QPushButton("Use mask on this slice")
        self.use_mask_button.setToolTip(
            "Take the selected object's pixels on the current slice of this Labels layer (e.g. the "
            "output layer after painting a correction) as the object's mask prompt there"
        )
        self.use_mask_button.clicked.connect(lambda: self.use_mask())
        self.absent_button = QPushButton("Not on this slice")
        self.absent_button.setToolTip(
            "The selected object is not on the slice on screen: its mask there is cleared, and "
            "tracking from this slice remembers that it ended (where the model follows another "
            "structure past the object's end and clicks do not remove it)"
        )
        self.absent_button.clicked.connect(lambda: self.mark_absent())

        self.direction_choice = QComboBox()
        self.direction_choice.addItems(["both", "forward", "backward"])
        self.limit_range = QCheckBox("Only slices")
        self.first_slice, self.last_slice = QSpinBox(), QSpinBox()
        self.propagate_button = QPushButton("Propagate")
        self.propagate_button.clicked.connect(lambda: self.propagate())
        self.repropagate_button = QPushButton("Re-propagate stale slices")
        self.repropagate_button.clicked.connect(lambda: self.repropagate())
        self.converge_check = QCheckBox("Stop where masks agree again")  # the rule is in the tooltip: a narrow panel
        self.converge_check.setToolTip(
            "After a correction, Re-propagate stops where the new masks match the earlier ones on "
            f"{CONVERGE.frames} slices in a row (IoU \u2265 {CONVERGE.iou:g}): the slices after keep their masks "
            "and stay marked stale. Full re-run recomputes every stale slice."
        )
        self.converge_check.setChecked(True)
        self.full_rerun_button = QPushButton("Full re-run")
        self.full_rerun_button.setToolTip("Recompute every stale slice, without stopping where masks agree")
        self.full_rerun_button.clicked.connect(lambda: self.repropagate(full=True))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m slices")
        self.encoding = BackgroundEncoding(self.current_frame, napari_viewer)  # features ready before propagating

        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(self.undo)
        self.redo_button = QPushButton("Redo")
        self.redo_button.clicked.connect(self.redo)
        self.overwrite_button = QPushButton()
        self.overwrite_button.clicked.connect(self.overwrite_edited)
        self.status = QLabel("Load a model in the Model panel, choose the image, then press New segmentation.")
        self.status.setWordWrap(True)

        # an autosave of the image just started, offered for resuming (no modal dialog)
        self.resume_label = QLabel()
        self.resume_label.setWordWrap(True)
        self.resume_button = QPushButton("Resume it")
        self.resume_button.setToolTip("Open the autosaved session in place of the new one (the new one's work, if any, stays in its layers)")
        self.resume_button.clicked.connect(lambda: self.resume_offered())
        self.dismiss_button = QPushButton("Dismiss")
        self.dismiss_button.clicked.connect(self.dismiss_offer)
        self.resume_box = QFrame()
        self.resume_box.setFrameShape(QFrame.Shape.StyledPanel)

        self.save_session_button = QPushButton("Save session...")
        self.save_session_button.setToolTip(
            "Save prompts, objects, memory entries (pins and evictions included) and the output labels into a folder"
        )
        self.save_session_button.clicked.connect(lambda: self.save_session())
        self.open_session_button = QPushButton("Open session...")
        self.open_session_button.setToolTip("Resume a saved session on the chosen image, with the model it was saved with")
        self.open_session_button.clicked.connect(lambda: self.open_session())
        self.export_prompts_button = QPushButton("Export prompts...")
        self.export_prompts_button.setToolTip(
            "Write the boxes and clicks as a prompts file (JSON) that python -m napari_samed2.cohort segment runs "
            "again, with any model or memory policy"
        )
        self.export_prompts_button.clicked.connect(lambda: self.export_prompts())
        self.autosave_check = QCheckBox("Autosave after each step")
        self.autosave_check.setToolTip(
            "Save the session after each click, propagation, pin, eviction or undo: next to the image file when "
            "its folder can be written, else in your user data folder"
        )
        self.autosave_check.setChecked(self.work.autosave.enabled)
        self.autosave_check.toggled.connect(self._autosave_toggled)
        self.autosave_status = QLabel()
        self.autosave_status.setWordWrap(True)
        self.load_library_button = QPushButton("Load library...")
        self.load_library_button.setToolTip("A memory library folder: confirmed memories of earlier cases that guide this one")
        self.load_library_button.clicked.connect(lambda: self.load_library())
        self.save_library_button = QPushButton("Save library...")
        self.save_library_button.clicked.connect(lambda: self.save_library())
        self.add_case_button = QPushButton("Add confirmed object")
        self.add_case_button.setToolTip(
            "The selected object is right: add its most confident memories to the library (Undo takes them out)"
        )
        self.add_case_button.clicked.connect(lambda: self.add_confirmed())
        self.min_confidence = QDoubleSpinBox()
        self.min_confidence.setRange(0.0, 1.0)
        self.min_confidence.setDecimals(2)
        self.min_confidence.setSingleStep(0.05)
        self.min_confidence.setValue(0.8)
        self.min_confidence.setToolTip("Only memories at least this confident go into the library")
        self.library_status = QLabel()
        self.library_status.setWordWrap(True)
        self.continual = ContinualSection(self)  # Confirm volume, Learn from confirmed cases

        self._lay_out()
        self._close_watcher = _CloseWatcher(self.shutdown, self)  # the viewer's window closing
        if napari_viewer is not None:
            self._bind_shortcuts(napari_viewer)
            for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
                event.connect(self._layers_changed)
            napari_viewer.layers.events.removed.connect(self._layer_removed)
        self.image_choice.changed.connect(self._image_changed)
        self.state.model_changed.connect(self._model_changed)
        self.state.repropagate_requested.connect(self._repropagate_requested)
        # e.g. a policy change made slices stale, or a pin is one more step to undo (and to autosave)
        self.state.memory_changed.connect(self._memory_changed)
        self.work.autosave.saved.connect(self._autosaved)
        self.work.autosave.failed.connect(self._autosave_failed)
        if self.session is not None:
            self._reconnect()
        else:
            self._image_changed()
            self._polarity_changed(False)
            self._show_offer()
        self._show_library()
        self._show_autosave()
        self._update_buttons()

    def _bind_shortcuts(self, viewer) -> None:
        actions = {
            "Alt-T": self.polarity_button.toggle,
            "Alt-N": lambda: self.select_object(+1),
            "Alt-Shift-N": lambda: self.select_object(-1),
            "Alt-P": self.propagate,
            "Alt-R": self.repropagate,
            "Alt-C": self.cancel,
        }
        for key, action in actions.items():
            viewer.bind_key(key, lambda _viewer, action=action: action(), overwrite=True)
        for button, key in ((self.propagate_button, "Alt-P"), (self.repropagate_button, "Alt-R"),
                            (self.cancel_button, "Alt-C")):
            button.setToolTip(f"{SHORTCUTS[key].capitalize()} ({key.replace('-', '+')})")
        self.polarity_button.setToolTip(
            "Switch between positive and negative clicks: T in the clicks layer, Alt+T anywhere"
        )
        self.object_choice.setToolTip("Alt+N: next object, Alt+Shift+N: previous object")

    def select_object(self, step: int) -> None:
        """Select the next (``step=1``) or previous (``-1``) object, wrapping around."""
        count = self.object_choice.count()
        if count:
            self.object_choice.setCurrentIndex((self.object_choice.currentIndex() + step) % count)

    def _lay_out(self) -> None:
        image_box = QGroupBox("Image")
        form = QFormLayout(image_box)
        form.addRow("Layer", self.image_choice.native)
        form.addRow("Slicing axis", self.axis_choice)
        form.addRow("Intensity window", self.window_choice)
        form.addRow(self.start_button)

        prompt_box = QGroupBox("Objects and prompts")
        form = QFormLayout(prompt_box)
        row = QHBoxLayout()
        for widget in (self.object_choice, self.add_object_button, self.delete_object_button):
            row.addWidget(widget)
        form.addRow("Object", row)
        form.addRow("Clicks layer", self.points_choice.native)
        form.addRow("Boxes layer", self.shapes_choice.native)
        row = QHBoxLayout()
        row.addWidget(self.polarity_button)
        row.addWidget(self.absent_button)
        form.addRow("Clicks", row)
        form.addRow(self.live_mode)
        row = QHBoxLayout()
        row.addWidget(self.mask_choice.native)
        row.addWidget(self.use_mask_button)
        form.addRow("Mask", row)

        propagate_box = QGroupBox("Propagation")
        form = QFormLayout(propagate_box)
        form.addRow("Direction", self.direction_choice)
        row = QHBoxLayout()
        for widget in (self.limit_range, self.first_slice, QLabel("to"), self.last_slice):
            row.addWidget(widget)
        form.addRow(row)
        row = QHBoxLayout()
        for widget in (self.propagate_button, self.repropagate_button, self.cancel_button):
            row.addWidget(widget)
        form.addRow(row)
        row = QHBoxLayout()
        row.addWidget(self.converge_check)
        row.addWidget(self.full_rerun_button)
        form.addRow(row)
        form.addRow(self.progress)
        form.addRow(self.encoding)

        edit_row = QHBoxLayout()
        edit_row.addWidget(self.undo_button)
        edit_row.addWidget(self.redo_button)

        resume = QFormLayout(self.resume_box)
        resume.addRow(self.resume_label)
        row = QHBoxLayout()
        row.addWidget(self.resume_button)
        row.addWidget(self.dismiss_button)
        resume.addRow(row)

        session_box = QGroupBox("Session and memory library")
        form = QFormLayout(session_box)
        row = QHBoxLayout()
        row.addWidget(self.save_session_button)
        row.addWidget(self.open_session_button)
        row.addWidget(self.export_prompts_button)
        form.addRow(row)
        form.addRow(self.autosave_check)
        form.addRow(self.autosave_status)
        row = QHBoxLayout()
        row.addWidget(self.load_library_button)
        row.addWidget(self.save_library_button)
        form.addRow(row)
        row = QHBoxLayout()
        row.addWidget(self.add_case_button)
        row.addWidget(QLabel("at confidence"))
        row.addWidget(self.min_confidence)
        form.addRow(row)
        form.addRow(self.library_status)

        layout = scrolling_layout(self)
        layout.addWidget(image_box)
        layout.addWidget(self.resume_box)
        for box in (prompt_box, propagate_box):
            layout.addWidget(box)
        layout.addLayout(edit_row)
        layout.addWidget(self.overwrite_button)
        layout.addWidget(self.status)
        layout.addWidget(session_box)
        layout.addWidget(self.continual)
        layout.addStretch()

    # layer choices -----------------------------------------------------------------------
    def _layers_of(self, kind: str) -> list:
        """``(name, layer)`` choices of the viewer's layers of a napari layer class."""
        import napari.layers

        cls = getattr(napari.layers, kind)
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, cls)] if self.viewer else []

    def _layers_changed(self, _event=None) -> None:
        self.image_choice.reset_choices()
        self.mask_choice.reset_choices()
        for choice in (self.points_choice, self.shapes_choice):  # switched only by the user
            with choice.changed.blocked():
                choice.reset_choices()
        self._update_buttons()

    def _layer_removed(self, event) -> None:
        if event.value is self.output_layer or event.value is self.state.image_layer:
            self.cancel()
            self._end_session("The image or output layer was removed: press New segmentation to start again.")
        elif event.value is self.points_layer:
            self.points_layer = None
        elif event.value is self.shapes_layer:
            self.shapes_layer = None

    def _image_changed(self, _value=None) -> None:
        layer = self.image_choice.value
        if layer is None:
            return
        self.axis_choice.setRange(0, layer.ndim - 1)
        self.axis_choice.setValue(self.default_axis(layer))

    def default_axis(self, layer) -> int:
        """The slicing axis to offer: the last axis not on screen (slices of a volume, frames
        of a video, the slices of the current time point of a 4D image)."""
        if self.viewer is None:
            return 0
        offset = self.viewer.dims.ndim - layer.ndim
        hidden = [d - offset for d in self.viewer.dims.not_displayed if d >= offset]
        return hidden[-1] if hidden else 0

    # session -----------------------------------------------------------------------------
    def start(self) -> bool:
        """A new segmentation of the chosen image: prompt layers, an empty output layer, object 1.
        Earlier output layers stay in the viewer untouched."""
        model, image = self.state.model, self.image_choice.value
        if model is None:
            return self._say("Load a model in the Model panel first.")
        if image is None:
            return self._say("Open an image first (File > Open, or File > Open Sample > SAMed-2).")
        if self.busy:
            return self._say("Wait for the running job to end (or Cancel it) before starting a new segmentation.")
        axis, window = self.axis_choice.value(), self.window_choice.currentData()
        try:
            normalise = self._window(image, window)
            volume = Volume(image.data, axis, rgb=image.rgb, fixed=self._fixed_indices(image, axis), normalise=normalise)
            session = Session(model, volume, library=self.state.library)
            fingerprint = volume_fingerprint(volume)
        except USER_ERRORS as exc:
            return self._say(f"Cannot segment {image.name!r} along axis {axis}: {exc}")
        self._begin(image, session, fingerprint, window=window)
        self._offer_resume()
        return self._say(
            f"Segmenting {image.name!r} along axis {axis} ({len(volume)} slices). Click on the object "
            "(T switches positive/negative), or draw a box in the boxes layer."
        )

    def _begin(self, image, session: Session, fingerprint: str, labels: np.ndarray | None = None,
               written: list[int] | None = None, autosaved: Path | None = None, window: str = "auto") -> None:
        """Show ``session`` of ``image``: new prompt layers and an output layer (``labels``, of
        which the ``written`` slices hold the session's own results, or empty), the objects and
        the prompts drawn (a resumed session). Earlier layers stay in the viewer untouched."""
        volume = session.volume
        spatial_shape = volume.spatial_shape
        where = {"scale": image.scale[: len(spatial_shape)], "translate": image.translate[: len(spatial_shape)]}
        self._muted = True
        self.output_layer = self.viewer.add_labels(  # saved on the image's grid, NIfTI header included
            labels if labels is not None else np.zeros(spatial_shape, np.uint16), name=f"{image.name} SAM labels",
            metadata=labels_metadata(image.metadata, spatial_shape), **where,
        )
        shapes = self.viewer.add_shapes(
            ndim=len(spatial_shape), name=f"{image.name} SAM boxes", face_color="transparent",
            edge_color="yellow", edge_width=2, **where,
        )
        points = self.viewer.add_points(
            ndim=len(spatial_shape), name=f"{image.name} SAM clicks", size=max(3, min(volume.frame_shape) // 40),
            **where,
        )
        self._muted = False
        self.session, self.labels = session, LabelVolume(self.output_layer.data, volume)
        self.labels.adopt(written or ())
        self._layer_prompts = {}
        self._skipped_edited = set()
        self.first_slice.setRange(0, len(volume) - 1)
        self.last_slice.setRange(0, len(volume) - 1)
        self.last_slice.setValue(len(volume) - 1)
        self.object_choice.clear()
        self.state.set_session(session, image_layer=image, axis=volume.axis)
        self.work.image_path, self.work.fingerprint = _source_path(image), fingerprint
        self._show_window(window)
        self.work.autosave.reset(
            autosave_folders(self.work.image_path, fingerprint, session.model, datetime.now()), saved=autosaved
        )
        self.dismiss_offer()
        if session.object_ids:
            self._sync_objects()
        else:
            self.add_object()
        for choice, layer in ((self.mask_choice, self.output_layer), (self.points_choice, points),
                              (self.shapes_choice, shapes)):
            with choice.changed.blocked():
                choice.reset_choices()
                choice.value = layer
        self.use_prompt_layer(shapes)
        self.use_prompt_layer(points)
        self._sync_prompt_layers({(o, f) for o, frames in session.prompts.items() for f in frames})
        self.viewer.layers.selection.active = self.points_layer
        self.points_layer.mode = "add"
        self._show_autosave()
        self._refresh_output()
        self.encoding.start(session)

    def _fixed_indices(self, image, axis: int) -> dict[int, int]:
        """Axes that are neither the slicing axis nor on screen stay at the viewer's position."""
        offset = self.viewer.dims.ndim - image.ndim
        plane = [d - offset for d in self.viewer.dims.displayed if d >= offset]
        position = self._position_in(image)
        return {
            d: int(np.clip(round(position[d]), 0, image.data.shape[d] - 1))
            for d in range(image.ndim) if d != axis and d not in plane
        }

    def _end_session(self, message: str) -> None:
        self.session = self.labels = None
        self.output_layer = self.points_layer = self.shapes_layer = None
        self.object_choice.clear()
        self.work.autosave.reset([])  # its last autosave stays, to be resumed
        self.dismiss_offer()
        self.state.set_session(None)
        self.encoding.stop()
        self._show_autosave()
        self._say(message)

    def _model_changed(self, model) -> None:
        """A model loaded or unloaded in the Model panel reaches the open segmentation: a new
        model takes over at once (a session of the new model with the same objects, policy
        and library; the prompted slices are segmented again with it), Unload stops it taking
        clicks. Prompts and the output layer are kept either way."""
        self._update_buttons()
        session = self.session
        if session is None or model is session.model:
            return
        if model is None:
            self._say("The model was unloaded: prompts and labels are kept; load a model to go on with this segmentation.")
            return
        if self.busy:  # a job started while the model loaded: switch when it has stopped
            self._pending_model = model
            self.cancel()
            return
        self._switch_model(model)

    def _switch_model(self, model) -> None:
        self._replace_session(
            model, self.session.volume, self.work.window, f"Now segmenting with {model.spec.title} ({model.image_size} px)",
            f"Cannot segment with {model.spec.title}", "the new model", "the previous model's",
        )

    def _replace_session(self, model, volume: Volume, window: str, intro: str, refusal: str, what: str,
                         whose: str) -> bool:
        """Go on with a session of ``model`` on ``volume`` (another model, or the same image
        windowed otherwise): the same objects, prompts, policy and library; the prompted
        slices are segmented again, the other slices keep their labels until Propagate."""
        old = self.session
        try:
            session = Session(model, volume, policy=old.policy, library=old.library, library_k=old.library_k)
        except USER_ERRORS as exc:
            self._say(f"{refusal}: {exc}. The segmentation goes on as it was.")
            return False
        for object_id in old.object_ids:
            session.add_object(object_id)
        prompts = {(o, f): p for o, frames in old.prompts.items() for f, p in frames.items()}
        self.session = session
        self._show_window(window)
        self.state.set_session(session, image_layer=self.state.image_layer, axis=self.state.axis)
        if model is not old.model:  # the old model's autosave stays resumable with it; this one autosaves apart
            self.work.autosave.reset(autosave_folders(self.work.image_path, self.work.fingerprint, model, datetime.now()))
            self.dismiss_offer()
            self._show_autosave()
        message = intro
        if prompts:
            self._submit(f"re-segment with {what}", self._segment_changes, prompts, total=len(prompts))
            message += (
                f": re-segmenting the {len(prompts)} prompted slices. Other slices show {whose} labels until "
                "you press Propagate."
            )
        else:
            self._request_autosave()
        self.encoding.start(session)  # features of another model or window differ
        self._say(message + ".")
        return True

    # intensity window --------------------------------------------------------------------
    def _window(self, image, window: str):
        """The normaliser of a window choice for ``image`` (``None``: the volume's own)."""
        if image.rgb and window != "auto":
            raise VolumeError("intensity windows apply to grayscale images; a colour image is read as 0-255: choose Auto")
        return chosen_window(window, image.contrast_limits)

    def _show_window(self, window: str) -> None:
        self.work.window = window
        self.window_choice.setCurrentIndex(self.window_choice.findData(window))

    def _window_activated(self, index: int) -> None:
        """A window chosen in the panel: from New segmentation on, or at once for the open one."""
        window, label = self.window_choice.itemData(index), self.window_choice.itemText(index)
        session = self.session
        if session is None:
            self._say(f"New segmentation will window the image as {label}.")
            return
        if self.busy:
            self._show_window(self.work.window)
            self._say("Wait for the running job to end (or Cancel it) before changing the intensity window.")
            return
        if self.state.model is None:
            self._show_window(self.work.window)
            self._say("No model is loaded: load one in the Model panel before changing the intensity window.")
            return
        old = session.volume
        try:
            normalise = self._window(self.state.image_layer, window)
        except USER_ERRORS as exc:
            self._show_window(self.work.window)
            self._say(f"Cannot use the window {label}: {exc}. The segmentation goes on as it was.")
            return
        current = old.normalise
        if window == self.work.window and (normalise is None or normalise == current):
            self._say(f"The segmentation already uses {label}.")
            return
        volume = Volume(old.data, old.axis, rgb=old.rgb, fixed=old.fixed, normalise=normalise)
        self._replace_session(session.model, volume, window, f"Now windowing the image as {label}",
                              f"Cannot use the window {label}", "the new window", "the previous window's")

    # objects -----------------------------------------------------------------------------
    @property
    def current_object(self) -> int | None:
        return self.object_choice.currentData()

    def add_object(self) -> int | None:
        if self.session is None:
            self._say("Press New segmentation first.")
            return None
        object_id = self.session.add_object()
        self.object_choice.addItem(f"object {object_id}", object_id)
        self.object_choice.setCurrentIndex(self.object_choice.count() - 1)
        self._request_autosave()
        return object_id

    def delete_object(self, object_id: int | None = None) -> None:
        """Remove the object, its prompts and its labels (the labels removal can be undone)."""
        object_id = object_id if object_id is not None else self.current_object
        if self.session is None or object_id is None:
            return
        if self._refuse_while_busy():
            return
        self.session.begin_step(f"delete object {object_id}")  # engine and output: one undo step
        last = self.labels.next_undo
        try:
            self.session.remove_object(object_id)
            self._muted = True
            for layer in (self.points_layer, self.shapes_layer):
                if layer is not None and len(layer.data):
                    layer.selected_data = set(np.flatnonzero(layer.features["object"].to_numpy() == object_id))
                    layer.remove_selected()
            self._muted = False
            self._layer_prompts = {k: v for k, v in self._layer_prompts.items() if k[0] != object_id}
            frames = self.labels.remove_object(object_id)
        finally:
            self.session.end_step(tag=self.labels.next_undo if self.labels.next_undo is not last else None)
        self.object_choice.removeItem(self.object_choice.findData(object_id))
        self._refresh_output()
        self.state.memory_changed.emit()
        self._say(
            f"Deleted object {object_id} (its labels on {len(frames)} slices; Undo brings it back, "
            "with its prompts and memory)."
        )

    def _object_selected(self, _index: int) -> None:
        object_id = self.current_object
        if object_id is None:
            return
        for layer in (self.points_layer, self.shapes_layer):
            if layer is not None:
                layer.feature_defaults = {**layer.feature_defaults.iloc[0].to_dict(), "object": object_id}
        if self.output_layer is not None:
            self.output_layer.selected_label = object_id

    def use_prompt_layer(self, layer) -> None:
        """Take clicks (a Points layer) or boxes (a Shapes layer) from ``layer``, e.g. one the
        user made, with its own scale and translate. What it already holds counts as positive
        prompts of the selected object; its ``object``/``positive`` features say otherwise."""
        from napari.layers import Points

        if layer is None or self.session is None:
            return
        is_points = isinstance(layer, Points)
        old = self.points_layer if is_points else self.shapes_layer
        if old is layer:
            return
        if old is not None:
            old.events.data.disconnect(self._prompts_edited)
        features = layer.features.copy()
        defaults = {"object": self.current_object or 1, **({"positive": True} if is_points else {})}
        for name, value in defaults.items():
            if name not in features:
                features[name] = pd.Series([value] * len(layer.data), dtype=type(value), index=features.index)
        self._muted = True
        layer.features = features
        self._muted = False
        if is_points:
            self.points_layer = layer
            self._polarity_changed(self.polarity_button.isChecked())
        else:
            self.shapes_layer = layer
            self._object_selected(self.object_choice.currentIndex())
        self._watch_prompt_layer(layer)
        if len(layer.data) and self.live_mode.isChecked():
            self.apply_prompts()

    def _watch_prompt_layer(self, layer) -> None:
        """Segment what is drawn in ``layer`` (and T switches polarity in a clicks layer)."""
        from napari.layers import Points

        if isinstance(layer, Points):
            layer.bind_key("t", lambda _layer: self.polarity_button.toggle(), overwrite=True)
        layer.events.data.connect(self._prompts_edited)

    def _polarity_changed(self, negative: bool) -> None:
        self.polarity_button.setText("Negative (T)" if negative else "Positive (T)")
        if self.points_layer is not None:
            self.points_layer.feature_defaults = {"object": self.current_object or 1, "positive": not negative}
            self.points_layer.current_face_color = NEGATIVE_COLOR if negative else POSITIVE_COLOR

    # prompts -----------------------------------------------------------------------------
    def _prompts_edited(self, event) -> None:
        if self._muted:
            return
        self.encoding.hold()  # also on "adding": the click is segmented next
        if getattr(event, "action", "added") not in ("added", "removed", "changed"):
            return
        if self.live_mode.isChecked():
            self.apply_prompts()

    def pending_prompt_changes(self) -> dict[tuple[int, int], FramePrompt | None]:
        """What the prompt layers say that the session does not know yet: ``None`` for a
        prompt deleted from the layers."""
        drawn = prompts_from_layers(self.session.volume, self.state.image_layer, self.points_layer, self.shapes_layer)
        keys = set(drawn) | set(self._layer_prompts)
        return {k: drawn.get(k) for k in keys if not _same_prompt(drawn.get(k), self._layer_prompts.get(k))}

    def _checked_changes(self) -> dict | None:
        """:meth:`pending_prompt_changes`, or ``None`` with the reason in the status line."""
        if self.session is None:
            self._say("Press New segmentation first.")
            return None
        if self._refuse_without_model():
            return None
        try:
            changes = self.pending_prompt_changes()
        except USER_ERRORS as exc:
            self._prompt_error = True
            self._say(str(exc))
            return None
        if self._prompt_error:  # the layers were fixed: the old complaint must not stay up
            self._prompt_error = False
            if not changes:
                self._say("The prompts are valid again.")
        return changes

    def apply_prompts(self) -> None:
        """Segment every slice whose prompts changed (in a worker); results go to the output."""
        changes = self._checked_changes()
        if changes:
            self._submit("segment", self._segment_changes, self._take(changes), total=len(changes))

    def _take(self, changes: dict) -> dict:
        """Record ``changes`` as applied (on the GUI thread, before the worker applies them,
        so that a click arriving meanwhile is compared with what is already on its way)."""
        for key, prompt in changes.items():
            if prompt is None:
                self._layer_prompts.pop(key, None)
            else:
                self._layer_prompts[key] = prompt
        return changes

    def _segment_changes(self, changes: dict):
        """Worker: feed changed prompts to the session, one slice at a time."""
        for (object_id, frame), prompt in sorted(changes.items(), key=lambda kv: kv[0]):
            if object_id not in self.session.memories:
                continue
            try:
                if prompt is None and set(self.session.prompts[object_id]) == {frame}:
                    with self.session.lock:  # its last prompt: the object starts over, empty
                        self.session.remove_object(object_id)
                        self.session.add_object(object_id)
                    yield _Step(reset=object_id, note=(
                        f"Object {object_id} has no prompt left, so its masks were cleared (Undo brings "
                        "the labels back; click to segment it again)."
                    ))
                elif prompt is None:
                    self.session.clear_prompt(frame, object_id)
                    yield _Step(self.session.result(frame), cleared=(object_id,))
                else:
                    yield _Step(self.session.segment_frame(frame, object_id, prompt))
            except USER_ERRORS as exc:
                yield _Step(note=f"Slice {frame}, object {object_id}: {exc}")

    def use_mask(self, frame: int | None = None) -> None:
        """The chosen Labels layer's pixels of the current object on ``frame`` (default: the
        slice on screen) become the object's mask prompt there, e.g. after painting a fix.
        The next click of the object on that slice replaces it (SAM-2 takes a mask or clicks)."""
        frame = self._slice_to_prompt(frame)
        if frame is None:
            return
        try:
            mask = mask_from_labels(
                self.mask_choice.value, self.state.image_layer, self.session.volume, frame, self.current_object
            )
        except USER_ERRORS as exc:
            self._say(str(exc))
            return
        if not mask.any():
            self._say(f"Object {self.current_object} has no pixels on slice {frame} of that layer: paint some first.")
            return
        self._submit_slice_prompt("mask prompt", frame, FramePrompt(mask=mask))

    def mark_absent(self, frame: int | None = None) -> None:
        """The current object is not on ``frame`` (default: the slice on screen): an empty
        mask prompt there, which sam2 takes as "absent" (see :meth:`FramePrompt.absent`)."""
        frame = self._slice_to_prompt(frame)
        if frame is not None:
            self._submit_slice_prompt("mark absent", frame, FramePrompt.absent(self.session.volume.frame_shape))

    def _slice_to_prompt(self, frame: int | None) -> int | None:
        """The slice a prompt of the current object goes to (default: the one on screen), or
        ``None``, said in the status line, without a segmentation or a model."""
        if self.session is None or self.current_object is None:
            self._say("Press New segmentation first.")
            return None
        if self._refuse_without_model():
            return None
        return self.current_frame() if frame is None else frame

    def _submit_slice_prompt(self, name: str, frame: int, prompt: FramePrompt) -> None:
        object_id = self.current_object

        def segment():
            yield _Step(self.session.segment_frame(frame, object_id, prompt))

        self._submit(name, segment, total=1, overwrite=True)

    def current_frame(self) -> int:
        """The slice on screen, along the session's axis."""
        return int(round(self._position_in(self.state.image_layer)[self.state.axis]))

    def _position_in(self, image) -> tuple[float, ...]:
        """The viewer's current point in ``image``'s data coordinates."""
        return image.world_to_data(self.viewer.dims.point[self.viewer.dims.ndim - image.ndim:])

    # propagation -------------------------------------------------------------------------
    def propagate(self) -> None:
        """Apply changed prompts, then propagate in the chosen direction and range."""
        changes = self._checked_changes()
        if changes is None:
            return
        direction = self.direction_choice.currentText()
        limits = (self.first_slice.value(), self.last_slice.value()) if self.limit_range.isChecked() else None

        def work():
            yield from self._segment_changes(self._take(changes))
            for result in self.session.propagate(direction, limits=limits):
                yield _Step(result)

        first, last = limits or (0, len(self.session.volume) - 1)
        self._submit("propagate", work, total=last - first + 1)

    def repropagate(self, full: bool = False) -> None:
        """Recompute the slices made stale by corrections, pins or evictions: up to where the
        masks agree again while the converge checkbox is on, all of them with ``full``."""
        if self.session is None or self._refuse_without_model():
            return
        total = sum(len(frames) for frames in self.session.stale.values())
        if not total:
            self._say("Nothing to re-propagate: no slice is stale.")
            return
        converge = None if full or not self.converge_check.isChecked() else CONVERGE

        def work():
            for result in self.session.repropagate(converge):
                yield _Step(result)

        self._submit("full re-run" if full else "re-propagate", work, total=total, converge=converge is not None)

    # jobs --------------------------------------------------------------------------------
    def _submit(self, name: str, work, *args, total: int = 0, overwrite: bool = False, converge: bool = False) -> None:
        """Queue a job; jobs run one after the other in a worker thread. A propagation that
        is already running or waiting is not queued twice; a job that has to wait says so."""
        if name in _ONCE and name in self._job_names():
            self._say(f"{name.capitalize()} is already running or waiting: it was not queued again.")
            return
        self._jobs.append(_Job(name, work, args, total, overwrite, converge))
        if self._worker is None:
            self._next_job()
        else:
            self._say(f"Queued {name}: it starts when the {self._job.name} ends ({len(self._jobs)} waiting).")
            self._update_buttons()

    def _job_names(self) -> list[str]:
        running = [self._job.name] if self._worker is not None and self._job is not None else []
        return running + [job.name for job in self._jobs]

    def _next_job(self) -> None:
        from napari.qt.threading import create_worker

        self.encoding.set_jobs(job.name for job in self._jobs)  # background encoding may wait for them
        if not self._jobs:
            self._worker = None
            self.state.job = None
            if self._pending_model is not None:
                model, self._pending_model = self._pending_model, None
                if model is self.state.model and self.session is not None:
                    self._switch_model(model)
            self._update_buttons()
            return
        job = self._job = self._jobs.popleft()
        job.session = self.session
        self.state.job = job.name
        self._last_refresh = time.monotonic()
        if job.total > 1:  # a one-slice job ends before the user could read it
            self._say(f"Running {job.name}...")
        self.labels.begin(job.name)
        self.session.begin_step(job.name)  # the job's engine changes: one undo step
        job.steps = job.work(*job.args)
        self.progress.setRange(0, max(job.total, 1))
        self.progress.setValue(0)
        # connecting "errored" at creation stops napari from re-raising the error as a crash;
        # the panel showing the segmentation when a signal arrives handles it (a panel closed
        # and opened again meanwhile takes over the running job); none after the viewer closed
        work = self.work
        self._worker = create_worker(
            _drive, job.steps,
            _connect={
                "yielded": lambda step: work.panel and work.panel._on_result(step),
                "errored": lambda exc: work.panel and work.panel._on_error(exc),
                "aborted": lambda: work.panel and work.panel._on_aborted(),
                "finished": lambda: work.panel and work.panel._on_finished(),
            },
        )
        self._update_buttons()

    def _on_result(self, step: _Step) -> None:
        if step.note:
            self._job.notes.append(step.note)
        if self.labels is not None and step.reset is not None:
            frames = [f for f in range(len(self.labels.volume)) if (self.labels.frame(f) == step.reset).any()]
            report = self.labels.write([self.session.result(f) for f in frames], clear=(step.reset,))
            self._skipped_edited |= set(report.skipped_edited)
            self._job.done |= set(report.written)
            self._refresh_output()
        if self.labels is None or step.result is None:
            return
        report = self.labels.write(step.result, overwrite=self._job.overwrite, clear=step.cleared)
        self._skipped_edited |= set(report.skipped_edited)
        self._skipped_edited -= set(report.written)
        self._job.done.add(step.result.frame)
        self.progress.setValue(min(len(self._job.done), self.progress.maximum()))
        self._refresh_output()
        if time.monotonic() - self._last_refresh >= INSPECTOR_REFRESH_S:  # the inspector follows a long run
            self._last_refresh = time.monotonic()
            self.state.memory_changed.emit()

    def _on_error(self, exc: Exception) -> None:
        self._job.error = exc

    def _on_aborted(self) -> None:
        self._job.cancelled = True

    def _on_finished(self) -> None:
        job = self._job
        if job.steps is not None:
            job.steps.close()  # a cancelled propagation ends here (the worker has stopped)
        edit = self.labels.end() if self.labels is not None else None
        if job.session is not None:
            job.session.end_step(tag=edit)  # the output layer's step goes with the engine's
        name, done = job.name, len(job.done)
        if job.error is not None:
            message = f"{name.capitalize()} stopped: {job.error}"
            if done:
                message += f" ({done} slices done before are kept)"
            self._jobs.clear()
        elif job.cancelled:
            message = f"Cancelled {name}: the {done} slices done are kept."
            self._jobs.clear()
        else:
            message = f"{name.capitalize()}: {done} slices updated."
        message = " ".join([*job.notes, message])
        stale = sum(len(f) for f in self.session.stale.values()) if self.session is not None else 0
        if stale and job.converge and job.error is None and not job.cancelled:
            message += (
                f" It stopped where the masks agreed with the earlier ones: {stale} slices kept their earlier "
                "masks and are still marked stale (Full re-run recomputes them)."
            )
        elif stale:
            message += f" {stale} slices are stale: Re-propagate to update them."
        self.state.memory_changed.emit()
        self._say(message)
        self._worker = None
        self._next_job()
        if self._worker is None:
            self._request_autosave()
            self.work_finished.emit(self.status.text())

    def cancel(self) -> None:
        """Stop the running job after its current slice; what it produced stays."""
        self._jobs.clear()
        if self._worker is not None:
            self._worker.quit()

    def shutdown(self, timeout_s: float = SHUTDOWN_WAIT_S) -> bool:
        """Cancel queued and running work and wait (up to ``timeout_s``) for the worker thread
        to stop after its current slice. Called when the viewer closes: a worker still running
        while Qt deletes the window signalled to deleted objects, and at interpreter exit that
        crashed Python now and then (4 runs in 12). True if nothing runs any more."""
        others_stopped = self.continual.shutdown(timeout_s) & self.encoding.shutdown(timeout_s)
        worker = self._worker
        self._jobs.clear()
        if worker is None:
            return others_stopped
        worker.quit()
        deadline = time.monotonic() + timeout_s
        while worker.is_running and time.monotonic() < deadline:
            time.sleep(0.01)  # the worker finishes its slice meanwhile (sleep releases the GIL)
        # its loop has ended; let its run() return and release the pool's thread as well
        QThreadPool.globalInstance().waitForDone(2000)
        if self.work.panel is self:  # its signals still queued must not reach deleted widgets
            self.work.panel = None
        return others_stopped and not worker.is_running

    @property
    def busy(self) -> bool:
        return self._worker is not None

    # undo --------------------------------------------------------------------------------
    def undo(self) -> None:
        """Undo the last step: the session's prompts, memory and stale slices, the output
        layer's slices it wrote (not those painted by hand since) and the prompt layers."""
        self._rewind(forward=False)

    def redo(self) -> None:
        self._rewind(forward=True)

    def _rewind(self, forward: bool) -> None:
        if self.session is None or self._refuse_while_busy():
            return
        session, verb = self.session, "redo" if forward else "undo"
        step = session.history.next_redo if forward else session.history.next_undo
        if step is None:
            self._say(" ".join([f"Nothing to {verb}.", session.history.note]).strip())
            return
        try:
            rewind = session.redo() if forward else session.undo()
        except HistoryError as exc:
            self._say(str(exc))
            return
        notes, report = list(rewind.notes), None
        if step.tag is not None:
            if step.tag is (self.labels.next_redo if forward else self.labels.next_undo):
                report = self.labels.redo() if forward else self.labels.undo()
            else:
                notes.append("The output layer's part of this step had been dropped from its history "
                             "(it keeps a limited size) and was left as it is.")
        self._sync_objects()
        self._sync_prompt_layers(step.prompt_keys)
        message = f"{'Redid' if forward else 'Undid'} {step.description}"
        if report is not None:
            message += f": {len(report.written)} slices."
            if report.skipped_edited:
                message += f" Slices {report.skipped_edited} were painted since and were left as they are."
        else:
            message += "."
        stale = sum(len(f) for f in session.stale.values())
        if stale:
            message += f" {stale} slices are stale: Re-propagate to update them."
        self._refresh_output()
        self.state.memory_changed.emit()  # the inspector's table and plot
        self._say(" ".join([message, *notes]))

    def _refuse_without_model(self) -> bool:
        if self.state.model is None:
            self._say("No model is loaded: load one in the Model panel to go on (prompts and labels are kept).")
            return True
        return False

    def _refuse_while_busy(self) -> bool:
        if self.busy:
            self._say("Wait for the running job to end (or Cancel it) first.")
        return self.busy

    def _sync_objects(self) -> None:
        """The object list as the session has it (undo may bring an object back or take one away)."""
        ids = self.session.object_ids
        if [self.object_choice.itemData(i) for i in range(self.object_choice.count())] == ids:
            return
        current = self.current_object
        self.object_choice.blockSignals(True)
        self.object_choice.clear()
        for object_id in ids:
            self.object_choice.addItem(f"object {object_id}", object_id)
        index = self.object_choice.findData(current)
        self.object_choice.setCurrentIndex(index if index >= 0 else self.object_choice.count() - 1)
        self.object_choice.blockSignals(False)
        self._object_selected(self.object_choice.currentIndex())

    def _sync_prompt_layers(self, keys: set[tuple[int, int]]) -> None:
        """Redraw the prompts of ``keys`` (object, slice) in the prompt layers as the session
        has them now, so that the layers never hold a click the session no longer has (the
        next Propagate would apply it again). Mask prompts are shown by the output layer."""
        if not keys:
            return
        volume, image = self.session.volume, self.state.image_layer
        layers = [layer for layer in (self.points_layer, self.shapes_layer) if layer is not None]
        self._muted = True
        try:
            for layer in layers:
                rows = [i for i, key in enumerate(prompt_keys_of_rows(volume, image, layer)) if key in keys]
                if rows:
                    layer.selected_data = set(rows)
                    layer.remove_selected()
            for object_id, frame in sorted(keys):
                prompt = self.session.prompts.get(object_id, {}).get(frame)
                if prompt is not None and prompt.mask is None:
                    self._draw_prompt(object_id, frame, prompt)
            drawn = prompts_from_layers(volume, image, self.points_layer, self.shapes_layer)
        except USER_ERRORS as exc:
            self._say(str(exc))
            return
        finally:
            for layer in layers:
                layer.selected_data = set()
            self._muted = False
            self._object_selected(self.object_choice.currentIndex())
            self._polarity_changed(self.polarity_button.isChecked())
        for key in keys:  # what the layers show now is what the session has: nothing pending
            if key in drawn:
                self._layer_prompts[key] = drawn[key]
            else:
                self._layer_prompts.pop(key, None)

    def _draw_prompt(self, object_id: int, frame: int, prompt: FramePrompt) -> None:
        volume, image = self.session.volume, self.state.image_layer
        points, shapes = self.points_layer, self.shapes_layer
        if points is not None and len(prompt.points):
            coords = to_layer_data(prompt.points, frame, volume, image, points)
            for coord, label in zip(coords, prompt.labels):  # one by one: the prompt's order
                positive = bool(label == POSITIVE)
                points.selected_data = set()  # the colour below is for the next point only
                points.feature_defaults = {"object": object_id, "positive": positive}
                points.current_face_color = POSITIVE_COLOR if positive else NEGATIVE_COLOR
                points.add(coord[None])
        if shapes is not None and prompt.box is not None:
            shapes.feature_defaults = {"object": object_id}
            shapes.add_rectangles(to_layer_data(box_corners(prompt.box), frame, volume, image, shapes))

    # output ------------------------------------------------------------------------------
    def overwrite_edited(self) -> None:
        """Write the model's results over the slices the user had edited by hand (asked for)."""
        if self.session is None or not self._skipped_edited:
            return
        frames = sorted(self._skipped_edited)
        description = f"overwrite {len(frames)} edited slices"
        self.session.begin_step(description)
        self.labels.begin(description)
        self.labels.write([self.session.result(f) for f in frames], overwrite=True)
        self.session.end_step(tag=self.labels.end())
        self._skipped_edited.clear()
        self._refresh_output()
        self._request_autosave()
        self._say(f"Overwrote slices {frames} with the model's result (Undo puts your edits back).")

    def _refresh_output(self) -> None:
        if self.output_layer is not None:
            self.output_layer.refresh()
        self._update_buttons()

    # a panel opened again ----------------------------------------------------------------
    def _reconnect(self) -> None:
        """Show the segmentation that is open in the shared state (this panel replaces one that
        was closed): its image, objects, prompt and output layers, running job and autosave."""
        session, image = self.session, self.state.image_layer
        with self.image_choice.changed.blocked():
            self.image_choice.reset_choices()
            if image is not None and any(layer is image for _name, layer in self._layers_of("Image")):
                self.image_choice.value = image
        if image is not None:
            self.axis_choice.setRange(0, image.ndim - 1)
        self.axis_choice.setValue(self.state.axis)
        self._show_window(self.work.window)
        last = len(session.volume) - 1
        self.first_slice.setRange(0, last)
        self.last_slice.setRange(0, last)
        self.last_slice.setValue(last)
        for choice, layer in ((self.mask_choice, self.output_layer), (self.points_choice, self.points_layer),
                              (self.shapes_choice, self.shapes_layer)):
            with choice.changed.blocked():
                choice.reset_choices()
                if layer is not None:
                    choice.value = layer
        current = None
        defaults = self.points_layer.feature_defaults if self.points_layer is not None else None
        if defaults is not None and "object" in defaults and "positive" in defaults:
            current = int(defaults["object"].iloc[0])
            self.polarity_button.setChecked(not bool(defaults["positive"].iloc[0]))
        self._sync_objects()
        index = self.object_choice.findData(current)
        if index >= 0:
            self.object_choice.setCurrentIndex(index)
        self._polarity_changed(self.polarity_button.isChecked())
        for layer in (self.points_layer, self.shapes_layer):
            if layer is not None:
                self._watch_prompt_layer(layer)
        if self.busy and self._job is not None:
            self.progress.setRange(0, max(self._job.total, 1))
            self.progress.setValue(min(len(self._job.done), self.progress.maximum()))
        self._show_offer()
        self.encoding.set_jobs(self._job_names())
        self.encoding.start(session)
        running = f", running its {self._job.name}" if self.busy and self._job is not None else ""
        objects = len(session.object_ids)
        self._say(
            f"Reconnected to the segmentation of {image.name if image is not None else 'the image'!r} "
            f"({objects} object{'' if objects == 1 else 's'}{running})."
        )

    def _detach(self) -> None:
        """A newer panel took over this viewer's segmentation (this one was closed, or another
        was opened): stop listening, so that only the new one acts on clicks and signals."""
        for signal, slot in ((self.state.model_changed, self._model_changed),
                             (self.state.repropagate_requested, self._repropagate_requested),
                             (self.state.memory_changed, self._memory_changed),
                             (self.work.autosave.saved, self._autosaved),
                             (self.work.autosave.failed, self._autosave_failed)):
            try:
                signal.disconnect(slot)
            except (TypeError, RuntimeError):
                pass
        emitters = []
        if self.viewer is not None:
            layers = self.viewer.layers.events
            emitters += [(layers.inserted, self._layers_changed), (layers.removed, self._layers_changed),
                         (layers.removed, self._layer_removed)]
        emitters += [(layer.events.data, self._prompts_edited)
                     for layer in (self.points_layer, self.shapes_layer) if layer is not None]
        for emitter, callback in emitters:
            emitter.disconnect(callback)
        self.encoding.stop()
        try:
            self.setEnabled(False)
            self.status.setText("This segmentation goes on in the Segmentation panel opened since.")
        except RuntimeError:  # its Qt side is gone already
            pass

    def _repropagate_requested(self) -> None:
        self.repropagate()

    def _memory_changed(self) -> None:
        self._update_buttons()
        self._request_autosave()

    # feedback ----------------------------------------------------------------------------
    def _say(self, message: str) -> bool:
        self.status.setText(message)
        return self.session is not None

    def _update_buttons(self) -> None:
        has_session, busy = self.session is not None, self._worker is not None
        self.start_button.setEnabled(self.state.model is not None and self.image_choice.value is not None)
        self.open_session_button.setEnabled(self.start_button.isEnabled() and not busy)
        for button in (self.add_object_button, self.delete_object_button, self.use_mask_button, self.absent_button,
                       self.save_session_button, self.export_prompts_button):
            button.setEnabled(has_session)
        self.add_case_button.setEnabled(has_session and not busy)
        self.continual.update_buttons()
        self.save_library_button.setEnabled(self.state.library is not None)
        waiting = self._job_names()
        self.propagate_button.setEnabled(has_session and "propagate" not in waiting)
        self.repropagate_button.setEnabled(has_session and "re-propagate" not in waiting)
        stale = sum(len(f) for f in self.session.stale.values()) if has_session else 0
        self.repropagate_button.setText(f"Re-propagate {stale} stale slices" if stale else "Re-propagate stale slices")
        self.full_rerun_button.setEnabled(bool(stale) and "full re-run" not in waiting)
        self.cancel_button.setEnabled(busy)
        self.progress.setVisible(busy)
        undo = self.session.history.next_undo if has_session else None
        redo = self.session.history.next_redo if has_session else None
        self.undo_button.setEnabled(undo is not None and not busy)
        self.undo_button.setText(f"Undo {undo.description}" if undo is not None else "Undo")
        self.redo_button.setEnabled(redo is not None and not busy)
        self.redo_button.setText(f"Redo {redo.description}" if redo is not None else "Redo")
        edited = sorted(self._skipped_edited)
        self.overwrite_button.setVisible(bool(edited) and not busy)
        self.overwrite_button.setText(
            f"Slices {edited[:8]}{'...' if len(edited) > 8 else ''} were edited by hand and kept: overwrite them"
        )
