"""Closing the Segmentation dock and opening it again reconnects to the open segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samed2.__main__ import PLUGIN, dock_all_widgets
from napari_samed2._widgets.state import shared_state
from tests.gui.test_segmentation_panel import WAIT_MS, _click, _run, _volume

pytestmark = pytest.mark.gui


@pytest.fixture
def docked(make_napari_viewer, small_model):
    """The launcher's panels on an image, a model loaded, a segmentation started."""
    viewer = make_napari_viewer()
    viewer.add_image(_volume(), name="mr")
    widgets = dock_all_widgets(viewer)
    shared_state(viewer).set_model(small_model)
    panel = widgets["Segmentation"]
    assert panel.start()
    return viewer, panel, widgets["Memory bank inspector"]


def _close_and_reopen(viewer, panel):
    viewer.window.remove_dock_widget(panel)  # what the dock's close button does
    _dock, reopened = viewer.window.add_plugin_dock_widget(PLUGIN, "Segmentation")
    assert reopened is not panel
    return reopened


def test_a_reopened_panel_shows_the_open_segmentation(docked, qtbot):
    viewer, panel, inspector = docked
    _run(panel, qtbot, _click, panel, 2, 32, 32)
    panel.add_object()
    _run(panel, qtbot, _click, panel, 2, 6, 6)
    session, output = panel.session, panel.output_layer

    reopened = _close_and_reopen(viewer, panel)
    assert reopened.session is session and reopened.state.session is inspector.session is session
    assert reopened.output_layer is output and reopened.points_layer is panel.points_layer
    assert [reopened.object_choice.itemData(i) for i in range(reopened.object_choice.count())] == [1, 2]
    assert reopened.current_object == 2 and reopened.image_choice.value is viewer.layers["mr"]
    assert reopened.propagate_button.isEnabled() and "Reconnected" in reopened.status.text()
    assert reopened.pending_prompt_changes() == {}

    # a click in the clicks layer is handled by the new panel, once
    message = _run(reopened, qtbot, _click, reopened, 5, 6, 6)
    assert "1 slices updated" in message and 5 in session.prompts[2]
    assert reopened.undo_button.text() == "Undo segment" and not panel.isEnabled()
    np.testing.assert_array_equal(output.data[5], session.result(5).labels((64, 64)))
    # and the inspector shows the same session's entries
    assert inspector.table.rowCount() == len(session.memory_entries())


def test_a_running_propagation_reports_to_the_reopened_panel(docked, qtbot):
    viewer, panel, _inspector = docked
    _run(panel, qtbot, _click, panel, 0, 30, 32)
    panel.direction_choice.setCurrentText("forward")
    reopened = []

    def reopen_once(_step):
        if not reopened:
            reopened.append(_close_and_reopen(viewer, panel))

    panel.propagate()
    panel._worker.yielded.connect(reopen_once)
    qtbot.waitUntil(lambda: bool(reopened), timeout=WAIT_MS)
    new = reopened[0]
    assert new.busy and new.cancel_button.isEnabled() and "running its propagate" in new.status.text()
    with qtbot.waitSignal(new.work_finished, timeout=WAIT_MS) as finished:
        pass
    assert finished.args[0] == "Propagate: 8 slices updated."
    assert new.progress.isHidden() and not new.busy
    np.testing.assert_array_equal(new.output_layer.data, new.session.labels())


def test_the_autosave_and_library_carry_over(docked, qtbot):
    viewer, panel, _inspector = docked
    from napari_samed2.engine.library import MemoryLibrary

    panel.autosave_check.setChecked(False)
    panel.state.library = MemoryLibrary()
    reopened = _close_and_reopen(viewer, panel)
    assert not reopened.autosave_check.isChecked() and not reopened.work.autosave.enabled
    assert "0 entries, not saved yet" in reopened.library_status.text() and reopened.save_library_button.isEnabled()
