"""The simulated user on constructed masks whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samed2.engine import FramePrompt
from napari_samed2.evaluation.prompts import (
    Click,
    bounding_box,
    correction_click,
    deepest_point,
    largest_error,
    middle_slice,
    start_prompt,
    with_click,
)

ISO = (1.0, 1.0, 1.0)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_middle_slice_of_the_extent_and_nearest_present_slice():
    mask = np.zeros((10, 5, 5), bool)
    mask[2:7, 1:3, 1:3] = True  # extent 2..6
    assert middle_slice(mask) == 4
    mask[4] = False  # the object splits there: the nearest present slice, the lower on a tie
    assert middle_slice(mask) == 3
    with pytest.raises(ValueError, match="empty"):
        middle_slice(np.zeros((3, 4, 4), bool))


def test_box_spans_the_first_to_the_last_object_pixel():
    mask = np.zeros((20, 30), bool)
    mask[4:9, 10:21] = True
    mask[12, 15] = True  # a stray pixel below widens the box
    assert bounding_box(mask) == (4.0, 10.0, 12.0, 20.0)


def test_start_prompt_box_or_centre_click_on_the_middle_slice():
    mask = np.zeros((5, 20, 20), bool)
    mask[1:4, 5:12, 6:13] = True  # rows 5..11, cols 6..12: centre (8, 9)
    frame, prompt = start_prompt(mask, ISO, rng(), "box")
    assert frame == 2 and prompt.box == (5.0, 6.0, 11.0, 12.0) and not len(prompt.points)
    frame, prompt = start_prompt(mask, ISO, rng(), "click")
    assert frame == 2 and prompt.box is None
    np.testing.assert_array_equal(prompt.points, [[8, 9]])
    np.testing.assert_array_equal(prompt.labels, [1])
    with pytest.raises(ValueError, match="start prompt"):
        start_prompt(mask, ISO, rng(), "scribble")


def test_deepest_point_uses_the_spacing():
    # Two blocks: 7 rows x 3 columns, and 3 rows x 7 columns. In pixels they tie (depth 2).
    # With columns 3 mm wide the tall block is deeper (4 mm down its middle column, against
    # 2 mm across the flat one); with rows 3 mm high, the flat block.
    region = np.zeros((12, 20), bool)
    region[1:8, 1:4] = True
    region[2:5, 8:15] = True
    assert deepest_point(region, (1.0, 3.0), rng()) == (4, 2)
    assert deepest_point(region, (3.0, 1.0), rng()) == (3, 11)
    # An L: a thick arm (5 x 5) and a thin long arm; the thick arm holds the deepest point.
    region = np.zeros((12, 12), bool)
    region[1:6, 1:6] = True
    region[2:4, 6:11] = True
    assert deepest_point(region, (1.0, 1.0), rng()) == (3, 3)


def test_deepest_point_breaks_ties_with_the_generator_only():
    region = np.zeros((3, 8), bool)
    region[1, 1:7] = True  # a 1-pixel line: every pixel is equally deep
    picks = {deepest_point(region, (1.0, 1.0), rng(seed)) for seed in range(20)}
    assert len(picks) > 1 and all(p[0] == 1 and 1 <= p[1] <= 6 for p in picks)
    assert deepest_point(region, (1.0, 1.0), rng(3)) == deepest_point(region, (1.0, 1.0), rng(3))


def test_deepest_point_matches_the_transform_of_the_whole_image():
    """The transform runs on the region's bounding box only: the same click, ties included,
    as on the whole (padded) image, for regions touching the border and anisotropic voxels."""
    from scipy import ndimage

    def whole_image(region, spacing, generator):
        distance = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing)[(slice(1, -1),) * region.ndim]
        candidates = np.argwhere(distance == distance.max())
        return tuple(int(v) for v in candidates[generator.integers(len(candidates))])

    noise = rng(1)
    for trial in range(40):
        shape = (6, 30, 40) if trial % 2 else (30, 40)
        blobs = ndimage.gaussian_filter(noise.random(shape), 2) > 0.52
        if trial % 4 == 3:
            blobs[..., :3] = True  # touches the image border
        if not blobs.any():
            continue
        spacing = (3.0, 0.7, 1.0)[-len(shape):] if trial % 3 else (1.0,) * len(shape)
        assert deepest_point(blobs, spacing, rng(trial)) == whole_image(blobs, spacing, rng(trial))


def test_largest_error_component_decides_the_polarity():
    truth = np.zeros((4, 20, 20), bool)
    truth[:, 2:10, 2:10] = True
    prediction = truth.copy()
    prediction[1:3, 2:6, 2:6] = False  # 2 x 4 x 4 = 32 missed voxels
    prediction[0, 15:18, 15:18] = True  # 9 false-positive voxels
    prediction[3, 1, 18] = True  # 1 more, not connected
    error = largest_error(truth, prediction)
    assert error.missed and error.size == 32
    prediction[0:3, 12:19, 12:19] = True  # now 3 x 7 x 7 = 147 false positives, one component
    error = largest_error(truth, prediction)
    assert not error.missed and error.size == 147
    assert largest_error(truth, truth) is None


def test_correction_click_sits_at_the_centre_of_the_largest_error():
    spacing = (3.0, 1.0, 1.0)
    truth = np.zeros((7, 30, 30), bool)
    truth[1:6, 5:25, 5:25] = True
    prediction = truth.copy()
    # missed: a 3-slice block of 9 x 9 pixels, rows and cols 6..14. Its deepest voxel is
    # 5 mm in, at (3, 10, 10): the outer slices are only 3 mm deep (one 3 mm slice).
    prediction[2:5, 6:15, 6:15] = False
    click = correction_click(truth, prediction, spacing, rng())
    assert click == Click(frame=3, row=10, col=10, positive=True)
    # a bigger false-positive block outside the object turns the next click negative
    prediction[0:7, 26:30, 0:30] = True  # 7 x 4 x 30 = 840 voxels > 243 missed
    click = correction_click(truth, prediction, spacing, rng())
    assert not click.positive and click.row in (27, 28)  # 2 mm deep across its 4 rows
    assert correction_click(truth, truth, spacing, rng()) is None
    with pytest.raises(ValueError, match="shape"):
        correction_click(truth, truth[1:], spacing, rng())


def test_click_slice_follows_the_error_in_mm_not_voxels():
    # A missed region 2 slices thick (3 mm apart) with a wide part on slice 5 and a thin part
    # on slice 6: the deepest voxel in mm is on the wide slice.
    truth = np.zeros((8, 40, 40), bool)
    truth[2:8, 5:35, 5:35] = True
    prediction = truth.copy()
    prediction[5, 8:30, 8:30] = False
    prediction[6, 8:12, 8:30] = False
    click = correction_click(truth, prediction, (3.0, 1.0, 1.0), rng())
    assert click.frame == 5 and click.positive
    assert (click.row, click.col) in {(18, 18), (18, 19), (19, 18), (19, 19)}


def test_with_click_keeps_the_box_and_earlier_clicks():
    box = FramePrompt(box=(1.0, 1.0, 9.0, 9.0))
    first = with_click(box, Click(0, 4, 5, positive=False))
    second = with_click(first, Click(0, 6, 2, positive=True))
    assert second.box == (1.0, 1.0, 9.0, 9.0)
    np.testing.assert_array_equal(second.points, [[4, 5], [6, 2]])
    np.testing.assert_array_equal(second.labels, [0, 1])
    alone = with_click(None, Click(3, 2, 2, positive=True))
    assert alone.box is None and alone.labels.tolist() == [1]
    painted = FramePrompt(mask=np.ones((10, 10), bool))
    replaced = with_click(painted, Click(0, 2, 2, positive=False))
    assert replaced.mask is None and replaced.labels.tolist() == [0]
