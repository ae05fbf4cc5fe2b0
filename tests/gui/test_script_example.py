"""The documented script example drives a real viewer with the engine the widgets use."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from napari_samed2.io.sample import synthetic_volume

pytestmark = pytest.mark.gui
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "segment_from_script.py"


def test_script_example_fills_a_labels_layer_from_a_worker(make_napari_viewer, small_model, qtbot):
    spec = importlib.util.spec_from_file_location("segment_from_script", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    sample = synthetic_volume(shape=(8, 64, 64))
    rows, cols = np.nonzero(sample.labels[4] == 1)
    viewer = make_napari_viewer()
    seen = []
    session, layer, worker = example.segment_in_viewer(
        viewer, small_model, sample.image, 4, (rows.mean(), cols.mean()), sample.spacing
    )
    worker.yielded.connect(lambda result: seen.append(result.frame))
    assert worker.is_running  # the call returned at once; the model works in the background
    qtbot.waitUntil(lambda: not worker.is_running, timeout=120_000)
    assert sorted(set(seen)) == list(range(8))  # the clicked slice comes first, then every slice
    assert layer in viewer.layers and viewer.layers["volume"].scale[0] == sample.spacing[0]
    assert sorted(session.memories[1].entries) == list(range(8))
    assert layer.data.any()
    np.testing.assert_array_equal(layer.data, session.labels())
    assert viewer.dims.point[0] == pytest.approx(4 * sample.spacing[0])
