"""Dice, NSD and the click-curve numbers on constructed masks with known answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from napari_samed2.evaluation.metrics import clicks_to_reach, curve_auc, dice, normalized_surface_dice


def cube(shape=(12, 20, 20), start=(3, 5, 5), size=(5, 8, 8)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))] = True
    return mask


def test_dice_counts():
    truth = cube()  # 5 * 8 * 8 = 320 voxels
    prediction = cube(start=(3, 5, 9), size=(5, 8, 8))  # shifted 4 columns: half overlaps
    assert dice(prediction, truth) == pytest.approx(2 * 160 / 640)
    assert dice(truth, truth) == 1.0
    assert dice(np.zeros_like(truth), truth) == 0.0
    assert math.isnan(dice(np.zeros_like(truth), np.zeros_like(truth)))
    with pytest.raises(ValueError, match="shape"):
        dice(truth[1:], truth)


def test_nsd_is_one_for_equal_masks_zero_when_far_apart_and_follows_empty_rules():
    truth = cube()
    spacing = (2.5, 0.8, 0.8)
    assert normalized_surface_dice(truth, truth, spacing) == pytest.approx(1.0)
    far = np.roll(cube(shape=(12, 40, 40)), 20, axis=2)  # 12 columns (9.6 mm) between them
    assert normalized_surface_dice(far, cube(shape=(12, 40, 40)), spacing) == 0.0
    assert normalized_surface_dice(np.zeros_like(truth), truth, spacing) == 0.0
    assert math.isnan(normalized_surface_dice(np.zeros_like(truth), np.zeros_like(truth), spacing))


def test_nsd_on_the_masks_bounding_box_is_monais_value_on_the_whole_volume():
    """The metric crops to where the masks are (for speed): the same value, masks cut by the
    volume's edges included."""
    import torch
    from monai.metrics import compute_surface_dice

    def whole(prediction, truth, spacing):
        one_hot = lambda m: torch.from_numpy(np.stack([~m, m])[None])  # noqa: E731
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecated argument
            value = compute_surface_dice(one_hot(prediction), one_hot(truth), [2.0], spacing=list(spacing),
                                         use_subvoxels=True)
        return float(value.reshape(-1)[0])

    rng = np.random.default_rng(0)
    shape = (10, 48, 40)
    grid = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for case in range(12):
        def blob():
            centre, radii = rng.integers(0, shape), rng.integers(2, 14, size=3)
            return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1  # often cut by an edge

        prediction, truth = blob(), blob() | (rng.random(shape) < 0.002 * (case % 2))
        if not prediction.any() or not truth.any():
            continue
        spacing = tuple(rng.uniform(0.5, 3.0, 3))
        assert normalized_surface_dice(prediction, truth, spacing) == whole(prediction, truth, spacing)


def test_nsd_measures_shifts_in_mm_along_the_right_axis():
    """A mask shifted by one voxel has every boundary point within that voxel's size of the
    other boundary: NSD is exactly 1 when the voxel is at most the tolerance (2 mm), and
    below 1 along an axis whose voxels are longer. Swapping axes would swap the answers."""
    truth = cube()
    spacing = (3.0, 1.0, 1.0)
    across = np.roll(truth, 1, axis=2)  # 1 mm
    along = np.roll(truth, 1, axis=0)  # 3 mm
    assert normalized_surface_dice(across, truth, spacing) == pytest.approx(1.0)
    # In the continuum: each box's bottom face (64 mm2) and the 16 mm2 middle of its top
    # face are > 2 mm from the other surface, of 608 mm2 in all: 528/608 = 0.87. The
    # surface elements on the voxel grid give a little less.
    shifted = normalized_surface_dice(along, truth, spacing)
    assert 0.75 < shifted < 0.88
    # with 1.5 mm slices the same voxel shift is within tolerance again
    assert normalized_surface_dice(along, truth, (1.5, 1.0, 1.0)) == pytest.approx(1.0)
    # and a tolerance above the slice gap accepts it too
    assert normalized_surface_dice(along, truth, spacing, tolerance_mm=3.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="spacing"):
        normalized_surface_dice(truth, truth, (1.0, 1.0))


def test_auc_on_known_curves():
    assert curve_auc([0.0, 0.5, 1.0]) == pytest.approx(0.5)  # trapezoids of width 1/2
    assert curve_auc([0.2, 0.2, 0.2, 0.2]) == pytest.approx(0.2)
    assert curve_auc([0.0, 1.0]) == pytest.approx(0.5)
    assert curve_auc([0.6, 0.9, 0.9, 0.9, 0.9, 0.9]) == pytest.approx((0.75 + 4 * 0.9) / 5)
    assert curve_auc([0.7]) == 0.7
    with pytest.raises(ValueError):
        curve_auc([])


def test_clicks_to_reach_counts_corrections_and_caps_at_clicks_plus_one():
    assert clicks_to_reach([0.95, 0.96]) == 0
    assert clicks_to_reach([0.5, 0.8, 0.91, 0.85]) == 2
    assert clicks_to_reach([0.5, 0.8, 0.85, 0.89, 0.89, 0.899]) == 6  # 5 clicks, never: K + 1
    assert clicks_to_reach([0.5, 0.9]) == 1  # reaching the target counts
    assert clicks_to_reach([0.5, 0.7], target=0.6) == 1
