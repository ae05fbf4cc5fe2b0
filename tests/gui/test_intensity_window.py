"""The Segmentation panel's intensity window: what the model sees is what the user chose."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_samed2._widgets.session_files import META_FILE
from napari_samed2.io import IntensityWindow
from tests.gui.test_segmentation_panel import _click, _run, panel  # noqa: F401 (fixture)
from tests.gui.test_sessions import _new_panel

pytestmark = pytest.mark.gui


def _ct(frames=6, size=64):
    """A CT in HU: air, a 40 HU body with a 1,500 HU bone rim, and a 100 HU organ in it. In the
    percentile window the organ is 60 HU of ~2,500; in the soft-tissue window 60 of 400."""
    rows, cols = np.ogrid[:size, :size]
    radius = np.hypot(rows - 32, cols - 32)
    data = np.full((frames, size, size), -1000.0, np.float32)
    data[:, radius < 28] = 40.0
    data[:, (radius >= 25) & (radius < 28)] = 1500.0
    data[:, (rows - 30) ** 2 + (cols - 30) ** 2 <= 8**2] = 100.0
    return data


def _choose(panel, window: str) -> str:
    """Choose ``window`` as the user does (the combo's activated signal); the status line."""
    index = panel.window_choice.findData(window)
    assert index >= 0
    panel.window_choice.setCurrentIndex(index)
    panel.window_choice.activated.emit(index)
    return panel.status.text()


def test_a_ct_window_chosen_before_starting_is_the_one_the_model_sees(make_napari_viewer, small_model):
    panel = _new_panel(make_napari_viewer, small_model, _ct())
    assert panel.window_choice.currentData() == "auto"
    assert "New segmentation will window" in _choose(panel, "ct:soft_tissue")
    assert panel.session is None  # nothing starts by itself
    assert panel.start()
    volume = panel.session.volume
    assert volume.normalise == IntensityWindow(-160.0, 240.0)
    organ = volume.unit_frame(0)[30, 30]
    assert organ == pytest.approx(260 / 400)
    assert np.ptp(IntensityWindow.from_percentiles(_ct())(np.array([40.0, 100.0]))) < 0.03  # squeezed without it


def test_changing_the_window_mid_segmentation_re_segments_the_prompted_slices(panel, qtbot):
    _run(panel, qtbot, _click, panel, 3, 33, 32)
    old = panel.session
    prompt = old.prompts[1][3]
    panel.state.image_layer.contrast_limits = (0.0, 0.5)
    message = _run(panel, qtbot, _choose, panel, "display")
    session = panel.session
    assert session is not old and panel.state.session is session and session.model is old.model
    assert session.volume.normalise == IntensityWindow(0.0, 0.5) and session.volume.data is old.volume.data
    assert session.object_ids == [1] and session.prompts[1][3] is prompt and session.frames_encoded == 1
    np.testing.assert_array_equal(panel.output_layer.data[3], session.result(3).labels((64, 64)))
    assert "re-segment" in message.lower() or "slices updated" in message
    assert panel.work.window == "display"

    assert "already uses" in _choose(panel, "display")  # the same limits: nothing to redo
    assert panel.session is session
    panel.state.image_layer.contrast_limits = (0.0, 0.8)  # chosen again after a change: taken
    _run(panel, qtbot, _choose, panel, "display")
    assert panel.session is not session and panel.session.volume.normalise == IntensityWindow(0.0, 0.8)


def test_a_window_is_refused_while_a_job_runs_without_a_model_or_for_a_colour_image(panel, make_napari_viewer, small_model):
    session = panel.session
    panel._worker = object()  # a job running
    try:
        assert "Wait for the running job" in _choose(panel, "ct:lung")
    finally:
        panel._worker = None
    assert panel.session is session and panel.window_choice.currentData() == "auto"
    panel.state.set_model(None)
    assert "No model is loaded" in _choose(panel, "ct:lung")
    assert panel.session is session and panel.window_choice.currentData() == "auto"

    rgb = np.zeros((4, 32, 32, 3), np.uint8)
    colour = _new_panel(make_napari_viewer, small_model, rgb, rgb=True)
    _choose(colour, "ct:soft_tissue")
    assert not colour.start()
    assert "grayscale" in colour.status.text() and colour.session is None


def test_a_resumed_session_sees_the_image_through_its_saved_window(panel, qtbot, make_napari_viewer, tmp_path):
    panel.state.image_layer.contrast_limits = (0.0, 0.5)
    _choose(panel, "display")
    _run(panel, qtbot, _click, panel, 3, 33, 32)
    assert panel.save_session(tmp_path / "saved")
    meta = json.loads((tmp_path / "saved" / META_FILE).read_text())
    assert meta["image"]["window"] == {"choice": "display", "low": 0.0, "high": 0.5}

    other = _new_panel(make_napari_viewer, panel.state.model, scale=(3.0, 0.5, 0.5), translate=(10.0, -4.0, 2.0))
    assert other.window_choice.currentData() == "auto"
    assert other.open_session(tmp_path / "saved"), other.status.text()
    assert other.session.volume.normalise == IntensityWindow(0.0, 0.5)  # not the new layer's limits
    assert other.window_choice.currentData() == "display"

    meta["image"]["window"] = {"choice": "display", "low": 1.0, "high": 0.0}
    (tmp_path / "saved" / META_FILE).write_text(json.dumps(meta))
    session = other.session
    assert not other.open_session(tmp_path / "saved")
    assert "intensity window saved" in other.status.text() and other.session is session
