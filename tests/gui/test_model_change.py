"""A model loaded or unloaded in the Model panel reaches the open segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samed2 import load_model
from napari_samed2._widgets.model_panel import ModelPanel
from tests.conftest import TEST_DEVICE, TEST_IMAGE_SIZE
from tests.gui.test_segmentation_panel import _click, _run, panel  # noqa: F401 (fixture)

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def other_model(tiny_checkpoint):
    """The same architecture loaded again at a smaller size: a different model object."""
    return load_model(tiny_checkpoint, device=TEST_DEVICE, dtype="float32", image_size=TEST_IMAGE_SIZE // 2)


def test_a_new_model_takes_over_the_open_segmentation_keeping_its_prompts(panel, qtbot, other_model):
    _run(panel, qtbot, _click, panel, 3, 33, 32)
    old = panel.session
    prompt = old.prompts[1][3]
    message = _run(panel, qtbot, panel.state.set_model, other_model)
    session = panel.session
    assert session is not old and session.model is other_model and panel.state.session is session
    assert session.object_ids == [1] and session.prompts[1][3] is prompt
    assert session.model.image_size == TEST_IMAGE_SIZE // 2 and session.frames_encoded == 1
    np.testing.assert_array_equal(panel.output_layer.data[3], session.result(3).labels((64, 64)))
    assert "re-segment" in message.lower() or "1 slices updated" in message


def test_after_unload_a_click_is_refused_and_nothing_is_lost(panel, qtbot):
    _run(panel, qtbot, _click, panel, 3, 33, 32)
    labels = panel.output_layer.data.copy()
    panel.state.set_model(None)
    assert "unloaded" in panel.status.text()
    _click(panel, 4, 30, 30)
    assert "No model is loaded" in panel.status.text() and not panel.busy
    assert 4 not in panel.session.prompts[1]
    panel.propagate()
    assert not panel.busy
    np.testing.assert_array_equal(panel.output_layer.data, labels)


def test_the_model_panel_waits_for_a_running_segmentation_job(make_napari_viewer):
    model_panel = ModelPanel(make_napari_viewer())
    model_panel.state.job = "propagate"
    model_panel.load()
    assert "running its propagate" in model_panel.status.text() and model_panel.load_button.isEnabled()
    model_panel.unload()
    assert "running its propagate" in model_panel.status.text()


def test_the_image_size_choice_reaches_load_model(make_napari_viewer, tiny_checkpoint):
    model_panel = ModelPanel(make_napari_viewer())
    model_panel.checkpoint_path.setText(str(tiny_checkpoint))
    model_panel.size_choice.setCurrentIndex(model_panel.size_choice.findData(256))
    assert model_panel.load_arguments() == (str(tiny_checkpoint), {"device": "auto", "dtype": "auto", "image_size": 256})
    model_panel.size_choice.setCurrentIndex(model_panel.size_choice.findData(None))
    assert "image_size" not in model_panel.load_arguments()[1]
