"""What the plugin's dock widgets share in one viewer: the loaded model and the current
segmentation, plus the signals that keep the panels in step.

The model panel, the segmentation panel and the memory bank inspector are separate dock
widgets (napari creates each on its own); they find each other through ``shared_state(viewer)``,
one object per viewer, as micro-sam's annotator state does.
"""

from __future__ import annotations

import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, Signal

from napari_samed2._widgets.autosave import Autosaver
from napari_samed2._widgets.continual import Continual

if TYPE_CHECKING:
    import napari

    from napari_samed2._widgets.session_files import SavedSession
    from napari_samed2.engine import Session
    from napari_samed2.engine.labels import LabelVolume
    from napari_samed2.engine.library import MemoryLibrary
    from napari_samed2.models import LoadedModel


@dataclass(eq=False)
class Segmentation:
    """What the Segmentation panel works on, kept here rather than in the panel: closing its
    dock and opening it again (Plugins menu, launcher) gives a new panel that reconnects to
    the same session, layers, running job and autosave. ``panel`` is the panel that shows it
    (and receives its workers' results); a newer panel takes over from an older one."""

    session: Session | None = None
    labels: LabelVolume | None = None
    output_layer: Any = None
    points_layer: Any = None
    shapes_layer: Any = None
    layer_prompts: dict = field(default_factory=dict)  # prompts as last applied from the layers
    skipped_edited: set = field(default_factory=set)  # slices painted by hand, left alone
    jobs: deque = field(default_factory=deque)  # jobs waiting
    job: Any = None  # the one running
    worker: Any = None
    pending_model: Any = None  # a model that arrived while a job ran, applied after it
    image_path: Path | None = None  # the image's file, if it came from one
    fingerprint: str | None = None  # of the slices' content (session_files.volume_fingerprint)
    window: str = "auto"  # the session's intensity window (a key of io.WINDOW_CHOICES)
    offer: SavedSession | None = None  # an autosave of this image offered for resuming
    autosave: Autosaver = field(default_factory=Autosaver)
    panel: Any = None


class AnnotatorState(QObject):
    """The model, the session and which layer/axis it segments, for one viewer.

    Signals: ``model_changed(model or None)``; ``session_changed(session or None)`` when a new
    segmentation starts; ``memory_changed()`` after frames were segmented or memory entries
    changed (pin, evict, policy); ``repropagate_requested()`` asks the segmentation panel to
    recompute stale frames (it owns the worker, the progress bar and Cancel).
    ``segmentation`` is the segmentation panel's work (see :class:`Segmentation`); ``library``
    the memory library shared by the viewer's segmentations; ``continual`` the store of
    confirmed cases and the running adaptation (see :class:`~._widgets.continual.Continual`).
    """

    model_changed = Signal(object)
    session_changed = Signal(object)
    memory_changed = Signal()
    repropagate_requested = Signal()

    def __init__(self, viewer: napari.Viewer | None = None):
        super().__init__()
        self._viewer = weakref.ref(viewer) if viewer is not None else None
        self.model: LoadedModel | None = None
        self.session: Session | None = None
        self.image_layer = None  # the napari Image layer the session segments
        self.axis: int = 0  # the slicing axis, in the image layer's data dimensions
        self.job: str | None = None  # the segmentation's running job ("propagate", ...), if any
        self.segmentation = Segmentation()
        # the memory library that guides this viewer's segmentations (None: none loaded yet)
        self.library: MemoryLibrary | None = None
        self.library_folder: Path | None = None  # where it was loaded from or last saved to
        self.library_changed = False  # entries added since it was loaded or saved
        self.continual = Continual()

    @property
    def viewer(self) -> napari.Viewer | None:
        return self._viewer() if self._viewer is not None else None

    def set_model(self, model: LoadedModel | None) -> None:
        if model is not self.model:
            self.model = model
            self.model_changed.emit(model)

    def set_session(self, session: Session | None, image_layer=None, axis: int = 0) -> None:
        self.session, self.image_layer, self.axis = session, image_layer, axis
        self.session_changed.emit(session)

    def go_to_frame(self, frame: int) -> None:
        """Show ``frame`` (a slice index along the session's axis) in the viewer."""
        viewer, layer = self.viewer, self.image_layer
        if viewer is None or layer is None:
            return
        world = layer.data_to_world([frame if d == self.axis else 0 for d in range(layer.ndim)])
        world_axis = viewer.dims.ndim - layer.ndim + self.axis
        viewer.dims.set_point(world_axis, world[self.axis])


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def shared_state(viewer: napari.Viewer | None) -> AnnotatorState:
    """The one :class:`AnnotatorState` of ``viewer`` (a new private one without a viewer)."""
    if viewer is None:
        return AnnotatorState()
    state = _STATES.get(viewer)
    if state is None:
        state = _STATES[viewer] = AnnotatorState(viewer)
    return state
