"""Files and arguments that cannot be written or read as given: messages name the file and the
problem (not a hidden temporary file or nibabel's orientation code), and nothing the user saved
before is lost."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_samed2.errors import ImageFileError, OutputFolderError, VolumeError
from napari_samed2.io import nifti, read_image, write_labels

LABELS = np.zeros((3, 8, 10), dtype=np.uint8)
LABELS[1, 2:6, 3:7] = 1
WRITERS = {".nii.gz": (nib, "save"), ".ome.tif": (tifffile, "imwrite")}
FAILURES = {
    "read-only folder": errno.EROFS,
    "no permission": errno.EACCES,
    "disk full": errno.ENOSPC,
    "quota exceeded": errno.EDQUOT,
}


@pytest.mark.parametrize("code", FAILURES.values(), ids=FAILURES.keys())
@pytest.mark.parametrize("suffix", WRITERS)
def test_a_failed_save_names_the_file_and_keeps_the_earlier_one(tmp_path, monkeypatch, suffix, code):
    path = tmp_path / f"seg{suffix}"
    write_labels(path, LABELS)
    earlier = path.read_bytes()

    def fail_half_way(*args, **kwargs):
        filename = next(a for a in args if isinstance(a, str | Path))  # nib.save(img, f), imwrite(f, data)
        Path(filename).write_bytes(b"half a file")
        raise OSError(code, os.strerror(code), str(filename))

    monkeypatch.setattr(*WRITERS[suffix], fail_half_way)
    with pytest.raises(OutputFolderError, match=f"cannot write {path} \\({os.strerror(code)}\\); the earlier "
                                                f"seg{suffix} is unchanged. Save to a folder you can write to") as info:
        write_labels(path, LABELS * 2, overwrite=True)
    assert ".partial" not in str(info.value) and isinstance(info.value, OSError)
    assert path.read_bytes() == earlier
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_folder_in_the_way_is_named(tmp_path):
    target = tmp_path / "seg.nii.gz"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(OutputFolderError, match="cannot write .*seg.nii.gz") as info:
        write_labels(target, LABELS, overwrite=True)
    assert ".partial" not in str(info.value) and (target / "inside").is_dir()


def nifti_with(tmp_path, name, sform=None, qform=None, pixdim=None) -> Path:
    """A 3D NIfTI whose header holds exactly these transforms (nibabel would fix them on save)."""
    header = nib.Nifti1Header()
    header.set_data_shape((4, 5, 6))
    header.set_data_dtype(np.float32)
    header.set_sform(*(sform if sform is not None else (None, 0)))
    header.set_qform(*(qform if qform is not None else (None, 0)))
    if pixdim is not None:
        header["pixdim"][1:4] = pixdim
    path = tmp_path / f"{name}.nii"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((4, 5, 6), np.float32), None, header=header), path)
    return path


GOOD = np.diag([2.0, 2.0, 3.0, 1.0])
SINGULAR = GOOD.copy()
SINGULAR[:3, 0] = 0
NAN = GOOD.copy()
NAN[0, 0] = np.nan
INF_OFFSET = GOOD.copy()
INF_OFFSET[0, 3] = np.inf

ORIENTATIONS = {
    "all-zero sform": (dict(sform=(np.zeros((4, 4)), 1)), "its sform .*all zeros\\). Export the image again"),
    "all-zero sform, valid qform": (
        dict(sform=(np.zeros((4, 4)), 1), qform=(GOOD, 1)), "all zeros\\). Its qform is valid.*set_sform\\(img.get_qform"
    ),
    "singular sform": (dict(sform=(SINGULAR, 2)), "singular: an axis has no extent"),
    "NaN in the sform": (dict(sform=(NAN, 1)), "its sform .*not finite"),
    "infinite origin": (dict(sform=(INF_OFFSET, 1)), "not finite"),
    "NaN voxel size": (dict(pixdim=np.nan), "its voxel size \\(pixdim\\) .*not finite"),
}


@pytest.mark.parametrize("header, message", ORIENTATIONS.values(), ids=ORIENTATIONS.keys())
def test_a_nifti_without_usable_orientation_says_how_to_fix_it(tmp_path, header, message):
    path = nifti_with(tmp_path, "scan", **header)
    with pytest.raises(ImageFileError, match=f"scan.nii has no usable orientation.*{message}"):
        read_image(path)


def test_a_valid_qform_alone_still_opens(tmp_path):
    data, kwargs, _ = nifti.read_nifti(nifti_with(tmp_path, "scan", qform=(GOOD, 1)))[0]
    assert data.shape == (6, 5, 4) and kwargs["scale"] == (3.0, 2.0, 2.0)


@pytest.mark.parametrize("suffix", [".nii.gz", ".tif"])
def test_an_image_without_voxels_is_refused(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    empty = np.zeros((0, 8, 8), np.float32)
    if suffix == ".tif":
        with pytest.warns(UserWarning, match="zero-size"):
            tifffile.imwrite(path, empty)
    else:
        nib.save(nib.Nifti1Image(empty, np.eye(4)), path)
    with pytest.raises(ImageFileError, match=f"empty{suffix} holds no voxels \\(shape .*0.*\\); export the image again"):
        read_image(path)


BAD_GEOMETRY = {
    "scale too short": (dict(scale=(1.0, 1.0)), "scale must be one finite voxel size above 0 per axis.*\\(3, 8, 10\\)"),
    "zero voxel size": (dict(scale=(0.0, 1.0, 1.0)), "scale must be one finite voxel size above 0"),
    "negative voxel size": (dict(scale=(1.0, -1.0, 1.0)), "above 0"),
    "NaN voxel size": (dict(scale=(1.0, np.nan, 1.0)), "scale must be"),
    "string voxel size": (dict(scale=("1", "a", "1")), "scale must be"),
    "translate too long": (dict(translate=(0.0, 0.0, 0.0, 0.0)), "translate must be one finite offset per axis"),
    "NaN translate": (dict(translate=(0.0, np.inf, 0.0)), "translate must be"),
}


GEOMETRY_CASES = [
    pytest.param(suffix, geometry, message, id=f"{suffix}-{name}")
    for name, (geometry, message) in BAD_GEOMETRY.items()
    for suffix in (".nii.gz", ".ome.tif")
    if not (suffix == ".ome.tif" and "translate" in geometry)  # TIFF stores no offset
]


@pytest.mark.parametrize("suffix, geometry, message", GEOMETRY_CASES)
def test_bad_scale_or_translate_is_refused_before_writing(tmp_path, suffix, geometry, message):
    with pytest.raises(VolumeError, match=message):
        write_labels(tmp_path / f"seg{suffix}", LABELS, **geometry)
    assert not list(tmp_path.iterdir())
