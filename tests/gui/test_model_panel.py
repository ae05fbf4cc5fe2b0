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


def test_the_launcher_offers_and_loads_a_model_whose_weights_ship(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """``python -m napari_samed2``: when the demo model's weights ship in the package, it is
    offered first and loaded at start (here a random-weight stand-in in the weights folder);
    without them nothing is loaded and the registry default is offered."""
    from napari_samed2.__main__ import dock_all_widgets, start_model
    from napari_samed2.models import DEFAULT_MODEL, MODELS, loading
    from napari_samed2.models.random_weights import save_random_checkpoint

    monkeypatch.setattr(loading, "PACKAGED_WEIGHTS_DIR", tmp_path)
    viewer = make_napari_viewer()
    widgets = dock_all_widgets(viewer)
    panel = next(w for w in widgets.values() if isinstance(w, ModelPanel))
    assert panel.model_choice.currentData() == DEFAULT_MODEL
    start_model(widgets, None)
    assert panel.load_button.isEnabled() and panel.model is None  # nothing to load offline

    save_random_checkpoint(tmp_path / "demo.safetensors", "demo")
    widgets = dock_all_widgets(make_napari_viewer())
    panel = next(w for w in widgets.values() if isinstance(w, ModelPanel))
    assert panel.model_choice.currentData() == "demo"
    assert {panel.model_choice.itemData(i) for i in range(panel.model_choice.count())} >= set(MODELS)
    with qtbot.waitSignal(panel.model_changed, timeout=60_000) as signal:
        start_model(widgets, None)
    assert signal.args[0].spec.name == "demo" and signal.args[0].checkpoint == tmp_path / "demo.safetensors"
    qtbot.waitUntil(panel.load_button.isEnabled, timeout=10_000)
    start_model(widgets, "none")  # --model none: nothing is loaded or unloaded
    assert panel.model is signal.args[0]


def test_a_typed_checkpoint_path_is_read_as_its_own_architecture(make_napari_viewer):
    panel = ModelPanel(make_napari_viewer())
    panel.checkpoint_path.setText("/data/MedSAM2_latest.pt")
    assert panel.model_choice.currentData() is None  # "Checkpoint file...": guessed from the file
    assert panel.load_arguments() == ("/data/MedSAM2_latest.pt", {"device": "auto", "dtype": "auto"})
    panel.model_choice.setCurrentIndex(panel.model_choice.findData("medsam2"))  # forced afterwards
    assert panel.load_arguments()[1]["architecture"] == "medsam2"
    panel.choose("sam2.1-small")
    assert panel.checkpoint_path.text() == "" and panel.load_arguments() == (
        "sam2.1-small", {"device": "auto", "dtype": "auto"}
    )


def test_the_launcher_starts_a_segmentation_once_the_model_has_loaded(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """``python -m napari_samed2`` with shipped weights: the sample is ready to be clicked on
    (a segmentation started on it) as soon as the model has loaded, not after a button."""
    from napari_samed2.__main__ import PLUGIN, dock_all_widgets, segment_once_loaded, start_model
    from napari_samed2._widgets.segmentation_panel import SegmentationPanel
    from napari_samed2.models import loading
    from napari_samed2.models.random_weights import save_random_checkpoint

    monkeypatch.setattr(loading, "PACKAGED_WEIGHTS_DIR", tmp_path)
    save_random_checkpoint(tmp_path / "demo.safetensors", "demo")
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_mr")
    widgets = dock_all_widgets(viewer)
    segmentation = next(w for w in widgets.values() if isinstance(w, SegmentationPanel))
    panel = next(w for w in widgets.values() if isinstance(w, ModelPanel))
    segment_once_loaded(widgets)
    assert segmentation.session is None
    with qtbot.waitSignal(panel.model_changed, timeout=60_000):
        start_model(widgets, None)
    assert segmentation.session is not None and segmentation.session.model is panel.model
    # (the plugin's viewer hands out proxies of the layers: compare names)
    assert segmentation.state.image_layer.name == "synthetic MR"
    assert viewer.layers.selection.active.name == segmentation.points_layer.name  # the next click is a prompt
    first = segmentation.session
    panel.state.set_model(None)
    panel.state.set_model(panel.model)  # a later model change does not start another one
    assert segmentation.session is first
