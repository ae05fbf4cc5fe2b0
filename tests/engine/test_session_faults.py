"""Session calls a user or a GUI gets wrong, or makes at awkward moments: objects changed
between the frames of a running propagation, and careless arguments."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samed2.engine import FramePrompt, Session


def click(row=30.0, col=30.0):
    return FramePrompt(np.array([[row, col]]), [1])


def masks_of(results, object_id) -> dict[int, np.ndarray]:
    return {r.frame: r.objects[object_id].mask for r in results if object_id in r.objects}


@pytest.fixture(scope="module")
def alone(small_model, array) -> dict[int, np.ndarray]:
    """Object 2's masks, propagated both ways from frame 3 with no other object around."""
    session = Session(small_model, array)
    session.segment_frame(3, session.add_object(2), click(30, 32))
    return masks_of(session.propagate("both", limits=(0, 6)), 2)


def remove_first(session):
    session.remove_object(1)


def remove_both(session):
    session.remove_object(1)
    session.remove_object(2)


def remove_and_add_again(session):
    session.remove_object(1)
    session.segment_frame(5, session.add_object(1), click(30, 36))


def add_another(session):
    session.segment_frame(5, session.add_object(3), click(30, 36))


CHANGES = [remove_first, remove_both, remove_and_add_again, add_another]


@pytest.mark.parametrize("after", [1, 4], ids=["forward pass", "backward pass"])
@pytest.mark.parametrize("change", CHANGES)
def test_objects_change_between_frames_of_a_run(small_model, array, alone, change, after):
    """As the GUI does: the worker calls next(), the user removes or adds an object between two
    frames. The run goes on for the objects it still has; the others keep their results."""
    session = Session(small_model, array)
    session.segment_frame(3, session.add_object(1), click(30, 32))
    session.segment_frame(3, session.add_object(2), click(30, 32))
    run = session.propagate("both", limits=(0, 6))
    results = [next(run) for _ in range(after)]
    change(session)
    results += list(run)
    if 2 in session.object_ids:
        assert masks_of(results, 2).keys() == alone.keys()
        assert all(np.array_equal(mask, alone[f]) for f, mask in masks_of(results, 2).items())
    else:
        assert len(results) == after  # nothing left to track: the run ends
    if change in (remove_and_add_again, add_another):  # a new object is not part of the run
        new = 1 if change is remove_and_add_again else 3
        assert session.memories[new].tracked == {} and session.result(5).objects[new].mask.any()
    if session.object_ids:  # and the session propagates again
        assert list(session.propagate("forward", limits=(0, 6)))


def test_an_object_removed_during_repropagation_leaves_the_others_running(small_model, array, alone):
    session = Session(small_model, array)
    for object_id in (1, 2):
        session.segment_frame(3, session.add_object(object_id), click(30, 32))
    list(session.propagate("both", limits=(0, 6)))
    for object_id in (1, 2):
        session.segment_frame(5, object_id, click(30, 36))
    run = session.repropagate()
    next(run)
    session.remove_object(1)
    rest = list(run)
    assert rest and all(set(r.objects) == {2} for r in rest)
    assert not session.stale[2]


# careless arguments: refused before any work, with the package's errors -------------------

from napari_samed2.errors import FrameError, ObjectError, PromptError, SessionError  # noqa: E402

from tests.engine.conftest import FRAMES  # noqa: E402

BAD_FRAMES = {
    "fraction": (2.5, "whole number.*int\\(round\\(2.5\\)\\)"),
    "float that is whole": (2.0, "whole number.*got 2.0"),
    "numpy float": (np.float32(1), "whole number"),
    "string": ("3", "whole number.*got '3'"),
    "bool": (True, "whole number"),
    "none": (None, "whole number"),
    "negative": (-1, "frame -1 is outside the volume's 12 frames \\(0 to 11\\)"),
    "past the end": (FRAMES, "frame 12 is outside"),
}

BAD_IDS = {
    "string": ("1", ObjectError, "positive whole numbers.*got '1'"),
    "fraction": (1.5, ObjectError, "positive whole numbers"),
    "float that is whole": (1.0, ObjectError, "positive whole numbers"),
    "zero": (0, ObjectError, "positive whole numbers.*got 0"),
    "negative": (-2, ObjectError, "positive whole numbers"),
    "bool": (True, ObjectError, "positive whole numbers"),
    "missing": (99, KeyError, "no object 99; objects are \\[1\\]"),
}


@pytest.fixture
def session(small_model, array):
    session = Session(small_model, array)
    session.add_object()
    return session


def unchanged(session) -> bool:
    """Nothing was computed, stored or recorded for undo by a refused call."""
    return (
        session.frames_encoded == 0 and session.object_ids == [1]
        and not session.prompts[1] and not session.memories[1].pending
        and [s.description for s in session.history.undo_steps] == ["add object 1"]
    )


@pytest.mark.parametrize("frame, message", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_bad_frames_are_refused(session, frame, message):
    with pytest.raises(FrameError, match=message) as info:
        session.segment_frame(frame, 1, click())
    assert isinstance(info.value, IndexError)  # what callers caught before
    if frame is not None:  # start=None is the default: the earliest prompt
        with pytest.raises(FrameError, match=message):
            list(session.propagate("forward", start=frame))
    with pytest.raises(FrameError, match=message):
        list(session.propagate("forward", limits=(0, frame)))
    with pytest.raises(FrameError, match=message):
        session.memory_view(1, frame)
    assert unchanged(session)


@pytest.mark.parametrize("object_id, kind, message", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_bad_object_ids_are_refused(session, object_id, kind, message):
    calls = [
        lambda: session.segment_frame(0, object_id, click()),
        lambda: session.remove_object(object_id),
        lambda: session.clear_prompt(0, object_id),
        lambda: session.pin(object_id, 0),
        lambda: session.memory_entries(object_id),
        lambda: list(session.propagate(object_ids=[object_id])),
    ]
    for call in calls:
        with pytest.raises(ObjectError, match=message) as info:
            call()
        assert isinstance(info.value, kind) and message.split(".*")[0].replace("\\", "") in str(info.value)
    if kind is ObjectError:  # malformed ids are refused by add_object too, as ValueError
        with pytest.raises(ValueError, match=message):
            session.add_object(object_id)
    assert unchanged(session)


def test_an_id_that_is_taken_is_refused(session):
    with pytest.raises(ObjectError, match="object 1 exists already; add_object\\(\\) without an id"):
        session.add_object(1)
    assert session.add_object(np.int64(5)) == 5 and type(session.object_ids[-1]) is int


@pytest.mark.parametrize(
    "prompt",
    [{"points": [[1, 2]]}, np.array([[1.0, 2.0]]), None, [[30, 30]]],
    ids=["dict", "array", "none", "list"],
)
def test_a_prompt_that_is_not_a_frame_prompt_is_refused(session, prompt):
    with pytest.raises(PromptError, match="must be a FramePrompt, e.g. FramePrompt.clicks"):
        session.segment_frame(0, 1, prompt)
    assert unchanged(session)


BAD_PROPAGATIONS = {
    "unknown direction": (dict(direction="fwd"), SessionError, "'forward', 'backward' or 'both', not 'fwd'"),
    "direction as a list": (dict(direction=["forward"]), SessionError, "'forward', 'backward' or 'both'"),
    "one limit": (dict(limits=(3,)), SessionError, "two frames \\(first, last\\)"),
    "limits as a string": (dict(limits="0,5"), SessionError, "two frames"),
    "limits as a number": (dict(limits=5), SessionError, "two frames"),
    "limits reversed": (dict(limits=(6, 2)), SessionError, "first <= last"),
    "start outside limits": (dict(start=1, limits=(3, 8)), SessionError, "start frame 1 lies outside limits \\(3, 8\\)"),
    "one object id": (dict(object_ids=1), ObjectError, "list of object ids, e.g. \\[1, 2\\]"),
    "ids as a string": (dict(object_ids="12"), ObjectError, "list of object ids"),
    "a string among the ids": (dict(object_ids=[1, "2"]), ObjectError, "got '2'"),
}


@pytest.mark.parametrize("options, error, message", BAD_PROPAGATIONS.values(), ids=BAD_PROPAGATIONS.keys())
def test_bad_propagation_arguments_are_refused(session, options, error, message):
    session.prompts[1][4] = click()  # a prompt, so that only the argument can be wrong
    with pytest.raises(error, match=message):
        list(session.propagate(**options))
    assert session.frames_encoded == 0 and not session.memories[1].tracked


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(library_k=-1), "library_k .* whole number >= 0, got -1"),
        (dict(library_k=1.5), "library_k"),
        (dict(library_k=True), "library_k"),
        (dict(undo_steps=-1), "undo_steps .* whole number >= 0, got -1"),
        (dict(undo_bytes=2.5e8), "undo_bytes .* whole number >= 0, got 250000000.0"),
        (dict(policy="smart"), "unknown memory policy 'smart'; choose one of \\['confidence', 'stock'\\]"),
        (dict(policy=3), "policy must be one of"),
    ],
    ids=[
        "negative library_k", "fractional library_k", "bool library_k", "negative undo_steps", "float undo_bytes",
        "unknown policy", "not a policy",
    ],
)
def test_bad_session_options_are_refused(small_model, array, options, message):
    with pytest.raises(SessionError, match=message):
        Session(small_model, array, **options)


def test_numpy_integers_are_frames_and_ids(session):
    result = session.segment_frame(np.int64(3), np.int32(1), click())
    assert result.frame == 3 and type(result.frame) is int and 1 in result.objects
    assert list(session.prompts[1]) == [3] and type(list(session.prompts[1])[0]) is int
