"""The readers, writers and sample data are reachable through npe2 and napari itself."""

from __future__ import annotations

import nibabel as nib
import npe2
import numpy as np
import pytest
import tifffile

from napari_samed2.errors import ImageFileError
from napari_samed2.io import get_reader, read_image

PLUGIN = "napari-samed2"


@pytest.fixture
def volume_files(tmp_path):
    """A LPS-ordered NIfTI image, its label file and an OME-TIFF, like a user's folder."""
    rng = np.random.default_rng(0)
    image = rng.normal(300, 40, size=(32, 28, 6)).astype(np.float32)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[10:20, 5:12, 2:4] = 1
    affine = np.diag([-0.8, -0.8, 4.0, 1.0])
    affine[:3, 3] = (20.0, 15.0, -10.0)
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "t1_seg.nii.gz")
    tifffile.imwrite(tmp_path / "stack.ome.tif", image.T.copy(), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 4.0, "PhysicalSizeY": 0.8, "PhysicalSizeX": 0.8})
    return tmp_path, labels, affine


def test_manifest_declares_readers_writers_and_sample():
    manager = npe2.PluginManager.instance()
    manager.discover()
    contributions = manager.get_manifest(PLUGIN).contributions
    patterns = {p for reader in contributions.readers for p in reader.filename_patterns}
    assert {"*.nii", "*.nii.gz", "*.tif", "*.tiff", "*.ome.tif", "*.ome.tiff"} <= patterns
    extensions = {e for writer in contributions.writers for e in writer.filename_extensions}
    assert {".nii.gz", ".nii", ".tif", ".ome.tif"} <= extensions
    assert all(writer.layer_types == ["labels"] for writer in contributions.writers)
    assert [s.key for s in contributions.sample_data] == ["synthetic_mr"]


def test_npe2_reads_nifti_and_tiff_with_this_plugin(volume_files):
    folder, labels, _ = volume_files
    (image, kwargs, kind), = npe2.read([str(folder / "t1.nii.gz")], plugin_name=PLUGIN, stack=False)
    assert kind == "image" and image.shape == (6, 28, 32) and kwargs["scale"] == pytest.approx((4.0, 0.8, 0.8))
    (seg, seg_kwargs, seg_kind), = npe2.read([str(folder / "t1_seg.nii.gz")], plugin_name=PLUGIN, stack=False)
    assert seg_kind == "labels" and seg.sum() == labels.sum()
    assert seg_kwargs["translate"] == pytest.approx(kwargs["translate"])
    (stack, stack_kwargs, _), = npe2.read([str(folder / "stack.ome.tif")], plugin_name=PLUGIN, stack=False)
    assert stack.shape == (6, 28, 32) and stack_kwargs["scale"] == pytest.approx((4.0, 0.8, 0.8))


def test_get_reader_claims_only_nifti_and_tiff(tmp_path):
    assert get_reader("scan.png") is None
    assert get_reader(["a.nii.gz", "b.csv"]) is None
    assert get_reader(str(tmp_path)) is None
    assert callable(get_reader("scan.NII.GZ")) and callable(get_reader(["a.nii", "b.ome.tiff"]))
    assert callable(get_reader(tmp_path / "scan.tif"))
    with pytest.raises(ImageFileError, match="neither NIfTI nor TIFF.*reads .nii.gz"):
        read_image(tmp_path / "notes.txt")


def test_reader_returns_one_layer_per_file(volume_files):
    folder, _, _ = volume_files
    paths = [str(folder / "t1.nii.gz"), str(folder / "t1_seg.nii.gz")]
    layers = get_reader(paths)(paths)
    assert [kind for _, _, kind in layers] == ["image", "labels"]


def test_npe2_writes_labels_back_on_the_image_grid(volume_files, tmp_path):
    folder, labels, affine = volume_files
    layer_data = npe2.read([str(folder / "t1_seg.nii.gz")], plugin_name=PLUGIN, stack=False)
    out = tmp_path / "edited.nii.gz"
    written = npe2.write(str(out), layer_data, plugin_name=PLUGIN)
    assert written == [str(out)]
    assert np.allclose(nib.load(out).affine, affine)
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), labels)


@pytest.mark.gui
def test_napari_opens_saves_and_samples_through_the_plugin(make_napari_viewer, volume_files, tmp_path):
    folder, labels, affine = volume_files
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(folder / "t1.nii.gz"), plugin=PLUGIN)
    (seg,) = viewer.open(str(folder / "t1_seg.nii.gz"), plugin=PLUGIN)
    assert type(image).__name__ == "Image" and type(seg).__name__ == "Labels"
    np.testing.assert_allclose(seg.scale, (4.0, 0.8, 0.8))
    assert "nifti" in seg.metadata
    seg.data[0] = 0  # an edit in the viewer
    out = tmp_path / "saved.nii.gz"
    viewer.layers.selection = {seg}
    assert viewer.layers.save(str(out), selected=True, plugin=PLUGIN) == [str(out)]
    expected = labels.copy()
    expected[:, :, 0] = 0  # displayed slice 0 is the file's first z plane (stored inferior first)
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), expected)
    assert np.allclose(nib.load(out).affine, affine)

    viewer.open_sample(PLUGIN, "synthetic_mr")
    assert [layer.name for layer in viewer.layers][-2:] == ["synthetic MR", "synthetic MR labels"]
