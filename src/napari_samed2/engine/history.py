"""Undo and redo for a :class:`~napari_samed2.engine.session.Session`, as differences.

Every user step (a prompt, clearing one, adding or removing an object, pin / evict / restore,
a policy change, a propagation, adding to the library) is recorded as a :class:`Step`: for each
``(object, frame)`` key it touched, the value before and the value after, and nothing else.
Values are held by reference: memory entries are never changed in place once stored (a pin
stores a changed copy, see :class:`~napari_samed2.engine.memory.MemoryEntry`), so keeping the
replaced entry costs only what the session would otherwise have freed, and undo puts back the
very objects, with their tensors, that were there. Dict order is restored too, since sam2
concatenates memories in the order it is given them.

The session opens a step around each change (:meth:`History.record`, under its lock) and calls
the :class:`Recorder` before it changes a key; the recorder keeps the first "before" of each key
and reads every "after" when the step ends. A propagation records one step per frame and merges
each into the previous one of the same run, so a run is one undo step however it ends (finished,
cancelled, failed), and nothing stays open between frames.

History is bounded: at most ``max_steps`` steps, and an estimate of the memory it keeps alive
(tensors of replaced values that the session no longer holds) under ``max_bytes``. The oldest
steps are dropped first; :attr:`History.dropped` and :attr:`History.note` say so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch

from napari_samed2.errors import HistoryError

if TYPE_CHECKING:
    from napari_samed2.engine.library import Placement
    from napari_samed2.engine.memory import MemoryEntry, MemoryPolicy, ObjectMemory
    from napari_samed2.engine.prompts import FramePrompt
    from napari_samed2.engine.session import Session

DEFAULT_MAX_STEPS = 100
DEFAULT_MAX_BYTES = 512 * 2**20

T = TypeVar("T")
Key = tuple[int, int]  # (object id, frame), or (object id, library index) for library rows


@dataclass(frozen=True)
class Change(Generic[T]):
    before: T
    after: T

    def value(self, forward: bool) -> T:
        return self.after if forward else self.before


@dataclass(frozen=True)
class ObjectState:
    """An object's containers in the session, held by reference while the object is removed."""

    memory: ObjectMemory
    prompts: dict[int, FramePrompt]
    stale: set[int]


@dataclass
class Step:
    """What one user step changed: per key, the value before and after (``None``: absent)."""

    description: str
    objects: dict[int, Change[ObjectState | None]] = field(default_factory=dict)
    object_order: Change[tuple[int, ...]] | None = None
    entries: dict[Key, Change[MemoryEntry | None]] = field(default_factory=dict)
    entry_order: dict[int, Change[tuple[int, ...]]] = field(default_factory=dict)
    pending: dict[Key, Change[MemoryEntry | None]] = field(default_factory=dict)
    tracked: dict[Key, Change[bool | None]] = field(default_factory=dict)
    prompts: dict[Key, Change[FramePrompt | None]] = field(default_factory=dict)
    stale: dict[Key, Change[bool]] = field(default_factory=dict)
    library_rows: dict[Key, Change[MemoryEntry | None]] = field(default_factory=dict)
    library_row_order: dict[int, Change[tuple[int, ...]]] = field(default_factory=dict)
    policy: Change[MemoryPolicy] | None = None
    pos_enc: Change[list[torch.Tensor] | None] | None = None
    library: list[Placement] = field(default_factory=list)  # in the order they happened
    tag: Any = None  # the caller's: the GUI ties its output-layer step to the engine's here
    run: object | None = None  # the propagation this step belongs to (its frames merge)
    bytes_by_unit: dict[tuple, tuple[int, int]] = field(default_factory=dict, repr=False)
    undo_bytes: int = field(default=0, repr=False)  # estimated bytes kept alive while undoable
    redo_bytes: int = field(default=0, repr=False)  # ... while redoable (what undo took out)

    _KEYED = ("objects", "entries", "entry_order", "pending", "tracked", "prompts", "stale",
              "library_rows", "library_row_order")
    _SINGLE = ("object_order", "policy", "pos_enc")

    @property
    def empty(self) -> bool:
        return not self.library and all(not getattr(self, n) for n in self._KEYED + self._SINGLE)

    @property
    def prompt_keys(self) -> set[Key]:
        """The ``(object, frame)`` prompts this step changed, whole objects included."""
        keys = set(self.prompts)
        for object_id, change in self.objects.items():
            for state in (change.before, change.after):
                if state is not None:
                    keys |= {(object_id, frame) for frame in state.prompts}
        return keys

    def merge(self, newer: Step) -> None:
        """Fold ``newer`` (which happened right after this step) into this one."""
        for name in self._KEYED:
            mine, theirs = getattr(self, name), getattr(newer, name)
            for key, change in theirs.items():
                if key in mine:
                    change = Change(mine[key].before, change.after)
                    if _same(change.before, change.after):
                        del mine[key]
                        continue
                mine[key] = change
        for name in self._SINGLE:
            mine, theirs = getattr(self, name), getattr(newer, name)
            if theirs is not None:
                change = theirs if mine is None else Change(mine.before, theirs.after)
                setattr(self, name, None if _same(change.before, change.after) else change)
        self.library += newer.library
        if newer.tag is not None:
            self.tag = newer.tag
        for unit in newer.bytes_by_unit:
            self.account(unit)

    def account(self, unit: tuple) -> None:
        """(Re)count the bytes of one accounting unit (see :func:`_unit_values`)."""
        undo, redo = self.bytes_by_unit.get(unit, (0, 0))
        self.bytes_by_unit[unit] = new = _unit_bytes(self, unit)
        self.undo_bytes += new[0] - undo
        self.redo_bytes += new[1] - redo


def _same(a, b) -> bool:
    if isinstance(a, (bool, tuple)) or a is None:
        return a == b
    return a is b


# recording ---------------------------------------------------------------------------------
class Recorder:
    """Collects one step: the session calls it before changing a key (first call wins)."""

    def __init__(self, session: Session, description: str):
        self._session = session
        self.description = description
        self._objects: dict[int, ObjectState | None] = {}
        self._object_order: tuple[int, ...] | None = None
        self._values: dict[str, dict[Key, Any]] = {n: {} for n in ("entries", "pending", "tracked", "prompts", "library_rows")}
        self._orders: dict[str, dict[int, tuple[int, ...]]] = {"entries": {}, "library_rows": {}}
        self._stale: dict[int, frozenset[int]] = {}
        self._policy: list = []
        self._pos_enc: list = []
        self._library: list[Placement] = []

    # before a change -----------------------------------------------------------------------
    def object(self, object_id: int) -> None:
        if object_id not in self._objects:
            self._objects[object_id] = _live_state(self._session, object_id)
        if self._object_order is None:
            self._object_order = tuple(self._session.memories)

    def entry(self, object_id: int, frame: int, before: MemoryEntry | None | object = ...) -> None:
        """Before ``entries[frame]`` changes; ``before`` when the change already happened."""
        self._value("entries", object_id, frame, before)

    def pending(self, object_id: int, frame: int) -> None:
        self._value("pending", object_id, frame)

    def tracked(self, object_id: int, frame: int) -> None:
        self._value("tracked", object_id, frame)

    def prompt(self, object_id: int, frame: int) -> None:
        self._value("prompts", object_id, frame)

    def library_row(self, object_id: int, index: int) -> None:
        self._value("library_rows", object_id, index)

    def stale(self, object_id: int) -> None:
        if object_id not in self._stale:
            self._stale[object_id] = frozenset(self._session.stale[object_id])

    def policy(self) -> None:
        if not self._policy:
            self._policy.append(self._session.policy)

    def pos_enc(self) -> None:
        if not self._pos_enc:
            self._pos_enc.append(self._session._maskmem_pos_enc)

    def library(self, placement: Placement) -> None:
        self._library.append(placement)

    def _value(self, kind: str, object_id: int, key: int, before=...) -> None:
        values = self._values[kind]
        if (object_id, key) in values:
            return
        state = _live_state(self._session, object_id)
        if before is ...:
            before = _read(state, kind, key)
        values[(object_id, key)] = before
        orders = self._orders.get(kind)
        if orders is not None and object_id not in orders and state is not None:
            orders[object_id] = tuple(_table(state, kind))

    # when the step ends ----------------------------------------------------------------------
    def seal(self) -> Step:
        session = self._session
        step = Step(self.description)
        for object_id, before in self._objects.items():
            after = _live_state(session, object_id)
            if not _same_state(before, after):
                step.objects[object_id] = Change(before, after)
        if self._object_order is not None and self._object_order != tuple(session.memories):
            step.object_order = Change(self._object_order, tuple(session.memories))
        for kind, values in self._values.items():
            target = getattr(step, kind)
            for (object_id, key), before in values.items():
                after = _read(self._state(object_id), kind, key)
                if not _same(before, after):
                    target[(object_id, key)] = Change(before, after)
        for kind, orders in self._orders.items():
            target = step.entry_order if kind == "entries" else step.library_row_order
            for object_id, before in orders.items():
                state = self._state(object_id)
                after = tuple(_table(state, kind)) if state is not None else ()
                if before != after:
                    target[object_id] = Change(before, after)
        for object_id, before in self._stale.items():
            state = self._state(object_id)
            after = state.stale if state is not None else set()
            for frame in before ^ after:
                step.stale[(object_id, frame)] = Change(frame in before, frame in after)
        if self._policy and self._policy[0] is not session.policy:
            step.policy = Change(self._policy[0], session.policy)
        if self._pos_enc and self._pos_enc[0] is not session._maskmem_pos_enc:
            step.pos_enc = Change(self._pos_enc[0], session._maskmem_pos_enc)
        step.library = list(self._library)
        for unit in _units(step):
            step.account(unit)
        return step

    def _state(self, object_id: int) -> ObjectState | None:
        """The object's containers now: in the session, or as it was removed in this step."""
        state = _live_state(self._session, object_id)
        return state if state is not None else self._objects.get(object_id)


class _NoRecorder(Recorder):
    """What the session talks to when history is off: it records nothing."""

    def __init__(self):
        pass

    def object(self, object_id): pass
    def entry(self, object_id, frame, before=...): pass
    def pending(self, object_id, frame): pass
    def tracked(self, object_id, frame): pass
    def prompt(self, object_id, frame): pass
    def library_row(self, object_id, index): pass
    def stale(self, object_id): pass
    def policy(self): pass
    def pos_enc(self): pass
    def library(self, placement): pass


NO_RECORDER = _NoRecorder()


def _live_state(session: Session, object_id: int) -> ObjectState | None:
    memory = session.memories.get(object_id)
    if memory is None:
        return None
    return ObjectState(memory, session.prompts[object_id], session.stale[object_id])


def _same_state(a: ObjectState | None, b: ObjectState | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.memory is b.memory and a.prompts is b.prompts and a.stale is b.stale


def _table(state: ObjectState, kind: str) -> dict:
    memory = state.memory
    return {
        "entries": memory.entries, "pending": memory.pending, "tracked": memory.tracked,
        "prompts": state.prompts, "library_rows": memory.library,
    }[kind]


def _read(state: ObjectState | None, kind: str, key: int):
    return None if state is None else _table(state, kind).get(key)


# applying ------------------------------------------------------------------------------------
def _apply(session: Session, step: Step, forward: bool) -> list[str]:
    """Put the session in the state before (``forward=False``) or after ``step``. Returns notes
    on what could not be restored (library entries another session changed since)."""
    for object_id, change in step.objects.items():
        state = change.value(forward)
        if state is not None:
            session.memories[object_id] = state.memory
            session.prompts[object_id] = state.prompts
            session.stale[object_id] = state.stale
    # (an object's keys are skipped where it does not exist: one added and removed again
    # within a step, whose other changes merged into it)
    for kind in ("entries", "pending", "tracked", "prompts", "library_rows"):
        for (object_id, key), change in getattr(step, kind).items():
            state = _live_state(session, object_id)
            if state is None:
                continue
            table, value = _table(state, kind), change.value(forward)
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
    for (object_id, frame), change in step.stale.items():
        if object_id not in session.stale:
            continue
        if change.value(forward):
            session.stale[object_id].add(frame)
        else:
            session.stale[object_id].discard(frame)
    for name, orders in (("entries", step.entry_order), ("library", step.library_row_order)):
        for object_id, change in orders.items():
            if object_id in session.memories:
                _reorder(getattr(session.memories[object_id], name), change.value(forward))
    for object_id, change in step.objects.items():
        if change.value(forward) is None:
            for table in (session.memories, session.prompts, session.stale):
                table.pop(object_id, None)
    if step.object_order is not None:
        for table in (session.memories, session.prompts, session.stale):
            _reorder(table, step.object_order.value(forward))
    if step.policy is not None:
        session.policy = step.policy.value(forward)
    if step.pos_enc is not None:
        session._maskmem_pos_enc = step.pos_enc.value(forward)
    return _apply_library(session, step.library, forward)


def _apply_library(session: Session, placements: list[Placement], forward: bool) -> list[str]:
    library, missing = session.library, 0
    if library is None or not placements:
        return []
    for placement in placements if forward else reversed(placements):
        new, old = (placement.added, placement.replaced) if forward else (placement.replaced, placement.added)
        if forward and old is None:
            library.entries.append(new)
        elif new is None:
            missing += not library.remove(old)
        else:
            missing += not library.swap(old, new)
    if missing:
        return [f"{missing} library entries had been replaced since (by another session?) and were left as they are"]
    return []


def _reorder(table: dict, order: tuple[int, ...]) -> None:
    if tuple(table) == tuple(order):
        return
    items = [(key, table[key]) for key in order if key in table]
    items += [(key, value) for key, value in table.items() if key not in set(order)]
    table.clear()
    table.update(items)


# memory accounting ---------------------------------------------------------------------------
def _units(step: Step) -> set[tuple]:
    units = {("frame", *key) for name in ("entries", "pending", "prompts") for key in getattr(step, name)}
    units |= {("library_row", *key) for key in step.library_rows}
    units |= {("object", object_id) for object_id in step.objects}
    if step.library:
        units.add(("library",))
    return units


def _unit_values(step: Step, unit: tuple) -> tuple[list, list]:
    """The values before and after the step of one accounting unit: a frame of an object
    (its entry, pending result and prompt, which share tensors), a library row, an object,
    or the library."""
    if unit[0] == "frame":
        key = unit[1:]
        changes = [getattr(step, n)[key] for n in ("entries", "pending", "prompts") if key in getattr(step, n)]
    elif unit[0] == "library_row":
        changes = [step.library_rows[unit[1:]]] if unit[1:] in step.library_rows else []
    elif unit[0] == "object":
        changes = [step.objects[unit[1]]] if unit[1] in step.objects else []
    else:
        return [p.replaced for p in step.library], [p.added for p in step.library]
    return [c.before for c in changes], [c.after for c in changes]


def _unit_bytes(step: Step, unit: tuple) -> tuple[int, int]:
    """(bytes only the values before hold, bytes only the values after hold), by storage."""
    before, after = _unit_values(step, unit)
    old, new = _storages(before), _storages(after)
    return sum(n for k, n in old.items() if k not in new), sum(n for k, n in new.items() if k not in old)


def _storages(values: Iterable) -> dict[tuple, int]:
    found: dict[tuple, int] = {}
    for value in values:
        for array in _arrays(value):
            if isinstance(array, torch.Tensor):
                storage = array.untyped_storage()
                found[(str(array.device), storage.data_ptr())] = storage.nbytes()
            else:
                base = array.base if array.base is not None else array
                found[("numpy", id(base))] = base.nbytes
    return found


def _arrays(value) -> Iterator[torch.Tensor | np.ndarray]:
    from napari_samed2.engine.library import LibraryEntry
    from napari_samed2.engine.memory import MemoryEntry
    from napari_samed2.engine.prompts import FramePrompt

    if isinstance(value, (MemoryEntry, LibraryEntry)):
        names = ("maskmem_features", "low_res_logits", "obj_ptr", "descriptor")
        yield from (t for t in (getattr(value, n, None) for n in names) if t is not None)
    elif isinstance(value, FramePrompt):
        yield from (a for a in (value.points, value.labels, value.mask) if a is not None)
    elif isinstance(value, ObjectState):
        memory = value.memory
        for entry in [*memory.entries.values(), *memory.pending.values(), *memory.library.values()]:
            yield from _arrays(entry)
        for prompt in value.prompts.values():
            yield from _arrays(prompt)


# the history -----------------------------------------------------------------------------------
class History:
    """A session's undo and redo stacks of :class:`Step`, bounded in steps and bytes.

    ``max_steps=0`` turns history off (nothing is recorded, nothing kept). The session holds
    its lock around every call; see :meth:`Session.undo <napari_samed2.engine.session.Session.undo>`.
    """

    def __init__(self, max_steps: int = DEFAULT_MAX_STEPS, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_steps < 0 or max_bytes < 0:
            raise ValueError("history limits cannot be negative")
        self.max_steps = max_steps
        self.max_bytes = max_bytes
        self.undo_steps: list[Step] = []
        self.redo_steps: list[Step] = []
        self.dropped = 0  # steps dropped to stay within the limits, since the session began
        self._recorder: Recorder | None = None
        self._group: Step | None = None

    @property
    def enabled(self) -> bool:
        return self.max_steps > 0

    @property
    def recorder(self) -> Recorder:
        """The open step's recorder (one that records nothing outside a step)."""
        return self._recorder or NO_RECORDER

    @property
    def can_undo(self) -> bool:
        return bool(self.undo_steps)

    @property
    def can_redo(self) -> bool:
        return bool(self.redo_steps)

    @property
    def next_undo(self) -> Step | None:
        return self.undo_steps[-1] if self.undo_steps else None

    @property
    def next_redo(self) -> Step | None:
        return self.redo_steps[-1] if self.redo_steps else None

    @property
    def nbytes(self) -> int:
        """Estimated bytes kept alive by the history (values the session no longer holds)."""
        return sum(s.undo_bytes for s in self.undo_steps) + sum(s.redo_bytes for s in self.redo_steps)

    @property
    def note(self) -> str:
        """Why older steps cannot be undone, or ``""``."""
        if not self.enabled:
            return "Undo history is off for this session."
        if not self.dropped:
            return ""
        return (
            f"The {self.dropped} oldest steps were dropped from the undo history to keep it within "
            f"{self.max_steps} steps and {self.max_bytes / 2**20:.0f} MiB."
        )

    def clear(self) -> None:
        self.undo_steps.clear()
        self.redo_steps.clear()

    # recording -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def record(self, session: Session, description: str, run: object | None = None) -> Iterator[Recorder]:
        """One step around a change of ``session`` (a step opened inside another joins it).
        Steps of the same ``run`` that follow each other merge into one."""
        if not self.enabled or self._recorder is not None:
            yield self.recorder
            return
        self._recorder = Recorder(session, description)
        try:
            yield self._recorder
        finally:
            step, self._recorder = self._recorder.seal(), None
            step.run = run
            self._add(step)

    def begin_group(self, description: str) -> None:
        """Make every step until :meth:`end_group` one step (the GUI's jobs)."""
        self.end_group()
        self._group = Step(description)

    def end_group(self, tag: Any = None) -> Step | None:
        """Close the group; it becomes a step if it changed anything or carries a ``tag``."""
        group, self._group = self._group, None
        if group is None or (group.empty and tag is None):
            return None
        group.tag = tag
        self._push(group)
        return group

    @property
    def group_open(self) -> bool:
        return self._group is not None

    def _add(self, step: Step) -> None:
        if step.empty:
            return
        if self._group is not None:
            self._group.merge(step)
            return
        top = self.next_undo
        if step.run is not None and top is not None and top.run is step.run and not self.redo_steps:
            top.merge(step)
            self._trim()
        else:
            self._push(step)

    def _push(self, step: Step) -> None:
        self.undo_steps.append(step)
        self.redo_steps.clear()
        self._trim()

    def _trim(self) -> None:
        while len(self.undo_steps) > self.max_steps:
            self._drop(self.undo_steps)
        while self.nbytes > self.max_bytes and len(self.undo_steps) > 1:
            self._drop(self.undo_steps)
        while self.nbytes > self.max_bytes and len(self.redo_steps) > 1:
            self._drop(self.redo_steps)

    def _drop(self, steps: list[Step]) -> None:
        steps.pop(0)  # the step farthest from now
        self.dropped += 1

    # moving ----------------------------------------------------------------------------------
    def undo(self, session: Session) -> Rewind | None:
        return self._move(session, self.undo_steps, self.redo_steps, forward=False)

    def redo(self, session: Session) -> Rewind | None:
        return self._move(session, self.redo_steps, self.undo_steps, forward=True)

    def _move(self, session: Session, source: list[Step], target: list[Step], forward: bool) -> Rewind | None:
        if self._recorder is not None or self._group is not None:
            raise HistoryError("a step is being recorded (a job is running): wait for it to end, then undo")
        if not source:
            return None
        step = source.pop()
        notes = _apply(session, step, forward)
        step.run = None  # a later run never merges into a step that was undone and redone
        target.append(step)
        self._trim()
        return Rewind(step, tuple(notes))


@dataclass(frozen=True)
class Rewind:
    """What :meth:`Session.undo` / :meth:`Session.redo` did: the step, and notes on what
    could not be restored."""

    step: Step
    notes: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        return self.step.description
