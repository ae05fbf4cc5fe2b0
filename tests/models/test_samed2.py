"""SAMed-2: the temporal adapter in sam2's Hiera trunk, its checkpoints and its slice pairing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_samed2 import load_model
from napari_samed2.engine import FramePrompt, Session
from napari_samed2.io.intensity import IntensityWindow
from napari_samed2.models.checkpoint import read_state_dict
from napari_samed2.models.random_weights import save_random_checkpoint
from napari_samed2.models.registry import Preprocessing
from napari_samed2.models.temporal_adapter import TemporalAdapter, has_temporal_adapters

SIZE = 256


@pytest.fixture(scope="module")
def samed2_model(tmp_path_factory):
    path = save_random_checkpoint(tmp_path_factory.mktemp("samed2") / "samed2_random.pth", "samed2", image_size=SIZE)
    return load_model(path, device="cpu", image_size=SIZE)


def test_samed2_shaped_checkpoint_loads_strictly_with_its_own_settings(samed2_model):
    assert samed2_model.spec.name == "samed2"  # recognised from the adapter keys
    assert has_temporal_adapters(samed2_model.sam)
    assert samed2_model.spec.preprocessing is Preprocessing.UNIT_RANGE
    assert samed2_model.spec.mask_threshold == 0.5
    state = read_state_dict(samed2_model.checkpoint)
    assert any(".fancy_fusion." in k for k in state)
    loaded = samed2_model.sam.state_dict()
    adapter_keys = [k for k in state if ".adapter." in k]
    assert len(adapter_keys) == 16 * 8  # Hiera-S: 16 blocks x norm/linear_down/conv/linear_up (weight, bias)
    assert all(torch.equal(loaded[k], state[k]) for k in adapter_keys)


def test_stock_models_get_no_adapter(tiny_model):
    assert not has_temporal_adapters(tiny_model.sam)


def test_adapter_follows_the_release_formula():
    torch.manual_seed(0)
    adapter = TemporalAdapter(dim=24, channels=8)
    x = torch.randn(4, 5, 6, 24)  # 4 items = 2 pairs, 5x6 tokens, 24 channels
    y = adapter(x)
    # reference: each consecutive pair is a 2-deep clip for the 3D convolution
    z = adapter.linear_down(adapter.norm(x))
    expected = []
    for pair in range(2):
        clip = z[2 * pair : 2 * pair + 2].permute(3, 0, 1, 2)[None]  # 1, c, 2, H, W
        out = F.conv3d(clip, adapter.conv.weight, adapter.conv.bias, padding=1)[0].permute(1, 2, 3, 0)
        expected.append(x[2 * pair : 2 * pair + 2] + adapter.linear_up(F.gelu(out)))
    torch.testing.assert_close(y, torch.cat(expected), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pairs"):
        adapter(x[:3])


def test_a_slice_output_depends_on_its_pair_partner_only(samed2_model):
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 30, (5, 48, 48)).astype(np.float32)

    def frame0_features(data):
        # a fixed window: the default percentile window would change with any slice's content
        session = Session(samed2_model, data, normalise=IntensityWindow(0.0, 200.0))
        with samed2_model.inference():
            return session.features[0].vision_feats[-1].clone(), session

    reference, session = frame0_features(volume)
    assert session.frames_encoded == 2  # frames 0 and 1 were encoded together
    partner_changed = volume.copy()
    partner_changed[1] = rng.normal(100, 30, (48, 48))
    other_changed = volume.copy()
    other_changed[2] = rng.normal(100, 30, (48, 48))
    assert not torch.equal(frame0_features(partner_changed)[0], reference)
    assert torch.equal(frame0_features(other_changed)[0], reference)


def test_samed2_session_segments_and_propagates(samed2_model):
    rng = np.random.default_rng(1)
    volume = rng.normal(100, 30, (5, 48, 48)).astype(np.float32)  # odd length: last slice pairs with itself
    session = Session(samed2_model, volume)
    obj = session.add_object()
    session.segment_frame(2, obj, FramePrompt(np.array([[20.0, 20.0]]), [1]))
    frames = [r.frame for r in session.propagate("both")]
    assert sorted(frames) == [0, 1, 2, 2, 3, 4]
    assert session.frames_encoded == 5


def test_background_encoding_encodes_pairs_and_keeps_the_features(samed2_model):
    from napari_samed2.engine.prefetch import Prefetcher

    volume = np.random.default_rng(2).normal(100, 30, (5, 48, 48)).astype(np.float32)
    steps = list(Prefetcher(prefetched := Session(samed2_model, volume), lambda: 3).steps())
    assert [(s.frame, s.encoded) for s in steps] == [(3, (2, 3)), (4, (4,)), (1, (0, 1))]
    assert prefetched.frames_encoded == 5
    plain = Session(samed2_model, volume)
    with samed2_model.inference():
        for f in range(5):
            mine, theirs = plain.features[f], prefetched.features[f]
            assert all(torch.equal(a, b) for a, b in zip(mine.vision_feats, theirs.vision_feats, strict=True))
    assert prefetched.frames_encoded == 5  # everything came from the cache


def test_batched_background_encoding_keeps_the_pairs(samed2_model, monkeypatch):
    """A batch of 4 slices takes whole pairs: (2, 3) and the last slice paired with itself,
    then (0, 1); the features match those encoded a pair at a time (float32 rounding only)."""
    from napari_samed2.engine.prefetch import Prefetcher

    volume = np.random.default_rng(2).normal(100, 30, (5, 48, 48)).astype(np.float32)
    plain = Session(samed2_model, volume)
    list(Prefetcher(plain, lambda: 3, batch=1).steps())
    batches: list[torch.Tensor] = []
    forward = samed2_model.sam.forward_image
    monkeypatch.setattr(samed2_model.sam, "forward_image", lambda images: batches.append(images) or forward(images))
    batched = Session(samed2_model, volume)
    steps = list(Prefetcher(batched, lambda: 3, batch=4).steps())
    assert [(s.frames, s.encoded) for s in steps] == [((3, 4), (2, 3, 4)), ((1,), (0, 1))]
    assert [len(b) for b in batches] == [4, 2] and batched.frames_encoded == 5
    with samed2_model.inference():
        inputs = [batched.volume.model_input(f, SIZE, samed2_model.spec.preprocessing) for f in (2, 3, 4, 4)]
        assert torch.equal(batches[0], torch.stack(inputs))  # pairs (2, 3), (4, 4) in the adapter's order
        for f in range(5):
            mine, theirs = plain.features[f], batched.features[f]
            assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5)
                       for a, b in zip(mine.vision_feats, theirs.vision_feats, strict=True))
    assert batched.frames_encoded == 5  # everything came from the cache
