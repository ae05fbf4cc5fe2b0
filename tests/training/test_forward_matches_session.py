"""The oracle, extended to training: the training forward pass is the engine's data path.

Under ``torch.no_grad`` in eval mode, :func:`forward_clip` on a clip gives the very
low-resolution logits a :class:`Session` gives on the same clip with the same prompt (memory
stored in bfloat16 as the engine stores it), and with a simulated correction click the
same logits as a Session corrected with that click and re-propagated.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samed2.engine import Session
from napari_samed2.evaluation.prompts import correction_click, with_click
from napari_samed2.training.data import make_clip, make_pair
from napari_samed2.training.clips import forward_clip
from tests.training.conftest import ellipse_pair

CLIP = [2, 3, 4, 5]


@pytest.fixture(scope="module")
def pair():
    return make_pair(*ellipse_pair(0))


def _session(model, clip):
    session = Session(model, clip.volume)
    obj = session.add_object()
    session.segment_frame(0, obj, clip.prompt)
    list(session.propagate("forward"))
    return session, obj


@pytest.mark.parametrize("kind", ["box", "click", "mask"])
def test_training_forward_equals_session(tiny_model, pair, kind):
    clip = make_clip(pair, 1, CLIP, kind, np.random.default_rng(1))
    session, obj = _session(tiny_model, clip)
    with torch.no_grad():
        ours = forward_clip(tiny_model, clip, memory_dtype=torch.bfloat16)
    entries = session.memories[obj].entries
    assert sorted(entries) == list(range(len(CLIP)))
    for frame, tries in enumerate(ours.outputs):
        assert torch.equal(tries[-1].low_res, entries[frame].low_res_logits), f"frame {frame}"
        assert torch.equal(ours.memory.entries[frame].maskmem_features, entries[frame].maskmem_features)
    # not vacuous: the frames differ from each other
    assert not torch.equal(ours.outputs[1][0].low_res, ours.outputs[3][0].low_res)


def test_training_correction_click_equals_session_correction(tiny_model, pair):
    clip = make_clip(pair, 1, CLIP, "box", np.random.default_rng(1))
    corrected = 2
    with torch.no_grad():
        ours = forward_clip(
            tiny_model, clip, correct=(corrected,), clicks=1, rng=np.random.default_rng(9), memory_dtype=torch.bfloat16
        )
    assert len(ours.outputs[corrected]) == 2 and ours.clicks == 1

    session, obj = _session(tiny_model, clip)
    before = session.result(corrected).objects[obj].mask
    click = correction_click(clip.masks[corrected][None], before[None], clip.spacing, np.random.default_rng(9))
    session.segment_frame(corrected, obj, with_click(None, click))
    list(session.repropagate())
    entries = session.memories[obj].entries
    assert entries[corrected].conditioning and ours.memory.entries[corrected].conditioning
    for frame, tries in enumerate(ours.outputs):
        assert torch.equal(tries[-1].low_res, entries[frame].low_res_logits), f"frame {frame}"
    assert not torch.equal(ours.outputs[corrected][0].low_res, ours.outputs[corrected][1].low_res)


def test_samed2_slice_pairs_are_encoded_as_the_engine_pairs_them(pair):
    """SAMed-2's temporal adapter mixes pairs of slices: the training forward pass must pair
    them as the engine does, (0, 1), (2, 2), or the features and masks differ."""
    from napari_samed2.models import LoadedModel, build_model, get_spec

    torch.manual_seed(0)
    spec = get_spec("samed2")
    model = LoadedModel(spec, build_model(spec, 128), torch.device("cpu"), torch.float32, None)
    clip = make_clip(pair, 1, CLIP[:3], "box", np.random.default_rng(1))
    session, obj = _session(model, clip)
    with torch.no_grad():
        ours = forward_clip(model, clip, memory_dtype=torch.bfloat16)
    for frame, tries in enumerate(ours.outputs):
        assert torch.equal(tries[-1].low_res, session.memories[obj].entries[frame].low_res_logits), f"frame {frame}"
