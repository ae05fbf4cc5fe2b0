"""Session behaviour beyond the oracle: caching, corrections, cancel, bounded memory, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samed2.engine import EmbeddingCache, FramePrompt, Session, Volume
from napari_samed2.errors import PromptError

from tests.engine.conftest import FRAMES, HEIGHT, WIDTH


def click(row=30.0, col=30.0, positive=True):
    return FramePrompt(np.array([[row, col]]), [1 if positive else 0])


def test_embeddings_are_computed_once_per_frame(small_model, array):
    session = Session(small_model, array)
    obj = session.add_object()
    session.segment_frame(5, obj, click())
    session.segment_frame(5, obj, FramePrompt(np.array([[30.0, 30.0], [5.0, 5.0]]), [1, 0]))
    assert session.frames_encoded == 1
    list(session.propagate("both"))
    assert session.frames_encoded == FRAMES
    second = session.add_object()  # a new object reuses every cached embedding
    session.segment_frame(2, second, click(30, 60))
    list(session.propagate("both"))
    session.segment_frame(8, obj, click(31, 41))
    list(session.repropagate())
    assert session.frames_encoded == FRAMES


def test_a_small_memory_budget_spills_to_disk_and_still_avoids_recomputing(small_model, array):
    cache = EmbeddingCache(memory_bytes=1)  # keeps one frame in memory, the rest on disk
    session = Session(small_model, array, cache=cache)
    obj = session.add_object()
    session.segment_frame(0, obj, click(30, 26))
    list(session.propagate("forward"))
    assert cache.memory_used < 2 * 2**20
    session.segment_frame(6, obj, click(30, 37))
    list(session.repropagate())
    assert session.frames_encoded == FRAMES
    assert cache.stats.disk_hits >= FRAMES - 7


def test_persistent_cache_survives_a_new_session(small_model, array, tmp_path):
    first = Session(small_model, array, cache=EmbeddingCache(directory=tmp_path))
    first.segment_frame(3, first.add_object(), click())
    first.cache.flush()  # writes of GPU features run in the background: a second cache on the folder needs them done
    again = Session(small_model, array.copy(), cache=EmbeddingCache(directory=tmp_path))
    again.segment_frame(3, again.add_object(), click())
    # the position encodings come from the cached features' sizes: nothing is encoded
    assert again.frames_encoded == 0
    edited = array.copy()
    edited[3, 10, 10] += 1.0  # one voxel changed: a different frame, a different key
    other = Session(small_model, edited, cache=EmbeddingCache(directory=tmp_path))
    other.segment_frame(4, other.add_object(), click())
    other.segment_frame(3, other.add_object(), click())
    assert other.frames_encoded == 2


def test_correction_recomputes_only_frames_that_derive_from_it(small_model, array):
    session = Session(small_model, array)
    obj = session.add_object()
    session.segment_frame(6, obj, click(30, 37))
    list(session.propagate("both"))
    before = {f: e.low_res_logits for f, e in session.memories[obj].entries.items()}
    session.segment_frame(2, obj, FramePrompt(np.array([[30.0, 29.0], [60.0, 5.0]]), [1, 0]))
    # frames 0-1 were tracked backwards through frame 2; 3-5 came from frame 6, not from 2
    assert session.stale[obj] == {0, 1}
    assert [r.frame for r in session.repropagate()] == [2, 1, 0]
    for frame in range(3, FRAMES):
        assert session.memories[obj].entries[frame].low_res_logits is before[frame]
    assert not torch.equal(session.memories[obj].entries[1].low_res_logits, before[1])


def test_marking_the_object_absent_on_a_tracked_frame_sticks(small_model, array):
    """The fix for a tracker that follows another structure past its object's end: the frame
    says "absent" (sam2's empty-mask answer), and tracking from it carries that memory."""
    session = Session(small_model, array)
    obj = session.add_object()
    session.segment_frame(2, obj, click(30, 37))
    list(session.propagate("forward"))
    result = session.segment_frame(5, obj, FramePrompt.absent((HEIGHT, WIDTH)))
    assert not result.objects[obj].mask.any() and not result.objects[obj].present
    assert session.stale[obj] == set(range(6, FRAMES))
    assert [r.frame for r in session.repropagate()] == list(range(5, FRAMES))
    entry = session.memories[obj].entries[5]
    assert entry.conditioning and entry.object_score < 0
    assert not session.result(5).objects[obj].mask.any()
    assert not session.labels()[5].any()


def test_cancelled_propagation_keeps_what_was_done(small_model, array):
    session = Session(small_model, array)
    obj = session.add_object()
    session.segment_frame(0, obj, click(30, 26))
    done = []
    for result in session.propagate("forward"):
        done.append(result.frame)
        if len(done) == 4:
            break
    assert sorted(session.memories[obj].entries) == [0, 1, 2, 3]
    assert session.result(3).objects[obj].mask.shape == (HEIGHT, WIDTH)
    assert session.result(9).objects == {}
    rest = [r.frame for r in session.propagate("forward", start=3)]
    assert rest == list(range(3, FRAMES))


def test_objects_prompted_on_different_frames_run_in_float32(small_model, array):
    """Stock sam2 raises a dtype error here on the CPU (no object pointer before a later
    prompt leaves only bfloat16 memories); the engine hands memory attention float32."""
    session = Session(small_model, array)
    a, b = session.add_object(), session.add_object()
    session.segment_frame(2, a, click(30, 30))
    session.segment_frame(9, b, click(30, 43))
    results = list(session.propagate("both"))
    assert {r.frame for r in results} == set(range(FRAMES))
    assert set(session.result(5).objects) == {a, b}


def test_limits_and_start(small_model, array):
    session = Session(small_model, array)
    obj = session.add_object()
    session.segment_frame(5, obj, click(30, 35))
    frames = [r.frame for r in session.propagate("both", limits=(3, 8))]
    assert frames == [5, 6, 7, 8, 5, 4, 3]
    with pytest.raises(PromptError, match="no prompt between frames 0 and 2"):
        list(session.propagate("forward", limits=(0, 2)))


def test_memory_kept_per_frame_is_what_attention_uses(small_model, array):
    """Per object and frame: bf16 memory features, a pointer and quarter-size logits."""
    session = Session(small_model, array)
    obj = session.add_object()
    session.segment_frame(0, obj, click(30, 26))
    list(session.propagate("forward"))
    entry = session.memories[obj].entries[7]
    size = small_model.image_size
    assert entry.maskmem_features.dtype == torch.bfloat16
    assert entry.maskmem_features.shape == (1, 64, size // 16, size // 16)
    assert entry.low_res_logits.shape == (1, 1, size // 4, size // 4)
    per_frame = sum(t.numel() * t.element_size() for t in (entry.maskmem_features, entry.low_res_logits, entry.obj_ptr))
    frame_tensor_bytes = 3 * size * size * 4  # what stock keeps per frame for the images alone
    assert per_frame < frame_tensor_bytes / 4


def test_bad_prompts_are_refused_before_any_work(small_model, array):
    session = Session(small_model, array)
    obj = session.add_object()
    with pytest.raises(PromptError, match="empty"):
        session.segment_frame(1, obj, FramePrompt())
    with pytest.raises(PromptError, match="outside the 64x80 frame"):
        session.segment_frame(1, obj, click(70, 10))
    with pytest.raises(PromptError, match="no area"):
        session.segment_frame(1, obj, FramePrompt(box=(10, 10, 10, 30)))
    with pytest.raises(PromptError, match="does not match"):
        session.segment_frame(1, obj, FramePrompt(mask=np.ones((10, 10), bool)))
    with pytest.raises(PromptError, match="no object has a prompt"):
        list(session.propagate())
    with pytest.raises(IndexError, match="outside the volume"):
        session.segment_frame(FRAMES, obj, click())
    assert session.frames_encoded == 0 and not session.memories[obj].pending


def test_nan_voxels_are_reported_and_do_not_poison_the_result(small_model, array):
    damaged = array.copy()
    damaged[4, :5, :5] = np.nan
    session = Session(small_model, damaged)
    obj = session.add_object()
    with pytest.warns(RuntimeWarning, match="25 non-finite"):
        result = session.segment_frame(4, obj, click(30, 33))
    assert torch.isfinite(session.memories[obj].latest(4).low_res_logits).all()
    assert result.objects[obj].mask.any()


def test_rgb_video_and_other_axes(small_model):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (5, 48, 64, 3), dtype=np.uint8)
    session = Session(small_model, video)
    assert session.volume.rgb and session.volume.frame_shape == (48, 64)
    session.segment_frame(0, session.add_object(), click(20, 20))
    sideways = Session(small_model, rng.normal(size=(20, 30, 40)).astype(np.float32), axis=2)
    assert len(sideways.volume) == 40 and sideways.volume.frame_shape == (20, 30)
    four_d = Volume(rng.normal(size=(2, 6, 30, 40)), axis=1, fixed={0: 1})
    assert len(four_d) == 6 and four_d.raw_frame(2).shape == (30, 40)


def test_labels_volume_has_object_ids(small_model, array):
    session = Session(small_model, array)
    a, b = session.add_object(), session.add_object()
    session.segment_frame(0, a, click(30, 26))
    session.segment_frame(0, b, FramePrompt(box=(2, 60, 20, 78)))
    labels = session.labels()
    assert labels.shape == array.shape and labels.dtype == np.uint16
    assert set(np.unique(labels[0])) <= {0, a, b} and (labels[0] == b).any()
    assert not labels[1:].any()  # nothing propagated yet


def test_clearing_a_prompt_turns_the_frame_back_into_a_tracked_one(small_model, array):
    session = Session(small_model, array)
    obj = session.add_object()
    session.segment_frame(0, obj, click(30, 26))
    list(session.propagate("forward"))
    session.segment_frame(5, obj, click(30, 36))
    list(session.repropagate())
    session.clear_prompt(5, obj)
    assert 5 not in session.prompts[obj] and not session.memories[obj].entries[5].conditioning
    assert session.stale[obj] == set(range(5, FRAMES))
    assert [r.frame for r in session.repropagate()] == list(range(5, FRAMES))
    with pytest.raises(ValueError, match="only prompt"):
        session.clear_prompt(0, obj)
    with pytest.raises(KeyError, match="no prompt on frame 3"):
        session.clear_prompt(3, obj)


def test_a_click_during_propagation_lands_between_frames(small_model, array):
    import threading

    session = Session(small_model, array)
    obj = session.add_object()
    session.segment_frame(0, obj, click(30, 26))
    frames = session.propagate("forward")
    next(frames)
    clicked = threading.Event()

    def click_later():
        session.segment_frame(8, session.add_object(), click(30, 40))
        clicked.set()

    worker = threading.Thread(target=click_later)
    with session.lock:  # hold the lock as a frame step would; the click must wait
        worker.start()
        assert not clicked.wait(0.3)
    assert clicked.wait(30)
    worker.join()
    assert len(list(frames)) == FRAMES - 1
    assert len(session.object_ids) == 2


def test_embeddings_in_flight_to_disk_are_served_from_memory(tmp_path):
    import torch

    cache = EmbeddingCache(memory_bytes=1, directory=tmp_path, background_writes=True)
    features = [torch.full((4, 4), float(i)) for i in range(3)]
    for i in range(3):
        cache.put(f"frame{i}", [features[i]])
    assert all(f"frame{i}" in cache for i in range(3))
    assert torch.equal(cache.get("frame0")[0], features[0])
    cache.flush()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"frame{i}.safetensors" for i in range(3)]
    reopened = EmbeddingCache(directory=tmp_path)
    assert torch.equal(reopened.get("frame2")[0], features[2]) and reopened.stats.disk_hits == 1


def test_features_on_the_cpu_are_spilled_without_a_background_thread():
    import torch

    cache = EmbeddingCache(memory_bytes=1)  # a temporary folder: only evicted frames go to disk
    for i in range(2):
        cache.put(f"frame{i}", [torch.full((4, 4), float(i))])
    assert not cache._writing  # nothing queued: the evicted frame is on disk already
    assert cache._path("frame0").exists() and not cache._path("frame1").exists()
    cache.close()
