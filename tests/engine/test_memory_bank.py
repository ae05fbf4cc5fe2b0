"""The memory bank: confidence, policies, pin/evict/restore, saving, and the retrieval library."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from napari_samed2.engine import FramePrompt, Session
from napari_samed2.engine.library import LibraryEntry, MemoryLibrary, library_tokens_in, retrieval_score
from napari_samed2.engine.memory import ConfidencePolicy, EntrySource, EntryStatus, confidence_of
from napari_samed2.errors import CheckpointError, VolumeError

from tests.engine.conftest import FRAMES


def tracked_session(model, array, **options) -> tuple[Session, int]:
    session = Session(model, array, **options)
    obj = session.add_object()
    session.segment_frame(0, obj, FramePrompt(np.array([[30.0, 26.0]]), [1]))
    list(session.propagate("forward"))
    return session, obj


def logits(session, obj, frame):
    return session.memories[obj].entries[frame].low_res_logits.clone()


def test_confidence_formula():
    assert confidence_of(0.9, 0.0) == pytest.approx(0.45)
    assert confidence_of(0.9, 10.0) == pytest.approx(0.9, abs=1e-4)
    assert confidence_of(0.9, -10.0) < 1e-4  # sure it is absent: not trusted


def test_every_segmented_frame_is_listed(small_model, array):
    session, obj = tracked_session(small_model, array)
    rows = session.memory_entries()
    assert [r.frame for r in rows] == list(range(FRAMES))
    assert rows[0].conditioning and not rows[5].conditioning
    assert all(r.status is EntryStatus.AUTO and r.source is EntrySource.SESSION for r in rows)
    assert all(0.0 <= r.confidence <= 1.0 for r in rows)


def test_evict_and_pin_change_the_attended_frames_and_the_masks(small_model, array):
    session, obj = tracked_session(small_model, array)
    assert session.memory_view(obj, 9).attended_frames(9, False, small_model.sam) == [0, 3, 4, 5, 6, 7, 8]
    before = logits(session, obj, 9)
    session.evict(obj, 8)
    assert session.memory_view(obj, 9).attended_frames(9, False, small_model.sam) == [0, 3, 4, 5, 6, 7]
    assert session.stale[obj] == set(range(9, FRAMES))
    session.pin(obj, 1)
    assert 1 in session.memory_view(obj, 9).attended_frames(9, False, small_model.sam)
    assert sorted(r.frame for r in session.repropagate()) == list(range(2, FRAMES))
    assert not torch.equal(before, logits(session, obj, 9))
    assert session.memories[obj].entries[8].status is EntryStatus.EVICTED  # kept through the re-run
    session.restore(obj, 8)
    assert session.memories[obj].entries[8].status is EntryStatus.AUTO
    assert 8 in session.memory_view(obj, 9).attended_frames(9, False, small_model.sam)


def test_an_evicted_frame_no_longer_influences_later_frames(small_model, array):
    session, obj = tracked_session(small_model, array)
    session.evict(obj, 4)
    list(session.repropagate())
    after_evict = {f: logits(session, obj, f) for f in range(5, FRAMES)}
    # scramble the evicted memory: if anything still read it, later frames would change
    entry = session.memories[obj].entries[4]
    entry.maskmem_features = torch.randn_like(entry.maskmem_features.float()).to(torch.bfloat16)
    entry.obj_ptr = torch.randn_like(entry.obj_ptr)
    session.stale[obj] |= set(range(5, FRAMES))
    list(session.repropagate())
    for frame, expected in after_evict.items():
        assert torch.equal(logits(session, obj, frame), expected)


def test_the_last_prompted_frame_cannot_be_evicted_and_pins_are_limited(small_model, array):
    session, obj = tracked_session(small_model, array)
    with pytest.raises(ValueError, match="only prompted frame"):
        session.evict(obj, 0)
    stale = {o: set(f) for o, f in session.stale.items()}
    with pytest.raises(ValueError, match="prompted frames are always attended to"):
        session.pin(obj, 0)
    assert session.stale == stale and session.memories[obj].entries[0].status is EntryStatus.AUTO
    for frame in range(1, 7):
        session.pin(obj, frame)
    with pytest.raises(ValueError, match="restore one"):
        session.pin(obj, 7)
    with pytest.raises(KeyError, match="no memory entry"):
        session.pin(obj, 50)


def test_confidence_policy_skips_untrusted_frames_and_ranks_the_rest(small_model, array):
    session, obj = tracked_session(small_model, array)
    entries = session.memories[obj].entries
    for frame in range(1, FRAMES):
        entries[frame].predicted_iou = 0.9
        entries[frame].object_score = 5.0
    entries[8].predicted_iou = 0.2  # below min_iou
    entries[7].object_score = -1.0  # the model thinks the object is absent there
    entries[2].predicted_iou = 1.0
    entries[2].object_score = 12.0  # the most confident frame, far in the past
    session.set_policy("confidence", min_iou=0.5)
    assert session.stale[obj] == set(range(1, FRAMES))
    view = session.memory_view(obj, 10)
    attended = view.attended_frames(10, False, small_model.sam)
    assert 8 not in attended and 7 not in attended and 2 in attended
    assert len(attended) == 1 + small_model.sam.num_maskmem - 1  # the prompt + full slots
    # slots are filled nearest-first: the most recent slot holds the nearest trusted frame
    assert view.non_cond_frame_outputs[9].frame == 9
    assert max(f for f in range(FRAMES) if f not in (7, 8) and f < 10) == 9
    results = list(session.repropagate())
    assert {r.frame for r in results} == set(range(FRAMES))  # the stale frames, from the prompt on 0
    assert not session.stale[obj]


def test_confidence_policy_bounds_memory_per_object(small_model, array):
    session, obj = tracked_session(small_model, array, policy=ConfidencePolicy(capacity=5))
    kept = [e for e in session.memories[obj].entries.values() if e.maskmem_features is not None]
    assert len(kept) == 5
    assert session.memories[obj].entries[0].maskmem_features is not None  # prompts are never dropped
    assert len(session.memory_entries(obj)) == FRAMES  # results stay listed


def test_save_and_load_round_trip(small_model, array, tmp_path):
    session, obj = tracked_session(small_model, array, policy=ConfidencePolicy(min_iou=0.1))
    session.evict(obj, 5)
    session.pin(obj, 2)
    session.save(tmp_path / "case")
    loaded = Session.load(tmp_path / "case", small_model, array)
    assert loaded.policy == ConfidencePolicy(min_iou=0.1)
    assert loaded.stale == session.stale
    for a, b in zip(session.memory_entries(), loaded.memory_entries()):
        assert (a.frame, a.status, a.conditioning, a.predicted_iou) == (b.frame, b.status, b.conditioning, b.predicted_iou)
        assert torch.equal(a.low_res_logits, b.low_res_logits)
        assert torch.equal(a.maskmem_features, b.maskmem_features)
    np.testing.assert_array_equal(loaded.prompts[obj][0].points, session.prompts[obj][0].points)
    first = {r.frame: r.objects[obj].mask for r in session.repropagate()}
    second = {r.frame: r.objects[obj].mask for r in loaded.repropagate()}
    assert first.keys() == second.keys() and all(np.array_equal(first[f], second[f]) for f in first)
    with pytest.raises(VolumeError, match="different volume"):
        Session.load(tmp_path / "case", small_model, array[::-1].copy())


def _entry(descriptor, iou, label=""):
    return LibraryEntry(torch.zeros(1, 64, 4, 4, dtype=torch.bfloat16), torch.tensor(descriptor, dtype=torch.float16), iou, label)


def test_library_retrieval_follows_the_stated_score():
    library = MemoryLibrary()
    library.add(_entry([1.0, 0.0, 0.0], 0.50, "same direction"))
    library.add(_entry([0.7, 0.7, 0.0], 0.99, "45 degrees, better IoU"))
    library.add(_entry([-1.0, 0.0, 0.0], 1.00, "opposite: cosine clamped to 0"))
    query = torch.tensor([1.0, 0.0, 0.0])
    ranking = library.retrieve(query, 3)
    assert [i for i, _ in ranking] == [0, 1, 2]
    for index, score in ranking:
        assert score == pytest.approx(retrieval_score(query, library.entries[index]))
    assert ranking[2][1] == pytest.approx(1 / (1 + np.exp(-1.0)))


def test_library_replacement_rule_at_capacity():
    library = MemoryLibrary(capacity=2)
    library.add(_entry([1.0, 0.0], 0.6, "a"))
    library.add(_entry([0.0, 1.0], 0.6, "b"))
    assert not library.add(_entry([0.9, 0.1], 0.5, "worse than its nearest"))
    assert library.add(_entry([0.9, 0.1], 0.8, "better than its nearest"))
    assert [e.label for e in library.entries] == ["better than its nearest", "b"]


def test_library_save_load_and_official_bank_import(tmp_path):
    library = MemoryLibrary(capacity=4)
    library.add(_entry([1.0, 2.0], 0.7, "liver"))
    loaded = MemoryLibrary.load(library.save(tmp_path / "lib"))
    assert loaded.capacity == 4 and loaded.entries[0].label == "liver"
    assert torch.equal(loaded.entries[0].descriptor, library.entries[0].descriptor)

    bank = [
        [torch.randn(1, 64, 8, 8).to(torch.bfloat16), [torch.zeros(1, 64, 8, 8)], torch.tensor(0.8), torch.randn(256 * 8 * 8)]
        for _ in range(3)
    ]
    torch.save(bank, tmp_path / "memory_bank_list_3.pkl")
    imported = MemoryLibrary.import_samed2_bank(tmp_path / "memory_bank_list_3.pkl")
    assert len(imported) == 3 and imported.entries[1].predicted_iou == pytest.approx(0.8)
    assert imported.entries[0].descriptor.numel() == 256 * 16


def test_a_malicious_bank_pickle_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (exec, ("raise SystemExit('executed')",))

    path = tmp_path / "memory_bank_list_640.pkl"
    with open(path, "wb") as f:
        pickle.dump([Payload()], f)
    with pytest.raises(CheckpointError, match="refused"):
        MemoryLibrary.import_samed2_bank(path)


def test_library_memories_join_propagation_and_can_be_evicted(small_model, array):
    donor, donor_obj = tracked_session(small_model, array, library=MemoryLibrary())
    assert donor.add_to_library(donor_obj, min_confidence=0.0, max_entries=3, label="blob") == 3

    plain, plain_obj = tracked_session(small_model, array)
    guided, guided_obj = tracked_session(small_model, array, library=donor.library, library_k=2)
    library_rows = [r for r in guided.memory_entries() if r.source is EntrySource.LIBRARY]
    assert 1 <= len(library_rows) <= 3 and all(r.frame < 0 for r in library_rows)
    assert not torch.equal(logits(plain, plain_obj, 6), logits(guided, guided_obj, 6))

    for row in library_rows:
        guided.evict(guided_obj, row.frame)
    assert guided.stale[guided_obj] == set(range(1, FRAMES))
    list(guided.repropagate())
    assert torch.equal(logits(plain, plain_obj, 6), logits(guided, guided_obj, 6))


class _SeesMemory(torch.nn.Module):
    """Stands in for sam2's memory attention: returns the memory it was called with."""

    def forward(self, *, memory, memory_pos, num_obj_ptr_tokens=0):
        return memory, memory_pos


def test_library_tokens_go_before_the_object_pointers_for_the_block_only():
    attention = _SeesMemory()
    memory, positions = torch.zeros(5, 1, 2), torch.zeros(5, 1, 2)  # 3 spatial tokens, then 2 pointers
    tokens = (torch.ones(2, 1, 2), torch.full((2, 1, 2), 7.0))
    with library_tokens_in(attention, tokens):
        seen, seen_pos = attention(memory=memory, memory_pos=positions, num_obj_ptr_tokens=2)
    assert seen[:, 0, 0].tolist() == [0, 0, 0, 1, 1, 0, 0]
    assert seen_pos[:, 0, 0].tolist() == [0, 0, 0, 7, 7, 0, 0]
    with pytest.raises(RuntimeError), library_tokens_in(attention, tokens):
        raise RuntimeError("a failed step")
    assert not attention._forward_pre_hooks  # removed, after the failure too: the model is shared
    assert attention(memory=memory, memory_pos=positions)[0].shape[0] == 5
