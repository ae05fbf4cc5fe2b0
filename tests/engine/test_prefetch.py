"""Background encoding (engine side): nearest frames first, cached frames skipped, the
position re-read each step, masks unchanged, and the image encoder run outside the lock."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_samed2.engine import FramePrompt, Session
from napari_samed2.engine import prefetch
from napari_samed2.engine.prefetch import MAX_BATCH, Prefetcher, auto_batch, nearest, on_side_stream, slice_bytes
from napari_samed2.errors import SessionError

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


def test_frames_come_nearest_first_and_after_the_position_on_a_tie(small_model, array):
    assert nearest(5, {3, 4, 6, 7}) == 6 and nearest(5, {3, 7}) == 7 and nearest(0, {9, 2}) == 2
    session = Session(small_model, array)
    steps = list(Prefetcher(session, lambda: 5).steps())
    assert [s.frame for s in steps] == [5, 6, 4, 7, 3, 8, 2, 9, 1, 10, 0, 11]
    assert [s.done for s in steps] == list(range(1, FRAMES + 1)) and steps[-1].finished
    assert all(s.encoded == (s.frame,) for s in steps) and session.frames_encoded == FRAMES


def test_cached_frames_are_skipped(small_model, array):
    session = Session(small_model, array)
    obj = session.add_object()
    session.segment_frame(4, obj, click())
    list(session.propagate("forward", limits=(4, 6)))  # frames 4, 5, 6 encoded by tracking
    steps = list(Prefetcher(session, lambda: 5).steps())
    assert {s.frame for s in steps} == set(range(FRAMES))
    assert {s.frame for s in steps if not s.encoded} == {4, 5, 6}
    assert session.frames_encoded == FRAMES
    assert list(Prefetcher(session).steps())[-1].encoded == ()  # all cached: nothing to do


def test_moving_the_position_reprioritises_what_is_left(small_model, array):
    session = Session(small_model, array)
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


def test_masks_and_features_are_identical_with_and_without_background_encoding(small_model, array):
    plain = Session(small_model, array)
    labels, logits = segmented(plain)
    prefetched = Session(small_model, array)
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


def test_the_encoder_runs_without_the_lock_so_a_click_does_not_wait(small_model, array, monkeypatch):
    session = Session(small_model, array)
    obj = session.add_object()
    session.segment_frame(3, obj, click())  # frame 3 encoded
    inside, release = _blocking_encoder(small_model, monkeypatch)
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


def test_propagating_while_encoding_in_another_thread_gives_the_same_masks(small_model, array):
    reference, _ = segmented(Session(small_model, array))
    session = Session(small_model, array)
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


def test_a_bad_frame_is_refused(small_model, array):
    with pytest.raises(IndexError, match="outside"):
        Session(small_model, array).prefetch(FRAMES)


# batches -------------------------------------------------------------------------------------
RTOL, ATOL = 1e-4, 1e-5  # a batched convolution may sum in another order: float32 rounding only


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if not (a.any() or b.any()) else 2.0 * (a & b).sum() / (a.sum() + b.sum())


def _counting_encoder(model, monkeypatch) -> list[int]:
    """The batch size of every image-encoder run, in order."""
    sizes: list[int] = []
    forward = model.sam.forward_image

    def counted(images):
        sizes.append(len(images))
        return forward(images)

    monkeypatch.setattr(model.sam, "forward_image", counted)
    return sizes


def test_batched_features_match_one_at_a_time_and_so_do_the_masks(small_model, array, monkeypatch):
    single = Session(small_model, array)
    list(Prefetcher(single, lambda: 5, batch=1).steps())
    batched = Session(small_model, array)
    sizes = _counting_encoder(small_model, monkeypatch)
    steps = list(Prefetcher(batched, lambda: 5, batch=4).steps())
    assert sizes == [4, 4, 4] and [s.frames for s in steps] == [(5, 6, 4, 7), (3, 8, 2, 9), (1, 10, 0, 11)]
    assert [s.encoded for s in steps] == [tuple(s.frames) for s in steps] and batched.frames_encoded == FRAMES
    for f in range(FRAMES):
        mine, theirs = single.cache.get(single.cache_key(f)), batched.cache.get(batched.cache_key(f))
        assert all(torch.allclose(a, b, rtol=RTOL, atol=ATOL) for a, b in zip(mine, theirs, strict=True))
    labels, _ = segmented(single)
    labels_batched, _ = segmented(batched)
    assert batched.frames_encoded == FRAMES and sizes == [4, 4, 4]  # tracking used the batched features
    assert labels.any() and all(_dice(labels[f] > 0, labels_batched[f] > 0) >= 0.99 for f in range(FRAMES))


def test_a_batch_skips_cached_frames_and_every_frame_comes_once(small_model, array, monkeypatch):
    session = Session(small_model, array)
    obj = session.add_object()
    session.segment_frame(4, obj, click())
    list(session.propagate("forward", limits=(4, 6)))  # frames 4, 5, 6 encoded by tracking
    sizes = _counting_encoder(small_model, monkeypatch)
    steps = list(Prefetcher(session, lambda: 5, batch=4).steps())
    visited = [f for s in steps for f in s.frames]
    assert sorted(visited) == list(range(FRAMES))  # each frame exactly once
    assert steps[0].frames == (5, 6, 4, 7) and steps[0].encoded == (7,)  # the cached three not encoded again
    assert not {4, 5, 6} & {f for s in steps for f in s.encoded}
    assert sum(sizes) == FRAMES - 3 and max(sizes) <= 4 and session.frames_encoded == FRAMES


def test_auto_is_one_slice_a_batch_on_a_cpu(small_model, array):
    assert auto_batch(small_model) == 1
    prefetcher = Prefetcher(Session(small_model, array), lambda: 5)
    assert prefetcher.batch == "auto"
    assert all(len(s.frames) == 1 and s.encoded == s.frames for s in prefetcher.steps())


def test_auto_on_cuda_takes_half_the_free_memory_up_to_the_cap(monkeypatch):
    model = SimpleNamespace(device=torch.device("cuda", 0), image_size=1024, sam=SimpleNamespace(hidden_dim=256))
    per_slice = 256 * (256**2 + 128**2 + 64**2) * 4 * (1 + prefetch.ACTIVATION_FACTOR)
    assert slice_bytes(model) == per_slice
    free = [0]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free[0], 141 * 2**30))
    for free_bytes, expected in ((10 * per_slice + 1, 5), (per_slice, 1), (0, 1), (1000 * per_slice, MAX_BATCH)):
        free[0] = free_bytes
        assert auto_batch(model) == expected


@pytest.mark.parametrize("batch", [0, -2, "x", 2.0, True, None])
def test_a_bad_batch_is_refused(small_model, array, batch):
    with pytest.raises(SessionError, match="batch must be"):
        Prefetcher(Session(small_model, array), batch=batch)


class _FakeStream:
    def __init__(self, log: list, name: str):
        self.log, self.name = log, name

    def wait_stream(self, other):
        self.log.append(("wait", self.name, other.name))

    def synchronize(self):
        self.log.append(("synchronize", self.name))


class _FakeTensor:
    def __init__(self, log: list, name: str):
        self.log, self.name = log, name

    def record_stream(self, stream):
        self.log.append(("record", self.name, stream.name))


def test_the_side_stream_finishes_before_handing_over_and_records_the_reader(monkeypatch):
    """The CUDA calls of on_side_stream, in order, with fakes (no GPU here): the work on the
    side stream, its synchronisation, then each output recorded for the default stream."""
    log: list = []
    default = _FakeStream(log, "default")
    monkeypatch.setattr(prefetch, "_STREAMS", {})
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: _FakeStream(log, "side"))
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device: default)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: default)
    current = [default]

    class on_stream:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            current.append(self.stream)

        def __exit__(self, *exc):
            current.pop()

    monkeypatch.setattr(torch.cuda, "stream", on_stream)

    def work():
        log.append(("work on", current[-1].name))
        return [_FakeTensor(log, "a"), _FakeTensor(log, "b")]

    out = on_side_stream(torch.device("cuda", 0), work, lambda tensors: tensors)
    assert [t.name for t in out] == ["a", "b"]
    assert log == [("wait", "side", "default"), ("work on", "side"), ("synchronize", "side"),
                   ("record", "a", "default"), ("record", "b", "default")]
    log.clear()
    on_side_stream(torch.device("cuda", 0), work, lambda tensors: tensors)
    assert log[0] == ("wait", "side", "default") and len(prefetch._STREAMS) == 1  # the same stream again


def test_off_cuda_the_work_just_runs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Stream", None)  # any CUDA call would fail
    assert on_side_stream(torch.device("cpu"), lambda: [1, 2], lambda out: out) == [1, 2]
