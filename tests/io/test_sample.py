"""The synthetic sample volume: deterministic, fast, every structure present and visible."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from napari_samed2.io.sample import ORGAN_1, ORGAN_2, TUBE, synthetic_sample, synthetic_volume


@pytest.fixture(scope="module")
def volume():
    return synthetic_volume()


def test_default_volume_shape_dtypes_and_spacing(volume):
    assert volume.image.shape == volume.labels.shape == (48, 128, 128)
    assert volume.image.dtype == np.float32 and volume.labels.dtype == np.uint8
    assert volume.spacing == (2.5, 1.0, 1.0)
    assert set(np.unique(volume.labels)) == {0, ORGAN_1, ORGAN_2, TUBE}


def test_same_seed_same_volume_other_seed_other_volume(volume):
    again = synthetic_volume(seed=0)
    np.testing.assert_array_equal(again.image, volume.image)
    np.testing.assert_array_equal(again.labels, volume.labels)
    other = synthetic_volume(seed=1)
    assert not np.array_equal(other.image, volume.image)
    assert not np.array_equal(other.labels, volume.labels)


def test_generation_is_fast():
    start = time.perf_counter()
    synthetic_volume(seed=3)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("label", [ORGAN_1, ORGAN_2, TUBE])
def test_each_structure_is_one_blob_brighter_than_its_surroundings(volume, label):
    mask = volume.labels == label
    _, blobs = ndimage.label(mask)
    assert blobs == 1 and mask.sum() > 1000
    shell = ndimage.binary_dilation(mask, iterations=3) & (volume.labels == 0)
    assert volume.image[mask].mean() > volume.image[shell].mean() + 100


def test_labels_lie_inside_the_body_away_from_the_volume_edges(volume):
    labelled = volume.labels > 0
    background = volume.image[:, :3, :3].mean()  # a corner: outside the body
    assert volume.image[labelled].min() > background + 100
    assert not labelled[:, [0, -1], :].any() and not labelled[:, :, [0, -1]].any()


def test_tube_crosses_many_slices_and_moves_in_plane(volume):
    tube = volume.labels == TUBE
    slices = np.nonzero(tube.any(axis=(1, 2)))[0]
    assert len(slices) >= 30 and np.all(np.diff(slices) == 1)
    first, last = (np.argwhere(tube[z]).mean(axis=0) for z in (slices[0], slices[-1]))
    assert np.linalg.norm(last - first) > 20  # oblique, not a straight column


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bias_field_makes_the_same_tissue_drift_smoothly(seed):
    volume = synthetic_volume(seed=seed)
    tissue = (volume.labels == 0) & (volume.image > 150)  # the body outside the structures
    drifts = []
    for axis, n in enumerate(volume.image.shape):
        halves = np.split(np.arange(n), 2)
        means = [volume.image.take(h, axis)[tissue.take(h, axis)].mean() for h in halves]
        drifts.append(abs(means[1] - means[0]) / np.mean(means))
    assert max(drifts) > 0.08  # not flat ...
    assert volume.image[tissue].std() < 0.3 * volume.image[tissue].mean()  # ... nor patchy


def test_other_shapes_keep_every_structure():
    small = synthetic_volume(shape=(16, 40, 56), seed=2)
    assert small.image.shape == (16, 40, 56)
    assert set(np.unique(small.labels)) == {0, ORGAN_1, ORGAN_2, TUBE}
    with pytest.raises(ValueError, match="at least 8 voxels"):
        synthetic_volume(shape=(4, 64, 64))


def test_npe2_sample_returns_image_and_labels_layers():
    (image, image_kwargs, image_kind), (labels, label_kwargs, label_kind) = synthetic_sample()
    assert (image_kind, label_kind) == ("image", "labels")
    assert image_kwargs["name"] == "synthetic MR"
    assert image_kwargs["scale"] == label_kwargs["scale"] == (2.5, 1.0, 1.0)
    assert image.shape == labels.shape
    assert label_kwargs["visible"] is False and "visible" not in image_kwargs  # the answer key starts hidden
