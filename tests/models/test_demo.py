"""The demo architecture: a reduced SAM 2.1 from sam2's own modules, with a config of ours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samed2 import load_model
from napari_samed2.engine import FramePrompt, Session
from napari_samed2.errors import CheckpointMismatchError, WeightsUnavailableError
from napari_samed2.io.sample import synthetic_volume
from napari_samed2.models import build_model, fetch_weights, get_spec
from napari_samed2.models import loading
from napari_samed2.models.checkpoint import guess_architecture, read_state_dict
from napari_samed2.models.random_weights import random_state_dict, save_random_checkpoint

DEMO_PARAMETERS = 4_134_754  # configs/demo.yaml as measured; the registry's comment says so too


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("demo") / "demo_random.safetensors", "demo", seed=0)


@pytest.fixture(scope="module")
def demo_model(demo_checkpoint):
    return load_model(demo_checkpoint, device="cpu", dtype="float32")


def test_demo_builds_from_sam2_modules_at_the_intended_size():
    spec = get_spec("demo")
    sam = build_model(spec)
    assert type(sam).__module__ == "sam2.sam2_video_predictor"
    assert sam.image_size == spec.image_size == 256
    assert sam.image_encoder.trunk.patch_embed.proj.out_channels == 32
    assert sam.hidden_dim == 128 and sam.mem_dim == 64
    assert len(sam.memory_attention.layers) == 2
    assert sum(p.numel() for p in sam.parameters()) == DEMO_PARAMETERS
    assert "not a medical model" in spec.title and "synthetic" in spec.title


def test_building_the_demo_leaves_sam2_configs_reachable():
    build_model(get_spec("demo"))
    build_model(get_spec("sam2.1-tiny"), image_size=256)  # hydra's search path is unchanged


def test_demo_checkpoint_round_trip_is_strict_and_guessed(demo_checkpoint, demo_model):
    state = read_state_dict(demo_checkpoint)
    assert guess_architecture(state, demo_checkpoint.name) == "demo"
    assert demo_model.spec.name == "demo"  # guessed from the keys, no architecture= given
    assert demo_model.num_parameters == DEMO_PARAMETERS
    loaded = demo_model.sam.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    other = random_state_dict("demo", seed=1)
    assert not torch.equal(other["image_encoder.trunk.patch_embed.proj.weight"], state["image_encoder.trunk.patch_embed.proj.weight"])


def test_a_16_bit_demo_file_is_small_and_loads(tmp_path):
    from safetensors.torch import save_file

    state = random_state_dict("demo", seed=2)
    path = tmp_path / "demo.safetensors"
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}, str(path))
    assert path.stat().st_size < 10e6
    model = load_model(path, device="cpu", dtype="float32")
    weight = "sam_mask_decoder.iou_token.weight"
    torch.testing.assert_close(model.sam.state_dict()[weight], state[weight], rtol=1e-2, atol=1e-3)
    assert model.sam.state_dict()[weight].dtype == torch.float32


def test_tiny_checkpoint_does_not_fit_the_demo(tiny_checkpoint):
    with pytest.raises(CheckpointMismatchError, match="architecture='sam2.1-tiny'"):
        load_model(tiny_checkpoint, architecture="demo", device="cpu")


def test_missing_packaged_weights_are_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "PACKAGED_WEIGHTS_DIR", tmp_path / "weights")
    with pytest.raises(WeightsUnavailableError) as info:
        load_model("demo")
    message = str(info.value)
    assert "demo.safetensors" in message and "not in this installation" in message
    assert "architecture='demo'" in message


def test_packaged_weights_are_read_when_present(tmp_path, monkeypatch, demo_checkpoint):
    monkeypatch.setattr(loading, "PACKAGED_WEIGHTS_DIR", tmp_path)
    (tmp_path / "demo.safetensors").write_bytes(demo_checkpoint.read_bytes())
    assert fetch_weights(get_spec("demo")) == tmp_path / "demo.safetensors"
    model = load_model("demo", device="cpu", dtype="float32")
    assert model.spec.name == "demo" and model.checkpoint == tmp_path / "demo.safetensors"


def test_a_session_segments_and_propagates_with_the_demo(demo_model):
    volume = synthetic_volume(shape=(8, 256, 256), seed=0)
    image, organ = volume.image[2:6], volume.labels[2:6] == 1  # 4 slices keep the test short
    frame = int(np.argmax(organ.sum(axis=(1, 2))))
    rows, cols = np.nonzero(organ[frame])
    session = Session(demo_model, image)
    obj = session.add_object()
    first = session.segment_frame(frame, obj, FramePrompt(box=(rows.min(), cols.min(), rows.max(), cols.max())))
    assert first.frame == frame
    assert {r.frame for r in session.propagate("both")} == set(range(4))
    assert session.frames_encoded == 4
    assert session.labels().shape == image.shape

