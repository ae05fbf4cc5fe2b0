"""Memory bank inspector: what the engine remembers for each object, and the user's say over it.

A table of the session's memory entries (sortable, filtered by object, unconfident rows
tinted), a confidence-over-slices plot, Pin / Evict / Restore, and the memory policy with its
thresholds. The widget only reads ``Session.memory_entries`` and calls the engine's own
methods; the decisions (what is attended, what becomes stale) stay in the engine. Heavy work,
re-propagation, is asked of the segmentation panel through the shared state, so progress and
Cancel live in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QItemSelection, QItemSelectionModel, Qt
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_samed2._widgets.layout import scrolling_layout
from napari_samed2._widgets.state import shared_state
from napari_samed2.engine import EntrySource, EntryStatus, MemoryEntry
from napari_samed2.errors import SamEd2Error

if TYPE_CHECKING:
    import napari

    from napari_samed2.engine import Session

# what a user scans for comes first, so a narrow dock still shows it
COLUMNS = ("object", "slice", "confidence", "status", "prompted", "source", "predicted IoU", "object score")
ALL = "All"
LEAST_CONFIDENT_KEY = "Alt-L"
NO_SESSION_HINT = "Segment something first: memory entries appear here once slices are segmented."
LOW_CONFIDENCE_BRUSH = QBrush(QColor(220, 60, 60, 110))
# the errors the engine raises with a message meant for the user (a bad pin, a missing entry)
USER_ERRORS = (ValueError, KeyError, IndexError)
_KEY_ROLE = Qt.ItemDataRole.UserRole  # (object_id, frame) on each row's first cell
_SORT_ROLE = Qt.ItemDataRole.UserRole + 1  # the number a cell sorts by


class _Cell(QTableWidgetItem):
    """A read-only cell shown as text but sorted by a number (so 10 sorts after 9, and
    "library #0" with the other library rows), falling back to the text."""

    def __init__(self, text: str, sort_key: float | None = None):
        super().__init__(text)
        self.setFlags(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled)
        if sort_key is not None:
            self.setData(_SORT_ROLE, float(sort_key))

    def __lt__(self, other: QTableWidgetItem) -> bool:
        mine, theirs = self.data(_SORT_ROLE), other.data(_SORT_ROLE)
        if mine is not None and theirs is not None:
            return mine < theirs
        return self.text() < other.text()


def slice_label(entry: MemoryEntry) -> str:
    """Session entries by slice number; library entries (negative frames) by library index."""
    return f"library #{-1 - entry.frame}" if entry.source is EntrySource.LIBRARY else str(entry.frame)


def _number_box(low: float, high: float, step: float, value: float) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(low, high)
    box.setDecimals(3)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def _message(exc: Exception) -> str:
    # str(KeyError("...")) keeps the quotes; the user should not see them
    return exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)


class MemoryInspector(QWidget):
    """Lists every memory entry of the viewer's session; pins, evicts and restores them and
    switches the memory policy, then tells the other panels through the shared state."""

    def __init__(self, napari_viewer: napari.Viewer | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = shared_state(napari_viewer)
        self._entries: dict[tuple[int, int], MemoryEntry] = {}  # shown rows, by (object, frame)
        self.attended: list[int] | None = None  # frames the selected entry's frame attends to
        self.plotted: dict[int, list[MemoryEntry]] = {}  # object id -> its points in the plot
        self.points: dict[int, object] = {}  # object id -> the matplotlib scatter of its points

        self.object_filter = QComboBox()
        self.object_filter.addItem(ALL, None)
        self.object_filter.currentIndexChanged.connect(lambda _index: self.refresh())
        self.threshold = _number_box(0.0, 1.0, 0.05, 0.5)
        self.threshold.setToolTip("Entries less confident than this (IoU x sigmoid(object score)) are marked red")
        self.threshold.valueChanged.connect(lambda _value: self.refresh())

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setSortingEnabled(True)
        # by object, then (the sort is stable) in the engine's slice order
        self.table.sortByColumn(COLUMNS.index("object"), Qt.SortOrder.AscendingOrder)
        self.table.setMinimumHeight(160)
        self.table.cellClicked.connect(lambda row, _column: self._row_activated(row))
        self.table.currentCellChanged.connect(self._current_cell_changed)
        self.table.itemSelectionChanged.connect(self._selection_changed)

        self.attends_label = QLabel()
        self.attends_label.setWordWrap(True)
        self.pin_button = QPushButton("Pin")
        self.pin_button.setToolTip("Always attend to the selected entries, like prompted slices")
        self.pin_button.clicked.connect(self.pin_selected)
        self.evict_button = QPushButton("Evict")
        self.evict_button.setToolTip("Never attend to the selected entries again (their masks stay)")
        self.evict_button.clicked.connect(self.evict_selected)
        self.restore_button = QPushButton("Restore")
        self.restore_button.setToolTip("Undo a pin or an evict: the memory policy decides again")
        self.restore_button.clicked.connect(self.restore_selected)
        self.repropagate_button = QPushButton("Re-propagate")
        self.repropagate_button.setToolTip("Recompute the slices whose memory changed (in the Segmentation panel)")
        self.repropagate_button.clicked.connect(self.request_repropagation)

        self.policy_choice = QComboBox()
        self.policy_choice.addItems(["stock", "confidence"])
        self.policy_choice.setToolTip(
            "stock: SAM-2's recent slices; confidence (SAMed-2): only slices above the thresholds"
        )
        self.policy_choice.currentTextChanged.connect(lambda _name: self._update_controls())
        self.min_iou = _number_box(0.0, 1.0, 0.05, 0.5)
        self.min_object_score = _number_box(-100.0, 100.0, 0.5, 0.0)  # a logit
        self.apply_policy_button = QPushButton("Apply")
        self.apply_policy_button.clicked.connect(self.apply_policy)

        # matplotlib is imported here so that importing the plugin stays cheap
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.2), layout="constrained")
        self.axes = self.figure.add_subplot()
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(150)
        self.least_confident_button = QPushButton("Go to least confident slice")
        self.least_confident_button.clicked.connect(self.go_to_least_confident)
        self.export_button = QPushButton("Export table as CSV...")
        self.export_button.setToolTip("Save the rows shown (all objects, or the filtered one) for review elsewhere")
        self.export_button.clicked.connect(lambda: self.export_csv())
        self.least_confident_button.setToolTip(f"Show the tracked slice to check first ({LEAST_CONFIDENT_KEY.replace('-', '+')})")
        if napari_viewer is not None:
            napari_viewer.bind_key(LEAST_CONFIDENT_KEY, lambda _viewer: self.go_to_least_confident(), overwrite=True)

        self.status = QLabel()
        self.status.setWordWrap(True)
        self._note = ""  # the outcome of the user's last action, shown before the stale count
        self._lay_out()

        self.state.session_changed.connect(lambda _session: self._session_changed())
        self.state.memory_changed.connect(self.refresh)
        self._session_changed()

    def _lay_out(self) -> None:
        filters = QFormLayout()
        filters.addRow("Object", self.object_filter)
        filters.addRow("Low confidence below", self.threshold)
        actions = QHBoxLayout()
        for button in (self.pin_button, self.evict_button, self.restore_button, self.repropagate_button):
            actions.addWidget(button)
        policy_box = QGroupBox("Memory policy")
        policy = QFormLayout(policy_box)
        policy.addRow("Policy", self.policy_choice)
        policy.addRow("Min IoU", self.min_iou)
        policy.addRow("Min object score", self.min_object_score)
        policy.addRow(self.apply_policy_button)
        layout = scrolling_layout(self)
        layout.addLayout(filters)
        layout.addWidget(self.table, stretch=2)
        layout.addWidget(self.attends_label)
        layout.addLayout(actions)
        layout.addWidget(self.canvas, stretch=1)
        layout.addWidget(self.least_confident_button)
        layout.addWidget(self.export_button)
        layout.addWidget(policy_box)
        layout.addWidget(self.status)

    @property
    def session(self) -> Session | None:
        return self.state.session

    # reading the session ---------------------------------------------------------------------
    def _session_changed(self) -> None:
        """A new session: show its policy, forget the old selection and message."""
        session = self.session
        if session is not None:
            self.policy_choice.setCurrentText(session.policy.name)
            if session.policy.name == "confidence":
                self.min_iou.setValue(session.policy.min_iou)
                self.min_object_score.setValue(session.policy.min_object_score)
        self.table.clearSelection()
        self.refresh()

    def shown_object(self) -> int | None:
        """The object chosen in the filter (None: all)."""
        return self.object_filter.currentData()

    def entries(self) -> list[MemoryEntry]:
        """The entries to show: every object's, or the filtered object's."""
        session = self.session
        if session is None:
            return []
        with session.lock:  # a propagation may be adding entries in its worker thread
            return session.memory_entries(self.shown_object())

    def _sync_object_filter(self) -> None:
        """Objects come and go in the segmentation panel; keep the filter's list in step."""
        ids = self.session.object_ids if self.session is not None else []
        listed = [self.object_filter.itemData(i) for i in range(1, self.object_filter.count())]
        if listed == ids:
            return
        current = self.shown_object()
        self.object_filter.blockSignals(True)
        self.object_filter.clear()
        self.object_filter.addItem(ALL, None)
        for object_id in ids:
            self.object_filter.addItem(str(object_id), object_id)
        self.object_filter.setCurrentIndex(max(self.object_filter.findData(current), 0))
        self.object_filter.blockSignals(False)

    def refresh(self) -> None:
        """Re-read the session into the table, the plot, the buttons and the messages,
        keeping the selected entries selected (without moving the viewer)."""
        self._note = ""
        self._sync_object_filter()
        selected = [self._key(e) for e in self.selected_entries()]
        entries = self.entries()
        self._entries = {self._key(e): e for e in entries}
        low = self.threshold.value()
        self.table.blockSignals(True)
        self.table.setSortingEnabled(False)
        self.table.clearSelection()
        self.table.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            cells = [
                _Cell(str(entry.object_id), entry.object_id),
                _Cell(slice_label(entry), entry.frame),
                _Cell(f"{entry.confidence:.3f}", entry.confidence),
                _Cell(entry.status.value),
                _Cell("yes" if entry.conditioning else "no", int(entry.conditioning)),
                _Cell(entry.source.value),
                _Cell(f"{entry.predicted_iou:.3f}", entry.predicted_iou),
                _Cell(f"{entry.object_score:.3f}", entry.object_score),
            ]
            cells[0].setData(_KEY_ROLE, self._key(entry))
            unconfident = entry.confidence < low
            for column, cell in enumerate(cells):
                if unconfident:
                    cell.setBackground(LOW_CONFIDENCE_BRUSH)
                    cell.setToolTip(f"confidence {entry.confidence:.3f} is below {low:.3f}")
                self.table.setItem(row, column, cell)
        self.table.setSortingEnabled(True)  # re-sorts by the header's current column
        self._select_keys(selected)
        self.table.blockSignals(False)
        self._show_attention()
        self._plot()
        self._update_controls()
        self._show_status()

    @staticmethod
    def _key(entry: MemoryEntry) -> tuple[int, int]:
        return entry.object_id, entry.frame

    def _entry_at(self, row: int) -> MemoryEntry | None:
        cell = self.table.item(row, 0)
        return None if cell is None else self._entries.get(tuple(cell.data(_KEY_ROLE)))

    def _row_of(self, key: tuple[int, int]) -> int | None:
        for row in range(self.table.rowCount()):
            entry = self._entry_at(row)
            if entry is not None and self._key(entry) == key:
                return row
        return None

    def _select_keys(self, keys: list[tuple[int, int]]) -> None:
        selection = QItemSelection()
        model = self.table.model()
        for key in keys:
            row = self._row_of(key)
            if row is not None:
                selection.select(model.index(row, 0), model.index(row, model.columnCount() - 1))
        flags = QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows
        self.table.selectionModel().select(selection, flags)

    def select_entry(self, object_id: int, frame: int) -> bool:
        """Select the one row of this entry, as a click would (the viewer moves to it)."""
        row = self._row_of((object_id, frame))
        if row is None:
            return False
        self.table.selectRow(row)
        self._row_activated(row)
        return True

    def selected_entries(self) -> list[MemoryEntry]:
        """The entries of the selected rows, top to bottom."""
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return [e for e in (self._entry_at(row) for row in rows) if e is not None]

    def stale_count(self) -> int:
        """How many (object, slice) results wait for re-propagation."""
        return sum(len(frames) for frames in self.session.stale.values()) if self.session is not None else 0

    def stale_message(self) -> str:
        count = self.stale_count()
        if not count:
            return "No frames need re-propagation."
        return f"{count} frame needs re-propagation." if count == 1 else f"{count} frames need re-propagation."

    # selection and navigation ----------------------------------------------------------------
    def _current_cell_changed(self, row: int, _column: int, previous_row: int, _previous_column: int) -> None:
        if row != previous_row and row >= 0:  # keyboard navigation; clicks also arrive here
            self._row_activated(row)

    def _row_activated(self, row: int) -> None:
        """The user chose this row: show its slice in the viewer (session entries only)."""
        entry = self._entry_at(row)
        if entry is not None and entry.source is EntrySource.SESSION:
            self.state.go_to_frame(entry.frame)

    def _selection_changed(self) -> None:
        self._show_attention()
        self._update_controls()

    def _show_attention(self) -> None:
        """For one selected session entry: the frames memory attention would use for its
        slice with the current policy, pins and evictions (as the engine decides)."""
        entries = self.selected_entries()
        self.attended = None
        if self.session is None or len(entries) != 1 or entries[0].source is not EntrySource.SESSION:
            self.attends_label.setText("Select one slice to see which slices its memory attends to.")
            return
        entry = entries[0]
        try:
            with self.session.lock:
                view = self.session.memory_view(entry.object_id, entry.frame, entry.reverse)
                self.attended = view.attended_frames(entry.frame, entry.reverse, self.session.model.sam)
        except USER_ERRORS as exc:
            self.attends_label.setText(_message(exc))
            return
        frames = ", ".join(map(str, self.attended)) or "nothing"
        self.attends_label.setText(f"Frame {entry.frame} (object {entry.object_id}) attends to: {frames}")

    def least_confident_entry(self) -> MemoryEntry | None:
        """The least confident tracked entry of the filtered object (or of all objects); a
        prompted slice is what the user set, not one to check."""
        candidates = [e for e in self._entries.values() if e.source is EntrySource.SESSION and not e.conditioning]
        return min(candidates, key=lambda e: (e.confidence, e.object_id, e.frame)) if candidates else None

    def export_csv(self, path: str | None = None) -> None:
        """Write the rows shown to ``path`` (asked for with a file dialog when not given)."""
        from napari_samed2.engine.confidence_table import write_confidence_csv

        entries = self.entries()
        if not entries:
            self._say("Nothing to export yet: segment some slices first.")
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export the confidence table", "confidence.csv", "CSV (*.csv)")
            if not path:
                return
        try:  # the dialog has asked about replacing an existing file
            written = write_confidence_csv(entries, path, overwrite=True)
        except (OSError, SamEd2Error) as exc:
            self._say(f"Could not export the table: {exc}")
            return
        self._say(f"Exported {len(entries)} rows to {written}.")

    def go_to_least_confident(self) -> None:
        entry = self.least_confident_entry()
        if entry is None:
            self._say("No tracked slice yet: propagate first (prompted slices are not counted).")
            return
        self.state.go_to_frame(entry.frame)
        self.table.blockSignals(True)
        self._select_keys([self._key(entry)])
        self.table.blockSignals(False)
        self._selection_changed()
        self._say(f"Slice {entry.frame} of object {entry.object_id} is the least confident ({entry.confidence:.3f}).")

    # changing memory -------------------------------------------------------------------------
    def pin_selected(self) -> None:
        self._apply_to_selected("pin", "Pinned")

    def evict_selected(self) -> None:
        self._apply_to_selected("evict", "Evicted")

    def restore_selected(self) -> None:
        self._apply_to_selected("restore", "Restored")

    def _apply_to_selected(self, method: str, done: str) -> None:
        """Call ``Session.pin`` / ``evict`` / ``restore`` on each selected entry; the engine's
        refusals are shown in the status line, never raised."""
        session, entries = self.session, self.selected_entries()
        if session is None or not entries:
            self._say("Select one or more rows first.")
            return
        changed, errors = [], []
        for entry in entries:
            try:
                getattr(session, method)(entry.object_id, entry.frame)
            except USER_ERRORS as exc:
                errors.append(_message(exc))
            else:
                changed.append(slice_label(entry))
        if changed:
            # every panel refreshes on this signal, this one included
            self.state.memory_changed.emit()
        self._say(" ".join([*errors, f"{done} {', '.join(changed)}." if changed else ""]))

    def request_repropagation(self) -> None:
        """The segmentation panel recomputes the stale frames (with its progress and Cancel)."""
        self.state.repropagate_requested.emit()

    def apply_policy(self) -> None:
        session = self.session
        if session is None:
            return
        name = self.policy_choice.currentText()
        options = {}
        if name == "confidence":
            options = {"min_iou": self.min_iou.value(), "min_object_score": self.min_object_score.value()}
        try:
            with session.lock:
                session.set_policy(name, **options)
        except USER_ERRORS as exc:
            self._say(_message(exc))
            return
        self.state.memory_changed.emit()
        described = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in options.items())
        self._say(f"Memory policy: {name}{f' ({described})' if described else ''}.")

    # plot -------------------------------------------------------------------------------------
    def _plot(self) -> None:
        """Confidence over slices, one line per shown object: red points below the
        threshold, pinned entries ringed in blue, evicted ones crossed out in black."""
        axes = self.axes
        axes.clear()
        self.plotted, self.points = {}, {}
        low = self.threshold.value()
        by_object: dict[int, list[MemoryEntry]] = {}
        for entry in sorted(self._entries.values(), key=lambda e: (e.object_id, e.frame)):
            if entry.source is EntrySource.SESSION:
                by_object.setdefault(entry.object_id, []).append(entry)
        palette = ["tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:cyan", "tab:olive"]
        for index, (object_id, entries) in enumerate(by_object.items()):
            color = palette[index % len(palette)]
            frames = [e.frame for e in entries]
            confidence = [e.confidence for e in entries]
            axes.plot(frames, confidence, "-", color=color, linewidth=1, alpha=0.7, label=f"object {object_id}")
            colors = ["tab:red" if c < low else color for c in confidence]
            self.points[object_id] = axes.scatter(frames, confidence, c=colors, s=16, zorder=3)
            self.plotted[object_id] = entries
            pinned = [e for e in entries if e.status is EntryStatus.PINNED]
            evicted = [e for e in entries if e.status is EntryStatus.EVICTED]
            if pinned:
                axes.scatter([e.frame for e in pinned], [e.confidence for e in pinned], s=90, marker="o",
                             facecolors="none", edgecolors="tab:blue", linewidths=1.5, zorder=4)
            if evicted:
                axes.scatter([e.frame for e in evicted], [e.confidence for e in evicted], s=60, marker="x",
                             color="black", linewidths=1.5, zorder=4)
        if by_object:
            axes.axhline(low, color="tab:red", linewidth=0.8, linestyle="--")
            if len(by_object) > 1:
                axes.legend(fontsize=7, loc="best", framealpha=0.6)
        axes.set_title("red: below threshold, blue ring: pinned, x: evicted", fontsize=8)
        axes.set_xlabel("slice", fontsize=8)
        axes.set_ylabel("confidence", fontsize=8)
        axes.set_ylim(-0.02, 1.02)
        if self.session is not None:
            axes.set_xlim(-0.5, len(self.session.volume) - 0.5)
        axes.tick_params(labelsize=7)
        self.canvas.draw_idle()

    # enabled state and hints -----------------------------------------------------------------
    def _update_controls(self) -> None:
        has_session = self.session is not None
        has_selection = has_session and bool(self.selected_entries())
        for button in (self.pin_button, self.evict_button, self.restore_button):
            button.setEnabled(has_selection)
        self.repropagate_button.setEnabled(self.stale_count() > 0)
        self.least_confident_button.setEnabled(any(e.source is EntrySource.SESSION for e in self._entries.values()))
        self.object_filter.setEnabled(has_session)
        for widget in (self.policy_choice, self.apply_policy_button):
            widget.setEnabled(has_session)
        confidence = has_session and self.policy_choice.currentText() == "confidence"
        self.min_iou.setEnabled(confidence)
        self.min_object_score.setEnabled(confidence)

    def _say(self, note: str) -> None:
        self._note = note.strip()
        self._show_status()

    def _show_status(self) -> None:
        """The last action's outcome, then how many frames wait for re-propagation."""
        session = self.session
        if session is None or not session.memory_entries():
            self.status.setText(" ".join(filter(None, [self._note, NO_SESSION_HINT])))
        else:
            self.status.setText(" ".join(filter(None, [self._note, self.stale_message()])))
