"""Closing the viewer while a job runs: the panel's worker stops before Qt deletes the window.

A worker still running at that point signalled to deleted Qt objects ("wrapped C/C++ object
... has been deleted" at exit, 3 runs in 3), and at interpreter exit Python crashed now and
then (a segmentation fault in 4 runs of 12 after an image layer was deleted mid-propagation).
"""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_samed2._widgets.segmentation_panel import SegmentationPanel
from napari_samed2._widgets.state import shared_state

pytestmark = pytest.mark.gui
WAIT_MS = 120_000


def _started_propagation(make_napari_viewer, small_model, qtbot, slices_before: int = 2):
    viewer = make_napari_viewer()
    data = np.random.default_rng(0).normal(0.1, 0.02, (16, 64, 64)).astype(np.float32)
    data[:, 20:40, 20:40] += 0.8
    image = viewer.add_image(data, name="mr")
    shared_state(viewer).set_model(small_model)
    panel = SegmentationPanel(viewer)
    viewer.window.add_dock_widget(panel)
    assert panel.start()
    with qtbot.waitSignal(panel.work_finished, timeout=WAIT_MS):
        panel.points_layer.add([8, 30, 30])
    seen = []
    panel.direction_choice.setCurrentText("forward")
    panel.propagate()
    panel._worker.yielded.connect(lambda _step: seen.append(1))
    qtbot.waitUntil(lambda: len(seen) >= slices_before, timeout=WAIT_MS)
    return viewer, image, panel


def test_closing_the_viewer_after_deleting_the_image_mid_run_waits_for_the_worker(make_napari_viewer, small_model, qtbot):
    viewer, image, panel = _started_propagation(make_napari_viewer, small_model, qtbot)
    worker = panel._worker
    viewer.layers.remove(image)  # ends the session and cancels the run
    viewer.close()
    assert not worker.is_running  # the worker thread had ended when close() returned
    assert panel.session is None


def test_shutdown_cancels_queued_work_and_returns_once_the_worker_stopped(make_napari_viewer, small_model, qtbot):
    _viewer, _image, panel = _started_propagation(make_napari_viewer, small_model, qtbot, slices_before=1)
    worker = panel._worker
    panel.points_layer.add([4, 30, 30])  # a click while the run goes on: queued behind it
    assert len(panel._jobs) == 1
    assert panel.shutdown(timeout_s=60.0)
    assert not worker.is_running and not panel._jobs
    assert panel.work.panel is None  # the worker's signals still queued go nowhere: the window is closing


def test_the_panel_hears_its_window_close_through_its_parents_not_napari_private_attributes(qtbot, monkeypatch):
    """The close watcher follows the panel's parent chain, so a panel put in a dock after it was
    built, and the dock in a window after that, still shuts down when that window closes, and
    not when only the dock closes (napari plugins lose ``Window._qt_window`` in 0.10)."""
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    panel = SegmentationPanel(None)
    calls = []
    monkeypatch.setattr(panel._close_watcher, "_on_close", lambda: calls.append("shutdown"))
    dock = QDockWidget("panel")
    dock.setWidget(panel)
    window = QMainWindow()
    qtbot.addWidget(window)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    dock.close()
    assert calls == []
    window.close()
    assert calls == ["shutdown"]



def test_the_panel_touches_no_private_napari_attribute_through_the_plugin_proxy(make_napari_viewer):
    """napari hands plugins its viewer behind a proxy that warns on private attributes, which
    plugins lose in napari 0.10 (the close watcher used to read ``Window._qt_window``)."""
    import warnings

    from napari.utils._proxies import PublicOnlyProxy

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 16, 16), np.float32), name="mr")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        panel = SegmentationPanel(PublicOnlyProxy(viewer))
        viewer.window.add_dock_widget(panel)
