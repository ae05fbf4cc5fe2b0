"""Intensity windows: CT presets, robust percentile windows, non-finite and constant frames."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samed2.errors import VolumeError
from napari_samed2.io.intensity import CT_PRESETS, WINDOW_CHOICES, IntensityWindow, chosen_window


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("soft_tissue", -160, 240), ("lung", -1350, 150), ("bone", -500, 1300), ("brain", 0, 80), ("liver", -20, 140)],
)
def test_ct_presets_give_level_minus_and_plus_half_width(name, low, high):
    window = IntensityWindow.preset(name)
    assert (window.low, window.high) == (low, high)
    assert set(CT_PRESETS) == {"soft_tissue", "lung", "bone", "brain", "liver"}


def test_ct_window_maps_linearly_and_clips():
    window = IntensityWindow.ct(40, 400)
    out = window(np.array([-1000, -160, 40, 240, 3000], dtype=np.int16))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="unknown CT preset 'abdomen'.*choose one of"):
        IntensityWindow.preset("abdomen")
    with pytest.raises(ValueError, match="width must be positive"):
        IntensityWindow.ct(40, 0)
    with pytest.raises(ValueError, match="below low"):
        IntensityWindow(10, 5)
    with pytest.raises(ValueError, match="finite"):
        IntensityWindow(0, np.inf)
    with pytest.raises(ValueError, match="percentiles"):
        IntensityWindow.from_percentiles(np.zeros(3), 50, 10)


def test_percentile_window_on_int16_with_negative_values():
    data = np.arange(-1000, 1000, dtype=np.int16).reshape(20, 10, 10)
    window = IntensityWindow.from_percentiles(data, 0.5, 99.5)
    assert window.low == pytest.approx(np.percentile(data, 0.5))
    assert window.high == pytest.approx(np.percentile(data, 99.5))
    assert window.low < -980 and window.high > 980
    out = window(data[0])
    assert out.min() == 0.0 and 0.0 < out.max() < 0.1


def test_percentile_window_on_uint16_ignores_rare_outliers():
    rng = np.random.default_rng(0)
    data = rng.integers(100, 4000, size=(8, 64, 64), dtype=np.uint16)
    data[0, 0, :5] = 65535  # a few hot pixels must not set the window
    window = IntensityWindow.from_percentiles(data)
    assert 100 <= window.low < 200 and 3800 < window.high <= 4000
    assert window(data[0, 0, :5]).tolist() == [1.0] * 5


def test_large_volumes_are_sampled_not_read_whole():
    class CountingArray:
        """An array that records how many voxels were read through indexing."""

        def __init__(self, data):
            self.data, self.shape, self.ndim, self.dtype, self.read = data, data.shape, data.ndim, data.dtype, 0

        def __getitem__(self, index):
            part = self.data[index]
            self.read += part.size
            return part

        def __array__(self, dtype=None, copy=None):
            raise AssertionError("the whole volume was read")

    lazy = CountingArray(np.random.default_rng(1).normal(size=(64, 256, 256)).astype(np.float32))
    window = IntensityWindow.from_percentiles(lazy)
    assert 0 < lazy.read <= 2_100_000
    assert window.low == pytest.approx(-2.58, abs=0.1) and window.high == pytest.approx(2.58, abs=0.1)


def test_float_frames_with_nan_and_inf_are_finite_and_reported():
    window = IntensityWindow(0.0, 100.0)
    frame = np.array([[np.nan, np.inf, -np.inf], [25.0, 50.0, 200.0]], dtype=np.float32)
    with pytest.warns(RuntimeWarning, match=r"^3 non-finite voxel"):
        out = window(frame)
    assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1
    # NaN and -inf go to 0, +inf to 1, and the finite voxels keep their place in the window
    np.testing.assert_allclose(out, [[0.0, 1.0, 0.0], [0.25, 0.5, 1.0]])


def test_percentiles_skip_non_finite_values_and_refuse_all_nan():
    data = np.linspace(0, 100, 1000).astype(np.float32)
    data[::10] = np.nan
    data[5] = np.inf
    finite = data[np.isfinite(data)]
    window = IntensityWindow.from_percentiles(data, 0, 100)
    assert (window.low, window.high) == (pytest.approx(finite.min()), pytest.approx(finite.max()))
    with pytest.raises(VolumeError, match="no finite intensities"):
        IntensityWindow.from_percentiles(np.full((4, 4), np.nan))


def test_constant_image_has_no_division_by_zero():
    data = np.full((3, 16, 16), 7, dtype=np.int16)
    window = IntensityWindow.from_percentiles(data)
    assert window.low == window.high == 7
    with np.errstate(all="raise"):
        out = window(data[0])
    assert out.dtype == np.float32 and np.all(out == 1.0)
    assert np.all(window(np.array([6, 7, 8])) == [0.0, 1.0, 1.0])


def test_mostly_empty_image_gets_its_full_range_rather_than_a_threshold():
    data = np.zeros((10, 100, 100), dtype=np.uint16)
    data[5, 40:45, 40:45] = 800  # 0.025 % of the voxels: above the 99.5th percentile
    window = IntensityWindow.from_percentiles(data)
    assert (window.low, window.high) == (0, 800)
    assert window(data[5]).mean() == pytest.approx(25 / 10_000)


def test_rgb_frames_keep_their_shape_and_channels():
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0
    out = IntensityWindow(0, 255)(rgb)
    assert out.shape == (4, 5, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [1.0, 128 / 255, 0.0], rtol=1e-6)
    video = np.stack([rgb, rgb // 2])
    window = IntensityWindow.from_percentiles(video, 0, 100)
    assert (window.low, window.high) == (0, 255)


def test_each_window_choice_names_its_window():
    assert chosen_window("auto") is None  # the volume's own percentiles
    assert chosen_window("display", (0.25, 2)) == IntensityWindow(0.25, 2.0)
    assert chosen_window("display", np.array([-1000, 500], np.int16)) == IntensityWindow(-1000.0, 500.0)
    assert chosen_window("ct:soft_tissue") == IntensityWindow(-160.0, 240.0)
    assert {k for k in WINDOW_CHOICES if k.startswith("ct:")} == {f"ct:{name}" for name in CT_PRESETS}
    for key in WINDOW_CHOICES:
        window = chosen_window(key, (0, 1))
        assert window is None or window.low < window.high


@pytest.mark.parametrize(
    ("choice", "limits", "message"),
    [
        ("display", None, "contrast limits"),
        ("display", (1.0,), "contrast limits"),
        ("display", (5.0, 1.0), "below low"),
        ("display", (0.0, float("nan")), "finite"),
        ("ct:heart", None, "unknown CT preset"),
        ("percentile", None, "unknown intensity window"),
    ],
)
def test_a_window_choice_that_cannot_be_used_says_why(choice, limits, message):
    with pytest.raises(VolumeError, match=message):
        chosen_window(choice, limits)
