import pickle

import pytest
import torch

from napari_samed2 import load_model
from napari_samed2.errors import CheckpointError, CheckpointMismatchError, WeightsUnavailableError
from napari_samed2.models import fetch_weights, get_spec, resolve_device
from napari_samed2.models.checkpoint import guess_architecture, read_state_dict
from napari_samed2.models.random_weights import random_state_dict, save_random_checkpoint

from tests.conftest import TEST_DEVICE, TEST_IMAGE_SIZE


def _outputs(sam, seed=3):
    """Image features plus a point-prompted mask: touches encoder, prompt encoder and decoder."""
    image = torch.randn(1, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))
    device = next(sam.parameters()).device
    image = image.to(device)
    with torch.inference_mode():
        backbone = sam.forward_image(image)
        _, feats, _, sizes = sam._prepare_backbone_features(backbone)
        pix = feats[-1].permute(1, 2, 0).view(1, -1, *sizes[-1])
        high_res = [x.permute(1, 2, 0).view(1, -1, *s) for x, s in zip(feats[:-1], sizes[:-1])]
        points = {
            "point_coords": torch.tensor([[[100.0, 120.0]]], device=device),
            "point_labels": torch.tensor([[1]], device=device),
        }
        masks = sam._forward_sam_heads(pix, points, None, high_res, multimask_output=True)
    return [backbone["vision_features"], *masks[:3]]


def test_checkpoint_round_trip_gives_identical_outputs(tiny_checkpoint, tiny_model):
    from napari_samed2.models import build_model

    in_memory = build_model(get_spec("sam2.1-tiny"), TEST_IMAGE_SIZE, device=TEST_DEVICE)
    in_memory.load_state_dict(random_state_dict("sam2.1-tiny", TEST_IMAGE_SIZE, seed=0))
    for ours, reference in zip(_outputs(tiny_model.sam), _outputs(in_memory)):
        assert torch.equal(ours, reference)
    # a different seed is a different model: the comparison above can fail
    other = build_model(get_spec("sam2.1-tiny"), TEST_IMAGE_SIZE, device=TEST_DEVICE)
    other.load_state_dict(random_state_dict("sam2.1-tiny", TEST_IMAGE_SIZE, seed=1))
    assert not torch.equal(_outputs(other)[0], _outputs(in_memory)[0])


def test_loaded_model_reports_what_it_is(tiny_model, tiny_checkpoint):
    assert tiny_model.spec.name == "sam2.1-tiny"  # guessed from the keys
    assert tiny_model.image_size == TEST_IMAGE_SIZE
    assert tiny_model.device.type == TEST_DEVICE and tiny_model.dtype == torch.float32
    assert tiny_model.checkpoint == tiny_checkpoint
    assert 30e6 < tiny_model.num_parameters < 50e6
    assert "SAM 2.1 Hiera tiny" in tiny_model.describe()


def test_the_signature_names_the_weights_not_where_they_lie(tmp_path, tiny_checkpoint, tiny_model):
    import os
    import shutil

    copy = shutil.copy(tiny_checkpoint, tmp_path / "moved.pt")  # another path, a new mtime
    os.utime(copy, ns=(1, 1))
    moved = load_model(copy, device=TEST_DEVICE, dtype="float32", image_size=TEST_IMAGE_SIZE)
    assert moved.signature == tiny_model.signature  # its autosaves and cached features are found
    other = save_random_checkpoint(tmp_path / "other.pt", "sam2.1-tiny", image_size=TEST_IMAGE_SIZE, seed=1)
    assert load_model(other, device=TEST_DEVICE, dtype="float32", image_size=TEST_IMAGE_SIZE).signature != moved.signature
    shutil.copy(other, copy)  # the same path, other weights: another model
    assert moved.signature != tiny_model.signature


def test_safetensors_and_bare_state_dicts_load(tmp_path, tiny_checkpoint):
    reference = read_state_dict(tiny_checkpoint)
    safetensors_path = save_random_checkpoint(tmp_path / "w.safetensors", image_size=TEST_IMAGE_SIZE)
    bare_path = tmp_path / "bare.pth"
    torch.save(reference, bare_path)
    for path in (safetensors_path, bare_path):
        state = read_state_dict(path)
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference)
    model = load_model(safetensors_path, device="cpu", image_size=TEST_IMAGE_SIZE)
    assert model.spec.name == "sam2.1-tiny"


def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path, tiny_checkpoint):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(tiny_checkpoint.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(broken, device="cpu")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere.pt")


def test_wrong_architecture_names_keys_and_the_likely_model(tiny_checkpoint):
    with pytest.raises(CheckpointMismatchError) as info:
        load_model(tiny_checkpoint, architecture="sam2.1-small", image_size=TEST_IMAGE_SIZE, device="cpu")
    message = str(info.value)
    assert "missing keys" in message and "image_encoder.trunk.blocks.12" in message
    assert "architecture='sam2.1-tiny'" in message
    assert len(message) < 1500  # a message, not a 200-line dump


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_checkpoint):
    state = read_state_dict(tiny_checkpoint)
    state.pop("sam_mask_decoder.iou_token.weight")
    state["my_head.weight"] = torch.zeros(3)
    path = tmp_path / "edited.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys \(sam_mask_decoder.iou_token.weight\).*1 unexpected keys \(my_head.weight\)"):
        load_model(path, image_size=TEST_IMAGE_SIZE, device="cpu")


def test_pickled_code_is_refused_not_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Payload()}, f)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint|beyond tensors"):
        read_state_dict(path)


def test_offline_without_cache_explains_where_to_put_weights(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError) as info:
        load_model("sam2.1-tiny", cache_dir=tmp_path / "empty-cache")
    message = str(info.value)
    assert "sam2.1_hiera_tiny.pt" in message and "load_model('/path/to/sam2.1_hiera_tiny.pt')" in message


def test_unreachable_hub_is_an_explained_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # nothing listens on port 9 of this machine: the request fails at once, as with no network
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_ETAG_TIMEOUT", 2)
    with pytest.raises(WeightsUnavailableError, match="offline"):
        load_model("medsam2", cache_dir=tmp_path / "empty-cache")


def test_no_network_fails_at_once_without_the_hub_clients_retries(tmp_path, monkeypatch):
    import socket
    import time

    import huggingface_hub

    def no_route(address, timeout=None):
        raise OSError(101, "Network is unreachable")

    def must_not_run(*args, **kwargs):
        raise AssertionError("the hub client was called although the hub cannot be reached")

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "create_connection", no_route)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", must_not_run)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="seems offline .*Network is unreachable.*load_model"):
        load_model("sam2.1-tiny", cache_dir=tmp_path / "empty-cache")
    assert time.perf_counter() - start < 5


def test_a_cached_download_loads_without_the_network(tmp_path, monkeypatch, tiny_checkpoint):
    import shutil
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("a cached file must not touch the network")

    # the hub cache's layout: models--owner--name/snapshots/<revision>/<file>, refs/main
    repo = tmp_path / "hub" / "models--facebook--sam2.1-hiera-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, repo / "snapshots" / "abc123" / "sam2.1_hiera_tiny.pt")
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert fetch_weights(get_spec("sam2.1-tiny"), tmp_path / "hub") == repo / "snapshots" / "abc123" / "sam2.1_hiera_tiny.pt"


def test_samed2_weights_must_be_local():
    with pytest.raises(WeightsUnavailableError, match="Medical-SAM-Bench"):
        load_model("samed2")


def test_auto_device_on_a_cpu_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_guess_architecture_from_keys(tiny_checkpoint):
    state = read_state_dict(tiny_checkpoint)
    assert guess_architecture(state, "x.pt") == "sam2.1-tiny"
    assert guess_architecture(state, "MedSAM2_latest.pt") == "medsam2"
    state.pop("no_obj_embed_spatial")
    assert guess_architecture(state, "x.pt") == "sam2-tiny"
    assert guess_architecture({"foo": torch.zeros(1)}) is None


def test_empty_checkpoint_file_says_it_is_empty(tmp_path):
    from napari_samed2.errors import CheckpointError

    empty = tmp_path / "weights.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_model(empty, device="cpu")


def test_safetensors_metadata_names_architecture_and_image_size(tmp_path, tiny_checkpoint):
    """A training checkpoint says what it is: no guess from the keys, and its image size."""
    from safetensors.torch import save_file

    from napari_samed2.models.checkpoint import read_metadata

    state = read_state_dict(tiny_checkpoint)
    path = tmp_path / "trained.safetensors"
    save_file(state, str(path), metadata={"architecture": "medsam2", "image_size": "128"})
    assert read_metadata(path) == {"architecture": "medsam2", "image_size": "128"}
    model = load_model(path, device="cpu")  # the keys alone would say sam2.1-tiny
    assert model.spec.name == "medsam2" and model.image_size == 128
    explicit = load_model(path, device="cpu", architecture="sam2.1-tiny", image_size=TEST_IMAGE_SIZE)
    assert explicit.spec.name == "sam2.1-tiny" and explicit.image_size == TEST_IMAGE_SIZE
    assert read_metadata(tiny_checkpoint) == {}
