"""Model panel: choose a registry model or a checkpoint file, a device and a precision; load it.

Loading runs in a napari ``thread_worker`` so the viewer stays responsive while weights are
downloaded or read; a failure is shown in plain words in the panel, never as a traceback.
Its Versions section lists, loads and rolls back the loaded model's adapted versions
(see :mod:`.continual`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QWidget,
)

from napari_samed2._widgets.continual import VersionsSection
from napari_samed2._widgets.layout import scrolling_layout
from napari_samed2._widgets.state import shared_state
from napari_samed2.models import MODELS, LoadedModel, load_model, ready_model

if TYPE_CHECKING:
    import napari

FROM_FILE = "Checkpoint file..."
IMAGE_SIZES = (256, 512, 1024)


class ModelPanel(QWidget):
    """Loads one model at a time and announces it through ``model_changed`` and the
    viewer's shared state (where the segmentation panel picks it up)."""

    model_changed = Signal(object)  # LoadedModel | None

    def __init__(self, napari_viewer: napari.Viewer | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model: LoadedModel | None = None
        self._worker = None
        self.state = shared_state(napari_viewer)
        self.model_changed.connect(self.state.set_model)

        self.model_choice = QComboBox()
        for name, spec in MODELS.items():
            self.model_choice.addItem(spec.title, name)
        self.model_choice.addItem(FROM_FILE, None)
        self.model_choice.setCurrentIndex(list(MODELS).index(ready_model()))
        self.checkpoint_path = QLineEdit()
        self.checkpoint_path.setPlaceholderText("path to .pt / .pth / .safetensors")
        # a file's own keys say its architecture: typing a path stops the preselected model
        # from being imposed on it (choose a model afterwards to force one)
        self.checkpoint_path.textChanged.connect(self._on_path_changed)
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        path_row = QHBoxLayout()
        path_row.addWidget(self.checkpoint_path)
        path_row.addWidget(browse)

        self.device_choice = QComboBox()
        self.device_choice.addItems(["auto", "cuda", "mps", "cpu"])
        self.dtype_choice = QComboBox()
        self.dtype_choice.addItems(["auto", "float32", "bfloat16", "float16"])
        self.size_choice = QComboBox()
        self.size_choice.addItem("auto", None)
        for size in IMAGE_SIZES:
            self.size_choice.addItem(f"{size} px", size)
        self.size_choice.setToolTip(
            "The model's input size. auto: what a checkpoint file states, else the model's own "
            "(1024 px for SAM 2.1). Smaller is faster and coarser."
        )

        self.load_button = QPushButton("Load model")
        self.load_button.clicked.connect(self.load)
        self.unload_button = QPushButton("Unload")
        self.unload_button.clicked.connect(self.unload)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # busy indicator; downloads report in the terminal
        self.progress.hide()
        self.status = QLabel("No model loaded.")
        self.status.setWordWrap(True)
        self.versions = VersionsSection(self)
        # a model announced elsewhere (a learned version) is the panel's model too
        self.state.model_changed.connect(self._follow)

        form = QFormLayout()
        form.addRow("Model", self.model_choice)
        form.addRow("Checkpoint", path_row)
        form.addRow("Device", self.device_choice)
        form.addRow("Precision", self.dtype_choice)
        form.addRow("Image size", self.size_choice)
        buttons = QHBoxLayout()
        buttons.addWidget(self.load_button)
        buttons.addWidget(self.unload_button)
        layout = scrolling_layout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.versions)
        layout.addStretch()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a checkpoint", "", "Checkpoints (*.pt *.pth *.ckpt *.safetensors)"
        )
        if path:
            self.checkpoint_path.setText(path)

    def choose(self, name: str) -> None:
        """Select a registry model by name (what a script or the launcher does before ``load``)."""
        index = self.model_choice.findData(name)
        if index < 0:
            raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
        self.checkpoint_path.clear()
        self.model_choice.setCurrentIndex(index)

    def _on_path_changed(self, text: str) -> None:
        if text.strip():
            self.model_choice.setCurrentIndex(self.model_choice.findData(None))

    def load_arguments(self) -> tuple[str, dict]:
        """What :func:`load_model` will be called with, from the current choices."""
        name = self.model_choice.currentData()
        path = self.checkpoint_path.text().strip()
        kwargs = {"device": self.device_choice.currentText(), "dtype": self.dtype_choice.currentText()}
        if self.size_choice.currentData() is not None:
            kwargs["image_size"] = self.size_choice.currentData()
        if name is None or path:
            if not path:
                raise ValueError("Choose a checkpoint file, or pick a model from the list.")
            if name is not None:
                kwargs["architecture"] = name
            return path, kwargs
        return name, kwargs

    def load(self) -> None:
        from napari.qt.threading import create_worker

        if self._refuse_while_segmenting():
            return
        try:
            target, kwargs = self.load_arguments()
        except ValueError as exc:
            self._show_error(str(exc))
            return
        self._set_busy(True, f"Loading {target}...")
        # connecting "errored" at creation stops napari from re-raising the error as a crash
        self._worker = create_worker(
            load_model,
            target,
            **kwargs,
            _connect={
                "returned": self._on_loaded,
                "errored": lambda exc: self._show_error(str(exc)),
                "finished": lambda: self._set_busy(False),
            },
        )

    def unload(self) -> None:
        if self._refuse_while_segmenting():
            return
        self.model = None
        self.status.setText("No model loaded.")
        self.model_changed.emit(None)

    def _on_loaded(self, model: LoadedModel) -> None:
        self.model = model
        source = f" from {model.checkpoint.name}" if model.checkpoint is not None else ""
        self.status.setText(f"Loaded {model.describe()}{source}")
        self.model_changed.emit(model)

    def _follow(self, model: LoadedModel | None) -> None:
        if model is self.model:
            return
        self.model = model
        if model is None:
            self.status.setText("No model loaded.")
        else:
            source = f" from {model.checkpoint.name}" if model.checkpoint is not None else ""
            self.status.setText(f"Using {model.describe()}{source}")

    def _refuse_while_segmenting(self) -> bool:
        """A model change reaches the open segmentation (see the segmentation panel), so it
        waits for the segmentation's running job rather than swap the model under it."""
        if self.state.job is None:
            return False
        self.status.setText(
            f"The segmentation is running its {self.state.job}: wait for it to end (or Cancel it), "
            "then change the model."
        )
        return True

    def _show_error(self, message: str) -> None:
        self.status.setText(f"Could not load the model: {message}")

    def _set_busy(self, busy: bool, message: str = "") -> None:
        self.load_button.setEnabled(not busy)
        self.progress.setVisible(busy)
        if message:
            self.status.setText(message)
