"""The segmentation panel drives the real engine from napari layers, in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samed2._widgets.inspector import COLUMNS, MemoryInspector
from napari_samed2._widgets.segmentation_panel import SegmentationPanel
from napari_samed2._widgets.state import shared_state
from napari_samed2.errors import HistoryError

pytestmark = pytest.mark.gui
WAIT_MS = 120_000


def _volume(frames=8, size=64):
    """A bright disk drifting through the slices, on noise."""
    rng = np.random.default_rng(0)
    rows, cols = np.ogrid[:size, :size]
    data = rng.normal(0.1, 0.02, (frames, size, size)).astype(np.float32)
    for z in range(frames):
        data[z][(rows - 30 - z) ** 2 + (cols - 32) ** 2 <= 12**2] += 0.8
    return data


@pytest.fixture
def panel(make_napari_viewer, small_model, qtbot):
    """A started segmentation on an image with non-unit scale and a translate."""
    viewer = make_napari_viewer()
    viewer.add_image(_volume(), name="mr", scale=(3.0, 0.5, 0.5), translate=(10.0, -4.0, 2.0))
    shared_state(viewer).set_model(small_model)
    panel = SegmentationPanel(viewer)
    viewer.window.add_dock_widget(panel)
    assert panel.start_button.isEnabled()
    assert panel.start()
    return panel


def _click(panel, frame, row, col, positive=True):
    """A click where the user would put it: image pixel -> world -> the points layer's data."""
    world = panel.state.image_layer.data_to_world([frame, row, col])
    panel.polarity_button.setChecked(not positive)
    panel.points_layer.add(panel.points_layer.world_to_data(world))


def _run(panel, qtbot, action, *args):
    with qtbot.waitSignal(panel.work_finished, timeout=WAIT_MS) as signal:
        action(*args)
    return signal.args[0]


def test_start_creates_aligned_layers_and_object_one(panel):
    viewer = panel.viewer
    for layer in (panel.output_layer, panel.points_layer, panel.shapes_layer):
        assert layer in viewer.layers
        np.testing.assert_allclose(layer.scale, (3.0, 0.5, 0.5))
        np.testing.assert_allclose(layer.translate, (10.0, -4.0, 2.0))
    assert panel.output_layer.data.shape == (8, 64, 64) and not panel.output_layer.data.any()
    assert panel.session.object_ids == [1] and panel.current_object == 1
    assert panel.state.session is panel.session


# the NIfTI header fields that place voxels: what ITK-SNAP, FSL or nibabel read the geometry from
NIFTI_GEOMETRY_FIELDS = (
    "sform_code", "qform_code", "pixdim", "quatern_b", "quatern_c", "quatern_d",
    "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units", "dim",
)


def test_labels_of_a_nifti_image_are_saved_with_its_header_geometry(make_napari_viewer, small_model, tmp_path):
    """The output layer of an image read from NIfTI, saved with the plugin's writer (napari's
    Save Layer), has the image's header geometry exactly: affine, qform and sform with their
    codes, pixdim with qfac, origin. Before, it was saved from scale and translate alone: the
    same world positions, but another header (RAS+ voxel order, other spacing signs, origin and
    codes, the tilt of an oblique scan lost)."""
    import nibabel as nib
    from scipy.spatial.transform import Rotation

    from napari_samed2.io import read_image

    tilt = Rotation.from_euler("xyz", [14, -7, 9], degrees=True).as_matrix()
    qform = np.eye(4)  # left-handed (qfac -1): x runs towards the patient's right, as radiological files do
    qform[:3, :3] = tilt @ np.diag([-0.8, 0.9, 2.5])
    qform[:3, 3] = (95.5, -120.25, -40.0)
    sform = qform.copy()  # a registered sform beside the scanner qform, with a slight shear
    sform[:3, 3] += (1.5, -2.0, 0.5)
    sform[0, 1] += 0.05
    source = nib.Nifti1Image(_volume().transpose(2, 1, 0).copy(), sform)
    source.header.set_qform(qform, code=1)
    source.header.set_sform(sform, code=2)
    nib.save(source, tmp_path / "t1.nii.gz")
    source = nib.load(tmp_path / "t1.nii.gz")

    viewer = make_napari_viewer()
    (data, kwargs, kind), = read_image(tmp_path / "t1.nii.gz")
    assert kind == "image"
    viewer.add_image(data, **kwargs)
    shared_state(viewer).set_model(small_model)
    panel = SegmentationPanel(viewer)
    assert panel.start()
    labels = panel.output_layer
    labels.data[2, 10:20, 15:30] = 1
    labels.data[5, 30:40, 20:26] = 2
    labels.save(str(tmp_path / "t1_seg.nii.gz"), plugin="napari-samed2")

    written = nib.load(tmp_path / "t1_seg.nii.gz")
    for name in NIFTI_GEOMETRY_FIELDS:
        np.testing.assert_array_equal(written.header[name], source.header[name], err_msg=name)
    np.testing.assert_array_equal(written.affine, source.affine)
    for coded in ("get_qform", "get_sform"):
        (mine, my_code), (theirs, their_code) = getattr(written, coded)(coded=True), getattr(source, coded)(coded=True)
        np.testing.assert_array_equal(mine, theirs, err_msg=coded)
        assert my_code == their_code
    (back, back_kwargs, back_kind), = read_image(tmp_path / "t1_seg.nii.gz")
    assert back_kind == "labels"
    np.testing.assert_array_equal(back, labels.data)  # each label on the voxel it was drawn on
    assert back_kwargs["scale"] == kwargs["scale"] and back_kwargs["translate"] == kwargs["translate"]


def test_live_click_segments_only_that_slice_at_the_clicked_pixel(panel, qtbot):
    message = _run(panel, qtbot, _click, panel, 3, 33, 32)
    assert "1 slices updated" in message
    prompt = panel.session.prompts[1][3]
    np.testing.assert_allclose(prompt.points, [[33, 32]], atol=1e-4)  # world -> pixel with scale and translate
    assert prompt.labels.tolist() == [1]
    labelled = np.flatnonzero(panel.output_layer.data.reshape(8, -1).any(axis=1))
    expected = panel.session.result(3).labels((64, 64))
    np.testing.assert_array_equal(panel.output_layer.data[3], expected)
    assert set(labelled) <= {3}


def test_negative_click_and_t_key_switch_polarity(panel, qtbot):
    _run(panel, qtbot, _click, panel, 2, 32, 32)
    panel.points_layer.keymap  # the binding exists on the layer
    panel.polarity_button.toggle()
    assert panel.polarity_button.text().startswith("Negative")
    assert not panel.points_layer.feature_defaults["positive"].iloc[0]
    _run(panel, qtbot, _click, panel, 2, 5, 5, False)
    assert panel.session.prompts[1][2].labels.tolist() == [1, 0]


def test_box_prompt_from_a_rectangle(panel, qtbot):
    pixels = ([4, 20, 22], [4, 20, 44], [4, 44, 44], [4, 44, 22])
    rectangle = [panel.shapes_layer.world_to_data(panel.state.image_layer.data_to_world(p)) for p in pixels]
    with qtbot.waitSignal(panel.work_finished, timeout=WAIT_MS):
        panel.shapes_layer.add_rectangles(np.array(rectangle))
    np.testing.assert_allclose(panel.session.prompts[1][4].box, (20, 22, 44, 44), atol=1e-4)


def test_propagate_both_ways_fills_every_slice_and_undo_restores(panel, qtbot):
    panel.live_mode.setChecked(False)
    _click(panel, 4, 34, 32)
    assert not panel.output_layer.data.any()  # live mode off: nothing until Propagate
    message = _run(panel, qtbot, panel.propagate)
    assert "Propagate: 8 slices updated" in message
    np.testing.assert_array_equal(panel.output_layer.data, panel.session.labels())
    assert sorted(panel.session.memories[1].entries) == list(range(8))
    panel.undo()
    assert not panel.output_layer.data.any()
    panel.redo()
    np.testing.assert_array_equal(panel.output_layer.data, panel.session.labels())


def test_propagation_within_a_range(panel, qtbot):
    _run(panel, qtbot, _click, panel, 3, 33, 32)
    panel.limit_range.setChecked(True)
    panel.first_slice.setValue(2)
    panel.last_slice.setValue(5)
    panel.direction_choice.setCurrentText("forward")
    _run(panel, qtbot, panel.propagate)
    assert sorted(panel.session.memories[1].entries) == [3, 4, 5]


def _propagate_forward_and_cancel(panel, qtbot, after: int = 2) -> str:
    """Press Propagate, then Cancel once ``after`` slices have arrived; the final message."""
    done = []

    def cancel_after(_step):
        done.append(1)
        if len(done) == after:
            panel.cancel()

    panel.direction_choice.setCurrentText("forward")
    panel.propagate()
    panel._worker.yielded.connect(cancel_after)
    with qtbot.waitSignal(panel.work_finished, timeout=WAIT_MS) as signal:
        pass
    return signal.args[0]


def test_cancel_keeps_the_slices_done(panel, qtbot):
    _run(panel, qtbot, _click, panel, 0, 30, 32)
    assert _propagate_forward_and_cancel(panel, qtbot).startswith("Cancelled propagate")
    tracked = sorted(panel.session.memories[1].tracked)
    assert 2 <= len(tracked) < 8
    written = [f for f in range(8) if panel.output_layer.data[f].any()]
    assert set(written) <= set(tracked) | {0}
    np.testing.assert_array_equal(panel.output_layer.data, panel.session.labels())
    assert not panel.busy and panel.propagate_button.isEnabled()


def test_correction_repropagates_only_later_slices_and_keeps_painted_slices(panel, qtbot):
    panel.converge_check.setChecked(False)  # every stale slice is recomputed
    panel.direction_choice.setCurrentText("forward")
    _run(panel, qtbot, _click, panel, 0, 30, 32)
    _run(panel, qtbot, panel.propagate)
    before = panel.output_layer.data.copy()
    panel.output_layer.data[6, 0:3, 0:3] = 1  # the user paints on slice 6 by hand
    painted = panel.output_layer.data[6].copy()
    _run(panel, qtbot, _click, panel, 3, 2, 2, False)  # correction: a negative click on slice 3
    assert panel.session.stale[1] == {4, 5, 6, 7}
    message = _run(panel, qtbot, panel.repropagate)
    assert "Re-propagate" in message
    np.testing.assert_array_equal(panel.output_layer.data[:3], before[:3])  # before the correction: untouched
    np.testing.assert_array_equal(panel.output_layer.data[6], painted)  # painted slice kept
    assert not panel.overwrite_button.isHidden() and "[6]" in panel.overwrite_button.text()
    panel.overwrite_edited()
    np.testing.assert_array_equal(panel.output_layer.data[6], panel.session.result(6).labels((64, 64)))
    panel.undo()
    np.testing.assert_array_equal(panel.output_layer.data[6], painted)


def test_repropagation_stops_where_masks_agree_and_a_full_re_run_finishes(panel, qtbot):
    assert panel.converge_check.isChecked() and not panel.converge_check.isHidden()
    assert "masks agree" in panel.converge_check.text()
    assert "3 slices in a row (IoU \u2265 0.98)" in panel.converge_check.toolTip()  # the rule, spelt out
    panel.direction_choice.setCurrentText("forward")
    _run(panel, qtbot, _click, panel, 0, 30, 32)
    _run(panel, qtbot, panel.propagate)
    assert not panel.full_rerun_button.isEnabled()  # nothing stale
    _run(panel, qtbot, _click, panel, 2, 2, 2, False)  # a correction far from the disk
    assert panel.session.stale[1] == {3, 4, 5, 6, 7} and panel.full_rerun_button.isEnabled()
    message = _run(panel, qtbot, panel.repropagate)
    kept = panel.session.stale[1]
    assert kept == {6, 7}  # 3, 4, 5 reproduced their earlier masks: the run stopped there
    assert "2 slices kept their earlier masks and are still marked stale (Full re-run" in message
    assert panel.full_rerun_button.isEnabled()
    np.testing.assert_array_equal(panel.output_layer.data, panel.session.labels())
    message = _run(panel, qtbot, panel.full_rerun_button.click)
    assert message.startswith("Full re-run: 2 slices updated.") and "stale" not in message
    assert not panel.session.stale[1] and not panel.full_rerun_button.isEnabled()
    np.testing.assert_array_equal(panel.output_layer.data, panel.session.labels())


def test_painted_mask_becomes_the_slice_prompt(panel, qtbot):
    panel.output_layer.data[5, 10:30, 10:30] = 1
    panel.mask_choice.value = panel.output_layer
    _run(panel, qtbot, panel.use_mask, 5)
    prompt = panel.session.prompts[1][5]
    assert prompt.mask is not None and prompt.mask.sum() == 400
    # sam2 takes a mask prompt as that slice's answer
    np.testing.assert_array_equal(panel.output_layer.data[5] == 1, prompt.mask)


def test_not_on_this_slice_clears_the_object_there_and_tracking_remembers(panel, qtbot):
    _run(panel, qtbot, _click, panel, 2, 32, 32)
    panel.direction_choice.setCurrentText("forward")
    _run(panel, qtbot, panel.propagate)
    assert panel.absent_button.isEnabled() and "not on the slice on screen" in panel.absent_button.toolTip()
    tracked = panel.output_layer.data[5].copy()
    assert (tracked == 1).any()  # the object was there before: clearing it is not vacuous
    _run(panel, qtbot, panel.mark_absent, 5)
    assert not (panel.output_layer.data[5] == 1).any()
    assert panel.session.memories[1].pending[5].object_score < 0  # sam2's "absent" answer
    assert panel.session.stale[1] == {6, 7}
    panel.undo()  # one step, as every prompt
    assert 5 not in panel.session.prompts[1]
    np.testing.assert_array_equal(panel.output_layer.data[5], tracked)
    panel.redo()
    _run(panel, qtbot, panel.repropagate)
    assert panel.session.memories[1].entries[5].object_score < 0 and not panel.session.stale[1]
    np.testing.assert_array_equal(panel.output_layer.data, panel.session.labels())


def test_second_object_and_delete_with_undo(panel, qtbot):
    _run(panel, qtbot, _click, panel, 2, 32, 32)
    second = panel.add_object()
    assert second == 2 and panel.points_layer.feature_defaults["object"].iloc[0] == 2
    _run(panel, qtbot, _click, panel, 2, 5, 5)
    assert set(np.unique(panel.output_layer.data[2])) >= {2}
    panel.delete_object(2)
    assert panel.session.object_ids == [1]
    assert not (panel.output_layer.data == 2).any()
    assert (panel.points_layer.features["object"] == 2).sum() == 0
    panel.undo()
    assert (panel.output_layer.data == 2).any()
    # the object itself comes back: in the session, the object list and the clicks layer
    assert panel.session.object_ids == [1, 2] and panel.object_choice.findData(2) >= 0
    assert 2 in panel.session.prompts[2] and (panel.points_layer.features["object"] == 2).sum() == 1
    assert panel.pending_prompt_changes() == {}
    panel.redo()
    assert panel.session.object_ids == [1] and panel.object_choice.findData(2) < 0
    assert not (panel.output_layer.data == 2).any() and (panel.points_layer.features["object"] == 2).sum() == 0


def test_removing_an_objects_last_prompt_clears_it_in_the_engine_and_the_layer(panel, qtbot):
    _run(panel, qtbot, _click, panel, 2, 32, 32)
    _run(panel, qtbot, panel.propagate)
    assert (panel.output_layer.data == 1).any(axis=(1, 2)).sum() == 8
    panel.points_layer.selected_data = {0}
    with qtbot.waitSignal(panel.work_finished, timeout=WAIT_MS) as signal:
        panel.points_layer.remove_selected()
    assert "no prompt left" in signal.args[0]
    assert panel.session.prompts[1] == {} and panel.session.memories[1].entries == {}
    assert not (panel.output_layer.data == 1).any() and panel.session.object_ids == [1]
    panel.undo()
    assert (panel.output_layer.data == 1).any(axis=(1, 2)).sum() == 8


def test_no_model_no_start(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(_volume())
    panel = SegmentationPanel(viewer)
    assert not panel.start_button.isEnabled()
    assert not panel.start()
    assert "Load a model" in panel.status.text()


def test_repropagate_request_from_the_inspector_runs_here(panel, qtbot):
    panel.converge_check.setChecked(False)  # every stale slice is recomputed
    panel.direction_choice.setCurrentText("forward")
    _run(panel, qtbot, _click, panel, 0, 30, 32)
    _run(panel, qtbot, panel.propagate)
    panel.session.pin(1, 2)
    assert panel.session.stale[1]
    with qtbot.waitSignal(panel.work_finished, timeout=WAIT_MS) as signal:
        panel.state.repropagate_requested.emit()
    assert signal.args[0].startswith("Re-propagate")
    assert not panel.session.stale[1]


def test_rgb_video_is_segmented_frame_by_frame(make_napari_viewer, small_model, qtbot):
    grey = (np.clip(_volume(frames=5), 0, 1) * 255).astype(np.uint8)
    video = np.stack([grey, grey // 2, grey], axis=-1)  # (T, Y, X, 3)
    viewer = make_napari_viewer()
    viewer.add_image(video, rgb=True, name="video")
    shared_state(viewer).set_model(small_model)
    panel = SegmentationPanel(viewer)
    assert panel.axis_choice.value() == 0  # time
    assert panel.start()
    assert panel.session.volume.rgb and panel.output_layer.data.shape == (5, 64, 64)
    _run(panel, qtbot, _click, panel, 1, 31, 32)
    _run(panel, qtbot, panel.propagate)
    assert sorted(panel.session.memories[1].entries) == list(range(5))
    np.testing.assert_array_equal(panel.output_layer.data, panel.session.labels())


def test_4d_image_is_segmented_at_the_time_point_on_screen(make_napari_viewer, small_model, qtbot):
    series = np.stack([_volume(frames=6), _volume(frames=6)[:, ::-1]])  # (T, Z, Y, X)
    viewer = make_napari_viewer()
    viewer.add_image(series, name="4d")
    viewer.dims.set_current_step(0, 1)
    shared_state(viewer).set_model(small_model)
    panel = SegmentationPanel(viewer)
    assert panel.axis_choice.value() == 1  # Z, the last axis not on screen
    assert panel.start()
    assert panel.session.volume.fixed == {0: 1}
    world = panel.state.image_layer.data_to_world([1, 2, 30, 33])
    _run(panel, qtbot, panel.points_layer.add, panel.points_layer.world_to_data(world))
    np.testing.assert_allclose(panel.session.prompts[1][2].points, [[30, 33]], atol=1e-4)
    np.testing.assert_array_equal(panel.output_layer.data[1, 2], panel.session.result(2).labels((64, 64)))
    assert not panel.output_layer.data[0].any()  # the other time point is untouched
    np.testing.assert_array_equal(panel.session.volume.raw_frame(2), series[1, 2])


def test_clicks_from_a_points_layer_the_user_made_with_its_own_transform(panel, qtbot):
    pixel = np.array([5, 40, 24])
    world = np.asarray(panel.state.image_layer.data_to_world(pixel))
    own = panel.viewer.add_points(np.empty((0, 3)), ndim=3, scale=(1.5, 2.0, 2.0), translate=(3.0, 1.0, -1.0))
    panel.points_choice.reset_choices()
    panel.points_choice.value = own
    assert panel.points_layer is own and list(own.features.columns) == ["object", "positive"]
    with qtbot.waitSignal(panel.work_finished, timeout=WAIT_MS):
        own.add(own.world_to_data(world))
    np.testing.assert_allclose(panel.session.prompts[1][5].points, [pixel[1:]], atol=1e-4)
    np.testing.assert_array_equal(panel.output_layer.data[5], panel.session.result(5).labels((64, 64)))


def test_an_empty_mask_prompt_is_explained_and_changes_nothing(panel):
    panel.output_layer.data[5, 10:30, 10:30] = 3  # another label: no pixel of object 1 on slice 5
    panel.use_mask(5)
    assert "has no pixels on slice 5" in panel.status.text()
    assert 5 not in panel.session.prompts[1]


def test_an_undone_click_no_longer_steers_the_model(panel, qtbot):
    """The trap of an output-only undo: the click undone stayed in the session (and in the
    clicks layer) and steered the next Re-propagate or Propagate."""
    panel.direction_choice.setCurrentText("forward")
    _run(panel, qtbot, _click, panel, 0, 30, 32)
    _run(panel, qtbot, panel.propagate)
    good = panel.output_layer.data.copy()
    _run(panel, qtbot, _click, panel, 3, 33, 32, False)  # a wrong negative click on the object
    _run(panel, qtbot, panel.repropagate)
    assert not np.array_equal(panel.output_layer.data, good), "the wrong click should change the masks"
    assert panel.undo_button.text() == "Undo re-propagate"
    panel.undo()
    assert panel.undo_button.text() == "Undo segment"
    panel.undo()
    np.testing.assert_array_equal(panel.output_layer.data, good)
    assert 3 not in panel.session.prompts[1] and not panel.session.stale[1]
    assert len(panel.points_layer.data) == 1  # the undone click is gone from the clicks layer too
    assert panel.pending_prompt_changes() == {}
    panel.redo()  # and comes back with redo, at the same pixel
    np.testing.assert_allclose(panel.session.prompts[1][3].points, [[33, 32]], atol=1e-4)
    assert len(panel.points_layer.data) == 2 and panel.pending_prompt_changes() == {}
    panel.undo()
    panel.repropagate()
    assert "Nothing to re-propagate" in panel.status.text()
    _run(panel, qtbot, panel.propagate)  # Propagate applies what the layers hold: not the undone click
    np.testing.assert_array_equal(panel.output_layer.data, good)
    np.testing.assert_array_equal(panel.session.labels(), good)


def test_undo_while_a_job_runs_is_refused_with_a_message(panel, qtbot):
    _run(panel, qtbot, _click, panel, 0, 30, 32)
    refusals = []

    def undo_now(_step):
        if refusals:
            return
        panel.undo()
        refusals.append(panel.status.text())
        try:  # a script calling the engine directly is refused too
            panel.session.undo()
        except HistoryError as exc:
            refusals.append(str(exc))

    panel.direction_choice.setCurrentText("forward")
    panel.propagate()
    assert panel.busy and not panel.undo_button.isEnabled()
    panel._worker.yielded.connect(undo_now)
    with qtbot.waitSignal(panel.work_finished, timeout=WAIT_MS) as signal:
        pass
    assert refusals[0] == "Wait for the running job to end (or Cancel it) first."
    assert refusals[1].startswith("cannot undo while a propagation is running")
    assert signal.args[0] == "Propagate: 8 slices updated."  # the job went on undisturbed
    assert sorted(panel.session.memories[1].entries) == list(range(8))
    panel.undo()
    assert panel.status.text().startswith("Undid propagate") and not panel.session.memories[1].entries


def test_a_cancelled_propagation_is_one_step_to_undo(panel, qtbot):
    _run(panel, qtbot, _click, panel, 0, 30, 32)
    after_click = panel.output_layer.data.copy()
    message = _propagate_forward_and_cancel(panel, qtbot)
    assert message.startswith("Cancelled propagate") and len(panel.session.memories[1].tracked) >= 2
    assert panel.undo_button.text() == "Undo propagate"
    panel.undo()  # the propagation's generator was closed: the engine does not refuse
    assert panel.status.text().startswith("Undid propagate")
    np.testing.assert_array_equal(panel.output_layer.data, after_click)
    memory = panel.session.memories[1]
    assert not memory.entries and not memory.tracked and list(memory.pending) == [0]


def test_the_inspector_and_its_plot_follow_undo_and_redo(panel, qtbot):
    inspector = MemoryInspector(panel.viewer)
    panel.viewer.window.add_dock_widget(inspector)
    panel.direction_choice.setCurrentText("forward")
    _run(panel, qtbot, _click, panel, 0, 30, 32)
    _run(panel, qtbot, panel.propagate)
    assert inspector.table.rowCount() == 8 and len(inspector.plotted[1]) == 8

    def status_of(frame):
        for row in range(inspector.table.rowCount()):
            if inspector.table.item(row, COLUMNS.index("slice")).text() == str(frame):
                return inspector.table.item(row, COLUMNS.index("status")).text()

    assert inspector.select_entry(1, 3)
    inspector.pin_selected()
    assert status_of(3) == "pinned" and panel.session.stale[1]
    assert panel.undo_button.text() == "Undo pin slice 3 of object 1"  # a pin is a step of its own
    panel.undo()
    assert status_of(3) == "auto" and not panel.session.stale[1]
    panel.undo()  # the propagation: nothing is in memory any more
    assert inspector.table.rowCount() == 0 and inspector.plotted == {}
    panel.redo()
    assert inspector.table.rowCount() == 8 and len(inspector.plotted[1]) == 8
    panel.redo()
    assert status_of(3) == "pinned"
