"""Bad input is refused with the package's own errors, before any training starts."""

import numpy as np
import pytest

from napari_samed2.errors import CheckpointError, OutputFolderError, TrainingError
from napari_samed2.training import train
from tests.training.conftest import ellipse_pair


def _train(tmp_path, images=None, labels=None, **options):
    image, label = ellipse_pair(0)
    options = {"out": tmp_path / "out", "model": "no-such-model.pt", "steps": 1, **options}
    return train(image if images is None else images, label if labels is None else labels, **options)


def test_image_and_label_shapes_must_match(tmp_path):
    image, label = ellipse_pair(0)
    with pytest.raises(TrainingError, match=r"has shape \(10, 48, 56\) but its label has shape \(10, 48, 50\)"):
        _train(tmp_path, image, label[..., :50])


def test_a_label_needs_an_object(tmp_path):
    image, label = ellipse_pair(0)
    with pytest.raises(TrainingError, match="has no object"):
        _train(tmp_path, [image, image], [label, np.zeros_like(label)])


def test_unknown_module_names_list_the_valid_ones(tmp_path):
    with pytest.raises(TrainingError, match="unknown module name.*: decoders, head. Valid names: all, decoder, encoder, lora"):
        _train(tmp_path, train="decoders,head")


def test_a_checkpoint_that_does_not_load(tmp_path, tiny_checkpoint):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        _train(tmp_path, model=broken)
    with pytest.raises(CheckpointError, match="no resume state"):
        _train(tmp_path, model=tiny_checkpoint, image_size=128, device="cpu", resume=tmp_path)


def test_an_output_folder_that_cannot_be_written_is_refused_first(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OutputFolderError, match="cannot write to the output folder"):
        _train(tmp_path, out=blocker / "run")  # checked before the (missing) model is even looked at


@pytest.mark.parametrize("options, message", [
    ({"steps": 0}, "steps must be at least 1"),
    ({"lr": 0}, "lr must be positive"),
    ({"box_noise": 1.5}, "box_noise is a share of the box side"),
    ({"single_slice_prob": 0.5, "prompt_probs": {"mask": 1.0}}, "single-slice clips need box or click prompts"),
])
def test_settings_out_of_range(tmp_path, options, message):
    with pytest.raises(TrainingError, match=message):
        _train(tmp_path, **options)


def test_settings_from_json_with_arguments_overriding_them(tmp_path):
    from napari_samed2.training.trainer import load_config

    path = tmp_path / "settings.json"
    path.write_text('{"steps": 7, "train": "decoder", "lr": 0.001}')
    assert load_config(path).train == ("decoder",) and load_config(path).steps == 7
    with pytest.raises(TrainingError, match="steps must be at least 1"):
        _train(tmp_path, config=path, steps=0)  # the argument wins over the file
    path.write_text('{"stepz": 7}')
    with pytest.raises(TrainingError, match=r"unknown training settings \['stepz'\]"):
        _train(tmp_path, config=path)


def test_bfloat16_training_off_cuda_is_refused_not_silently_float32(tmp_path):
    with pytest.raises(TrainingError, match="training in bfloat16 runs on CUDA only; on cpu it trains in float32"):
        _train(tmp_path, device="cpu", dtype="bfloat16")  # refused before the (missing) model is looked at
