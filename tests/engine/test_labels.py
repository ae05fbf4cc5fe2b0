"""The output label volume: per-object writes, hand-edit protection, undo/redo."""

import numpy as np
import pytest

from napari_samed2.engine.labels import LabelVolume
from napari_samed2.engine.results import FrameResult, ObjectResult
from napari_samed2.engine.volume import Volume


def _result(frame, masks: dict[int, np.ndarray]) -> FrameResult:
    return FrameResult(frame, {i: ObjectResult(i, m, 0.9, 5.0) for i, m in masks.items()})


def _disk(shape=(16, 16), center=(8, 8), radius=4):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


@pytest.fixture
def labels():
    volume = Volume(np.zeros((6, 16, 16), np.float32))
    return LabelVolume(np.zeros((6, 16, 16), np.uint16), volume)


def test_write_replaces_only_the_objects_in_the_result(labels):
    labels.write(_result(2, {1: _disk(), 2: _disk(center=(3, 3), radius=2)}))
    labels.write(_result(2, {1: _disk(center=(10, 10), radius=2)}))
    frame = labels.frame(2)
    assert (frame == 1).sum() == _disk(center=(10, 10), radius=2).sum()  # old object 1 pixels cleared
    assert (frame == 2).sum() == _disk(center=(3, 3), radius=2).sum()  # object 2 untouched
    assert not labels.data[[0, 1, 3, 4, 5]].any()


def test_hand_edited_frames_are_skipped_unless_overwrite(labels):
    labels.data[4, 0, 0] = 7  # labels that were there before the plugin
    labels.write(_result(1, {1: _disk()}))
    labels.data[1, 15, 15] = 1  # the user paints after the plugin wrote
    report = labels.write([_result(f, {1: _disk(radius=2)}) for f in (1, 3, 4)])
    assert report.written == [3] and report.skipped_edited == [1, 4]
    assert labels.data[4, 0, 0] == 7 and labels.data[1, 15, 15] == 1
    assert (labels.frame(1) == 1).sum() == _disk().sum() + 1
    report = labels.write([_result(f, {1: _disk(radius=2)}) for f in (1, 4)], overwrite=True)
    assert report.written == [1, 4]
    assert labels.data[4, 0, 0] == 7  # another label value survives even an overwrite
    assert (labels.frame(1) == 1).sum() == _disk(radius=2).sum()
    assert not labels.edited_by_hand(1) and not labels.edited_by_hand(4)


def test_a_grouped_step_undoes_and_redoes_as_one(labels):
    labels.write(_result(0, {1: _disk()}), description="click")
    before = labels.data.copy()
    labels.begin("propagate")
    for f in range(1, 6):
        labels.write(_result(f, {1: _disk(radius=f % 3 + 1)}))
    labels.end()
    after = labels.data.copy()
    assert labels.undo_description == "propagate"
    assert labels.undo().written == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(labels.data, before)
    assert labels.redo().written == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(labels.data, after)
    labels.undo()
    labels.undo()
    assert not labels.data.any() and not labels.can_undo and labels.can_redo
    # the frames undone are the plugin's again: nothing counts as painted by hand
    assert not any(labels.edited_by_hand(f) for f in range(6))


def test_undo_leaves_frames_painted_since_alone(labels):
    labels.write(_result(2, {1: _disk()}))
    labels.write(_result(3, {1: _disk()}))
    labels.data[3, 0, 0] = 5  # painted after the plugin's step
    report = labels.undo()
    assert report.written == [] and report.skipped_edited == [3]
    assert labels.data[3, 0, 0] == 5 and (labels.frame(3) == 1).any()


def test_remove_object_is_undoable(labels):
    labels.write([_result(f, {1: _disk(), 2: _disk(radius=1, center=(1, 1))}) for f in range(3)])
    assert labels.remove_object(1) == [0, 1, 2]
    assert not (labels.data == 1).any() and (labels.data == 2).sum() == 3 * _disk(radius=1, center=(1, 1)).sum()
    labels.undo()
    assert (labels.data == 1).sum() == 3 * _disk().sum()


def test_new_writes_clear_redo_and_history_is_bounded():
    volume = Volume(np.zeros((4, 64, 64), np.float32))
    labels = LabelVolume(np.zeros((4, 64, 64), np.uint16), volume, max_undo_bytes=1)
    labels.write(_result(0, {1: _disk((64, 64), (30, 30), 20)}))
    labels.write(_result(1, {1: _disk((64, 64), (30, 30), 20)}))
    assert labels.undo().written == [1]
    assert not labels.can_undo  # the older step was dropped to respect the byte bound
    labels.write(_result(2, {1: _disk((64, 64), (30, 30), 20)}))
    assert not labels.can_redo


def test_labels_follow_the_volume_axis_and_fixed_indices():
    image = np.zeros((2, 16, 5, 16), np.float32)  # (T, Y, Z, X) sliced along Z at T=1
    volume = Volume(image, axis=2, fixed={0: 1})
    labels = LabelVolume(np.zeros(image.shape, np.int32), volume)
    labels.write(_result(3, {4: _disk()}))
    assert (labels.data[1, :, 3, :] == 4).sum() == _disk().sum()
    assert labels.data.sum() == 4 * _disk().sum()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((6, 16, 15), np.uint16), "do not match"),
        (np.zeros((6, 16, 16), np.float32), "integer dtype"),
    ],
)
def test_unusable_label_arrays_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        LabelVolume(data, Volume(np.zeros((6, 16, 16), np.float32)))
