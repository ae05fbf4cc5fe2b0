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


# bad input: each family is refused where it is given, with what to do instead ----------------

BAD_VOLUMES = {
    "no frames": (np.zeros((0, 8, 8)), {}, "empty: axis 0 has length 0 \\(no frames\\)"),
    "no rows": (np.zeros((4, 0, 8)), {}, "empty: axis 1 has length 0 \\(no pixels"),
    "no columns": (np.zeros((4, 8, 0)), {}, "empty: axis 2 has length 0"),
    "rgb without frames": (np.zeros((0, 8, 8, 3), np.uint8), {}, "empty"),
    "complex": (np.zeros((2, 8, 8), np.complex64), {}, "complex numbers.*np.abs\\(data\\)"),
    "strings": (np.full((2, 8, 8), "a"), {}, "must hold numbers.*astype"),
    "objects": (np.empty((2, 8, 8), object), {}, "must hold numbers"),
    "axis too large": (np.zeros((2, 8, 8)), {"axis": 3}, "axis 3 does not exist.*0 to 2"),
    "axis too negative": (np.zeros((2, 8, 8)), {"axis": -4}, "axis -4 does not exist"),
    "float axis": (np.zeros((2, 8, 8)), {"axis": 1.0}, "axis must be a whole number, got 1.0"),
    "bool axis": (np.zeros((2, 8, 8)), {"axis": True}, "axis must be a whole number"),
    "string axis": (np.zeros((2, 8, 8)), {"axis": "0"}, "axis must be a whole number"),
    "float fixed index": (np.zeros((2, 3, 8, 8)), {"axis": 1, "fixed": {0: 1.5}}, "fixed\\[0\\] must be a whole number"),
    "fixed axis missing": (np.zeros((2, 3, 8, 8)), {"axis": 1, "fixed": {7: 0}}, "fixed axis 7 does not exist"),
    "two colour channels": (np.zeros((2, 8, 8, 2)), {"rgb": True}, "3 or 4 colour channels.*rgb=False"),
    "normalise not callable": (np.zeros((2, 8, 8)), {"normalise": "lung"}, "normalise must map a frame.*preset"),
}


@pytest.mark.parametrize("data, options, message", BAD_VOLUMES.values(), ids=BAD_VOLUMES.keys())
def test_volumes_that_cannot_be_segmented_are_refused_at_once(data, options, message):
    with pytest.raises(VolumeError, match=message):
        Volume(data, **options)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: IntensityWindow("0", 1), "finite numbers"),
        (lambda: IntensityWindow(float("nan"), 1), "finite numbers"),
        (lambda: IntensityWindow(True, 2), "finite numbers"),
        (lambda: IntensityWindow(5, 1), "below low"),
        (lambda: IntensityWindow.ct(40, float("nan")), "width must be positive"),
        (lambda: IntensityWindow.ct("40", 400), "finite numbers"),
        (lambda: IntensityWindow.preset("abdomen"), "choose one of"),
        (lambda: IntensityWindow.from_percentiles(np.ones(10), 50, 50), "lower < upper"),
    ],
)
def test_bad_intensity_windows_are_volume_errors(make, message):
    with pytest.raises(VolumeError, match=message):
        make()


BAD_PROMPTS = {
    "3-component point": (dict(points=[[1, 2, 3]], labels=[1]), "\\(row, column\\) pairs.*shape \\(1, 3\\).*segment_frame's frame"),
    "four numbers flat": (dict(points=[1, 2, 3, 4], labels=[1, 1]), "\\(N, 2\\) array, got shape \\(4,\\)"),
    "string coordinates": (dict(points=[["a", "b"]], labels=[1]), "points must be numbers"),
    "a string": (dict(points="12", labels=[1]), "points must be numbers"),
    "ragged points": (dict(points=[[1, 2], [3]], labels=[1, 1]), "points must be numbers"),
    "NaN coordinate": (dict(points=[[1, float("nan")]], labels=[1]), "points must be finite"),
    "infinite coordinate": (dict(points=[[1, float("inf")]], labels=[1]), "points must be finite"),
    "string labels": (dict(points=[[1, 2]], labels=["1"]), "labels must be numbers"),
    "fractional label": (dict(points=[[1, 2]], labels=[0.5]), "1 \\(positive\\) or 0 \\(negative\\), got \\[0.5\\]"),
    "label 2": (dict(points=[[1, 2]], labels=[2]), "1 \\(positive\\) or 0"),
    "labels missing": (dict(points=[[1, 2], [3, 4]], labels=[1]), "2 points but 1 labels"),
    "box of three": (dict(box=(1, 2, 3)), "four numbers \\(row0, col0, row1, col1\\), got \\(1, 2, 3\\)"),
    "box as corners": (dict(box=((1, 2), (3, 4))), "four numbers"),
    "box as a string": (dict(box="1,2,3,4"), "box must be numbers"),
    "NaN box": (dict(box=(1, 2, float("nan"), 4)), "box must be finite"),
    "box without area": (dict(box=(5, 5, 5, 9)), "no area.*row1 > row0"),
    "box upside down": (dict(box=(9, 9, 1, 1)), "no area"),
    "3D mask": (dict(mask=np.ones((1, 8, 8), bool)), "2D \\(H, W\\) array, got shape \\(1, 8, 8\\)"),
    "NaN mask": (dict(mask=np.full((8, 8), np.nan)), "mask values must be finite"),
    "probability mask": (dict(mask=np.full((8, 8), 0.3)), "True/False or 0/1.*mask > 0.5"),
    "label image as mask": (dict(mask=np.full((8, 8), 2, np.uint16)), "labels == object_id"),
    "string mask": (dict(mask=np.full((8, 8), "x")), "mask values must be numbers"),
    "mask and clicks": (dict(points=[[1, 2]], labels=[1], mask=np.ones((8, 8), bool)), "cannot be combined"),
}


@pytest.mark.parametrize("arguments, message", BAD_PROMPTS.values(), ids=BAD_PROMPTS.keys())
def test_prompts_that_would_be_misread_are_refused_where_they_are_made(arguments, message):
    with pytest.raises(PromptError, match=message):
        FramePrompt(**arguments)


@pytest.mark.parametrize(
    "positive, negative",
    [([[1, 2, 3]], ()), ("ab", ()), ((), [[1, float("nan")]])],
    ids=["3-component", "string", "NaN"],
)
def test_clicks_helper_refuses_what_is_not_row_column_pairs(positive, negative):
    with pytest.raises(PromptError, match="clicks must be"):
        FramePrompt.clicks(positive, negative)


@pytest.mark.parametrize(
    "mask",
    [np.zeros((8, 8), bool), np.zeros((8, 8), np.float32), np.zeros((8, 8), np.uint8)],
    ids=["bool", "float", "integer"],
)
def test_an_empty_mask_prompt_says_the_object_is_absent(mask):
    FramePrompt(mask=mask).validate((8, 8))  # sam2 reads it as "not on this frame"
    absent = FramePrompt.absent((8, 8))
    assert absent.mask.shape == (8, 8) and not absent.mask.any()
    with pytest.raises(PromptError, match="does not match"):
        FramePrompt.absent((8, 9)).validate((8, 8))


def test_prompts_in_any_reasonable_form_are_accepted():
    single = FramePrompt([3, 4], [True])
    assert single.points.tolist() == [[3.0, 4.0]] and single.labels.tolist() == [1]
    assert FramePrompt.clicks(positive=[np.int64(3), np.int64(4)]).points.shape == (1, 2)
    assert FramePrompt(box=np.array([1, 2, 5, 6], np.float32)).box == (1.0, 2.0, 5.0, 6.0)
    for mask in (np.eye(8, dtype=np.uint8), np.eye(8, dtype=np.float64), np.eye(8, dtype=bool)):
        prompt = FramePrompt(mask=mask)
        prompt.validate((8, 8))
        assert prompt.mask.dtype == bool and prompt.mask.sum() == 8


def test_input_smoothing_follows_the_noise_and_leaves_clean_volumes_bit_identical():
    """A model's input smoothing blurs by strength x noise level: a speckled volume is
    smoothed (and stretched to its smoothed range), a clean one gets exactly the input of no
    smoothing, which keeps the oracle's exact path."""
    from napari_samed2.models.registry import Preprocessing

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 32) ** 2 + (xx - 30) ** 2 < 15**2).astype(np.float32)
    clean = Volume(np.stack([100 + 400 * disc + rng.normal(0, 2, disc.shape) for _ in range(5)]).astype(np.float32))
    speckled = Volume(np.stack([(0.3 + 0.7 * disc) * 200 * rng.rayleigh(0.8, disc.shape) for _ in range(5)]).astype(np.float32))
    assert clean.noise_level < 0.05 < 0.2 < speckled.noise_level
    exact = clean.model_input(2, 64, Preprocessing.UNIT_RANGE)
    assert torch.equal(clean.model_input(2, 64, Preprocessing.UNIT_RANGE, smoothing=6.0), exact)
    assert speckled.smoothing_sigma(6.0) > 1.0 and speckled.smoothing_sigma(0.0) == 0.0
    rough = speckled.model_input(2, 64, Preprocessing.UNIT_RANGE)
    smooth = speckled.model_input(2, 64, Preprocessing.UNIT_RANGE, smoothing=6.0)
    inside, outside = disc > 0, disc == 0

    def contrast(image):  # object against background, in units of the background's spread
        values = image[0].numpy()
        return (values[inside].mean() - values[outside].mean()) / values[outside].std()

    assert contrast(smooth) > 2 * contrast(rough)
    assert 0.0 <= float(smooth.min()) and float(smooth.max()) <= 1.0
