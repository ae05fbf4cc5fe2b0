"""The memory bank inspector shows the engine's memory entries and changes what memory
attention uses, through the engine's own methods, in a real viewer with a real session."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from qtpy.QtCore import QPoint, Qt
from qtpy.QtWidgets import QTableWidgetItem

from napari_samed2._widgets.inspector import COLUMNS, NO_SESSION_HINT, MemoryInspector, slice_label
from napari_samed2._widgets.state import shared_state
from napari_samed2.engine import EmbeddingCache, EntrySource, EntryStatus, FramePrompt, MemoryEntry, Session

pytestmark = pytest.mark.gui
FRAMES = 12  # more than 10, so that sorting slices as text ("10" < "2") would show
SLICE_SPACING = 2.0  # the image layer's z scale: the viewer's step differs from world units


def _volume() -> np.ndarray:
    """A bright disk drifting down through the slices, on noise."""
    rng = np.random.default_rng(1)
    rows, cols = np.ogrid[:64, :64]
    data = rng.normal(0.1, 0.03, (FRAMES, 64, 64)).astype(np.float32)
    for z in range(FRAMES):
        data[z][(rows - 26 - z) ** 2 + (cols - 32) ** 2 <= 11**2] += 0.8
    return data


@pytest.fixture(scope="module")
def saved_session(small_model, tmp_path_factory):
    """Two objects prompted on slice 0 and propagated forward, once per module (it takes
    the CPU half a minute); each test loads its own copy, so changes do not leak."""
    volume, cache = _volume(), EmbeddingCache()
    session = Session(small_model, volume, cache=cache)
    for click in ((26, 32), (6, 6)):
        object_id = session.add_object()
        session.segment_frame(0, object_id, FramePrompt.clicks(positive=[click]))
    list(session.propagate("forward"))
    return session.save(tmp_path_factory.mktemp("session")), volume, cache


@pytest.fixture
def session(saved_session, small_model):
    folder, volume, cache = saved_session
    return Session.load(folder, small_model, volume, cache=cache)


@pytest.fixture
def inspector(make_napari_viewer, saved_session, session):
    viewer = make_napari_viewer()
    layer = viewer.add_image(saved_session[1], scale=(SLICE_SPACING, 1.0, 1.0))
    widget = MemoryInspector(viewer)
    viewer.window.add_dock_widget(widget)
    shared_state(viewer).set_session(session, image_layer=layer, axis=0)
    return widget


def _column(widget: MemoryInspector, name: str) -> list[str]:
    index = COLUMNS.index(name)
    return [widget.table.item(row, index).text() for row in range(widget.table.rowCount())]


def _row(widget: MemoryInspector, object_id: int, frame: int) -> int:
    for row in range(widget.table.rowCount()):
        if (widget.table.item(row, 0).text(), widget.table.item(row, 1).text()) == (str(object_id), str(frame)):
            return row
    raise AssertionError(f"no row for object {object_id}, slice {frame}")


def _click_row(widget: MemoryInspector, qtbot, object_id: int, frame: int) -> None:
    """A real mouse click on the row's confidence cell."""
    table = widget.table
    item = table.item(_row(widget, object_id, frame), COLUMNS.index("confidence"))
    table.scrollToItem(item)
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=table.visualItemRect(item).center())
    assert [(e.object_id, e.frame) for e in widget.selected_entries()] == [(object_id, frame)]


def _attended(session: Session, object_id: int, frame: int) -> list[int]:
    return session.memory_view(object_id, frame).attended_frames(frame, False, session.model.sam)


def _spread_confidence(session: Session) -> dict[tuple[int, int], float]:
    """Random weights give every slice nearly the same scores; give the entries the spread a
    trained model shows (object scores of both signs, some low IoUs) so that ordering and
    marking are tested on distinct values. Returns the confidence of each (object, slice)."""
    rng = np.random.default_rng(7)
    for entry in session.memory_entries():
        entry.predicted_iou = float(rng.uniform(0.05, 0.99))
        entry.object_score = float(rng.uniform(-12.0, 12.0))
    return {(e.object_id, e.frame): e.confidence for e in session.memory_entries()}


def test_table_lists_every_entry_with_the_engines_values(inspector, session):
    entries = session.memory_entries()
    assert inspector.table.rowCount() == len(entries) == 2 * FRAMES
    for entry in entries:
        row = _row(inspector, entry.object_id, entry.frame)
        cells = [inspector.table.item(row, column).text() for column in range(len(COLUMNS))]
        assert cells == [
            str(entry.object_id), str(entry.frame), f"{entry.confidence:.3f}", "auto",
            "yes" if entry.conditioning else "no", "session", f"{entry.predicted_iou:.3f}", f"{entry.object_score:.3f}",
        ]
    assert _column(inspector, "prompted").count("yes") == 2  # slice 0 of each object


def test_library_entries_are_named_by_their_library_index():
    entry = MemoryEntry(1, -3, False, False, 0.9, 2.0, None, None, source=EntrySource.LIBRARY)
    assert slice_label(entry) == "library #2"
    assert slice_label(MemoryEntry(1, 4, False, False, 0.9, 2.0, None, None)) == "4"


def test_sorting_by_clicking_headers_is_numeric(inspector, session, qtbot):
    confidence = _spread_confidence(session)
    inspector.state.memory_changed.emit()  # what the segmentation panel emits after segmenting
    header = inspector.table.horizontalHeader()

    def click_header(name):
        column = COLUMNS.index(name)
        x = header.sectionViewportPosition(column) + header.sectionSize(column) // 2
        qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(x, header.height() // 2))

    click_header("confidence")
    order = [confidence[(e.object_id, e.frame)] for e in map(inspector._entry_at, range(inspector.table.rowCount()))]
    assert order == sorted(confidence.values())
    assert [float(v) for v in _column(inspector, "confidence")] == sorted(round(c, 3) for c in confidence.values())
    click_header("confidence")  # again: descending
    assert [float(v) for v in _column(inspector, "confidence")] == sorted(
        (round(c, 3) for c in confidence.values()), reverse=True)

    click_header("object score")
    scores = [float(v) for v in _column(inspector, "object score")]
    assert scores in (sorted(scores), sorted(scores, reverse=True)) and min(scores) < 0 < max(scores)
    click_header("slice")
    slices = [int(v) for v in _column(inspector, "slice")]
    assert slices in (sorted(slices), sorted(slices, reverse=True)) and max(slices) >= 10


def test_filtering_by_object(inspector, session):
    choices = [inspector.object_filter.itemText(i) for i in range(inspector.object_filter.count())]
    assert choices == ["All", "1", "2"]
    inspector.object_filter.setCurrentText("2")
    assert set(_column(inspector, "object")) == {"2"} and inspector.table.rowCount() == FRAMES
    assert list(inspector.plotted) == [2]
    inspector.object_filter.setCurrentText("All")
    assert inspector.table.rowCount() == 2 * FRAMES and list(inspector.plotted) == [1, 2]


def test_clicking_a_row_moves_the_viewer_and_shows_what_the_slice_attends_to(inspector, session, qtbot):
    viewer = inspector.state.viewer
    viewer.dims.set_current_step(0, 2)
    _click_row(inspector, qtbot, 1, 7)
    assert viewer.dims.current_step[0] == 7
    expected = _attended(session, 1, 7)
    assert inspector.attended == expected and 0 in expected
    assert inspector.attends_label.text() == f"Frame 7 (object 1) attends to: {', '.join(map(str, expected))}"
    assert inspector.pin_button.isEnabled() and inspector.evict_button.isEnabled()


def test_pin_adds_the_slice_to_later_slices_memory_and_marks_them_stale(inspector, session, qtbot):
    assert 1 not in _attended(session, 1, 9)  # beyond SAM-2's last six slices
    assert not inspector.repropagate_button.isEnabled()  # nothing is stale after propagating
    _click_row(inspector, qtbot, 1, 1)
    with qtbot.waitSignal(inspector.state.memory_changed, timeout=1000):
        inspector.pin_button.click()
    assert session.memories[1].entries[1].status is EntryStatus.PINNED
    assert 1 in _attended(session, 1, 9)
    assert inspector.table.item(_row(inspector, 1, 1), COLUMNS.index("status")).text() == "pinned"
    stale = sum(len(frames) for frames in session.stale.values())
    assert stale > 0 and f"{stale} frames need re-propagation" in inspector.status.text()
    assert inspector.repropagate_button.isEnabled()
    # the pinned entry stays selected after the refresh; the row of slice 9 shows it in use
    assert [(e.object_id, e.frame) for e in inspector.selected_entries()] == [(1, 1)]
    _click_row(inspector, qtbot, 1, 9)
    assert 1 in inspector.attended and "1" in inspector.attends_label.text().split(": ")[1].split(", ")


def test_evict_removes_the_slice_from_memory_and_restore_brings_it_back(inspector, session, qtbot):
    assert 8 in _attended(session, 1, 9)
    _click_row(inspector, qtbot, 1, 8)
    inspector.evict_button.click()
    assert 8 not in _attended(session, 1, 9)
    assert inspector.table.item(_row(inspector, 1, 8), COLUMNS.index("status")).text() == "evicted"
    assert session.memories[2].entries[8].status is EntryStatus.AUTO  # only the selected object's
    _click_row(inspector, qtbot, 1, 9)
    assert 8 not in inspector.attended
    _click_row(inspector, qtbot, 1, 8)
    inspector.restore_button.click()
    assert 8 in _attended(session, 1, 9)
    assert inspector.table.item(_row(inspector, 1, 8), COLUMNS.index("status")).text() == "auto"


def test_evicting_the_only_prompted_slice_shows_the_engines_reason(inspector, session, qtbot):
    with pytest.raises(ValueError) as refused:  # the engine refuses and changes nothing
        session.evict(1, 0)
    _click_row(inspector, qtbot, 1, 0)
    inspector.evict_button.click()  # no exception escapes
    assert str(refused.value) in inspector.status.text()
    assert session.memories[1].entries[0].status is EntryStatus.AUTO
    assert inspector.table.item(_row(inspector, 1, 0), COLUMNS.index("status")).text() == "auto"


def test_repropagate_button_asks_the_segmentation_panel(inspector, session, qtbot):
    _click_row(inspector, qtbot, 2, 3)
    inspector.pin_button.click()
    assert inspector.repropagate_button.isEnabled()
    with qtbot.waitSignal(inspector.state.repropagate_requested, timeout=1000):
        inspector.repropagate_button.click()
    session.stale = {object_id: set() for object_id in session.object_ids}  # as after re-propagating
    inspector.state.memory_changed.emit()
    assert not inspector.repropagate_button.isEnabled()
    assert "No frames need re-propagation" in inspector.status.text()


def test_apply_switches_the_policy_with_its_thresholds(inspector, session, qtbot):
    assert session.policy.name == "stock" and not inspector.min_iou.isEnabled()
    inspector.policy_choice.setCurrentText("confidence")
    assert inspector.min_iou.isEnabled() and inspector.min_object_score.isEnabled()
    inspector.min_iou.setValue(0.35)
    inspector.min_object_score.setValue(-1.5)
    with qtbot.waitSignal(inspector.state.memory_changed, timeout=1000):
        inspector.apply_policy_button.click()
    policy = session.policy
    assert policy.name == "confidence"
    assert policy.min_iou == pytest.approx(0.35) and policy.min_object_score == pytest.approx(-1.5)
    assert session.stale == {1: set(range(1, FRAMES)), 2: set(range(1, FRAMES))}
    assert f"{2 * (FRAMES - 1)} frames need re-propagation" in inspector.status.text()
    inspector.policy_choice.setCurrentText("stock")
    inspector.apply_policy_button.click()
    assert session.policy.name == "stock" and not inspector.min_iou.isEnabled()


def test_the_selected_slices_memory_follows_a_policy_change(inspector, session, qtbot):
    _click_row(inspector, qtbot, 1, 9)
    assert inspector.attended == _attended(session, 1, 9) == [0, 3, 4, 5, 6, 7, 8]
    inspector.policy_choice.setCurrentText("confidence")
    inspector.min_iou.setValue(0.99)  # above every predicted IoU: only the prompted slice is trusted
    inspector.apply_policy_button.click()
    assert inspector.attended == _attended(session, 1, 9) == [0]
    assert inspector.attends_label.text() == "Frame 9 (object 1) attends to: 0"


def test_pin_acts_on_every_selected_row(inspector, session, qtbot):
    _click_row(inspector, qtbot, 1, 2)
    item = inspector.table.item(_row(inspector, 2, 5), 0)
    qtbot.mouseClick(inspector.table.viewport(), Qt.MouseButton.LeftButton,
                     Qt.KeyboardModifier.ControlModifier, inspector.table.visualItemRect(item).center())
    assert sorted((e.object_id, e.frame) for e in inspector.selected_entries()) == [(1, 2), (2, 5)]
    inspector.pin_button.click()
    assert session.memories[1].entries[2].status is EntryStatus.PINNED
    assert session.memories[2].entries[5].status is EntryStatus.PINNED
    assert _column(inspector, "status").count("pinned") == 2
    assert sorted((e.object_id, e.frame) for e in inspector.selected_entries()) == [(1, 2), (2, 5)]


def test_go_to_least_confident_slice(inspector, session):
    confidence = _spread_confidence(session)
    prompted = [e for e in session.memory_entries() if e.conditioning]
    assert prompted
    for entry in prompted:  # the least confident of all, and still not the slice to check
        entry.object_score = -20.0
    inspector.state.memory_changed.emit()
    tracked = [k for k in confidence if not session.memories[k[0]].entries[k[1]].conditioning]
    confidence = {k: session.memories[k[0]].entries[k[1]].confidence for k in tracked}
    viewer = inspector.state.viewer
    for shown, keys in (("All", list(confidence)), ("2", [k for k in confidence if k[0] == 2])):
        inspector.object_filter.setCurrentText(shown)
        worst = min(keys, key=confidence.get)
        viewer.dims.set_current_step(0, FRAMES - 1 if worst[1] != FRAMES - 1 else 0)
        inspector.least_confident_button.click()
        assert viewer.dims.current_step[0] == worst[1]
        assert (inspector.least_confident_entry().object_id, inspector.least_confident_entry().frame) == worst
        assert [(e.object_id, e.frame) for e in inspector.selected_entries()] == [worst]


def test_low_confidence_rows_and_points_are_marked_red(inspector, session):
    confidence = _spread_confidence(session)
    inspector.threshold.setValue(float(np.median(list(confidence.values()))))  # refreshes
    low = inspector.threshold.value()
    default = QTableWidgetItem().background()
    for (object_id, frame), value in confidence.items():
        background = inspector.table.item(_row(inspector, object_id, frame), 0).background()
        assert (background != default) == (value < low)
    red = to_rgba("tab:red")
    for object_id, entries in inspector.plotted.items():
        colors = inspector.points[object_id].get_facecolors()
        for entry, color in zip(entries, colors):
            assert np.allclose(color, red) == (entry.confidence < low)


def test_plot_has_one_point_per_session_entry_of_the_object(inspector, session):
    inspector.object_filter.setCurrentText("1")
    entries = [e for e in session.memory_entries(1) if e.source is EntrySource.SESSION]
    assert list(inspector.points) == [1]
    offsets = inspector.points[1].get_offsets()
    assert len(offsets) == len(entries) == FRAMES
    np.testing.assert_allclose(offsets, [(e.frame, e.confidence) for e in entries])


def test_without_a_session_the_inspector_waits(make_napari_viewer, session):
    viewer = make_napari_viewer()
    widget = MemoryInspector(viewer)
    assert widget.table.rowCount() == 0 and NO_SESSION_HINT in widget.status.text()
    buttons = (widget.pin_button, widget.evict_button, widget.restore_button, widget.repropagate_button,
               widget.apply_policy_button, widget.least_confident_button)
    assert not any(button.isEnabled() for button in buttons)
    widget.apply_policy()
    widget.go_to_least_confident()
    widget.pin_selected()  # nothing to act on: a message, no exception
    assert widget.least_confident_entry() is None and widget.plotted == {}
    layer = viewer.add_image(_volume())
    shared_state(viewer).set_session(session, image_layer=layer)
    assert widget.table.rowCount() == 2 * FRAMES and widget.least_confident_button.isEnabled()
    assert NO_SESSION_HINT not in widget.status.text()
    shared_state(viewer).set_session(None)
    assert widget.table.rowCount() == 0 and not widget.least_confident_button.isEnabled()
    assert NO_SESSION_HINT in widget.status.text()


def test_key_columns_are_in_view_in_a_narrow_dock(inspector, qtbot):
    narrow = MemoryInspector(inspector.state.viewer)  # a second view of the same session, undocked
    qtbot.addWidget(narrow)
    narrow.resize(380, 600)
    narrow.show()
    qtbot.waitExposed(narrow)
    table = narrow.table
    assert table.rowCount() == 2 * FRAMES and table.viewport().width() <= 380
    for name in ("object", "slice", "confidence", "status"):
        column = COLUMNS.index(name)
        assert table.columnViewportPosition(column) + table.columnWidth(column) <= table.viewport().width(), name
    last = len(COLUMNS) - 1
    assert table.columnViewportPosition(last) + table.columnWidth(last) > table.viewport().width()  # the rest scrolls


def test_the_table_exports_as_csv_with_the_engines_values(inspector, session, tmp_path):
    import pandas as pd

    path = tmp_path / "confidence.csv"
    path.write_text("an earlier export\n")  # the user agreed to replace it in the dialog
    inspector.object_filter.setCurrentText("2")
    inspector.export_csv(str(path))
    table = pd.read_csv(path)
    entries = session.memory_entries(2)
    assert len(table) == len(entries) == FRAMES and set(table["object"]) == {2}
    np.testing.assert_allclose(table["confidence"], [e.confidence for e in entries], rtol=1e-5)
    assert table["prompted"].tolist() == [e.conditioning for e in entries]
    assert f"Exported {FRAMES} rows" in inspector.status.text()
    inspector.export_csv(str(tmp_path / "missing-folder" / "x.csv"))
    assert "Could not export the table" in inspector.status.text() and "does not exist" in inspector.status.text()
