"""Sessions in the panel: save and open, autosave, the resume offer, the memory library."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_samed2 import load_model
from napari_samed2._widgets import session_files
from napari_samed2._widgets.inspector import COLUMNS, MemoryInspector
from napari_samed2._widgets.segmentation_panel import SegmentationPanel
from napari_samed2._widgets.session_files import (
    DATA_DIR_ENV,
    META_FILE,
    load_session_folder,
    volume_fingerprint,
)
from napari_samed2._widgets.state import shared_state
from napari_samed2.engine import EntryStatus, Volume
from napari_samed2.errors import SavedStateError, SessionMismatchError
from tests.conftest import TEST_DEVICE, TEST_IMAGE_SIZE
from tests.gui.test_segmentation_panel import WAIT_MS, _click, _run, _volume, panel  # noqa: F401 (fixture)

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def other_model(tiny_checkpoint):
    """The same weights at another image size: another model for a saved session."""
    return load_model(tiny_checkpoint, device=TEST_DEVICE, dtype="float32", image_size=TEST_IMAGE_SIZE // 2)


def _new_panel(make_napari_viewer, model, data=None, **image):
    viewer = make_napari_viewer()
    viewer.add_image(_volume() if data is None else data, name="mr", **image)
    shared_state(viewer).set_model(model)
    panel = SegmentationPanel(viewer)
    viewer.window.add_dock_widget(panel)
    return panel


def _annotate(panel, qtbot):
    """Two objects, a forward propagation, a pin, an eviction and a slice painted by hand."""
    panel.direction_choice.setCurrentText("forward")
    _run(panel, qtbot, _click, panel, 0, 30, 32)
    panel.add_object()
    _run(panel, qtbot, _click, panel, 2, 6, 6)
    _run(panel, qtbot, panel.propagate)
    panel.session.pin(1, 3)
    panel.session.evict(1, 5)
    panel.state.memory_changed.emit()
    panel.output_layer.data[7, 60:64, 60:64] = 9  # the user's own painting
    panel.output_layer.refresh()


def _statuses(inspector) -> dict[tuple[str, str], str]:
    table = inspector.table
    return {
        (table.item(row, COLUMNS.index("object")).text(), table.item(row, COLUMNS.index("slice")).text()):
            table.item(row, COLUMNS.index("status")).text()
        for row in range(table.rowCount())
    }


def _wait_autosave(panel, qtbot, action, *args):
    with qtbot.waitSignal(panel.work.autosave.saved, timeout=WAIT_MS) as saved:
        action(*args)
    return saved.args[0]


# save and open ---------------------------------------------------------------------------
def test_a_saved_session_opens_with_prompts_objects_labels_and_memory_status(panel, qtbot, make_napari_viewer, tmp_path):
    _annotate(panel, qtbot)
    labels = panel.output_layer.data.copy()
    prompts = {o: dict(frames) for o, frames in panel.session.prompts.items()}
    assert panel.save_session(tmp_path / "day one")
    assert "Saved the session" in panel.status.text()

    other = _new_panel(make_napari_viewer, panel.state.model, scale=(3.0, 0.5, 0.5), translate=(10.0, -4.0, 2.0))
    inspector = MemoryInspector(other.viewer)
    other.viewer.window.add_dock_widget(inspector)
    assert other.open_session(tmp_path / "day one"), other.status.text()
    session = other.session
    assert session is other.state.session and session.object_ids == [1, 2]
    assert [other.object_choice.itemData(i) for i in range(other.object_choice.count())] == [1, 2]
    for object_id, frames in prompts.items():
        assert sorted(session.prompts[object_id]) == sorted(frames)
        for frame, prompt in frames.items():
            np.testing.assert_allclose(session.prompts[object_id][frame].points, prompt.points)
    # the prompt layers show the clicks again, and nothing is waiting to be applied twice
    assert len(other.points_layer.data) == 2 and other.pending_prompt_changes() == {}
    np.testing.assert_array_equal(other.output_layer.data, labels)  # the hand-painted pixels too
    statuses = _statuses(inspector)
    assert statuses[("1", "3")] == "pinned" and statuses[("1", "5")] == "evicted"
    assert session.memories[1].entries[3].status is EntryStatus.PINNED
    # the plugin's own slices can be recomputed; the painted one stays protected
    assert not other.labels.edited_by_hand(4) and other.labels.edited_by_hand(7)
    assert "Resumed the session" in other.status.text() and not other.undo_button.isEnabled()


def test_opening_replaces_an_empty_segmentation_but_keeps_one_with_work(panel, qtbot, tmp_path):
    _run(panel, qtbot, _click, panel, 3, 33, 32)
    assert panel.save_session(tmp_path / "saved")
    worked_on = panel.output_layer
    assert panel.open_session(tmp_path / "saved")
    assert worked_on in panel.viewer.layers  # the work of the open segmentation stays in the viewer
    panel.start()
    empty = [panel.output_layer, panel.points_layer, panel.shapes_layer]
    assert panel.open_session(tmp_path / "saved")
    assert all(layer not in panel.viewer.layers for layer in empty)
    assert panel.session.prompts[1].keys() == {3}


def test_a_session_of_another_image_or_model_or_a_damaged_one_is_refused_and_nothing_changes(
    panel, qtbot, tmp_path, other_model
):
    _run(panel, qtbot, _click, panel, 3, 33, 32)
    folder = panel.save_session(tmp_path / "saved") and tmp_path / "saved"
    viewer, session = panel.viewer, panel.session
    layers = list(viewer.layers)

    def refused(expected: str) -> None:
        assert not panel.open_session(folder)
        assert expected in panel.status.text() and "Nothing was changed" in panel.status.text()
        assert list(viewer.layers) == layers and panel.session is session and panel.state.session is session

    smaller = viewer.add_image(_volume(frames=6), name="smaller")
    layers.append(smaller)
    panel.image_choice.value = smaller
    refused("of shape (8, 64, 64)")
    changed = viewer.add_image(_volume()[::-1].copy(), name="same shape, other content")
    layers.append(changed)
    panel.image_choice.value = changed
    refused("content differs")
    panel.image_choice.value = viewer.layers["mr"]
    model = panel.state.model
    _run(panel, qtbot, panel.state.set_model, other_model)
    session = panel.session  # the model switch made a session of the new model
    refused("Load that model")
    _run(panel, qtbot, panel.state.set_model, model)
    session = panel.session

    (folder / "tensors.safetensors").write_bytes((folder / "tensors.safetensors").read_bytes()[:100])
    refused("cannot be loaded")
    refused_folder = tmp_path / "not a session"
    refused_folder.mkdir()
    folder = refused_folder
    refused("is not a saved session")


def test_the_core_raises_the_packages_errors(panel, qtbot, tmp_path, other_model):
    _run(panel, qtbot, _click, panel, 3, 33, 32)
    panel.save_session(tmp_path / "saved")
    volume = panel.session.volume
    with pytest.raises(SessionMismatchError, match="Load that model"):
        load_session_folder(tmp_path / "saved", other_model, volume, volume_fingerprint(volume))
    other = Volume(_volume()[::-1].copy())
    with pytest.raises(SessionMismatchError, match="content differs"):
        load_session_folder(tmp_path / "saved", panel.state.model, other, volume_fingerprint(other))
    (tmp_path / "saved" / "session.json").write_text("{not json")
    with pytest.raises(SavedStateError):
        load_session_folder(tmp_path / "saved", panel.state.model, volume, volume_fingerprint(volume))


def test_a_folder_saved_from_a_script_opens_with_its_results_as_labels(panel, qtbot, tmp_path):
    _run(panel, qtbot, _click, panel, 3, 33, 32)
    _run(panel, qtbot, panel.propagate)
    panel.session.save(tmp_path / "script")  # the engine's files only
    expected = panel.session.labels()
    assert panel.open_session(tmp_path / "script"), panel.status.text()
    np.testing.assert_array_equal(panel.output_layer.data, expected)
    assert not panel.labels.edited_by_hand(5)


# autosave --------------------------------------------------------------------------------
def test_autosave_after_each_step_into_the_user_data_folder(panel, qtbot, private_data_dir):
    inspector = MemoryInspector(panel.viewer)
    folder = _wait_autosave(panel, qtbot, _run, panel, qtbot, _click, panel, 0, 30, 32)
    assert private_data_dir in folder.parents and (folder / META_FILE).is_file()
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["prompted"] == {"1": [0]} and meta["image"]["fingerprint"] == panel.work.fingerprint
    assert "Autosaved at" in panel.autosave_status.text()

    panel.direction_choice.setCurrentText("forward")
    assert _wait_autosave(panel, qtbot, _run, panel, qtbot, panel.propagate) == folder
    assert json.loads((folder / META_FILE).read_text())["segmented"] == 8
    assert inspector.select_entry(1, 4)
    _wait_autosave(panel, qtbot, inspector.pin_selected)  # a pin in the inspector
    saved = json.loads((folder / "session.json").read_text())
    assert {row["frame"]: row["status"] for row in saved["objects"]["1"]["entries"]}[4] == "pinned"
    _wait_autosave(panel, qtbot, panel.undo)
    saved = json.loads((folder / "session.json").read_text())
    assert {row["frame"]: row["status"] for row in saved["objects"]["1"]["entries"]}[4] == "auto"

    panel.autosave_check.setChecked(False)
    stamp = (folder / META_FILE).stat().st_mtime_ns
    _run(panel, qtbot, _click, panel, 6, 30, 32)
    qtbot.wait(200)
    assert not panel.work.autosave.busy and (folder / META_FILE).stat().st_mtime_ns == stamp
    assert panel.autosave_status.text() == "Autosave is off."


def test_a_cancelled_propagation_is_autosaved_too(panel, qtbot):
    from tests.gui.test_segmentation_panel import _propagate_forward_and_cancel

    _wait_autosave(panel, qtbot, _run, panel, qtbot, _click, panel, 0, 30, 32)
    folder = _wait_autosave(panel, qtbot, _propagate_forward_and_cancel, panel, qtbot)
    assert 2 <= json.loads((folder / META_FILE).read_text())["segmented"] < 8


def _image_file(folder, name="scan.tif"):
    import tifffile

    path = folder / name
    tifffile.imwrite(path, _volume())
    return path


def _panel_on_file(make_napari_viewer, model, path):
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-samed2")
    shared_state(viewer).set_model(model)
    panel = SegmentationPanel(viewer)
    viewer.window.add_dock_widget(panel)
    assert panel.start()
    return panel


def test_an_image_from_a_file_autosaves_next_to_it_else_in_the_data_folder(
    make_napari_viewer, small_model, qtbot, tmp_path, private_data_dir
):
    path = _image_file(tmp_path)
    panel = _panel_on_file(make_napari_viewer, small_model, path)
    assert panel.work.image_path == path
    folder = _wait_autosave(panel, qtbot, _run, panel, qtbot, _click, panel, 3, 33, 32)
    assert folder.parent.parent == tmp_path / "scan.tif.samed2"
    assert "next to the image" in panel.autosave_status.text()

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    path = _image_file(blocked, "other.tif")
    (blocked / "other.tif.samed2").write_text("a file where the folder would go")  # cannot be created
    panel = _panel_on_file(make_napari_viewer, small_model, path)
    folder = _wait_autosave(panel, qtbot, _run, panel, qtbot, _click, panel, 3, 33, 32)
    assert private_data_dir in folder.parents


def test_a_failing_autosave_warns_once_and_annotation_goes_on(panel, qtbot, tmp_path, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv(DATA_DIR_ENV, str(blocker / "data"))  # cannot be created: its parent is a file
    panel.start()  # the autosave folders are chosen when a segmentation starts
    failures = []
    panel.work.autosave.failed.connect(failures.append)
    _run(panel, qtbot, _click, panel, 3, 33, 32)
    qtbot.waitUntil(lambda: not panel.work.autosave.busy and bool(failures), timeout=WAIT_MS)
    assert "Autosave failed" in panel.status.text() and "Annotation goes on" in panel.status.text()
    assert "Autosave failed" in panel.autosave_status.text()
    message = _run(panel, qtbot, _click, panel, 4, 33, 32)
    qtbot.waitUntil(lambda: not panel.work.autosave.busy, timeout=WAIT_MS)
    qtbot.wait(100)
    assert len(failures) == 1 and "Autosave failed" not in panel.status.text()  # said once
    assert "1 slices updated" in message and sorted(panel.session.prompts[1]) == [3, 4]


# resume offer ----------------------------------------------------------------------------
def test_starting_on_an_autosaved_image_offers_to_resume_it(panel, qtbot):
    panel.direction_choice.setCurrentText("forward")
    _wait_autosave(panel, qtbot, _run, panel, qtbot, _click, panel, 0, 30, 32)
    _wait_autosave(panel, qtbot, _run, panel, qtbot, panel.propagate)
    labels = panel.output_layer.data.copy()
    assert panel.resume_box.isHidden()

    panel.start()  # the same image again (as after opening it in a new napari)
    assert not panel.resume_box.isHidden() and not panel.resume_button.isHidden()
    text = panel.resume_label.text()
    assert "1 object" in text and "prompts on slice 0" in text and "8 slices segmented" in text and "saved 20" in text
    empty = panel.output_layer
    assert panel.resume_offered()
    assert empty not in panel.viewer.layers and panel.resume_box.isHidden()
    assert sorted(panel.session.memories[1].entries) == list(range(8))
    np.testing.assert_array_equal(panel.output_layer.data, labels)
    # the resumed session goes on saving into the autosave it came from
    assert panel.work.autosave.folder == panel.work.autosave.candidates[0]


def test_an_autosave_made_with_another_model_is_named_not_offered(panel, qtbot, other_model):
    _wait_autosave(panel, qtbot, _run, panel, qtbot, _click, panel, 3, 33, 32)
    # the new model re-segments the prompted slice; its own autosave (resumable with it, and
    # written in the background, so a race) is kept out: the only autosave is the old model's
    panel.autosave_check.setChecked(False)
    panel.state.set_model(other_model)
    qtbot.waitUntil(lambda: not panel.busy, timeout=WAIT_MS)
    panel.start()
    assert not panel.resume_box.isHidden() and panel.resume_button.isHidden()
    assert "another model" in panel.resume_label.text() and "Load that model" in panel.resume_label.text()


def test_the_offer_does_not_block(panel, qtbot):
    """The offer is a notice in the panel: a script goes on clicking without answering it."""
    _wait_autosave(panel, qtbot, _run, panel, qtbot, _click, panel, 3, 33, 32)
    panel.start()
    assert not panel.resume_box.isHidden()
    message = _run(panel, qtbot, _click, panel, 4, 33, 32)
    assert "1 slices updated" in message and list(panel.session.prompts[1]) == [4]


# prompts for a cohort --------------------------------------------------------------------
def test_the_prompts_export_as_a_cohort_prompts_file(panel, qtbot, tmp_path):
    from napari_samed2.cohort.prompts import read_prompts

    assert not panel.export_prompts(tmp_path / "none.json") and "No prompts" in panel.status.text()
    _run(panel, qtbot, _click, panel, 0, 30, 32)
    panel.add_object()
    _run(panel, qtbot, _click, panel, 2, 6, 6)
    _run(panel, qtbot, _click, panel, 2, 9, 9, False)
    assert panel.export_prompts(tmp_path / "mr.json") and "Exported the prompts" in panel.status.text()
    read = read_prompts(tmp_path / "mr.json")
    assert read.shape == panel.session.volume.shape
    assert sorted(read.objects) == [1, 2] and list(read.objects[2]) == [2]
    for object_id, frames in panel.session.prompts.items():
        for frame, prompt in frames.items():
            np.testing.assert_allclose(read.objects[object_id][frame].points, prompt.points)
            np.testing.assert_array_equal(read.objects[object_id][frame].labels, prompt.labels)
    # a file named by a script is not replaced
    before = (tmp_path / "mr.json").read_bytes()
    assert not panel.export_prompts(tmp_path / "mr.json") and "Could not export" in panel.status.text()
    assert (tmp_path / "mr.json").read_bytes() == before


# memory library --------------------------------------------------------------------------
def test_the_memory_library_add_save_load_and_undo(panel, qtbot, make_napari_viewer, tmp_path):
    panel.direction_choice.setCurrentText("forward")
    _run(panel, qtbot, _click, panel, 0, 30, 32)
    _run(panel, qtbot, panel.propagate)
    assert not panel.save_library(tmp_path / "library") and "No memory library" in panel.status.text()
    panel.min_confidence.setValue(0.0)
    kept = panel.add_confirmed()
    assert kept > 0 and len(panel.state.library) == kept and panel.session.library is panel.state.library
    assert "Started a new memory library" in panel.status.text() and "not saved yet" in panel.library_status.text()
    assert panel.undo_button.text() == "Undo add object 1 to the library"
    assert panel.save_library(tmp_path / "library")
    assert (tmp_path / "library" / "index.json").is_file() and "from library" in panel.library_status.text()
    panel.undo()
    assert len(panel.state.library) == 0
    panel.redo()

    assert panel.save_session(tmp_path / "session")

    other = _new_panel(make_napari_viewer, panel.state.model)
    assert other.open_session(tmp_path / "session")  # brings the library it was saved with
    assert "Loaded its memory library" in other.status.text()
    assert len(other.state.library) == kept and other.session.library is other.state.library
    assert other.load_library(tmp_path / "library")
    assert len(other.state.library) == kept and f"({kept} entries)" in other.status.text()
    assert other.start() and other.session.library is other.state.library
    (tmp_path / "broken").mkdir()
    assert not other.load_library(tmp_path / "broken")
    assert "Could not load the memory library" in other.status.text() and len(other.state.library) == kept


def test_a_library_loaded_during_a_segmentation_guides_it(panel, qtbot, tmp_path):
    from napari_samed2.engine.library import MemoryLibrary

    MemoryLibrary().save(tmp_path / "empty library")
    assert panel.session.library is None
    assert panel.load_library(tmp_path / "empty library")
    assert panel.session.library is panel.state.library and "guides the slices segmented from now on" in panel.status.text()


# Qt-free parts ---------------------------------------------------------------------------
def test_fingerprints_recognise_the_same_slices_only():
    data = _volume()
    assert volume_fingerprint(Volume(data)) == volume_fingerprint(Volume(data.copy()))
    changed = data.copy()
    changed[5, 1, 1] += 1
    assert volume_fingerprint(Volume(changed)) != volume_fingerprint(Volume(data))
    assert volume_fingerprint(Volume(data, axis=1)) != volume_fingerprint(Volume(data))


def test_only_the_newest_autosaves_are_kept(tmp_path):
    group = tmp_path / "group"
    folders = []
    for i in range(session_files.AUTOSAVES_KEPT + 2):
        folder = group / f"s{i}"
        folder.mkdir(parents=True)
        (folder / META_FILE).write_text("{}")
        folders.append(folder)
    import os

    for i, folder in enumerate(folders):
        os.utime(folder / META_FILE, (1000 + i, 1000 + i))
    removed = session_files.prune_autosaves(folders[0])  # the one in use is never removed
    assert folders[0].is_dir() and folders[-1].is_dir()
    assert sorted(removed) == [folders[1]]
