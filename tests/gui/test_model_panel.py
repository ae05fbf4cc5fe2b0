"""The model panel loads a checkpoint off the GUI thread and reports failures in words."""

import pytest

from napari_samed2._widgets.model_panel import FROM_FILE, ModelPanel
from tests.conftest import TEST_IMAGE_SIZE

pytestmark = pytest.mark.gui


def test_loading_a_checkpoint_file_announces_the_model(make_napari_viewer, qtbot, tiny_checkpoint, monkeypatch):
    import napari_samed2._widgets.model_panel as panel_module

    # the test checkpoint is 256 px; the panel passes what the user chose, plus this size
    original = panel_module.load_model
    monkeypatch.setattr(panel_module, "load_model", lambda *a, **k: original(*a, image_size=TEST_IMAGE_SIZE, **k))
    viewer = make_napari_viewer()
    panel = ModelPanel(viewer)
    viewer.window.add_dock_widget(panel)
    panel.checkpoint_path.setText(str(tiny_checkpoint))
    panel.device_choice.setCurrentText("cpu")
    with qtbot.waitSignal(panel.model_changed, timeout=60_000) as signal:
        panel.load()
    assert signal.args[0].spec.name == "sam2.1-tiny"
    assert panel.model is signal.args[0]
    assert panel.status.text().startswith("Loaded SAM 2.1 Hiera tiny: 256 px, cpu")
    qtbot.waitUntil(panel.load_button.isEnabled, timeout=10_000)
    with qtbot.waitSignal(panel.model_changed) as signal:
        panel.unload()
    assert signal.args[0] is None and panel.model is None


def test_a_bad_file_is_reported_in_the_panel(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    panel = ModelPanel(viewer)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    panel.checkpoint_path.setText(str(broken))
    panel.load()
    qtbot.waitUntil(lambda: "Could not load the model" in panel.status.text() and panel.load_button.isEnabled(), timeout=30_000)
    assert "broken.pt is not a readable PyTorch checkpoint" in panel.status.text()
    assert panel.model is None and panel.load_button.isEnabled()


def test_choosing_file_without_a_path_asks_for_one(make_napari_viewer):
    panel = ModelPanel(make_napari_viewer())
    panel.model_choice.setCurrentIndex(panel.model_choice.findText(FROM_FILE))
    panel.load()
    assert "Choose a checkpoint file" in panel.status.text()
