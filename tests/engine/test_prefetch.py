"""Background encoding (engine side): nearest frames first, cached frames skipped, the
position re-read each step, masks unchanged, and the image encoder run outside the lock."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_samed2.engine import FramePrompt, Session
from napari_samed2.engine.prefetch import Prefetcher, nearest

from tests.engine.conftest import FRAMES

WAIT_S = 60.0


def click(row=30.0, col=26.0):
    return FramePrompt(np.array([[row, col]]), [1])


def segmented(session: Session) -> tuple[np.ndarray, dict]:
    """Labels and the memory kept after a click on frame 4 and a propagation both ways."""
    obj = session.add_object()
    session.segment_frame(4, obj, click(30, 34))
    list(session.propagate("both"))
    return session.labels(), {f: e.low_res_logits for f, e in session.memories[obj].entries.items()}


def test_frames_come_nearest_first_and_after_the_position_on_a_tie(tiny_model, array):
    assert nearest(5, {3, 4, 6, 7}) == 6 and nearest(5, {3, 7}) == 7 and nearest(0, {9, 2}) == 2
    session = Session(tiny_model, array)
    steps = list(Prefetcher(session, lambda: 5).steps())
    assert [s.frame for s in steps] == [5, 6, 4, 7, 3, 8, 2, 9, 1, 10, 0, 11]
    assert [s.done for s in steps] == list(range(1, FRAMES + 1)) and steps[-1].finished
    assert all(s.encoded == (s.frame,) for s in steps) and session.frames_encoded == FRAMES


def test_cached_frames_are_skipped(tiny_model, array):
    session = Session(tiny_model, array)
    obj = session.add_object()
    session.segment_frame(4, obj, click())
    list(session.propagate("forward", limits=(4, 6)))  # frames 4, 5, 6 encoded by tracking
    steps = list(Prefetcher(session, lambda: 5).steps())
    assert {s.frame for s in steps} == set(range(FRAMES))
    assert {s.frame for s in steps if not s.encoded} == {4, 5, 6}
    assert session.frames_encoded == FRAMES
    assert list(Prefetcher(session).steps())[-1].encoded == ()  # all cached: nothing to do


def test_moving_the_position_reprioritises_what_is_left(tiny_model, array):
    session = Session(tiny_model, array)
    where = [2]
    prefetcher = Prefetcher(session, lambda: where[0])
    steps = prefetcher.steps()
    assert [next(steps).frame for _ in range(3)] == [2, 3, 1]
    where[0] = 10  # the user scrolled
    assert [next(steps).frame for _ in range(3)] == [10, 11, 9]
    where[0] = 99  # past the end: the last frame is nearest
    assert next(steps).frame == 8
    steps.close()  # a pause: a new iteration goes on with what is left
    assert [s.frame for s in prefetcher.steps()] == [7, 6, 5, 4, 0]


def test_masks_and_features_are_identical_with_and_without_background_encoding(tiny_model, array):
    plain = Session(tiny_model, array)
    labels, logits = segmented(plain)
    prefetched = Session(tiny_model, array)
    list(Prefetcher(prefetched, lambda: 7).steps())
    assert prefetched.frames_encoded == FRAMES
    labels_after, logits_after = segmented(prefetched)
    assert prefetched.frames_encoded == FRAMES  # tracking encoded nothing more
    assert labels.any() and np.array_equal(labels, labels_after)
    assert logits.keys() == logits_after.keys()
    assert all(torch.equal(logits[f], logits_after[f]) for f in logits)
    for f in range(FRAMES):
        mine, theirs = plain.cache.get(plain.cache_key(f)), prefetched.cache.get(prefetched.cache_key(f))
        assert all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(mine, theirs, strict=True))


def _blocking_encoder(model, monkeypatch):
    """The model's image encoder, held inside its first call until ``release`` is set."""
    inside, release = threading.Event(), threading.Event()
    forward = model.sam.forward_image

    def held(images):
        if not inside.is_set():
            inside.set()
            assert release.wait(WAIT_S)
        return forward(images)

    monkeypatch.setattr(model.sam, "forward_image", held)
    return inside, release


def test_the_encoder_runs_without_the_lock_so_a_click_does_not_wait(tiny_model, array, monkeypatch):
    session = Session(tiny_model, array)
    obj = session.add_object()
    session.segment_frame(3, obj, click())  # frame 3 encoded
    inside, release = _blocking_encoder(tiny_model, monkeypatch)
    done = []
    thread = threading.Thread(target=lambda: done.append(session.prefetch(7)))
    thread.start()
    try:
        assert inside.wait(WAIT_S)  # the background encode is inside the image encoder now
        assert session.lock.acquire(timeout=5)
        session.lock.release()
        session.segment_frame(3, obj, click(31, 27))  # a click on an encoded slice goes through
        session.segment_frame(7, obj, click())  # and one that encodes frame 7 itself, first
    finally:
        release.set()
        thread.join(WAIT_S)
    assert done == [()]  # its features were dropped: frame 7 was cached meanwhile
    assert session.frames_encoded == 3  # 3, 7 by the clicks, 7 by the background encode
    assert set(session.prompts[obj]) == {3, 7}


def test_propagating_while_encoding_in_another_thread_gives_the_same_masks(tiny_model, array):
    reference, _ = segmented(Session(tiny_model, array))
    session = Session(tiny_model, array)
    errors: list[BaseException] = []
    seen: list[int] = []

    def encode():
        try:
            seen.extend(s.frame for s in Prefetcher(session, lambda: FRAMES - 1).steps())
        except BaseException as exc:  # noqa: BLE001 (reported below, in the test's thread)
            errors.append(exc)

    thread = threading.Thread(target=encode)
    thread.start()
    labels, _ = segmented(session)
    thread.join(WAIT_S)
    assert not thread.is_alive() and not errors
    assert sorted(seen) == list(range(FRAMES))
    assert np.array_equal(labels, reference)
    assert all(session.cache_key(f) in session.cache for f in range(FRAMES))
    assert FRAMES <= session.frames_encoded <= 2 * FRAMES  # a frame may be encoded by both, none lost


def test_a_bad_frame_is_refused(tiny_model, array):
    with pytest.raises(IndexError, match="outside"):
        Session(tiny_model, array).prefetch(FRAMES)
