"""Undo/redo of the engine: every kind of step, undone, gives back a session whose next
propagation is bit-identical to the one before the step; redone, the one after it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from napari_samed2.engine import EmbeddingCache, EntrySource, FramePrompt, Session
from napari_samed2.engine.library import LibraryEntry, MemoryLibrary
from napari_samed2.errors import HistoryError

FRAMES = 6


def click(row, col, positive=True):
    return FramePrompt(np.array([[row, col]], np.float32), [1 if positive else 0])


@pytest.fixture(scope="module")
def volume(array):
    return array[:FRAMES]


@pytest.fixture(scope="module")
def cache():
    """One embedding cache for every session here: each frame is encoded once."""
    return EmbeddingCache()


@pytest.fixture(scope="module")
def donor_entries(small_model, volume, cache):
    """Library entries from an earlier 'case', so that retrieval takes part in every session."""
    donor = Session(small_model, volume, cache=cache, library=MemoryLibrary())
    obj = donor.add_object()
    donor.segment_frame(0, obj, click(30, 25))
    list(donor.propagate("forward"))
    donor.add_to_library(obj, min_confidence=0.0, max_entries=3)
    return list(donor.library.entries)


def _tensor(t):
    return None if t is None else (t.dtype, tuple(t.shape), t.detach().float().cpu().numpy().tobytes())


def _entry(e):
    return (e.frame, e.conditioning, e.reverse, e.predicted_iou, e.object_score, e.status, e.source,
            *(_tensor(getattr(e, n)) for n in ("maskmem_features", "low_res_logits", "obj_ptr", "descriptor")))


def _prompt(p):
    return (p.points.tobytes(), p.labels.tobytes(), p.box, None if p.mask is None else p.mask.tobytes())


def fingerprint(session: Session):
    """Everything that decides the session's next results, by value, dict order included."""
    objects = []
    for object_id, memory in session.memories.items():
        objects.append((
            object_id,
            [(f, _entry(e)) for f, e in memory.entries.items()],
            sorted((f, _entry(e)) for f, e in memory.pending.items()),
            sorted(memory.tracked.items()),
            sorted((f, _prompt(p)) for f, p in session.prompts[object_id].items()),
            sorted(session.stale[object_id]),
            [(i, _entry(e)) for i, e in memory.library.items()],
        ))
    library = [] if session.library is None else [
        (_tensor(e.maskmem_features), _tensor(e.descriptor), e.predicted_iou, e.label) for e in session.library.entries
    ]
    policy = (session.policy.name, sorted(vars(session.policy).items()))
    return objects, library, policy


def next_propagation(session: Session):
    """What the user's next propagation gives: stale slices, then the whole volume."""
    masks = [(r.frame, o, r.objects[o].mask.tobytes()) for r in session.repropagate() for o in sorted(r.objects)]
    if any(session.prompts[o] for o in session.object_ids):
        masks += [(r.frame, o, r.objects[o].mask.tobytes()) for r in session.propagate("both") for o in sorted(r.objects)]
    return masks, fingerprint(session)


def baseline(model, volume, cache, donor_entries) -> Session:
    """Two objects propagated, a correction re-propagated, an evicted entry, library rows."""
    library = MemoryLibrary()
    library.entries = list(donor_entries)
    session = Session(model, volume, cache=cache, library=library)
    a, b = session.add_object(), session.add_object()
    session.segment_frame(1, a, click(30, 28))
    session.segment_frame(3, b, FramePrompt(box=(5.0, 55.0, 25.0, 78.0)))
    list(session.propagate("both"))
    session.segment_frame(4, a, FramePrompt(np.array([[30.0, 33.0], [5.0, 5.0]], np.float32), [1, 0]))
    session.evict(b, 5)
    list(session.repropagate())
    assert not any(session.stale.values())
    return session


def _library_row(session, object_id):
    return next(r.frame for r in session.memory_entries(object_id) if r.source is EntrySource.LIBRARY)


def _cancelled(session):
    frames = session.propagate("both")
    next(frames)
    next(frames)
    frames.close()


def _correct_slice_2(session):
    session.segment_frame(2, 1, click(31, 30, positive=False))


def _bounded_policy_and_a_new_click(session):
    session.set_policy("confidence", capacity=2)
    session.segment_frame(0, 2, click(15, 65))


STEPS: dict[str, tuple[Callable | None, Callable]] = {
    # kind: (what every session does first, the step under test)
    "correction click": (None, lambda s: s.segment_frame(2, 1, click(31, 30, positive=False))),
    "box on a new slice": (None, lambda s: s.segment_frame(0, 2, FramePrompt(box=(4.0, 50.0, 24.0, 75.0)))),
    "mask prompt": (None, lambda s: s.segment_frame(5, 1, FramePrompt(mask=np.pad(np.ones((10, 20), bool), ((25, 29), (30, 30)))))),
    "clear prompt": (None, lambda s: s.clear_prompt(4, 1)),
    "add object": (None, lambda s: s.add_object()),
    "remove object": (None, lambda s: s.remove_object(1)),
    "pin": (None, lambda s: s.pin(1, 2)),
    "evict": (None, lambda s: s.evict(1, 3)),
    "restore": (None, lambda s: s.restore(2, 5)),
    "evict a library row": (None, lambda s: s.evict(1, _library_row(s, 1))),
    "policy": (None, lambda s: s.set_policy("confidence", min_iou=0.2, capacity=3)),
    "add to library": (None, lambda s: s.add_to_library(2, min_confidence=0.0, max_entries=2)),
    "propagate": (_correct_slice_2, lambda s: list(s.propagate("both"))),
    "re-propagate": (_correct_slice_2, lambda s: list(s.repropagate())),
    "cancelled propagation": (_correct_slice_2, _cancelled),
    "propagate, bounded policy": (_bounded_policy_and_a_new_click, lambda s: list(s.propagate("forward"))),
}


@pytest.fixture(scope="module")
def untouched(small_model, volume, cache, donor_entries):
    """``make(prepare)`` builds a prepared baseline; ``before(prepare)`` is what one untouched
    gives (fingerprint, next propagation), computed once per preparation: the sessions are
    deterministic, which every comparison below relies on anyway."""

    def make(prepare):
        session = baseline(small_model, volume, cache, donor_entries)
        if prepare is not None:
            prepare(session)
        session.history.clear()
        return session

    measured = {}

    def before(prepare):
        if prepare not in measured:
            session = make(prepare)
            measured[prepare] = fingerprint(session), next_propagation(session)
        return measured[prepare]

    return make, before


@pytest.mark.parametrize("kind", list(STEPS))
def test_undo_and_redo_of_each_kind_of_step(kind, untouched):
    prepare, step = STEPS[kind]
    make, measure_before = untouched
    state_before, propagation_before = measure_before(prepare)
    after, undone, redone = make(prepare), make(prepare), make(prepare)
    step(after)
    state_after = fingerprint(after)
    assert state_after != state_before, "the step changed nothing: the test would prove nothing"

    step(undone)
    assert undone.history.can_undo and len(undone.history.undo_steps) == 1  # one step, a whole run included
    undone.undo()
    assert fingerprint(undone) == state_before
    assert not undone.history.can_undo and undone.history.can_redo

    step(redone)
    redone.undo()
    redone.redo()
    assert fingerprint(redone) == state_after

    assert next_propagation(undone) == propagation_before
    assert next_propagation(redone) == next_propagation(after)


def test_undo_back_to_an_empty_session_and_redo_everything(small_model, volume, cache, donor_entries):
    library = MemoryLibrary()
    library.entries = list(donor_entries)  # its rows appear in the session during the first run
    session = Session(small_model, volume, cache=cache, library=library)
    states = [fingerprint(session)]
    for step in (
        lambda s: s.add_object(),
        lambda s: s.segment_frame(2, 1, click(30, 30)),
        lambda s: list(s.propagate("both")),
        lambda s: s.segment_frame(4, 1, click(5, 5, positive=False)),
        lambda s: s.pin(1, 1),
        lambda s: list(s.repropagate()),
        lambda s: s.add_object(),
        lambda s: s.segment_frame(0, 2, click(15, 65)),
        lambda s: list(s.propagate("forward")),
    ):
        step(session)
        states.append(fingerprint(session))
    assert len(session.history.undo_steps) == len(states) - 1
    for expected in reversed(states[:-1]):
        assert session.undo() is not None
        assert fingerprint(session) == expected
    assert session.undo() is None and session._maskmem_pos_enc is None
    assert not session.memories
    for expected in states[1:]:
        session.redo()
        assert fingerprint(session) == expected
    assert session.redo() is None


def test_a_new_step_after_undo_drops_the_redo_steps(small_model, volume, cache):
    session = Session(small_model, volume, cache=cache)
    obj = session.add_object()
    session.segment_frame(2, obj, click(30, 30))
    session.undo()
    session.segment_frame(3, obj, click(30, 30))
    assert not session.history.can_redo
    assert session.history.next_undo.description == "clicks of object 1 on slice 3"


def test_a_bad_click_undone_no_longer_steers_the_model(small_model, array):
    """The trap of an output-only undo: click wrong, undo, re-propagate, and the click undone
    still steered the model. Now the masks are those of before the click."""
    session = Session(small_model, array)
    obj = session.add_object()
    session.segment_frame(0, obj, click(30, 26))
    list(session.propagate("forward"))
    good = session.labels()
    good_logits = {f: e.low_res_logits for f, e in session.memories[obj].entries.items()}

    bad = FramePrompt(np.array([[30.0, 33.0], [31.0, 35.0]], np.float32), [0, 0])  # negative clicks on the object
    session.segment_frame(4, obj, bad)
    list(session.repropagate())
    assert not np.array_equal(session.labels(), good), "the bad click should change the masks"

    session.undo()  # the re-propagation
    session.undo()  # the click
    assert not session.stale[obj] and 4 not in session.prompts[obj]
    list(session.repropagate())
    list(session.propagate("forward"))  # what the user runs next, whatever it is
    np.testing.assert_array_equal(session.labels(), good)
    for frame, logits in good_logits.items():
        assert torch.equal(session.memories[obj].entries[frame].low_res_logits, logits)

    # the same with the click undone at once, before any re-propagation
    session.segment_frame(4, obj, bad)
    session.undo()
    list(session.repropagate())
    np.testing.assert_array_equal(session.labels(), good)


def test_undo_is_refused_while_a_propagation_runs_and_a_cancelled_run_is_one_step(small_model, volume, cache):
    session = Session(small_model, volume, cache=cache)
    obj = session.add_object()
    session.segment_frame(0, obj, click(30, 25))
    before = fingerprint(session)
    frames = session.propagate("forward")
    next(frames)
    next(frames)
    with pytest.raises(HistoryError, match="while a propagation is running"):
        session.undo()
    frames.close()  # the user's Cancel
    assert sorted(session.memories[obj].tracked) == [0, 1]
    assert session.undo().description == "propagate forward from slice 0"
    assert fingerprint(session) == before


def test_a_click_during_a_propagation_is_its_own_step(small_model, volume, cache):
    session = Session(small_model, volume, cache=cache)
    obj = session.add_object()
    session.segment_frame(0, obj, click(30, 25))
    frames = session.propagate("forward")
    next(frames)
    other = session.add_object()
    session.segment_frame(3, other, click(15, 65))
    list(frames)
    descriptions = [s.description for s in session.history.undo_steps]
    assert descriptions == [
        "add object 1", "clicks of object 1 on slice 0", "propagate forward from slice 0",
        "add object 2", "clicks of object 2 on slice 3", "propagate forward from slice 0",
    ]
    for _ in range(3):
        session.undo()
    assert session.object_ids == [obj] and sorted(session.memories[obj].tracked) == [0]


OBJECT_CHANGES_MID_RUN = {
    # what the user does between two frames of a run: (the change, its undo steps)
    "remove one": (lambda s: s.remove_object(1), 1),
    "remove both": (lambda s: (s.remove_object(1), s.remove_object(2)), 2),
    "remove and add again": (lambda s: (s.remove_object(1), s.segment_frame(4, s.add_object(1), click(30, 34))), 3),
    "add another": (lambda s: s.segment_frame(4, s.add_object(3), click(15, 65)), 2),
}


@pytest.mark.parametrize("kind", list(OBJECT_CHANGES_MID_RUN))
def test_objects_removed_or_added_during_a_propagation_undo_and_redo_step_by_step(kind, small_model, volume, cache):
    """The run leaves a removed object at the next frame and never takes up an added one; the
    change is its own undo step between the run's frames before and after it, and undoing it
    gives the removed object back with the frames the run had tracked for it."""
    change, change_steps = OBJECT_CHANGES_MID_RUN[kind]
    session = Session(small_model, volume, cache=cache)
    session.segment_frame(2, session.add_object(1), click(30, 28))
    session.segment_frame(2, session.add_object(2), FramePrompt(box=(5.0, 55.0, 20.0, 78.0)))
    states = [fingerprint(session)]
    frames = session.propagate("both")
    next(frames)
    next(frames)
    states.append(fingerprint(session))
    change(session)
    states.append(fingerprint(session))
    list(frames)
    states.append(fingerprint(session))
    went_on = any(o in session.object_ids and session.memories[o].tracked for o in (1, 2))
    assert went_on == (kind != "remove both")  # the run ends when none of its objects is left
    if kind != "add another":  # object 1 is gone, or new and never tracked
        assert 1 not in session.object_ids or not session.memories[1].tracked
    else:
        assert not session.memories[3].tracked and sorted(session.memories[1].tracked) == list(range(FRAMES))
    descriptions = [s.description for s in session.history.undo_steps[4:]]  # after the two objects' prompts
    assert len(descriptions) == 1 + change_steps + went_on
    assert descriptions[0] == "propagate both from slice 2"
    assert (descriptions[-1] == "propagate both from slice 2") == went_on

    if went_on:
        session.undo()  # the run's frames after the change
    assert fingerprint(session) == states[2]
    for _ in range(change_steps):
        session.undo()
    assert fingerprint(session) == states[1]
    assert sorted(session.memories[1].tracked) == [2, 3]  # a removed object is back with its frames
    session.undo()  # the run's first frames
    assert fingerprint(session) == states[0]
    session.redo()
    assert fingerprint(session) == states[1]
    for _ in range(change_steps):
        session.redo()
    assert fingerprint(session) == states[2]
    if went_on:
        session.redo()
    assert fingerprint(session) == states[3] and session.redo() is None


def _retained_bytes(session: Session) -> int:
    """Measured independently of the history's own estimate: bytes of tensor storages that
    the history holds and the session does not."""
    from napari_samed2.engine.history import ObjectState

    def storages(value, out):
        if isinstance(value, ObjectState):
            for e in [*value.memory.entries.values(), *value.memory.pending.values()]:
                storages(e, out)
        elif value is not None and hasattr(value, "low_res_logits"):
            for name in ("maskmem_features", "low_res_logits", "obj_ptr", "descriptor"):
                t = getattr(value, name)
                if t is not None:
                    out[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    held: dict[int, int] = {}
    for step in session.history.undo_steps + session.history.redo_steps:
        for table in (step.entries, step.pending, step.objects):
            for change in table.values():
                storages(change.before, held)
                storages(change.after, held)
    live: dict[int, int] = {}
    for memory in session.memories.values():
        for e in [*memory.entries.values(), *memory.pending.values()]:
            storages(e, live)
    return sum(n for ptr, n in held.items() if ptr not in live)


def test_history_stays_under_its_caps_over_200_steps(small_model, volume, cache):
    cap = 3 * 2**20
    session = Session(small_model, volume, cache=cache, undo_steps=60, undo_bytes=cap)
    obj = session.add_object()
    session.segment_frame(0, obj, click(30, 25))
    list(session.propagate("forward"))
    for i in range(200):
        frame = 1 + i % (FRAMES - 1)
        if i % 4 == 3:
            list(session.repropagate())  # replaces entries: the old ones are kept for undo
        elif i % 4 == 2:
            pinnable = frame not in session.prompts[obj]  # a prompted frame is always attended to
            session.pin(obj, frame) if i % 8 == 2 and pinnable else session.restore(obj, frame)
        else:
            session.segment_frame(frame, obj, click(30 + i % 3, 25 + frame, positive=bool(i % 2)))
        assert session.history.nbytes <= cap
        assert _retained_bytes(session) <= cap
        assert len(session.history.undo_steps) <= 60
    assert session.history.dropped > 0 and "dropped" in session.history.note
    steps = len(session.history.undo_steps)
    assert 1 <= steps <= 60
    for _ in range(steps):  # every step that is kept can still be undone
        session.undo()
    assert session.undo() is None


def test_history_off_records_nothing(small_model, volume, cache):
    session = Session(small_model, volume, cache=cache, undo_steps=0)
    session.segment_frame(0, session.add_object(), click(30, 25))
    list(session.propagate("forward"))
    assert not session.history.can_undo and session.undo() is None
    assert "off" in session.history.note


def test_library_additions_are_undone_even_when_they_replaced_entries(small_model, volume, cache, donor_entries):
    library = MemoryLibrary(capacity=len(donor_entries))
    weak = [LibraryEntry(e.maskmem_features, e.descriptor, 0.0, "weak") for e in donor_entries]
    library.entries = list(weak)
    session = Session(small_model, volume, cache=cache, library=library)
    obj = session.add_object()
    session.segment_frame(0, obj, click(30, 25))
    list(session.propagate("forward"))
    kept = session.add_to_library(obj, min_confidence=0.0, max_entries=2)  # at capacity: replacements
    assert kept >= 1 and len(library) == len(weak)
    after = list(library.entries)
    assert sum(e.label == "weak" for e in after) < len(weak)
    session.undo()
    assert len(library) == len(weak) and all(a is b for a, b in zip(library.entries, weak))
    session.redo()
    assert all(a is b for a, b in zip(library.entries, after))


def test_saving_is_not_a_step_and_changes_nothing(small_model, volume, cache, tmp_path):
    session = Session(small_model, volume, cache=cache)
    obj = session.add_object()
    session.segment_frame(2, obj, click(30, 30))
    before = fingerprint(session)
    session.save(tmp_path / "case")
    assert fingerprint(session) == before and len(session.history.undo_steps) == 2
    loaded = Session.load(tmp_path / "case", small_model, volume)
    assert not loaded.history.can_undo
    assert next_propagation(loaded)[0] == next_propagation(session)[0]


def test_a_caller_step_that_adds_and_removes_an_object_undoes_cleanly(small_model, volume, cache):
    session = Session(small_model, volume, cache=cache)
    obj = session.add_object()
    session.segment_frame(0, obj, click(30, 25))
    before = fingerprint(session)
    session.begin_step("try an object and drop it")
    temporary = session.add_object()
    session.segment_frame(2, temporary, click(15, 65))
    session.remove_object(temporary)
    session.segment_frame(1, obj, click(30, 27))
    after = session.end_step()
    assert after.description == "try an object and drop it" and not after.objects
    state_after = fingerprint(session)
    session.undo()
    assert fingerprint(session) == before
    session.redo()
    assert fingerprint(session) == state_after
