"""Converge-stop re-propagation: a re-run after a correction stops once the new masks
reproduce the earlier ones; the frames it kept stay stale, and a plain re-run finishes them
exactly as a full re-run would have."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samed2.engine import ConvergeStop, EmbeddingCache, FramePrompt, MemoryEntry, Session
from napari_samed2.errors import SessionError

from tests.engine.conftest import FRAMES


def click(row, col, positive=True):
    return FramePrompt(np.array([[row, col]], np.float32), [1 if positive else 0])


@pytest.fixture(scope="module")
def cache():
    return EmbeddingCache()


def corrected(model, array, cache) -> Session:
    """Object 1 propagated forward from slice 0, then a negative click on slice 3: slices
    4-11 are stale. On the random-weight model the re-run reproduces slices 4-6 closely
    (IoU > 0.99 with their earlier masks, < 1), so a converge-stop run ends there."""
    session = Session(model, array, cache=cache)
    obj = session.add_object()
    session.segment_frame(0, obj, click(30, 26))
    list(session.propagate("forward"))
    session.segment_frame(3, obj, click(2, 2, positive=False))
    assert session.stale[obj] == set(range(4, FRAMES))
    return session


def masks(session: Session) -> list[bytes]:
    return [session.result(f).objects[1].mask.tobytes() for f in range(FRAMES)]


def logits(session: Session) -> list[bytes]:
    return [session.memories[1].entries[f].low_res_logits.numpy().tobytes() for f in range(FRAMES)]


def test_without_converge_stop_every_stale_frame_is_recomputed(small_model, array, cache):
    full, default = corrected(small_model, array, cache), corrected(small_model, array, cache)
    assert [r.frame for r in full.repropagate()] == list(range(3, FRAMES))
    assert [r.frame for r in default.repropagate(converge=None)] == list(range(3, FRAMES))
    assert not full.stale[1] and not default.stale[1]
    assert logits(default) == logits(full)


def test_a_run_stops_once_masks_agree_and_keeps_the_rest_stale(small_model, array, cache):
    session = corrected(small_model, array, cache)
    earlier = dict(session.memories[1].entries)
    assert [r.frame for r in session.repropagate(ConvergeStop(iou=0.98, frames=3))] == [3, 4, 5, 6]
    assert session.stale[1] == set(range(7, FRAMES))  # the mark: a plain re-run finishes them
    for frame in range(7, FRAMES):
        assert session.memories[1].entries[frame] is earlier[frame]  # kept, not recomputed
    for frame in range(4, 7):
        assert session.memories[1].entries[frame] is not earlier[frame]
        assert not torch.equal(session.memories[1].entries[frame].low_res_logits, earlier[frame].low_res_logits)


def test_the_agreement_rule_decides_where_a_run_stops(small_model, array, cache):
    exact = corrected(small_model, array, cache)  # no recomputed frame is identical to before
    assert [r.frame for r in exact.repropagate(ConvergeStop(iou=1.0))] == list(range(3, FRAMES))
    assert not exact.stale[1]
    longer = corrected(small_model, array, cache)
    assert [r.frame for r in longer.repropagate(ConvergeStop(frames=5))] == list(range(3, 9))
    assert longer.stale[1] == set(range(9, FRAMES))


def test_a_plain_re_run_after_a_converged_one_equals_a_full_re_run(small_model, array, cache):
    full = corrected(small_model, array, cache)
    list(full.repropagate())
    session = corrected(small_model, array, cache)
    list(session.repropagate(ConvergeStop()))
    # it starts at the first kept frame, from the memory of the frames recomputed before it
    assert [r.frame for r in session.repropagate()] == list(range(7, FRAMES))
    assert not session.stale[1]
    assert logits(session) == logits(full)
    assert masks(session) == masks(full)


def test_undo_after_a_converged_re_run_gives_back_the_state_before_it(small_model, array, cache):
    session = corrected(small_model, array, cache)
    memory = session.memories[1]
    entries, tracked, stale = dict(memory.entries), dict(memory.tracked), set(session.stale[1])
    before = masks(session)
    list(session.repropagate(ConvergeStop()))
    after, after_stale = masks(session), set(session.stale[1])
    assert after != before
    session.undo()
    assert session.memories[1].entries == entries  # the very entries, identity compared
    assert session.memories[1].tracked == tracked and session.stale[1] == stale
    assert masks(session) == before
    session.redo()
    assert masks(session) == after and session.stale[1] == after_stale


def _entry(logits: torch.Tensor | None) -> MemoryEntry:
    return MemoryEntry(1, 0, False, False, 1.0, 1.0, logits, None)


def test_agreement_of_two_masks():
    rule = ConvergeStop(iou=0.5)
    square = torch.full((1, 1, 8, 8), -5.0)
    square[..., :4, :4] = 5.0
    half = torch.full((1, 1, 8, 8), -5.0)
    half[..., :4, :2] = 5.0
    empty = torch.full((1, 1, 8, 8), -5.0)
    assert rule.agrees(_entry(square), _entry(square.clone()), 0.0)
    assert rule.agrees(_entry(square), _entry(half), 0.0)  # IoU 0.5
    assert not ConvergeStop(iou=0.6).agrees(_entry(square), _entry(half), 0.0)
    assert rule.agrees(_entry(empty), _entry(empty.clone()), 0.0)  # two empty masks agree
    assert not rule.agrees(_entry(empty), _entry(square), 0.0)
    assert not rule.agrees(None, _entry(square), 0.0)  # nothing before: nothing to agree with
    assert not rule.agrees(_entry(square), _entry(square + 5.5), 0.0)  # the threshold makes the mask:
    assert rule.agrees(_entry(square), _entry(square + 5.5), 1.0)  # 0.5 outside the square is below 1


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"iou": 0.0}, "iou must be a number in"),
        ({"iou": 1.5}, "iou must be a number in"),
        ({"iou": "high"}, "iou must be a number in"),
        ({"iou": True}, "iou must be a number in"),
        ({"frames": 0}, "frames must be a whole number >= 1"),
        ({"frames": 2.5}, "frames must be a whole number >= 1"),
    ],
)
def test_bad_settings_are_refused_with_what_to_use(options, match):
    with pytest.raises(SessionError, match=match):
        ConvergeStop(**options)
