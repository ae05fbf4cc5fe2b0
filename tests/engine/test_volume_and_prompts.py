import numpy as np
import pytest
import torch

from napari_samed2.engine import FramePrompt, Volume
from napari_samed2.errors import PromptError, VolumeError
from napari_samed2.io.intensity import IntensityWindow
from napari_samed2.models.registry import Preprocessing


def test_model_input_is_resized_normalised_and_lazy():
    data = np.zeros((3, 40, 60), np.int16)
    data[1, 10:20, 30:50] = 1000
    volume = Volume(data, normalise=IntensityWindow(0, 1000))
    image = volume.model_input(1, 64, Preprocessing.IMAGENET)
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    # channel 0 of a white pixel: (1 - 0.485) / 0.229; a black one: -0.485 / 0.229
    assert image[0].max() == pytest.approx((1 - 0.485) / 0.229, abs=1e-5)
    assert image[0].min() == pytest.approx(-0.485 / 0.229, abs=1e-5)
    unit = volume.model_input(1, 64, Preprocessing.UNIT_RANGE)
    assert unit.min() == 0 and unit.max() == pytest.approx(1.0)


def test_default_window_is_one_for_the_whole_volume():
    data = np.stack([np.full((8, 8), v, np.float32) for v in (0.0, 50.0, 100.0)])
    volume = Volume(data)
    # the same raw value maps to the same brightness on every slice
    assert volume.unit_frame(0).max() == 0.0 and volume.unit_frame(2).min() == 1.0
    assert 0.4 < volume.unit_frame(1).mean() < 0.6


def test_frame_keys_follow_content():
    data = np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32)
    volume = Volume(data)
    assert volume.frame_key(0) != volume.frame_key(1)
    assert Volume(data.copy()).frame_key(2) == volume.frame_key(2)


def test_volume_shape_errors_say_what_to_do():
    with pytest.raises(VolumeError, match="at least 3 dimensions.*data\\[None\\]"):
        Volume(np.zeros((10, 10)))
    with pytest.raises(VolumeError, match="fixed="):
        Volume(np.zeros((2, 3, 10, 10)))
    with pytest.raises(IndexError):
        Volume(np.zeros((2, 10, 10))).raw_frame(2)


def test_box_and_points_become_sam2_inputs():
    prompt = FramePrompt(np.array([[10.0, 20.0]]), [0], box=(5.0, 6.0, 30.0, 40.0))
    inputs = prompt.point_inputs((50, 100), 256, "cpu")
    coords = inputs["point_coords"][0]
    # box corners first (labels 2, 3), in (x, y) order, scaled to the model size
    assert inputs["point_labels"].tolist() == [[2, 3, 0]]
    assert coords[0].tolist() == pytest.approx([6 / 100 * 256, 5 / 50 * 256])
    assert coords[2].tolist() == pytest.approx([20 / 100 * 256, 10 / 50 * 256])


def test_clicks_helper_and_validation():
    prompt = FramePrompt.clicks(positive=[[1, 2], [3, 4]], negative=[[5, 6]])
    assert prompt.labels.tolist() == [1, 1, 0]
    with pytest.raises(PromptError, match="1 \\(positive\\) or 0"):
        FramePrompt(np.array([[1.0, 1.0]]), [2]).validate((10, 10))
    with pytest.raises(PromptError, match="cannot be combined"):
        FramePrompt(np.array([[1.0, 1.0]]), [1], mask=np.ones((10, 10))).validate((10, 10))


def test_dask_volume_is_read_one_frame_at_a_time():
    da = pytest.importorskip("dask.array")
    reads = []

    def load_block(block, block_info=None):
        reads.append(block_info[None]["chunk-location"][0])
        return block

    lazy = da.from_array(np.random.default_rng(0).normal(size=(6, 32, 32)).astype(np.float32), chunks=(1, 32, 32))
    lazy = lazy.map_blocks(load_block, dtype=np.float32)
    volume = Volume(lazy, normalise=IntensityWindow(-3.0, 3.0))
    reads.clear()
    volume.model_input(4, 64, Preprocessing.IMAGENET)
    assert reads == [4]
