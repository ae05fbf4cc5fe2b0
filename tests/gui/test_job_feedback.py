"""While work runs the panel says what is queued, refuses duplicates and keeps the inspector current."""

from __future__ import annotations

import numpy as np
import pytest

import napari_samed2._widgets.segmentation_panel as panel_module
from tests.gui.test_segmentation_panel import WAIT_MS, _click, _run, panel  # noqa: F401 (fixture)

pytestmark = pytest.mark.gui


def test_a_second_propagate_is_refused_and_a_click_is_shown_as_queued(panel, qtbot):
    panel.live_mode.setChecked(False)
    _click(panel, 4, 34, 32)
    panel.live_mode.setChecked(True)
    panel._say("Slice 9, object 1: an old error")
    with qtbot.waitSignal(panel.work_finished, timeout=WAIT_MS) as finished:
        panel.propagate()
        assert panel.status.text() == "Running propagate..."  # the old message is gone
        assert not panel.propagate_button.isEnabled()
        panel.propagate()
        assert "already running or waiting" in panel.status.text()
        _click(panel, 6, 30, 30)
        assert panel.status.text().startswith("Queued segment: it starts when the propagate ends")
        assert panel._job_names() == ["propagate", "segment"]
    assert "1 slices updated" in finished.args[0]  # the queued click ran last
    assert 6 in panel.session.prompts[1] and panel.propagate_button.isEnabled()


def test_the_inspector_is_told_about_results_during_a_run(panel, qtbot, monkeypatch):
    monkeypatch.setattr(panel_module, "INSPECTOR_REFRESH_S", 0.0)
    _run(panel, qtbot, _click, panel, 0, 30, 32)
    panel.direction_choice.setCurrentText("forward")
    seen = []
    panel.state.memory_changed.connect(lambda: seen.append(len(panel.session.memories[1].entries)))
    _run(panel, qtbot, panel.propagate)
    assert len(seen) >= 3 and seen[0] < 8  # signals while entries were still arriving
    assert seen[-1] == 8


def _box(panel, frame, top_left, bottom_right):
    (r0, c0), (r1, c1) = top_left, bottom_right
    pixels = ([frame, r0, c0], [frame, r0, c1], [frame, r1, c1], [frame, r1, c0])
    panel.shapes_layer.add_rectangles(
        np.array([panel.shapes_layer.world_to_data(panel.state.image_layer.data_to_world(p)) for p in pixels])
    )


def test_a_prompt_complaint_goes_away_when_the_layers_are_fixed(panel, qtbot):
    _run(panel, qtbot, _box, panel, 3, (20, 20), (44, 44))
    _box(panel, 3, (10, 10), (30, 30))
    assert "two boxes" in panel.status.text()
    panel.shapes_layer.selected_data = {1}
    panel.shapes_layer.remove_selected()
    assert panel.status.text() == "The prompts are valid again."


def test_the_stale_count_follows_a_change_made_elsewhere(panel, qtbot):
    _run(panel, qtbot, _click, panel, 0, 30, 32)
    panel.direction_choice.setCurrentText("forward")
    _run(panel, qtbot, panel.propagate)
    assert panel.repropagate_button.text() == "Re-propagate stale slices"
    panel.session.evict(1, 2)  # as the inspector does, then it tells the panels
    panel.state.memory_changed.emit()
    stale = sum(len(f) for f in panel.session.stale.values())
    assert stale > 0 and panel.repropagate_button.text() == f"Re-propagate {stale} stale slices"


def _press(viewer, key):
    from app_model.types import KeyBinding

    viewer.keymap[KeyBinding.from_str(key)](viewer)


def test_shortcuts_drive_the_panel(panel, qtbot):
    from napari_samed2._widgets.inspector import LEAST_CONFIDENT_KEY, MemoryInspector
    from napari_samed2._widgets.segmentation_panel import SHORTCUTS

    viewer = panel.viewer
    panel.add_object()
    assert panel.current_object == 2
    _press(viewer, "Alt-N")
    assert panel.current_object == 1
    _press(viewer, "Alt-Shift-N")
    assert panel.current_object == 2
    _press(viewer, "Alt-T")
    assert panel.polarity_button.text().startswith("Negative")
    _press(viewer, "Alt-T")
    _run(panel, qtbot, _click, panel, 0, 30, 32)
    with qtbot.waitSignal(panel.work_finished, timeout=WAIT_MS) as finished:
        _press(viewer, "Alt-P")
        assert panel.busy
        _press(viewer, "Alt-C")
    assert finished.args[0].startswith("Cancelled propagate") or "slices updated" in finished.args[0]
    inspector = MemoryInspector(viewer)
    inspector.status.setText("")
    _press(viewer, LEAST_CONFIDENT_KEY)  # what go_to_least_confident says, with or without tracked slices
    assert "least confident" in inspector.status.text() or "No tracked slice yet" in inspector.status.text()
    from app_model.types import KeyBinding

    assert {KeyBinding.from_str(key) for key in SHORTCUTS} <= set(viewer.keymap)
