"""The packaged demo weights: what the README's main command loads, measured on the sample it opens.

Bounds are the measured values of the shipped file (docs/training.md, run 8) less a margin
for other CPUs' arithmetic: box Dice on the prompted slice 0.998 / 0.966 / 0.941 (organ 1,
organ 2, vessel) and, after propagation through the volume from that box, 3D Dice 0.996 /
0.955 / 0.985. (Run 5, shipped before run 7, gave 0.875 / 0.23 / 0.15 in 3D: organ 2 and the
vessel drifted onto organ 1; these bounds fail on it.)
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open

from napari_samed2 import load_model
from napari_samed2.engine import FramePrompt, Session
from napari_samed2.evaluation.cases import EvalCase
from napari_samed2.evaluation.protocol import EvalProtocol, run_case
from napari_samed2.io.sample import synthetic_volume
from napari_samed2.models import get_spec, packaged_weights

PROMPTED_SLICE_DICE = {1: 0.93, 2: 0.90, 3: 0.90}
VOLUME_DICE = {1: 0.93, 2: 0.88, 3: 0.90}


@pytest.fixture(scope="module")
def demo():
    return load_model("demo", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def sample():
    return synthetic_volume()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_the_demo_weights_ship_small_and_in_16_bits():
    path = packaged_weights(get_spec("demo"))
    assert path is not None and path.stat().st_size <= 10e6
    with safe_open(str(path), "pt") as weights:
        dtypes = {str(weights.get_slice(name).get_dtype()) for name in weights.keys()}
    assert dtypes == {"BF16"}


def test_a_box_segments_each_structure_of_the_sample(demo, sample):
    for object_id, bound in PROMPTED_SLICE_DICE.items():
        truth = sample.labels == object_id
        frame = int(np.nonzero(truth.any(axis=(1, 2)))[0].mean())
        rows, cols = np.nonzero(truth[frame])
        session = Session(demo, sample.image)
        session.add_object(object_id)
        box = np.array([rows.min(), cols.min(), rows.max(), cols.max()], float)
        result = session.segment_frame(frame, object_id, FramePrompt(box=box))
        assert dice(result.labels(truth.shape[1:]) == object_id, truth[frame]) >= bound, object_id


def test_propagation_follows_each_structure_through_the_volume(demo, sample):
    case = EvalCase("sample", sample.image, sample.labels, sample.spacing)
    records = {r.object_id: r for r in run_case(demo, case, EvalProtocol(clicks=0, seed=0), "stock")}
    assert {i: records[i].dice >= bound for i, bound in VOLUME_DICE.items()} == {1: True, 2: True, 3: True}
