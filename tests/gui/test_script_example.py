"""The documented script example drives a real viewer with the engine the widgets use."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from napari_samed2.io.sample import synthetic_volume

pytestmark = pytest.mark.gui
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "segment_from_script.py"


def test_script_example_fills_a_labels_layer(make_napari_viewer, tiny_model):
    spec = importlib.util.spec_from_file_location("segment_from_script", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    sample = synthetic_volume(shape=(8, 64, 64))
    rows, cols = np.nonzero(sample.labels[4] == 1)
    viewer = make_napari_viewer()
    session, layer = example.segment_in_viewer(
        viewer, tiny_model, sample.image, 4, (rows.mean(), cols.mean()), sample.spacing
    )
    assert layer in viewer.layers and viewer.layers["volume"].scale[0] == sample.spacing[0]
    assert sorted(session.memories[1].entries) == list(range(8))
    assert layer.data.any()
    np.testing.assert_array_equal(layer.data, session.labels())
    assert viewer.dims.point[0] == pytest.approx(4 * sample.spacing[0])
