"""Shared array checks: which files are labels, which dtype labels get, what is a volume."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samed2.errors import VolumeError
from napari_samed2.io.arrays import as_label_array, label_dtype, looks_like_labels, require_volume


@pytest.mark.parametrize(
    ("high", "dtype"), [(1, np.uint8), (255, np.uint8), (256, np.uint16), (65535, np.uint16), (65536, np.int32)]
)
def test_label_dtype_is_the_smallest_that_fits(high, dtype):
    labels = np.array([0, high], dtype=np.int64)
    assert label_dtype(labels) == dtype
    assert as_label_array(labels).dtype == dtype
    assert as_label_array(labels).tolist() == [0, high]


def test_label_dtype_for_negative_floats_and_out_of_range_values():
    assert label_dtype(np.array([-1, 3])) == np.int32
    assert label_dtype(np.array([0.0, 2.0], dtype=np.float32)) == np.uint8
    assert label_dtype(np.array([True, False])) == np.uint8
    with pytest.raises(VolumeError, match="whole numbers.*round"):
        label_dtype(np.array([0.0, 0.5]))
    with pytest.raises(VolumeError, match="does not fit 32-bit.*renumber"):
        label_dtype(np.array([0, 2**40]))


def test_labels_are_recognised_by_values_or_by_name():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 3000, size=(4, 32, 32), dtype=np.int16)
    mask = (image > 2000).astype(np.int32)
    assert looks_like_labels("scan.nii.gz", mask)
    assert not looks_like_labels("scan.nii.gz", image)
    assert not looks_like_labels("scan.nii.gz", image.astype(np.float32) + 0.5)
    # a segmentation with many labels is still labels when its name says so ...
    many = rng.integers(0, 500, size=(4, 32, 32)).astype(np.uint16)
    assert not looks_like_labels("atlas.tif", many)
    for name in ("atlas_labels.tif", "case_01_seg.nii.gz", "brain-mask.nii", "lbl.tiff"):
        assert looks_like_labels(name, many), name
    # ... but not an image whose name merely contains the letters
    assert not looks_like_labels("T1_masked.nii.gz", image)
    assert not looks_like_labels("segment_labels.nii.gz", image.astype(np.float32) + 0.5)


@pytest.mark.parametrize("shape", [(5, 32, 32), (1, 8, 8)])
def test_require_volume_accepts_a_stack_of_slices(shape):
    assert require_volume(np.zeros(shape)) == shape
    assert require_volume(np.zeros((*shape, 3)), rgb=True) == shape


def test_require_volume_names_the_shape_and_what_to_do():
    with pytest.raises(VolumeError, match=r"2D image of shape \(64, 48\).*volume \(z, y, x\)"):
        require_volume(np.zeros((64, 48)))
    with pytest.raises(VolumeError, match=r"4 spatial/time axes \(shape \(2, 3, 8, 8\)\).*layer.data\[0\]"):
        require_volume(np.zeros((2, 3, 8, 8)))
    with pytest.raises(VolumeError, match=r"2D image of shape \(8, 8, 3\)"):
        require_volume(np.zeros((8, 8, 3)), rgb=True)
    with pytest.raises(VolumeError, match="3 or 4 colour channels"):
        require_volume(np.zeros((2, 8, 8, 5)), rgb=True)
    with pytest.raises(VolumeError, match="empty"):
        require_volume(np.zeros((0, 8, 8)))
