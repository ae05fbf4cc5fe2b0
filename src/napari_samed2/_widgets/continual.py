"""Continual adaptation in the GUI: confirm a volume, learn from confirmed cases, choose a version.

Thin sections around :mod:`napari_samed2.training.continual`: the Segmentation panel embeds
:class:`ContinualSection` ("Confirm volume", "Learn from confirmed cases"), the Model panel
:class:`VersionsSection` (list, use, roll back, compare). Everything that takes model time
runs in a napari worker; the GUI stays usable meanwhile. A learning run changes nothing until
it ends: then the new version becomes the viewer's model through ``state.set_model``, and the
open segmentation takes it over as it does any model change.

The case store and the running adaptation live in the viewer's shared state
(:class:`Continual`), not in a widget, so a panel closed and opened again finds them. The
store defaults to ``<user data dir>/confirmed-cases/<architecture>``: one per architecture,
because case fingerprints of different architectures are not comparable.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QThreadPool
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
)

from napari_samed2._widgets.feedback import USER_ERRORS
from napari_samed2._widgets.session_files import user_data_dir
from napari_samed2.training.continual import (
    BASE,
    MODES,
    AdaptConfig,
    AdaptProgress,
    AdaptResult,
    CaseStore,
    Confirmation,
    ModelVersions,
    VersionComparison,
    adapt,
    confirm,
    default_versions_folder,
)
from napari_samed2.training.continual.versions import model_origin

if TYPE_CHECKING:
    from napari_samed2._widgets.model_panel import ModelPanel
    from napari_samed2._widgets.segmentation_panel import SegmentationPanel
    from napari_samed2.models import LoadedModel

CASES_DIR_ENV = "NAPARI_SAMED2_CASES_DIR"
LEARN_MODES = tuple(m for m in reversed(MODES) if m != "none")  # the default first; "none" changes nothing
_TIP = Qt.ItemDataRole.ToolTipRole


def default_cases_folder(model: LoadedModel) -> Path:
    """``<root>/<architecture>``; the root is ``NAPARI_SAMED2_CASES_DIR``, else
    ``confirmed-cases`` in the user data folder."""
    override = os.environ.get(CASES_DIR_ENV)
    root = Path(override).expanduser() if override else user_data_dir() / "confirmed-cases"
    return root / model.spec.name


@dataclass(eq=False)
class Learning:
    """One adaptation run: what it learns, from which model, and how it ended."""

    case_id: str
    model: LoadedModel  # the model it started from (stays the model if it does not finish)
    config: AdaptConfig
    steps: Iterator[AdaptProgress]
    worker: Any = None
    done: int = 0
    result: AdaptResult | None = None
    error: Exception | None = None
    cancelled: bool = False


@dataclass(eq=False)
class Continual:
    """The viewer's store of confirmed cases, the case confirmed last, and the running
    adaptation. ``folder``: the store for every model (``None``: :func:`default_cases_folder`)."""

    folder: Path | None = None
    store: CaseStore | None = None
    last_case: str | None = None  # in ``store``
    learning: Learning | None = None
    section: Any = None  # the ContinualSection that shows it (a newer one takes over)

    def set_folder(self, folder: str | os.PathLike | None) -> None:
        """Use the store in ``folder`` from now on (``None``: the default one per architecture)."""
        self.folder = Path(folder).expanduser() if folder is not None else None
        self.store, self.last_case = None, None

    def store_for(self, model: LoadedModel) -> CaseStore:
        """The store ``model``'s cases go to, opened once (a damaged one raises SavedStateError)."""
        folder = self.folder or default_cases_folder(model)
        if self.store is None or self.store.folder != folder:
            self.store, self.last_case = CaseStore.open(folder), None
        return self.store

    def case_to_learn(self) -> str | None:
        """The case confirmed last in this viewer, else the newest in the store."""
        if self.store is None:
            return None
        if self.last_case in self.store.ids:
            return self.last_case
        records = sorted(self.store.records, key=lambda row: row.added)
        return records[-1].case_id if records else None


def _learn(model: LoadedModel, store: CaseStore, case_id: str, config: AdaptConfig) -> Iterator[AdaptProgress]:
    """Read the case, then adapt: both in the worker (a damaged case file fails there, in words)."""
    yield from adapt(model, store.case(case_id), store, config=config)


def _import_dynamo_without_triton() -> None:
    """Import ``torch._dynamo`` with triton hidden, once, before an adaptation starts.

    torch's optimizers import ``torch._dynamo`` on first use, and it imports triton, whose
    bundled LLVM clashes with the LLVM of Mesa's software OpenGL (llvmpipe: virtual machines,
    remote desktops, Xvfb): loaded after napari's OpenGL context, it segfaults the viewer.
    The plugin never compiles with triton, so dynamo is imported believing triton absent
    (torch caches that answer). A triton imported before (by the user, another plugin) is used.
    """
    if "torch._dynamo" in sys.modules or "triton" in sys.modules:
        return
    sys.modules["triton"] = None  # makes "import triton" raise ImportError
    try:
        import torch._dynamo  # noqa: F401
    finally:
        del sys.modules["triton"]


def _drive(steps: Iterator) -> Iterator:
    """The worker's generator function over ``steps``, which the section keeps and closes
    when the run ends (a cancelled adaptation's generator is closed, nothing written)."""
    yield from steps


#: The image encoder's LoRA adapters (``training.adapters``), added when "image encoder too" is on.
ENCODER_LORA = "lora"


def _what(config: AdaptConfig) -> str:
    """An adaptation's settings in a status message, e.g. "replay+distill, 20 steps"."""
    return f"{config.mode}, {config.steps} steps" + (", image encoder too" if ENCODER_LORA in config.train else "")


class ContinualSection(QGroupBox):
    """"Confirm and learn" in the Segmentation panel: its buttons call :func:`confirm` and
    :func:`adapt`; messages go to the panel's status line."""

    def __init__(self, panel: SegmentationPanel):
        super().__init__("Confirm and learn")
        self.panel = panel
        self.state = panel.state
        self.work: Continual = panel.state.continual
        self.work.section = self  # a panel opened again takes over the running adaptation
        #: settings besides mode and steps (scripts and tests may change them)
        self.base_config = AdaptConfig()

        self.confirm_button = QPushButton("Confirm volume")
        self.confirm_button.setToolTip(
            "The whole segmentation is right: its confident memories join the memory library (Undo takes them "
            "out) and the volume joins the store of confirmed cases that Learn adapts the model to"
        )
        self.confirm_button.clicked.connect(lambda: self.confirm())
        self.learn_button = QPushButton("Learn from confirmed cases")
        self.learn_button.setToolTip(
            "Adapt the model to the case confirmed last, replaying similar earlier cases so that it does not "
            "forget them; runs in the background and becomes a new model version when it ends"
        )
        self.learn_button.clicked.connect(lambda: self.learn())
        self.cancel_button = QPushButton("Cancel learning")
        self.cancel_button.setToolTip("Stop the adaptation: the current model stays, no version is written")
        self.cancel_button.clicked.connect(self.cancel)
        self.mode_choice = QComboBox()
        self.mode_choice.addItems(LEARN_MODES)
        self.mode_choice.setToolTip(
            "replay+distill: replay similar earlier cases and hold what the model did on them (forgets least); "
            "replay: replay only; naive: the new case only (fastest, forgets most)"
        )
        self.steps_choice = QSpinBox()
        self.steps_choice.setRange(1, 1000)
        self.steps_choice.setValue(self.base_config.steps)
        self.steps_choice.setToolTip("Training steps: more fit the case better and take longer")
        self.encoder_choice = QCheckBox("image encoder too")
        self.encoder_choice.setToolTip(
            "Adapt the image encoder's attention as well as memory attention and the mask decoder: learns more "
            "of how a new modality looks, and forgets more of the earlier ones (docs/continual.md); the "
            "adapted model then encodes the slices afresh"
        )
        self.progress = QProgressBar()
        self.progress.setFormat("step %v / %m")
        self.store_status = QLabel()
        self.store_status.setWordWrap(True)

        form = QFormLayout(self)
        form.addRow(self.confirm_button)
        row = QHBoxLayout()
        row.addWidget(self.mode_choice)
        row.addWidget(QLabel("steps"))
        row.addWidget(self.steps_choice)
        row.addWidget(self.encoder_choice)
        form.addRow("Learning", row)
        row = QHBoxLayout()
        row.addWidget(self.learn_button)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        form.addRow(self.progress)
        form.addRow(self.store_status)
        if self.learning:
            self.progress.setRange(0, self.work.learning.config.steps)
            self.progress.setValue(self.work.learning.done)
        self.state.model_changed.connect(self._model_changed)
        self.show_store()

    def _model_changed(self, _model) -> None:
        self.show_store()
        self.update_buttons()

    @property
    def learning(self) -> bool:
        return self.work.learning is not None

    def _say(self, message: str) -> None:
        self.panel._say(message)

    # confirm -----------------------------------------------------------------------------
    def confirm(self) -> Confirmation | None:
        """Confirm the open segmentation (one undo step for its library part; the stored case stays)."""
        panel, session = self.panel, self.panel.session
        if session is None:
            self._say("Nothing to confirm: press New segmentation, segment and propagate the volume, then confirm it.")
            return None
        if panel._refuse_while_busy():
            return None
        if self.learning:
            self._say("Wait for the learning to end (or Cancel learning) before confirming: both update the case store.")
            return None
        try:
            store = self.work.store_for(session.model)
        except USER_ERRORS as exc:
            self._say(f"Cannot open the store of confirmed cases: {exc}. Nothing was confirmed.")
            return None
        known, before = set(store.ids), session.history.next_undo
        started = panel.ensure_library()
        name = self.state.image_layer.name if self.state.image_layer is not None else ""
        try:
            done = confirm(session, store, name=name, spacing=self._spacing(),
                           min_confidence=panel.min_confidence.value())
        except USER_ERRORS as exc:
            added = session.history.next_undo is not before
            note = " Its memories did join the library: Undo takes them out." if added else " Nothing was changed."
            self._say(f"Could not confirm the volume: {str(exc).rstrip('.')}.{note}")
            self._after_library_change(added)
            return None
        self.work.last_case = done.case_id
        self._after_library_change(done.library_kept > 0)
        case = done.case
        objects = len(np.unique(case.labels)) - 1
        where = (f"already stored as case {done.case_id}" if done.case_id in known else
                 f"stored as case {done.case_id}: {len(case.labels)} slices from slice {case.first_slice}, "
                 f"{objects} object{'' if objects == 1 else 's'}")
        library = (f"{done.library_kept} memories joined the library (Undo takes them out; the stored case stays)"
                   if done.library_kept else
                   "No memory was confident enough for the library (lower the confidence to add some)")
        self._say(f"{started}Confirmed {case.name!r}, {where} ({len(store)} cases in the store). {library}. "
                  "Learn from confirmed cases adapts the model to it.")
        return done

    def _after_library_change(self, changed: bool) -> None:
        if changed and self.panel.session.library is self.state.library:
            self.state.library_changed = True
        self.panel._show_library()
        self.show_store()
        self.state.memory_changed.emit()  # the undo button, the inspector, an autosave

    def _spacing(self) -> tuple[float, float, float]:
        """Slice spacing first, as the session slices the image (a 3D layer's scale; else 1)."""
        layer, axis = self.state.image_layer, self.state.axis
        if layer is None or layer.ndim != 3:
            return (1.0, 1.0, 1.0)
        scale = [abs(float(s)) for s in layer.scale]
        return (scale[axis], *(s for d, s in enumerate(scale) if d != axis))

    # learn -------------------------------------------------------------------------------
    def learn(self) -> bool:
        """Adapt the model to the case confirmed last, in a worker. True if it started."""
        from napari.qt.threading import create_worker

        model = self.state.model
        if model is None:
            self._say("Load a model in the Model panel first: learning adapts it.")
            return False
        if self.learning:
            self._say("The model is learning already: wait for it to end, or Cancel learning.")
            return False
        try:
            store = self.work.store_for(model)
        except USER_ERRORS as exc:
            self._say(f"Cannot open the store of confirmed cases: {exc}. The model is unchanged.")
            return False
        case_id = self.work.case_to_learn()
        if case_id is None:
            self._say(f"No confirmed case to learn from in {store.folder}: press Confirm volume on a finished "
                      "segmentation first.")
            return False
        try:
            train = self.base_config.train
            if self.encoder_choice.isChecked() and ENCODER_LORA not in train:
                train = (ENCODER_LORA, *train)
            config = dataclasses.replace(self.base_config, mode=self.mode_choice.currentText(),
                                         steps=self.steps_choice.value(), train=train)
        except USER_ERRORS as exc:
            self._say(f"Cannot learn with these settings: {exc}")
            return False
        _import_dynamo_without_triton()
        run = self.work.learning = Learning(case_id, model, config, _learn(model, store, case_id, config))
        work = self.work
        # connecting "errored" at creation stops napari from re-raising the error as a crash;
        # the section showing the store when a signal arrives handles it
        run.worker = create_worker(
            _drive, run.steps,
            _connect={
                "yielded": lambda item: work.section and work.section._on_progress(item),
                "errored": lambda exc: work.section and work.section._on_error(exc),
                "aborted": lambda: work.section and work.section._on_aborted(),
                "finished": lambda: work.section and work.section._on_finished(),
            },
        )
        self.progress.setRange(0, config.steps)
        self.progress.setValue(0)
        self._say(f"Learning from case {case_id} ({_what(config)}) in the background; "
                  "segmentation goes on with the current model meanwhile.")
        self.update_buttons()
        return True

    def cancel(self) -> None:
        """Stop learning after the current step: the model stays, no version is written."""
        if self.work.learning is not None:
            self.work.learning.worker.quit()

    def _on_progress(self, item: AdaptProgress) -> None:
        run = self.work.learning
        run.done = item.step
        self.progress.setValue(min(item.step, self.progress.maximum()))
        if item.result is not None:
            run.result = item.result

    def _on_error(self, exc: Exception) -> None:
        self.work.learning.error = exc

    def _on_aborted(self) -> None:
        self.work.learning.cancelled = True

    def _on_finished(self) -> None:
        run, self.work.learning = self.work.learning, None
        run.steps.close()  # a cancelled adaptation ends here: nothing was saved
        result = run.result
        if run.error is not None:
            message = f"Learning stopped: {run.error}. The model is unchanged."
        elif result is None:
            message = f"Cancelled learning after {run.done} of {run.config.steps} steps: the model is unchanged, no version was written."
        elif result.check is not None and not result.check.passed:
            message = (f"Learning case {run.case_id} did not help on it (Dice after a box {result.check.before:.2f} "
                       f"before, {result.check.after:.2f} after): the model is unchanged, no version was written.")
        elif result.version is None:
            message = "Mode none: the model is unchanged."
        else:
            message = self._adopt(run, result)
        self.show_store()
        self.update_buttons()
        self._say(message)

    def _adopt(self, run: Learning, result: AdaptResult) -> str:
        """Make the new version the model, unless the user chose another model meanwhile."""
        version = result.version.version
        replayed = f", replaying {len(result.retrieved)} earlier cases" if result.retrieved else ""
        checked = (f", Dice on it {result.check.before:.2f} -> {result.check.after:.2f}"
                   if result.check is not None else "")
        smoothing = _smoothing_note(result.model.input_smoothing)
        learned = (f"Learned case {run.case_id} ({_what(run.config)}{replayed}{checked}{smoothing}) in "
                   f"{result.seconds:.1f} s: version {version}")
        late = " (Cancel came after the last step)" if run.cancelled else ""
        if self.state.model is not run.model:
            return (f"{learned}{late} was saved, but the model was changed meanwhile: choose {version} in the Model "
                    "panel's versions to use it.")
        self.state.set_model(result.model)
        return f"{learned}{late} is now the model."

    def shutdown(self, timeout_s: float) -> bool:
        """Stop a running adaptation and wait for its worker (the viewer is closing)."""
        run = self.work.learning
        if run is None:
            return True
        run.worker.quit()
        deadline = time.monotonic() + timeout_s
        while run.worker.is_running and time.monotonic() < deadline:
            time.sleep(0.01)  # the worker ends its step meanwhile (sleep releases the GIL)
        QThreadPool.globalInstance().waitForDone(2000)
        if self.work.section is self:  # its signals still queued must not reach deleted widgets
            self.work.section = None
        return not run.worker.is_running

    # display -----------------------------------------------------------------------------
    def show_store(self) -> None:
        """How many cases the model's store holds (opened here, so a damaged one shows at once)."""
        if self.state.model is None:
            self.store_status.setText("Confirmed cases: load a model to see its store.")
            return
        try:
            store = self.work.store_for(self.state.model)
        except USER_ERRORS as exc:
            self.store_status.setText(f"The store of confirmed cases cannot be read: {exc}")
            return
        case = self.work.case_to_learn()
        latest = f"; Learn uses {case}" if case is not None else ""
        self.store_status.setText(f"Confirmed cases: {len(store)} in {store.folder.name}{latest}.")
        self.store_status.setToolTip(str(store.folder))

    def update_buttons(self) -> None:
        has_session, busy = self.panel.session is not None, self.panel.busy
        self.confirm_button.setEnabled(has_session and not busy and not self.learning)
        self.learn_button.setEnabled(self.state.model is not None and not self.learning)
        self.cancel_button.setEnabled(self.learning)
        self.progress.setVisible(self.learning)


class VersionsSection(QGroupBox):
    """"Versions" in the Model panel: the loaded model's versions (:class:`ModelVersions` in
    :func:`default_versions_folder`), loaded or rolled back to in a worker and announced
    through the panel as any loaded model is."""

    def __init__(self, panel: ModelPanel):
        super().__init__("Versions")
        self.panel = panel
        self.state = panel.state
        self.versions: ModelVersions | None = None
        self._worker = None

        self.choice = QComboBox()
        self.choice.currentIndexChanged.connect(self._chosen)
        self.use_button = QPushButton("Use this version")
        self.use_button.setToolTip("Load the chosen version as the model (what is recorded as current stays)")
        self.use_button.clicked.connect(lambda: self.use())
        self.rollback_button = QPushButton("Roll back")
        self.rollback_button.setToolTip(
            "Make the chosen version (or base) current and load its exact weights; later versions stay on disk"
        )
        self.rollback_button.clicked.connect(lambda: self.rollback())
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip("What differs between the loaded model's version and the chosen one")
        self.compare_button.clicked.connect(lambda: self.compare())
        self.info = QLabel()
        self.info.setWordWrap(True)

        form = QFormLayout(self)
        form.addRow("Version", self.choice)
        row = QHBoxLayout()
        for button in (self.use_button, self.rollback_button, self.compare_button):
            row.addWidget(button)
        form.addRow(row)
        form.addRow(self.info)
        self.state.model_changed.connect(self.refresh)
        self.refresh()

    @property
    def loaded_version(self) -> str | None:
        """The loaded model's version (``"base"`` for its base weights; ``None``: no versions)."""
        model = self.state.model
        if model is None or model.checkpoint is None:
            return None
        return model_origin(model).version or BASE

    def refresh(self, _model=None) -> None:
        """List the loaded model's versions, the loaded one chosen."""
        model, self.versions = self.state.model, None
        self.choice.blockSignals(True)
        self.choice.clear()
        try:
            if model is None:
                self.info.setText("Load a model to see its versions.")
            elif model.checkpoint is None:
                self.info.setText("This model was not loaded from a file, so it has no versions.")
            else:
                self._list(ModelVersions(default_versions_folder(model)))
        except USER_ERRORS as exc:
            self.info.setText(f"Cannot list the versions: {exc}")
        finally:
            self.choice.blockSignals(False)
        self._update_buttons()

    def _list(self, versions: ModelVersions) -> None:
        found = versions.list()
        if not found:
            self.info.setText(f"No versions yet: Learn from confirmed cases (Segmentation panel) makes one in {versions.folder}.")
            return
        self.versions = versions
        loaded, current = self.loaded_version, versions.current
        for name, text, tip in [(BASE, "base weights", found[0].base)] + [
            (v.version, f"{v.mode}, {v.steps} steps on {v.case!r}{_smoothing_note(v.input_smoothing)}",
             f"{v.created}; replayed: {v.replayed or 'none'}; {v.path}")
            for v in found
        ]:
            marks = [m for m, on in (("loaded", name == loaded), ("current", name == current)) if on]
            label = f"{name}: {text}" + (f" ({', '.join(marks)})" if marks else "")
            self.choice.addItem(label, name)
            self.choice.setItemData(self.choice.count() - 1, tip, _TIP)
        self.choice.setCurrentIndex(max(0, self.choice.findData(loaded)))
        self.info.setText(f"{len(found)} versions in {versions.folder}.")

    def _chosen(self, _index: int) -> None:
        self.choice.setToolTip(self.choice.currentData(_TIP) or "")
        self._update_buttons()

    @property
    def chosen(self) -> str | None:
        return self.choice.currentData()

    def _update_buttons(self) -> None:
        ready = self.versions is not None and self.chosen is not None and self._worker is None
        for button in (self.use_button, self.rollback_button, self.compare_button):
            button.setEnabled(ready)

    def use(self) -> bool:
        """Load the chosen version as the model (``current`` on disk stays as it is)."""
        return self._run("Loading", "load")

    def rollback(self) -> bool:
        """Make the chosen version current and load it: its exact weights."""
        return self._run("Rolling back to", "rollback")

    def _run(self, doing: str, method: str) -> bool:
        """Load the chosen version in a worker (``versions.<method>``) and announce it as the model."""
        from napari.qt.threading import create_worker

        version, versions, model = self.chosen, self.versions, self.state.model
        if versions is None or version is None or self.panel._refuse_while_segmenting():
            return False
        self.panel._set_busy(True, f"{doing} {version}...")
        self._worker = create_worker(
            getattr(versions, method), version, device=model.device, dtype=model.dtype,
            _connect={
                "returned": lambda loaded: self._loaded(loaded, version),
                "errored": lambda exc: self.panel.status.setText(f"Could not load version {version}: {exc}. The model is unchanged."),
                "finished": self._finished,
            },
        )
        self._update_buttons()
        return True

    def _loaded(self, model: LoadedModel, version: str) -> None:
        self.panel._on_loaded(model)
        self.panel.status.setText(f"Now using version {version}: {model.describe()}.")

    def _finished(self) -> None:
        self._worker = None
        self.panel._set_busy(False)
        self.refresh()

    def compare(self) -> bool:
        """Show what differs between the loaded version and the chosen one (in a worker: it
        reads the base weights for the weight distance)."""
        from napari.qt.threading import create_worker

        loaded, chosen, versions = self.loaded_version, self.chosen, self.versions
        if versions is None or loaded is None or chosen is None:
            return False
        self.info.setText(f"Comparing {loaded} with {chosen}...")
        self._worker = create_worker(
            versions.compare, loaded, chosen,
            _connect={
                "returned": self._show_comparison,
                "errored": lambda exc: self.info.setText(f"Cannot compare {loaded} with {chosen}: {exc}"),
                "finished": self._compared,
            },
        )
        self._update_buttons()
        return True

    def _compared(self) -> None:
        self._worker = None
        self._update_buttons()

    def _show_comparison(self, comparison: VersionComparison) -> None:
        names = [(c.version if c is not None else BASE) for c in (comparison.a, comparison.b)]
        if not comparison.differences and comparison.weight_distance == 0:
            self.info.setText(f"{names[0]} and {names[1]} are the same.")
            return
        lines = [f"{field}: {a or '-'} → {b or '-'}" for field, a, b in comparison.differences
                 if field not in ("base", "base_signature", "architecture", "image_size")]
        self.info.setText(
            f"{names[0]} → {names[1]}: weights differ by {100 * comparison.weight_distance:.2f} % (relative L2)"
            + ("; " + "; ".join(lines) if lines else "") + "."
        )


def _smoothing_note(smoothing: float) -> str:
    """What a version's input smoothing means to a user, or nothing when it has none."""
    return f", smoothing noisy slices (strength {smoothing:g})" if smoothing else ""
