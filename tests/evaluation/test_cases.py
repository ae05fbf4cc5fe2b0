"""Cases: reading pairs, spacing in mm, and every bad input refused before any model work."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_samed2.errors import ImageFileError, LabelError, SamEd2Error, VolumeError
from napari_samed2.evaluation import EvalCase, SpacingAssumedWarning, find_images, find_pairs, pairs_from_arguments


def volume_pair(shape=(6, 16, 20)):
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[1:4, 3:8, 4:9] = 1
    label[2:5, 9:14, 10:16] = 2
    image[label == 1] += 200
    return image, label


def write_nifti(path, zyx, spacing_zyx, dtype):
    """A RAS-oriented NIfTI whose displayed (z, y, x) array is ``zyx`` (see io/nifti.py)."""
    xyz = np.ascontiguousarray(zyx[:, ::-1, ::-1].transpose(2, 1, 0)).astype(dtype)
    nib.save(nib.Nifti1Image(xyz, np.diag([*spacing_zyx[::-1], 1.0])), str(path))
    return path


def test_nifti_pair_reads_spacing_in_mm_and_objects(tmp_path):
    image, label = volume_pair()
    write_nifti(tmp_path / "knee_image.nii.gz", image, (3.0, 0.5, 0.7), np.float32)
    write_nifti(tmp_path / "knee_label.nii.gz", label, (3.0, 0.5, 0.7), np.uint8)
    case = EvalCase.from_files(tmp_path / "knee_image.nii.gz", tmp_path / "knee_label.nii.gz")
    assert case.name == "knee" and case.spacing == pytest.approx((3.0, 0.5, 0.7))
    assert case.object_ids == [1, 2] and not case.spacing_assumed
    np.testing.assert_array_equal(case.label, label)


def test_tiff_spacing_in_micrometres_becomes_mm_and_missing_spacing_is_announced(tmp_path):
    image, label = volume_pair()
    tifffile.imwrite(tmp_path / "cells.ome.tif", image, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5})
    tifffile.imwrite(tmp_path / "cells_label.tif", label)
    case = EvalCase.from_files(tmp_path / "cells.ome.tif", tmp_path / "cells_label.tif")
    assert case.spacing == pytest.approx((0.002, 0.0005, 0.0005))  # OME's default unit is µm
    tifffile.imwrite(tmp_path / "plain.tif", image)
    with pytest.warns(SpacingAssumedWarning, match="1.0, 1.0, 1.0"):
        case = EvalCase.from_files(tmp_path / "plain.tif", tmp_path / "cells_label.tif")
    assert case.spacing_assumed and case.spacing == (1.0, 1.0, 1.0)
    with pytest.warns(SpacingAssumedWarning, match="spacing"):
        assert EvalCase.from_arrays(image, label).spacing_assumed


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda im, lb: (im, lb[:, :-1]), LabelError, "label shape .* differs from image shape"),
        (lambda im, lb: (im, np.zeros_like(lb)), LabelError, "empty"),
        (lambda im, lb: (im, lb * 0.5), LabelError, "fractional"),
        (lambda im, lb: (im, lb.astype(np.int16) * -1), LabelError, "integers >= 0"),
        (lambda im, lb: (np.where(lb == 2, 0.0, im), lb), LabelError, "object 2 lies where the image is uniform"),
        (lambda im, lb: (im[0], lb[0]), VolumeError, "3D volume"),
        (lambda im, lb: (np.where(lb == 1, np.nan, im), lb), VolumeError, "NaN"),
        (lambda im, lb: (im[:, :0], lb[:, :0]), VolumeError, "no voxels"),
    ],
)
def test_bad_arrays_are_refused_with_their_reason(change, error, message):
    image, label = change(*volume_pair())
    with pytest.raises(error, match=message) as caught:
        EvalCase.from_arrays(image, label, spacing=(1.0, 1.0, 1.0), name="bad")
    assert isinstance(caught.value, SamEd2Error) and str(caught.value).startswith("bad:")


def test_bad_spacing_is_refused():
    with pytest.raises(VolumeError, match="positive"):
        EvalCase.from_arrays(*volume_pair(), spacing=(1.0, 0.0, 1.0))


def test_files_that_do_not_exist_or_do_not_match(tmp_path):
    image, label = volume_pair()
    write_nifti(tmp_path / "a_image.nii.gz", image, (1, 1, 1), np.float32)
    write_nifti(tmp_path / "a_label.nii.gz", label[:, :, :-2], (1, 1, 1), np.uint8)
    with pytest.raises(LabelError, match="a_image.nii.gz / a_label.nii.gz: label shape"):
        EvalCase.from_files(tmp_path / "a_image.nii.gz", tmp_path / "a_label.nii.gz")
    with pytest.raises(ImageFileError, match="does not exist"):
        EvalCase.from_files(tmp_path / "missing.nii.gz", tmp_path / "a_label.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageFileError, match="neither NIfTI nor TIFF"):
        EvalCase.from_files(tmp_path / "notes.txt", tmp_path / "a_label.nii.gz")


def test_folders_of_pairs_in_both_conventions(tmp_path):
    image, label = volume_pair()
    flat = tmp_path / "flat"
    flat.mkdir()
    for case in ("b", "a"):
        write_nifti(flat / f"{case}_image.nii.gz", image, (1, 1, 1), np.float32)
        write_nifti(flat / f"{case}_seg.nii.gz", label, (1, 1, 1), np.uint8)
    assert [(i.name, lb.name) for i, lb in find_pairs(flat)] == [
        ("a_image.nii.gz", "a_seg.nii.gz"), ("b_image.nii.gz", "b_seg.nii.gz")
    ]
    nnunet = tmp_path / "Task01"
    (nnunet / "imagesTr").mkdir(parents=True)
    (nnunet / "labelsTr").mkdir()
    write_nifti(nnunet / "imagesTr" / "liver_003_0000.nii.gz", image, (1, 1, 1), np.float32)
    write_nifti(nnunet / "labelsTr" / "liver_003.nii.gz", label, (1, 1, 1), np.uint8)
    pairs = pairs_from_arguments([nnunet, flat / "a_image.nii.gz", flat / "a_seg.nii.gz"])
    assert [p[1].name for p in pairs] == ["liver_003.nii.gz", "a_seg.nii.gz"]  # in the order given
    pairs = pairs_from_arguments([flat / "a_image.nii.gz", flat / "a_seg.nii.gz", nnunet])
    assert [p[1].name for p in pairs] == ["a_seg.nii.gz", "liver_003.nii.gz"]
    write_nifti(flat / "c_image.nii.gz", image, (1, 1, 1), np.float32)
    with pytest.raises(ImageFileError, match="c_image.nii.gz has no label file"):
        find_pairs(flat)
    with pytest.raises(ImageFileError, match="no image/label pairs"):
        find_pairs(nnunet / "labelsTr")
    with pytest.raises(ImageFileError, match="in pairs"):
        pairs_from_arguments([flat / "a_image.nii.gz"])
    with pytest.raises(ImageFileError, match="followed by the folder"):
        pairs_from_arguments([flat / "a_image.nii.gz", nnunet, flat / "a_seg.nii.gz"])


def test_find_images_makes_labels_optional(tmp_path):
    image, label = volume_pair()
    tagged = tmp_path / "tagged"
    tagged.mkdir()
    write_nifti(tagged / "a_image.nii.gz", image, (1, 1, 1), np.float32)
    write_nifti(tagged / "a_seg.nii.gz", label, (1, 1, 1), np.uint8)
    write_nifti(tagged / "b_image.nii.gz", image, (1, 1, 1), np.float32)
    assert [(i.name, lb and lb.name) for i, lb in find_images(tagged)] == [
        ("a_image.nii.gz", "a_seg.nii.gz"), ("b_image.nii.gz", None)
    ]
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("scan2.nii.gz", "scan1.nii.gz", "scan1_label.nii.gz"):
        write_nifti(plain / name, image, (1, 1, 1), np.float32)
    (plain / "notes.txt").write_text("not a volume")
    assert [(i.name, lb and lb.name) for i, lb in find_images(plain)] == [
        ("scan1.nii.gz", "scan1_label.nii.gz"), ("scan2.nii.gz", None)
    ]
    nnunet = tmp_path / "nnunet"
    (nnunet / "imagesTs").mkdir(parents=True)
    write_nifti(nnunet / "imagesTs" / "liver_007_0000.nii.gz", image, (1, 1, 1), np.float32)
    assert find_images(nnunet) == [(nnunet / "imagesTs" / "liver_007_0000.nii.gz", None)]
    with pytest.raises(ImageFileError, match="not a folder"):
        find_images(tmp_path / "missing")
