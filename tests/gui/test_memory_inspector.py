"""The memory bank inspector shows the engine's entries and changes what memory attention uses."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samed2._widgets.memory_inspector import COLUMNS, MemoryInspector
from napari_samed2._widgets.state import shared_state
from napari_samed2.engine import EntryStatus, FramePrompt, Session

pytestmark = pytest.mark.gui
FRAMES = 10


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(1)
    rows, cols = np.ogrid[:64, :64]
    data = rng.normal(0.1, 0.03, (FRAMES, 64, 64)).astype(np.float32)
    for z in range(FRAMES):
        data[z][(rows - 28 - z) ** 2 + (cols - 32) ** 2 <= 11**2] += 0.8
    return data


@pytest.fixture
def inspector(make_napari_viewer, tiny_model, volume):
    viewer = make_napari_viewer()
    layer = viewer.add_image(volume, scale=(2.0, 1.0, 1.0))
    session = Session(tiny_model, volume)
    for click in ((28, 32), (5, 5)):
        object_id = session.add_object()
        session.segment_frame(0, object_id, FramePrompt.clicks(positive=[click]))
    list(session.propagate("forward"))
    state = shared_state(viewer)
    widget = MemoryInspector(viewer)
    viewer.window.add_dock_widget(widget)
    state.set_session(session, image_layer=layer, axis=0)
    return widget


def _column(widget, name):
    index = COLUMNS.index(name)
    return [widget.table.item(row, index).text() for row in range(widget.table.rowCount())]


def _select(widget, object_id, frame):
    for row in range(widget.table.rowCount()):
        entry = widget._entry_at(row)
        if (entry.object_id, entry.frame) == (object_id, frame):
            widget.table.clearSelection()
            widget.table.selectRow(row)
            return entry
    raise AssertionError(f"no row for object {object_id}, slice {frame}")


def test_table_lists_every_entry_with_the_engines_values(inspector):
    entries = inspector.session.memory_entries()
    assert inspector.table.rowCount() == len(entries) == 2 * FRAMES
    shown = {(int(o), int(f)): c for o, f, c in zip(_column(inspector, "object"), _column(inspector, "slice"),
                                                   _column(inspector, "confidence"))}
    for entry in entries:
        assert shown[(entry.object_id, entry.frame)] == f"{entry.confidence:.3f}"
    assert _column(inspector, "prompted").count("yes") == 2


def test_sorting_by_confidence_is_numeric(inspector):
    inspector.table.sortItems(COLUMNS.index("confidence"))
    values = [float(v) for v in _column(inspector, "confidence")]
    assert values == sorted(values) and len(set(values)) > 2


def test_filtering_by_object(inspector):
    inspector.object_filter.setCurrentIndex(inspector.object_filter.findData(2))
    assert set(_column(inspector, "object")) == {"2"} and inspector.table.rowCount() == FRAMES
    assert inspector.plotted_object() == 2 and len(inspector.plotted) == FRAMES


def test_clicking_a_row_moves_the_viewer_and_shows_the_memory_used(inspector):
    viewer = inspector.state.viewer
    _select(inspector, 1, 7)
    assert viewer.dims.current_step[0] == 7
    assert inspector.attends.text().startswith("Slice 7 of object 1")
    assert "0, 1, 2, 3, 4, 5, 6" in inspector.attends.text()


def test_pin_and_evict_change_the_frames_attention_sees(inspector, qtbot):
    session = inspector.session
    sam = session.model.sam

    def attended(frame):
        return session.memory_view(1, frame).attended_frames(frame, False, sam)

    assert 1 not in attended(9)  # beyond SAM-2's 6 recent frames
    _select(inspector, 1, 1)
    inspector.set_status(EntryStatus.PINNED)
    assert 1 in attended(9)
    assert session.memories[1].entries[1].status is EntryStatus.PINNED
    row = next(r for r in range(inspector.table.rowCount()) if inspector._entry_at(r).frame == 1
               and inspector._entry_at(r).object_id == 1)
    assert inspector.table.item(row, COLUMNS.index("status")).text() == "pinned"
    assert "slices need re-propagation" in inspector.status.text()
    assert inspector.repropagate_button.isEnabled()
    assert 8 in attended(9)
    _select(inspector, 1, 8)
    inspector.set_status(EntryStatus.EVICTED)
    assert 8 not in attended(9)
    _select(inspector, 1, 8)
    inspector.set_status(EntryStatus.AUTO)
    assert 8 in attended(9)
    with qtbot.waitSignal(inspector.state.repropagate_requested, timeout=1000):
        inspector.repropagate_button.click()


def test_evicting_the_only_prompted_slice_is_explained(inspector):
    _select(inspector, 1, 0)
    inspector.set_status(EntryStatus.EVICTED)
    assert "only prompted frame" in inspector.status.text()
    assert inspector.session.memories[1].entries[0].status is EntryStatus.AUTO


def test_policy_is_applied_with_its_thresholds(inspector):
    inspector.policy_choice.setCurrentText("confidence")
    inspector.min_iou.setValue(0.35)
    inspector.min_object_score.setValue(1.5)
    inspector.apply_policy()
    policy = inspector.session.policy
    assert policy.name == "confidence" and policy.min_iou == pytest.approx(0.35)
    assert policy.min_object_score == pytest.approx(1.5)
    assert inspector.session.stale[1] == set(range(1, FRAMES))


def test_go_to_least_confident_slice(inspector):
    worst = min((e for e in inspector.session.memory_entries()), key=lambda e: e.confidence)
    inspector.go_to_least_confident()
    assert inspector.state.viewer.dims.current_step[0] == worst.frame
    assert f"Slice {worst.frame}" in inspector.status.text()


def test_without_a_session_the_inspector_waits(make_napari_viewer):
    widget = MemoryInspector(make_napari_viewer())
    assert widget.table.rowCount() == 0
    assert not widget.pin_button.isEnabled() and not widget.repropagate_button.isEnabled()
    assert "Segment something first" in widget.status.text()
