"""The oracle: with the stock memory policy our engine equals sam2's own SAM2VideoPredictor.

Both run the same random-weight checkpoint (the very same module) on the same preprocessed
frame tensors with the same prompts. Since the engine performs sam2's operations in sam2's
order, we expect bit-identical low-resolution logits (``torch.equal``), hence identical masks;
no tolerance is needed, and any drift in the data path shows up here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samed2.engine import FramePrompt, Session, Volume
from tests.engine.oracle import stock_state, to_sam2_box, to_sam2_points

FRAMES, HEIGHT, WIDTH = 10, 72, 96  # non-square on purpose: coordinates must not be swapped


@pytest.fixture(scope="module")
def volume():
    """Two blobs drifting through the frames, plus noise."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    frames = []
    for z in range(FRAMES):
        blob_a = ((yy - 30 - z) / 14.0) ** 2 + ((xx - 28 - z) / 18.0) ** 2 < 1
        blob_b = ((yy - 45) / 10.0) ** 2 + ((xx - 70 + z) / 12.0) ** 2 < 1
        frames.append(180.0 * blob_a + 120.0 * blob_b + rng.normal(0, 25, (HEIGHT, WIDTH)))
    return Volume(np.stack(frames).astype(np.float32))


def _stock_logits(state, obj_idx: int) -> dict[int, torch.Tensor]:
    out = state["output_dict_per_obj"][obj_idx]
    return {**{f: o["pred_masks"] for f, o in out["non_cond_frame_outputs"].items()},
            **{f: o["pred_masks"] for f, o in out["cond_frame_outputs"].items()}}


def _assert_same(session: Session, state, obj_ids: list[int]) -> None:
    checked = 0
    for idx, obj_id in enumerate(obj_ids):
        stock = _stock_logits(state, idx)
        ours = session.memories[obj_id].entries
        assert sorted(ours) == sorted(stock), f"object {obj_id}: different frames were segmented"
        for frame, logits in stock.items():
            assert torch.equal(ours[frame].low_res_logits, logits), f"object {obj_id}, frame {frame}"
            stock_mask = torch.nn.functional.interpolate(
                logits, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False
            )[0, 0] > 0
            assert np.array_equal(session.result(frame).objects[obj_id].mask, stock_mask.cpu().numpy())
            checked += 1
    assert checked > 0


def _stock_propagate(sam, state, direction: str, start=None) -> None:
    if direction in ("forward", "both"):
        for _ in sam.propagate_in_video(state, start_frame_idx=start):
            pass
    if direction in ("backward", "both"):
        for _ in sam.propagate_in_video(state, start_frame_idx=start, reverse=True):
            pass


@pytest.mark.parametrize("direction", ["forward", "backward", "both"])
def test_one_object_with_points_matches_stock(tiny_model, volume, direction):
    points, labels = np.array([[34.0, 33.0], [60.0, 80.0]]), np.array([1, 0])
    session = Session(tiny_model, volume)
    obj = session.add_object()
    session.segment_frame(4, obj, FramePrompt(points, labels))
    list(session.propagate(direction))
    with stock_state(tiny_model, volume) as state, torch.inference_mode():
        tiny_model.sam.add_new_points_or_box(state, 4, obj, points=to_sam2_points(points), labels=labels)
        _stock_propagate(tiny_model.sam, state, direction)
        _assert_same(session, state, [obj])
    expected = {"forward": range(4, FRAMES), "backward": range(0, 5), "both": range(FRAMES)}[direction]
    assert sorted(session.memories[obj].entries) == list(expected)


def test_two_objects_with_points_and_a_box_match_stock(tiny_model, volume):
    """Both objects are prompted on one frame: stock sam2 cannot run float32 on the CPU when
    an object is prompted later than another (see test_session for ours doing it)."""
    box = (35.0, 56.0, 56.0, 84.0)  # row0, col0, row1, col1 around blob b on frame 6
    point = np.array([[37.0, 35.0]])
    session = Session(tiny_model, volume)
    a, b = session.add_object(), session.add_object()
    session.segment_frame(6, a, FramePrompt(point, [1]))
    session.segment_frame(6, b, FramePrompt(box=box))
    list(session.propagate("both"))
    with stock_state(tiny_model, volume) as state, torch.inference_mode():
        tiny_model.sam.add_new_points_or_box(state, 6, a, points=to_sam2_points(point), labels=np.array([1]))
        tiny_model.sam.add_new_points_or_box(state, 6, b, box=to_sam2_box(box))
        _stock_propagate(tiny_model.sam, state, "both")
        _assert_same(session, state, [a, b])
    # the two objects really are different outputs, so the comparison above is not vacuous
    frame = session.result(6)
    assert not np.array_equal(frame.objects[a].mask, frame.objects[b].mask)


def test_mask_prompt_matches_stock(tiny_model, volume):
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[20:45, 15:45] = True
    session = Session(tiny_model, volume)
    obj = session.add_object()
    session.segment_frame(3, obj, FramePrompt(mask=mask))
    list(session.propagate("both"))
    with stock_state(tiny_model, volume) as state, torch.inference_mode():
        tiny_model.sam.add_new_mask(state, 3, obj, mask)
        _stock_propagate(tiny_model.sam, state, "both")
        _assert_same(session, state, [obj])


def test_correction_mid_volume_matches_stock_partial_rerun(tiny_model, volume):
    """A correction click on a tracked frame; stock re-propagates from that frame with
    ``add_all_frames_to_correct_as_cond`` (the option that makes a corrected frame a
    conditioning frame, as ours does)."""
    first = FramePrompt(np.array([[31.0, 29.0]]), [1])
    correction = FramePrompt(np.array([[36.0, 34.0], [10.0, 10.0]]), [1, 0])
    session = Session(tiny_model, volume)
    obj = session.add_object()
    session.segment_frame(0, obj, first)
    list(session.propagate("forward"))
    before = {f: e.low_res_logits for f, e in session.memories[obj].entries.items()}
    session.segment_frame(5, obj, correction)
    assert session.stale[obj] == set(range(6, FRAMES))
    rerun = [r.frame for r in session.repropagate()]
    assert rerun == list(range(5, FRAMES))
    assert not session.stale[obj]
    for frame in range(5):  # frames before the correction were left as they were
        assert session.memories[obj].entries[frame].low_res_logits is before[frame]

    sam = tiny_model.sam
    sam.add_all_frames_to_correct_as_cond = True
    try:
        with stock_state(tiny_model, volume) as state, torch.inference_mode():
            sam.add_new_points_or_box(state, 0, obj, points=to_sam2_points(first.points), labels=first.labels)
            _stock_propagate(sam, state, "forward")
            sam.add_new_points_or_box(
                state, 5, obj, points=to_sam2_points(correction.points), labels=correction.labels
            )
            _stock_propagate(sam, state, "forward", start=5)
            _assert_same(session, state, [obj])
    finally:
        sam.add_all_frames_to_correct_as_cond = False
    changed = [f for f in range(6, FRAMES) if not torch.equal(before[f], session.memories[obj].entries[f].low_res_logits)]
    assert changed, "the correction should change the frames after it"
