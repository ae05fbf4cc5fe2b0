"""Memory bank inspector: every memory entry of the session, and the user's say over them.

A table (object, slice, source, prompted, predicted IoU, object score, confidence, status),
sortable and filtered by object; a confidence-over-slices plot; Pin / Evict / Restore; the
memory policy and its thresholds. The inspector only calls the engine (``Session.pin`` ...)
and asks the segmentation panel, through the shared state, to re-propagate: the panel owns
the worker, the progress bar and Cancel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_samed2._widgets.state import shared_state
from napari_samed2.engine import EntrySource, EntryStatus, MemoryEntry

if TYPE_CHECKING:
    import napari

COLUMNS = ("object", "slice", "source", "prompted", "predicted IoU", "object score", "confidence", "status")
LOW_CONFIDENCE = QColor(255, 120, 120, 90)
STATUS_COLORS = {EntryStatus.PINNED: "tab:blue", EntryStatus.EVICTED: "black"}
_USER_ERRORS = (ValueError, KeyError)


class _NumberItem(QTableWidgetItem):
    """A cell shown as text but sorted by its number."""

    def __init__(self, text: str, value: float):
        super().__init__(text)
        self.value = value

    def __lt__(self, other: QTableWidgetItem) -> bool:
        if isinstance(other, _NumberItem):
            return self.value < other.value
        return super().__lt__(other)


def slice_name(entry: MemoryEntry) -> str:
    return f"library #{-1 - entry.frame}" if entry.source is EntrySource.LIBRARY else str(entry.frame)


class MemoryInspector(QWidget):
    """Lists the session's memory entries and lets the user pin, evict and restore them."""

    def __init__(self, napari_viewer: napari.Viewer | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = shared_state(napari_viewer)
        self._rows: list[MemoryEntry] = []
        self.plotted: list[MemoryEntry] = []  # the entries in the confidence plot

        self.object_filter = QComboBox()
        self.object_filter.currentIndexChanged.connect(lambda _i: self.refresh())
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.threshold.setToolTip("Entries below this confidence are marked in the table and the plot")
        self.threshold.valueChanged.connect(lambda _v: self.refresh())

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSortingEnabled(True)
        self.table.verticalHeader().setVisible(False)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.setMinimumHeight(180)

        self.pin_button = QPushButton("Pin")
        self.pin_button.setToolTip("Always use the selected entries as memory for their object")
        self.pin_button.clicked.connect(lambda: self.set_status(EntryStatus.PINNED))
        self.evict_button = QPushButton("Evict")
        self.evict_button.setToolTip("Never use the selected entries as memory again")
        self.evict_button.clicked.connect(lambda: self.set_status(EntryStatus.EVICTED))
        self.restore_button = QPushButton("Restore")
        self.restore_button.setToolTip("Let the memory policy decide again")
        self.restore_button.clicked.connect(lambda: self.set_status(EntryStatus.AUTO))
        self.repropagate_button = QPushButton("Re-propagate")
        self.repropagate_button.clicked.connect(self.state.repropagate_requested.emit)
        self.least_confident_button = QPushButton("Go to least confident slice")
        self.least_confident_button.clicked.connect(self.go_to_least_confident)

        self.policy_choice = QComboBox()
        self.policy_choice.addItems(["stock", "confidence"])
        self.policy_choice.currentTextChanged.connect(self._policy_choice_changed)
        self.min_iou = QDoubleSpinBox()
        self.min_iou.setRange(0.0, 1.0)
        self.min_iou.setSingleStep(0.05)
        self.min_iou.setValue(0.5)
        self.min_object_score = QDoubleSpinBox()
        self.min_object_score.setRange(-20.0, 20.0)
        self.min_object_score.setValue(0.0)
        self.apply_policy_button = QPushButton("Apply policy")
        self.apply_policy_button.clicked.connect(self.apply_policy)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2), layout="constrained")
        self.axes = self.figure.add_subplot()
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(160)

        self.attends = QLabel()
        self.attends.setWordWrap(True)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self._lay_out()
        self.state.session_changed.connect(lambda _s: self._session_changed())
        self.state.memory_changed.connect(self.refresh)
        self._session_changed()

    def _lay_out(self) -> None:
        top = QFormLayout()
        top.addRow("Object", self.object_filter)
        top.addRow("Low confidence below", self.threshold)
        buttons = QHBoxLayout()
        for button in (self.pin_button, self.evict_button, self.restore_button, self.repropagate_button):
            buttons.addWidget(button)
        policy = QHBoxLayout()
        for widget in (self.policy_choice, QLabel("min IoU"), self.min_iou, QLabel("min score"),
                       self.min_object_score, self.apply_policy_button):
            policy.addWidget(widget)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.table, stretch=2)
        layout.addLayout(buttons)
        layout.addWidget(self.attends)
        layout.addWidget(self.canvas, stretch=1)
        layout.addWidget(self.least_confident_button)
        layout.addLayout(policy)
        layout.addWidget(self.status)

    @property
    def session(self):
        return self.state.session

    # content ---------------------------------------------------------------------------
    def _session_changed(self) -> None:
        self.object_filter.blockSignals(True)
        self.object_filter.clear()
        self.object_filter.addItem("All objects", None)
        self.object_filter.blockSignals(False)
        if self.session is not None:
            policy = self.session.policy
            self.policy_choice.setCurrentText(policy.name)
            if policy.name == "confidence":
                self.min_iou.setValue(policy.min_iou)
                self.min_object_score.setValue(policy.min_object_score)
        self._policy_choice_changed(self.policy_choice.currentText())
        self.refresh()

    def _sync_object_filter(self) -> None:
        ids = self.session.object_ids if self.session is not None else []
        shown = [self.object_filter.itemData(i) for i in range(1, self.object_filter.count())]
        if shown == ids:
            return
        current = self.object_filter.currentData()
        self.object_filter.blockSignals(True)
        self.object_filter.clear()
        self.object_filter.addItem("All objects", None)
        for object_id in ids:
            self.object_filter.addItem(f"object {object_id}", object_id)
        index = self.object_filter.findData(current)
        self.object_filter.setCurrentIndex(max(index, 0))
        self.object_filter.blockSignals(False)

    def entries(self) -> list[MemoryEntry]:
        """The entries shown: all, or the filtered object's."""
        if self.session is None:
            return []
        object_id = self.object_filter.currentData()
        if object_id is not None and object_id not in self.session.memories:
            object_id = None
        with self.session.lock:
            return self.session.memory_entries(object_id)

    def refresh(self) -> None:
        """Re-read the session: table, plot, buttons, stale count."""
        self._sync_object_filter()
        selected = {(e.object_id, e.frame) for e in self.selected_entries()}
        self._rows = self.entries()
        low = self.threshold.value()
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(self._rows))
        for row, entry in enumerate(self._rows):
            cells = [
                _NumberItem(str(entry.object_id), entry.object_id),
                _NumberItem(slice_name(entry), entry.frame),
                QTableWidgetItem(entry.source.value),
                QTableWidgetItem("yes" if entry.conditioning else ""),
                _NumberItem(f"{entry.predicted_iou:.3f}", entry.predicted_iou),
                _NumberItem(f"{entry.object_score:.3f}", entry.object_score),
                _NumberItem(f"{entry.confidence:.3f}", entry.confidence),
                QTableWidgetItem(entry.status.value),
            ]
            cells[0].setData(Qt.ItemDataRole.UserRole, row)
            for column, item in enumerate(cells):
                if entry.confidence < low:
                    item.setBackground(QBrush(LOW_CONFIDENCE))
                self.table.setItem(row, column, item)
        self.table.setSortingEnabled(True)
        for row in range(self.table.rowCount()):
            entry = self._entry_at(row)
            if (entry.object_id, entry.frame) in selected:
                self.table.selectRow(row)
        self._plot()
        self._update_buttons()

    def _entry_at(self, row: int) -> MemoryEntry:
        return self._rows[self.table.item(row, 0).data(Qt.ItemDataRole.UserRole)]

    def selected_entries(self) -> list[MemoryEntry]:
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return [self._entry_at(row) for row in rows if self.table.item(row, 0) is not None]

    def plotted_object(self) -> int | None:
        """The object whose confidence is plotted: the filtered one, else the first."""
        if self.session is None or not self.session.object_ids:
            return None
        chosen = self.object_filter.currentData()
        return chosen if chosen in self.session.memories else self.session.object_ids[0]

    def _plot(self) -> None:
        self.axes.clear()
        object_id = self.plotted_object()
        entries = [e for e in self._rows if e.object_id == object_id and e.source is EntrySource.SESSION]
        self.plotted = entries
        if entries:
            frames = [e.frame for e in entries]
            confidence = [e.confidence for e in entries]
            self.axes.plot(frames, confidence, "-", color="0.6", linewidth=1)
            low = self.threshold.value()
            colors = [
                STATUS_COLORS.get(e.status, "tab:red" if e.confidence < low else "tab:green") for e in entries
            ]
            self.axes.scatter(frames, confidence, c=colors, s=14, zorder=3)
            self.axes.axhline(low, color="tab:red", linewidth=0.8, linestyle="--")
            self.axes.set_title(f"object {object_id}: red below {low:.2f}, blue pinned, black evicted", fontsize=8)
        self.axes.set_xlabel("slice", fontsize=8)
        self.axes.set_ylabel("confidence", fontsize=8)
        self.axes.set_ylim(0, 1.02)
        self.axes.tick_params(labelsize=7)
        self.canvas.draw_idle()

    # actions ---------------------------------------------------------------------------
    def _selection_changed(self) -> None:
        entries = self.selected_entries()
        self._update_buttons()
        if len(entries) != 1 or entries[0].source is not EntrySource.SESSION:
            self.attends.setText("")
            return
        entry = entries[0]
        self.state.go_to_frame(entry.frame)
        try:
            view = self.session.memory_view(entry.object_id, entry.frame, entry.reverse)
            frames = view.attended_frames(entry.frame, entry.reverse, self.session.model.sam)
        except _USER_ERRORS as exc:
            self.attends.setText(str(exc))
            return
        self.attends.setText(
            f"Slice {entry.frame} of object {entry.object_id}, re-propagated now, would attend to slices "
            f"{', '.join(map(str, frames)) or 'none'}."
        )

    def set_status(self, status: EntryStatus) -> None:
        """Pin, evict or restore the selected entries; errors are shown, never raised."""
        entries = self.selected_entries()
        if self.session is None or not entries:
            self._say("Select entries in the table first.")
            return
        action = {EntryStatus.PINNED: self.session.pin, EntryStatus.EVICTED: self.session.evict,
                  EntryStatus.AUTO: self.session.restore}[status]
        errors = []
        for entry in entries:
            try:
                action(entry.object_id, entry.frame)
            except _USER_ERRORS as exc:
                errors.append(str(exc).strip("'\""))
        self.state.memory_changed.emit()  # refreshes this table too
        self._say(" ".join([*errors, self._stale_message()]))

    def _stale_message(self) -> str:
        stale = sum(len(frames) for frames in self.session.stale.values()) if self.session else 0
        return f"{stale} slices need re-propagation." if stale else "Nothing needs re-propagation."

    def least_confident_entry(self) -> MemoryEntry | None:
        entries = [e for e in self._rows if e.source is EntrySource.SESSION]
        return min(entries, key=lambda e: e.confidence) if entries else None

    def go_to_least_confident(self) -> None:
        entry = self.least_confident_entry()
        if entry is None:
            self._say("No segmented slice yet.")
            return
        self.state.go_to_frame(entry.frame)
        self._say(f"Slice {entry.frame} (object {entry.object_id}) has the lowest confidence, {entry.confidence:.3f}.")

    def _policy_choice_changed(self, name: str) -> None:
        for widget in (self.min_iou, self.min_object_score):
            widget.setEnabled(name == "confidence")

    def apply_policy(self) -> None:
        if self.session is None:
            return
        name = self.policy_choice.currentText()
        options = {}
        if name == "confidence":
            options = {"min_iou": self.min_iou.value(), "min_object_score": self.min_object_score.value()}
        with self.session.lock:
            self.session.set_policy(name, **options)
        self.state.memory_changed.emit()
        self._say(f"Memory policy: {name}. {self._stale_message()}")

    # feedback --------------------------------------------------------------------------
    def _say(self, message: str) -> None:
        self.status.setText(message)

    def _update_buttons(self) -> None:
        has_session = self.session is not None
        has_selection = bool(self.table.selectionModel().selectedRows())
        for button in (self.pin_button, self.evict_button, self.restore_button):
            button.setEnabled(has_selection)
        stale = has_session and any(self.session.stale.values())
        self.repropagate_button.setEnabled(bool(stale))
        for widget in (self.least_confident_button, self.apply_policy_button, self.policy_choice):
            widget.setEnabled(has_session)
        hint = "Segment something first: the entries appear here as slices are segmented."
        if not has_session:
            self._say(hint)
        elif self.status.text() == hint:
            self._say(self._stale_message())
