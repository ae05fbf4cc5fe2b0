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
def alone(tiny_model, array) -> dict[int, np.ndarray]:
    """Object 2's masks, propagated both ways from frame 3 with no other object around."""
    session = Session(tiny_model, array)
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
def test_objects_change_between_frames_of_a_run(tiny_model, array, alone, change, after):
    """As the GUI does: the worker calls next(), the user removes or adds an object between two
    frames. The run goes on for the objects it still has; the others keep their results."""
    session = Session(tiny_model, array)
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


def test_an_object_removed_during_repropagation_leaves_the_others_running(tiny_model, array, alone):
    session = Session(tiny_model, array)
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
