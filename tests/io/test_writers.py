"""Writing labels: choice of format, no silent overwrite, no partial files, napari's writers."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_samed2.errors import ExistingFileError, ImageFileError
from napari_samed2.io import nifti, read_image
from napari_samed2.io.writers import napari_write_labels_nifti, napari_write_labels_tiff, write_labels

LABELS = np.zeros((3, 8, 10), dtype=np.int32)
LABELS[1, 2:6, 3:7] = 2


@pytest.mark.parametrize("name", ["seg.nii.gz", "seg.nii", "seg.tif", "seg.ome.tiff"])
def test_existing_file_is_kept_unless_overwrite_is_asked_for(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"the user's earlier work")
    with pytest.raises(ExistingFileError, match=f"{name} already exists.*another file name.*overwrite=True"):
        write_labels(path, LABELS)
    assert path.read_bytes() == b"the user's earlier work"
    write_labels(path, LABELS, overwrite=True)
    shown, _, kind = read_image(path)[0]
    assert kind == "labels"
    np.testing.assert_array_equal(shown, LABELS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_failed_write_leaves_neither_partial_file_nor_damaged_original(tmp_path, monkeypatch):
    path = tmp_path / "seg.nii.gz"
    path.write_bytes(b"original")

    def crash(img, filename):
        filename.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nifti.nib, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        write_labels(path, LABELS, overwrite=True)
    assert path.read_bytes() == b"original"
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]


def test_format_follows_the_suffix_and_unknown_suffixes_are_refused(tmp_path):
    write_labels(tmp_path / "a.nii.gz", LABELS, scale=(2.0, 1.0, 1.0))
    write_labels(tmp_path / "b.ome.tif", LABELS, scale=(2.0, 0.5, 0.5), metadata={"unit": "mm"})
    assert nib.load(tmp_path / "a.nii.gz").get_data_dtype() == np.uint8
    with tifffile.TiffFile(tmp_path / "b.ome.tif") as tif:
        assert tif.is_ome and 'PhysicalSizeXUnit="mm"' in tif.ome_metadata
        assert tif.series[0].dtype == np.uint8
    with pytest.raises(ImageFileError, match=r"name the file \*\.nii\.gz"):
        write_labels(tmp_path / "c.nrrd", LABELS)
    with pytest.raises(ImageFileError, match="does not exist; create it first"):
        write_labels(tmp_path / "missing" / "d.nii.gz", LABELS)


def test_napari_writer_replaces_only_the_file_the_dialog_confirmed(tmp_path):
    chosen = tmp_path / "seg.nii.gz"
    chosen.write_bytes(b"old")  # napari's save dialog asked the user before returning this path
    assert napari_write_labels_nifti(str(chosen), LABELS, {"scale": (1, 1, 1)}) == [str(chosen)]
    np.testing.assert_array_equal(read_image(chosen)[0][0], LABELS)
    # a name typed without suffix gets one; the file of that new name was never confirmed
    written = napari_write_labels_nifti(str(tmp_path / "other"), LABELS, {})
    assert written == [str(tmp_path / "other.nii.gz")]
    with pytest.raises(ExistingFileError, match="seg.nii.gz already exists"):
        napari_write_labels_nifti(str(tmp_path / "seg"), LABELS * 0, {})
    np.testing.assert_array_equal(read_image(chosen)[0][0], LABELS)


def test_napari_tiff_writer_records_the_layer_voxel_size(tmp_path):
    from napari.layers import Labels

    layer = Labels(LABELS, scale=(3.0, 0.5, 0.25), units=("mm", "mm", "mm"))
    data, attributes, _ = layer.as_layer_data_tuple()
    (written,) = napari_write_labels_tiff(str(tmp_path / "seg"), data, attributes)
    assert written.endswith("seg.ome.tif")
    shown, kwargs, _ = read_image(written)[0]
    np.testing.assert_array_equal(shown, LABELS)
    assert kwargs["scale"] == pytest.approx((3.0, 0.5, 0.25)) and kwargs["metadata"]["unit"] == "mm"


def test_labels_metadata_carries_the_image_grid_only_for_labels_of_its_shape(tmp_path):
    from napari_samed2.io import labels_metadata

    affine = np.diag([-0.8, -0.8, 2.0, 1.0])
    affine[:3, 3] = (40.0, -12.0, 7.5)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(10, 8, 3)).astype(np.float32), affine),
             tmp_path / "t1.nii.gz")
    image, kwargs, _ = read_image(tmp_path / "t1.nii.gz")[0]
    metadata = labels_metadata(kwargs["metadata"], image.shape)
    assert set(metadata) == {"nifti", "unit"}  # not "source": the labels were not read from that file
    assert metadata["nifti"] == kwargs["metadata"]["nifti"] and metadata["nifti"] is not kwargs["metadata"]["nifti"]
    assert image.shape == LABELS.shape
    written = nib.load(write_labels(tmp_path / "seg.nii.gz", LABELS, metadata=metadata))
    np.testing.assert_array_equal(written.affine, nib.load(tmp_path / "t1.nii.gz").affine)  # the image's grid
    np.testing.assert_array_equal(np.asarray(written.dataobj), LABELS.transpose(2, 1, 0))  # and voxel order
    assert labels_metadata(kwargs["metadata"], image.shape[1:]) == {"unit": "mm"}  # another shape: no grid
    assert labels_metadata(None, image.shape) == {} and labels_metadata({"source": "a.tif"}, (2, 2)) == {}
