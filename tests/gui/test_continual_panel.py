"""Confirm, learn and versions in the GUI: the panels drive the continual-adaptation core.

Each test gets a random-weight ``demo`` model at 128 px written into its own folder, so the
versions an adaptation writes beside the weights stay private to the test.
"""

from __future__ import annotations

import importlib

import re

import pytest
import torch

from napari_samed2 import load_model
from napari_samed2._widgets.model_panel import ModelPanel
from napari_samed2._widgets.segmentation_panel import SegmentationPanel
from napari_samed2._widgets.state import shared_state
from napari_samed2.training.continual import BASE, AdaptConfig, CaseStore, ModelVersions, default_versions_folder
from tests.gui.test_segmentation_panel import WAIT_MS, _click, _run, _volume

pytestmark = pytest.mark.gui
SIZE = 128
# seconds per run on one core; no check (with random weights the Dice it compares is noise)
TINY = AdaptConfig(batch=1, clip_length=2, fisher_clips=1, top_k=1, check=False)


@pytest.fixture
def model(tmp_path):
    from napari_samed2.models.random_weights import save_random_checkpoint

    (tmp_path / "weights").mkdir()
    checkpoint = save_random_checkpoint(tmp_path / "weights" / "demo.pt", "demo", image_size=SIZE, seed=0)
    return load_model(checkpoint, device="cpu", dtype="float32", image_size=SIZE)


@pytest.fixture
def panel(make_napari_viewer, model, qtbot):
    """A segmentation with one object clicked and propagated through the volume."""
    viewer = make_napari_viewer()
    viewer.add_image(_volume(), name="mr")
    shared_state(viewer).set_model(model)
    panel = SegmentationPanel(viewer)
    viewer.window.add_dock_widget(panel)
    panel.continual.base_config = TINY
    panel.continual.steps_choice.setValue(2)
    panel.min_confidence.setValue(0.0)  # random weights are not confident
    assert panel.start()
    return panel


def _segment(panel, qtbot) -> None:
    _run(panel, qtbot, _click, panel, 3, 33, 32)
    _run(panel, qtbot, panel.propagate)
    assert panel.session.labels().any()


def _learn(panel, qtbot, steps: int = 2) -> list:
    """Start learning, recording the progress items the section receives; waits for the end."""
    section, seen = panel.continual, []
    receive = section._on_progress
    section._on_progress = lambda item: (seen.append(item), receive(item))
    section.steps_choice.setValue(steps)
    assert section.learn()
    assert section.learning and not section.confirm_button.isEnabled() and section.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not section.learning, timeout=WAIT_MS)
    return seen


def test_confirm_refuses_without_labels_then_stores_the_case_and_says_so(panel, qtbot, private_data_dir):
    section = panel.continual
    assert section.confirm() is None
    assert "nothing to confirm: no object has a mask yet" in panel.status.text()

    _segment(panel, qtbot)
    done = section.confirm()
    text = panel.status.text()
    assert done is not None and f"stored as case {done.case_id}" in text and "8 slices from slice 0, 1 object" in text
    assert f"{done.library_kept} memories joined the library" in text and done.library_kept > 0
    folder = private_data_dir / "confirmed-cases" / "demo"
    assert CaseStore.open(folder, create=False).ids == [done.case_id]
    assert len(panel.state.library) == done.library_kept and panel.state.library_changed
    assert "1 in demo; Learn uses c00001" in section.store_status.text()

    section.confirm()  # the same volume again: not stored twice
    assert "already stored as case c00001" in panel.status.text()
    panel.undo()
    panel.undo()
    assert len(panel.state.library) == 0  # Undo takes the memories out; the case stays stored
    assert CaseStore.open(folder, create=False).ids == [done.case_id]


def test_learning_runs_in_a_worker_and_its_version_becomes_the_model(panel, qtbot, model):
    _segment(panel, qtbot)
    panel.continual.confirm()
    before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    with qtbot.waitSignal(panel.state.model_changed, timeout=WAIT_MS) as signal:
        seen = _learn(panel, qtbot, steps=3)
    assert [item.step for item in seen] == [1, 2, 3] and seen[-1].result is not None
    adapted = signal.args[0]
    assert adapted is seen[-1].result.model is panel.state.model
    assert "Learned case c00001 (replay+distill, 3 steps) in" in panel.status.text()
    assert "version v1 is now the model" in panel.status.text()
    versions = ModelVersions(default_versions_folder(model))
    assert [v.version for v in versions.list()] == ["v1"] and adapted.checkpoint == versions.get("v1").path
    assert all(torch.equal(before[k], v) for k, v in model.sam.state_dict().items())  # the old model untouched
    qtbot.waitUntil(lambda: not panel.busy, timeout=WAIT_MS)  # the segmentation re-segments with it
    assert panel.session.model is adapted
    assert panel.continual.confirm_button.isEnabled() and not panel.continual.progress.isVisible()


def test_image_encoder_too_adapts_the_encoder_and_says_so(panel, qtbot, model):
    _segment(panel, qtbot)
    panel.continual.confirm()
    panel.continual.encoder_choice.setChecked(True)
    before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    seen = _learn(panel, qtbot)
    adapted = seen[-1].result.model
    assert "Learned case c00001 (replay+distill, 2 steps, image encoder too) in" in panel.status.text()
    changed = {k for k, v in adapted.sam.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("image_encoder.trunk.blocks.") for k in changed)
    assert adapted.feature_signature != model.feature_signature  # it does not read the base's cached features

def test_learning_that_does_worse_on_the_confirmed_case_keeps_the_model_and_says_why(panel, qtbot, model,
                                                                                     monkeypatch):
    import dataclasses

    adapting = importlib.import_module("napari_samed2.training.continual.adapt")  # the package's adapt is the function

    monkeypatch.setattr(adapting, "case_dice", lambda m, case: 0.6 if m is model else 0.45)
    panel.continual.base_config = dataclasses.replace(TINY, check=True)
    _segment(panel, qtbot)
    panel.continual.confirm()
    seen = _learn(panel, qtbot)
    assert seen[-1].result.check == adapting.CaseCheck(0.6, 0.45)
    assert panel.state.model is model and panel.session.model is model
    assert ("Learning case c00001 did not help on it (Dice after a box 0.60 before, 0.45 after): the model is "
            "unchanged, no version was written.") in panel.status.text()
    assert ModelVersions(default_versions_folder(model)).list() == []


def test_cancel_keeps_the_model_and_writes_no_version(panel, qtbot, model):
    _segment(panel, qtbot)
    panel.continual.confirm()
    section = panel.continual
    receive = section._on_progress
    section._on_progress = lambda item: (receive(item), section.cancel())
    section.steps_choice.setValue(50)
    assert section.learn()
    qtbot.waitUntil(lambda: not section.learning, timeout=WAIT_MS)
    assert panel.state.model is model and panel.session.model is model
    # the worker may finish the step under way when Cancel arrives, then stops
    assert re.search(r"Cancelled learning after [12] of 50 steps: the model is unchanged", panel.status.text())
    assert ModelVersions(default_versions_folder(model)).list() == []


def test_model_panel_lists_versions_and_rolls_back_to_the_base_weights(panel, qtbot, model):
    viewer = panel.viewer
    models = ModelPanel(viewer)
    viewer.window.add_dock_widget(models)
    section = models.versions
    assert "No versions yet" in section.info.text() and not section.use_button.isEnabled()

    _segment(panel, qtbot)
    panel.continual.confirm()
    _learn(panel, qtbot)
    assert models.model is panel.state.model and "from v0001.safetensors" in models.status.text()
    items = [section.choice.itemText(i) for i in range(section.choice.count())]
    assert items == ["base: base weights", "v1: replay+distill, 2 steps on 'mr' (loaded, current)"]

    section.choice.setCurrentIndex(section.choice.findData(BASE))
    section.compare()
    qtbot.waitUntil(lambda: "weights differ by" in section.info.text(), timeout=WAIT_MS)
    assert section.info.text().startswith("v1 → base") and "mode: replay+distill → -" in section.info.text()

    qtbot.waitUntil(lambda: section.rollback_button.isEnabled() and not panel.busy, timeout=WAIT_MS)
    with qtbot.waitSignal(models.model_changed, timeout=WAIT_MS) as signal:
        assert section.rollback()
    back = signal.args[0]
    assert panel.state.model is back and "Now using version base" in models.status.text()
    weights = model.sam.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in back.sam.state_dict().items())
    qtbot.waitUntil(models.load_button.isEnabled, timeout=WAIT_MS)
    assert ModelVersions(default_versions_folder(model)).current == BASE
    assert section.choice.currentText() == "base: base weights (loaded, current)"

    section.choice.setCurrentIndex(section.choice.findData("v1"))  # Use: loaded, not made current
    qtbot.waitUntil(lambda: not panel.busy, timeout=WAIT_MS)  # it re-segments with base first
    with qtbot.waitSignal(models.model_changed, timeout=WAIT_MS) as signal:
        assert section.use()
    assert signal.args[0].checkpoint.name == "v0001.safetensors" and panel.state.model is signal.args[0]
    qtbot.waitUntil(models.load_button.isEnabled, timeout=WAIT_MS)
    assert ModelVersions(default_versions_folder(model)).current == BASE
    assert section.choice.currentText() == "v1: replay+distill, 2 steps on 'mr' (loaded)"


def test_a_damaged_store_or_case_gives_a_message_and_changes_nothing(panel, qtbot, model, tmp_path):
    _segment(panel, qtbot)
    section, work = panel.continual, panel.state.continual
    work.set_folder(tmp_path / "store")
    done = section.confirm()
    (tmp_path / "store" / "cases" / f"{done.case_id}.safetensors").write_bytes(b"not a case")
    section.learn()
    qtbot.waitUntil(lambda: not section.learning, timeout=WAIT_MS)
    assert f"Learning stopped: case {done.case_id}" in panel.status.text()
    assert "The model is unchanged" in panel.status.text() and panel.state.model is model
    assert ModelVersions(default_versions_folder(model)).list() == []

    (tmp_path / "store" / "index.json").write_text("{ truncated")
    work.set_folder(tmp_path / "store")  # opened again, as a new viewer would
    kept = len(panel.state.library)
    assert section.confirm() is None
    assert "Cannot open the store of confirmed cases" in panel.status.text()
    assert "Nothing was confirmed" in panel.status.text() and len(panel.state.library) == kept
    assert not section.learn() and "Cannot open the store of confirmed cases" in panel.status.text()
    section.show_store()
    assert "cannot be read" in section.store_status.text()
