"""load_model settings that cannot work are refused before a model is built, by name."""

from __future__ import annotations

import pytest
import torch

from napari_samed2.errors import ModelSettingsError
from napari_samed2.models import get_spec
from napari_samed2.models.loading import build_model, resolve_device, resolve_dtype

BAD = {
    "unknown device": (lambda: resolve_device("tpu"), "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', not 'tpu'"),
    "malformed device": (lambda: resolve_device("cuda:x"), "not 'cuda:x'"),
    "device of another type": (lambda: resolve_device(["cpu"]), "device must be"),
    "unknown dtype": (lambda: resolve_dtype("fp16", torch.device("cpu")), "dtype must be 'auto' or one of"),
    "image size not a multiple of 32": (lambda: build_model(get_spec("demo"), 100), "positive multiple of 32.*not 100"),
    "negative image size": (lambda: build_model(get_spec("demo"), -32), "not -32"),
    "zero image size": (lambda: build_model(get_spec("demo"), 0), "not 0"),
    "float image size": (lambda: build_model(get_spec("demo"), 256.0), "not 256.0"),
    "string image size": (lambda: build_model(get_spec("demo"), "256"), "not '256'"),
}


@pytest.mark.parametrize("call, message", BAD.values(), ids=BAD.keys())
def test_bad_settings_are_refused_by_name(call, message):
    with pytest.raises(ModelSettingsError, match=message) as info:
        call()
    assert isinstance(info.value, ValueError)  # what callers (the Model panel) caught before
