"""NIfTI reading (orientation, geometry, laziness, labels) and writing labels back exactly."""

from __future__ import annotations

import gzip
import itertools

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_samed2.errors import ImageFileError, VolumeError
from napari_samed2.io import nifti
from napari_samed2.io.arrays import require_volume
from napari_samed2.io.nifti import METADATA_KEY, read_nifti, write_nifti_labels

ALL_ORIENTATIONS = [
    np.array([[axis, sign] for axis, sign in zip(perm, signs, strict=True)])
    for perm in itertools.permutations(range(3))
    for signs in itertools.product((1, -1), repeat=3)
]
# RAS+ mm -> the displayed frame (S, P, L), as documented in napari_samed2.io.nifti.
RAS_TO_DISPLAY = np.array([[0, 0, 1], [0, -1, 0], [-1, 0, 0]])


def affine_for(ornt: np.ndarray, zooms=(0.8, 0.9, 3.0), origin=(12.0, -30.0, 45.0)) -> np.ndarray:
    """File voxel axis i runs along world axis ornt[i, 0], in the direction ornt[i, 1]."""
    affine = np.eye(4)
    affine[:3, :3] = 0
    for i, (axis, sign) in enumerate(ornt):
        affine[axis, i] = sign * zooms[i]
    affine[:3, 3] = origin
    return affine


def oblique_affine() -> np.ndarray:
    affine = np.eye(4)
    rotation = Rotation.from_euler("xyz", [20, -8, 12], degrees=True).as_matrix()
    affine[:3, :3] = rotation @ np.diag([0.7, 0.75, 2.5])
    affine[:3, 3] = (-90.5, 110.25, -33.0)
    return affine


def save(path, data, affine, image_class=nib.Nifti1Image, **header_fields):
    img = image_class(data, affine)
    for key, value in header_fields.items():
        img.header[key] = value
    nib.save(img, path)
    return path


def one_layer(path):
    layers = read_nifti(path)
    assert len(layers) == 1
    return layers[0]


def test_every_orientation_is_shown_superior_posterior_left_and_written_back(tmp_path):
    """The array equals nibabel's closest-canonical (RAS+) volume transposed to (z, y, x) with
    rows and columns flipped: anterior at the top, the patient's right on the left."""
    data = np.random.default_rng(0).permutation(5 * 6 * 7).reshape(5, 6, 7).astype(np.int16)
    file_voxels = np.argwhere(np.ones(data.shape))
    for n, ornt in enumerate(ALL_ORIENTATIONS):
        affine = affine_for(ornt)
        img = nib.Nifti1Image(data, affine)
        shown, kwargs, kind = one_layer(save(tmp_path / f"o{n}.nii", data, affine))
        canonical = np.asarray(nib.as_closest_canonical(img).dataobj)
        expected = canonical.transpose(2, 1, 0)[:, ::-1, ::-1]
        assert kind == "image"
        np.testing.assert_array_equal(shown, expected, err_msg=str(ornt))
        # the voxel furthest right, anterior and superior is on the last slice, top left
        world = nib.affines.apply_affine(affine, file_voxels)
        corner = tuple(file_voxels[np.argmax(world @ [1, 1, 1])])
        assert shown[-1, 0, 0] == data[corner]
        # napari world coordinates (scale * index + translate) are scanner mm in (S, P, L)
        shown_voxels = np.argwhere(np.ones(shown.shape))
        by_value = shown_voxels[np.argsort(shown[tuple(shown_voxels.T)])]
        napari_world = by_value[data[tuple(file_voxels.T)]] * kwargs["scale"] + kwargs["translate"]
        np.testing.assert_allclose(napari_world, world @ RAS_TO_DISPLAY.T, atol=1e-9)
        # and the writer undoes the reorientation exactly
        out = write_nifti_labels(tmp_path / f"o{n}_out.nii", shown, metadata=kwargs["metadata"])
        np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), data)


def test_scale_and_translate_follow_the_affine(tmp_path):
    ornt = np.array([[0, -1], [2, 1], [1, -1]])  # L, S, P: a coronal acquisition
    affine = affine_for(ornt, zooms=(0.5, 0.6, 4.0), origin=(10.0, 20.0, -30.0))
    data = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) * 37
    shown, kwargs, _ = one_layer(save(tmp_path / "coronal.nii.gz", data, affine))
    # display axes: S (file axis 1, 0.6 mm), P (file axis 2, 4 mm), L (file axis 0, 0.5 mm)
    assert shown.shape == (4, 5, 3)
    assert kwargs["scale"] == pytest.approx((0.6, 4.0, 0.5))
    first = nib.affines.apply_affine(affine, np.argwhere(data == shown[0, 0, 0])[0])
    assert kwargs["translate"] == pytest.approx(RAS_TO_DISPLAY @ first)


def synthetic_pair(tmp_path, affine, image_class=nib.Nifti1Image, **header_fields):
    """An image and a label file on the same grid; the label is a bright block."""
    rng = np.random.default_rng(1)
    image = rng.normal(100, 10, size=(20, 24, 9)).astype(np.float32)
    label = np.zeros(image.shape, dtype=np.int16)
    label[3:9, 15:20, 2:5] = 1
    label[12:15, 4:7, 6:8] = 2
    image[label > 0] += 500
    suffix = ".nii.gz"
    image_path = save(tmp_path / f"case_image{suffix}", image, affine, image_class, **header_fields)
    label_path = save(tmp_path / f"case_label{suffix}", label, affine, image_class)
    return image_path, label_path, label


FLIPPED = affine_for(np.array([[0, -1], [1, -1], [2, 1]]))  # LPS, as DICOM converters write
PERMUTED = affine_for(np.array([[1, 1], [2, -1], [0, 1]]))  # a sagittal acquisition
LEFT_HANDED = affine_for(np.array([[0, -1], [1, 1], [2, 1]]))  # LAS, as FSL's radiological files: qfac -1
GEOMETRY_FIELDS = (  # what other tools read the grid from
    "sform_code", "qform_code", "pixdim", "quatern_b", "quatern_c", "quatern_d",
    "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z",
)


@pytest.mark.parametrize(
    "affine", [oblique_affine(), FLIPPED, PERMUTED, LEFT_HANDED], ids=["oblique", "flipped", "permuted", "left-handed"]
)
@pytest.mark.parametrize("image_class", [nib.Nifti1Image, nib.Nifti2Image], ids=["nifti1", "nifti2"])
def test_labels_round_trip_to_the_original_grid(tmp_path, affine, image_class):
    image_path, label_path, label = synthetic_pair(tmp_path, affine, image_class)
    shown, kwargs, kind = one_layer(label_path)
    assert kind == "labels"
    out = write_nifti_labels(tmp_path / "out.nii.gz", shown, metadata=kwargs["metadata"])
    written, source = nib.load(out), nib.load(label_path)
    assert type(written) is image_class
    for name in GEOMETRY_FIELDS:  # the same header geometry, not only the same world positions
        np.testing.assert_array_equal(written.header[name], source.header[name], err_msg=name)
    np.testing.assert_array_equal(written.affine, source.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), label)
    assert written.get_data_dtype() == np.uint8
    assert written.header.get_intent()[0] == "label"


def test_qform_only_file_with_header_extensions_round_trips(tmp_path):
    labels = np.zeros((5, 6, 7), dtype=np.uint8)
    labels[1:3, 2:4, 3:6] = 1
    affine = affine_for(np.array([[2, -1], [1, -1], [0, 1]]), origin=(-10.0, 20.0, 5.0))
    img = nib.Nifti1Image(labels, affine)
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"converted by a scanner tool"))
    img.header.set_sform(None, code=0)
    img.header.set_qform(affine, code=1)
    nib.save(img, tmp_path / "qform_label.nii")
    shown, kwargs, _ = one_layer(tmp_path / "qform_label.nii")
    written = nib.load(write_nifti_labels(tmp_path / "out.nii", shown, metadata=kwargs["metadata"]))
    assert (int(written.header["sform_code"]), int(written.header["qform_code"])) == (0, 1)
    assert np.allclose(written.affine, affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)


def test_labels_drawn_on_a_scaled_image_land_on_its_voxels(tmp_path):
    """Labels made in napari over an image (not read from a label file) go back on the image's
    grid; the image's intensity scaling (scl_slope) must not be applied to them."""
    image_path, _, label = synthetic_pair(
        tmp_path, oblique_affine(), scl_slope=2.0, scl_inter=-5.0, cal_min=0.0, cal_max=1500.0
    )
    image, kwargs, kind = one_layer(image_path)
    assert kind == "image"
    assert np.allclose(image.max(), 2.0 * np.asarray(nib.load(image_path).dataobj.get_unscaled()).max() - 5.0)
    drawn = (image > 2.0 * 350 - 5).astype(np.uint8)  # what a user or the model would segment
    out = write_nifti_labels(tmp_path / "drawn.nii", drawn, metadata=kwargs["metadata"])
    written = nib.load(out)
    np.testing.assert_array_equal(np.asarray(written.dataobj), (label > 0).astype(np.uint8))
    assert np.allclose(written.affine, nib.load(image_path).affine)
    assert written.dataobj.slope == 1 and written.dataobj.inter == 0
    assert written.header["cal_max"] == 0  # the image's display range does not apply to labels


@pytest.mark.parametrize("case", ["brain1", "breast1"])
def test_shared_volumes_round_trip(shared_data, tmp_path, case):
    source = nib.load(shared_data / f"{case}_label.nii.gz")
    shown, kwargs, kind = one_layer(shared_data / f"{case}_label.nii.gz")
    assert kind == "labels"
    out = write_nifti_labels(tmp_path / f"{case}.nii.gz", shown, metadata=kwargs["metadata"])
    written = nib.load(out)
    assert np.allclose(written.affine, source.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(source.dataobj))


def lesion_contrast(image: np.ndarray, labels: np.ndarray) -> float:
    """Mean image intensity inside the label over the mean of the slices the label is on."""
    mask = labels > 0
    slices = np.unique(np.nonzero(mask)[0])
    return float(image[mask].mean() / image[slices].mean())


def test_brain_opens_with_its_voxel_size_and_the_label_on_the_lesion(shared_data):
    image, image_kwargs, image_kind = one_layer(shared_data / "brain1_image.nii.gz")
    labels, label_kwargs, label_kind = one_layer(shared_data / "brain1_label.nii.gz")
    assert (image_kind, label_kind) == ("image", "labels")
    assert image.shape == labels.shape == (25, 256, 256)
    assert image_kwargs["scale"] == pytest.approx((6.5, 0.78125, 0.78125))
    assert label_kwargs["scale"] == pytest.approx(image_kwargs["scale"])
    assert label_kwargs["translate"] == pytest.approx(image_kwargs["translate"])
    assert np.count_nonzero(labels) == 4137
    # the enhancing lesion is about twice as bright as the slices it is on ...
    assert lesion_contrast(image, labels) > 1.8
    # ... and the check notices a label that is flipped or transposed relative to the image
    for wrong in (labels[:, ::-1, :], labels[:, :, ::-1], labels[::-1], labels.transpose(0, 2, 1)):
        assert lesion_contrast(image, wrong) < 1.4


def test_brain_file_axes_land_where_documented(shared_data):
    """brain1 is stored L, A, S (x increases to the patient's left, y anteriorly): shown as
    (z, y, x) its rows are reversed (anterior first) and its columns kept (right first)."""
    path = shared_data / "brain1_image.nii.gz"
    assert nib.aff2axcodes(nib.load(path).affine) == ("L", "A", "S")
    image, _, _ = one_layer(path)
    raw = np.asarray(nib.load(path).dataobj)
    np.testing.assert_array_equal(image, raw.transpose(2, 1, 0)[:, ::-1, :])


def test_uncompressed_nifti_is_memory_mapped_not_read(tmp_path):
    data = np.random.default_rng(2).integers(0, 4000, size=(30, 40, 12)).astype(np.int16)
    path = save(tmp_path / "big.nii", data, FLIPPED)
    shown, _, _ = one_layer(path)
    assert isinstance(shown, np.memmap)
    assert not shown.flags.owndata
    expected = np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj).transpose(2, 1, 0)[:, ::-1, ::-1]
    np.testing.assert_array_equal(shown, expected)
    shown[0, 0, 0] = -1  # copy-on-write: editing the layer never changes the file
    assert np.array_equal(np.asarray(nib.load(path).dataobj), data)


def test_big_scaled_nifti_is_read_lazily_with_dask(tmp_path, monkeypatch):
    data = np.random.default_rng(3).integers(0, 4000, size=(10, 12, 6)).astype(np.int16)
    path = save(tmp_path / "scaled.nii", data, PERMUTED, scl_slope=0.5, scl_inter=10.0)
    eager, _, _ = one_layer(path)
    monkeypatch.setattr(nifti, "LAZY_BYTES", 0)
    lazy, _, _ = one_layer(path)
    assert isinstance(lazy, da.Array) and not isinstance(eager, da.Array)
    assert max(lazy.numblocks) > 1
    np.testing.assert_allclose(lazy.compute(), eager)
    np.testing.assert_allclose(eager.max(), data.max() * 0.5 + 10.0)


def test_float_masks_open_as_integer_labels(tmp_path):
    mask = np.zeros((6, 7, 8), dtype=np.float32)
    mask[2:4, 2:5, 3:6] = 1.0
    shown, _, kind = one_layer(save(tmp_path / "prediction.nii.gz", mask, np.eye(4)))
    assert kind == "labels" and shown.dtype == np.uint8 and shown.sum() == 18


def test_2d_file_opens_as_an_image_that_the_segmenter_refuses(tmp_path):
    data = np.random.default_rng(4).normal(size=(40, 50)).astype(np.float32)
    path = save(tmp_path / "slice.nii.gz", data, affine_for(np.array([[0, -1], [1, 1], [2, 1]])))
    shown, kwargs, kind = one_layer(path)
    assert kind == "image" and shown.shape == (50, 40)
    np.testing.assert_array_equal(shown, data.T[::-1, :])  # columns R -> L is already the file's
    assert kwargs["scale"] == pytest.approx((0.9, 0.8))
    with pytest.raises(VolumeError, match=r"2D image of shape \(50, 40\)"):
        require_volume(shown)
    drawn = (shown > 0).astype(np.uint8)
    out = write_nifti_labels(tmp_path / "slice_label.nii.gz", drawn, metadata=kwargs["metadata"])
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), (data > 0).astype(np.uint8))


def test_4d_series_shows_time_first_and_round_trips(tmp_path):
    data = np.random.default_rng(5).integers(0, 1000, size=(6, 7, 5, 3)).astype(np.int16)
    affine = affine_for(np.array([[0, -1], [1, -1], [2, 1]]))
    path = save(tmp_path / "dce.nii.gz", data, affine)
    shown, kwargs, _ = one_layer(path)
    assert shown.shape == (3, 5, 7, 6)
    np.testing.assert_array_equal(shown[1], data[..., 1].transpose(2, 1, 0))  # L, P, S: no flips
    assert len(kwargs["scale"]) == len(kwargs["translate"]) == 4
    drawn = (shown > 500).astype(np.uint8)
    out = write_nifti_labels(tmp_path / "dce_label.nii.gz", drawn, metadata=kwargs["metadata"])
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), (data > 500).astype(np.uint8))


def test_single_time_point_4d_file_is_a_volume(tmp_path):
    data = np.random.default_rng(6).integers(0, 1000, size=(6, 7, 5, 1)).astype(np.int16)
    shown, kwargs, _ = one_layer(save(tmp_path / "t1_4d.nii", data, FLIPPED))
    assert require_volume(shown) == (5, 7, 6) and len(kwargs["scale"]) == 3
    out = write_nifti_labels(tmp_path / "t1_4d_label.nii", (shown > 500).astype(np.uint8), metadata=kwargs["metadata"])
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), (data > 500).astype(np.uint8))


def test_labels_without_a_source_grid_are_placed_by_scale_and_translate(tmp_path):
    labels = np.zeros((4, 5, 6), dtype=np.uint16)
    labels[1:3, 2:4, 1:5] = 300
    scale, translate = (3.0, 0.5, 0.7), (-20.0, 4.0, 9.0)
    out = write_nifti_labels(tmp_path / "free.nii.gz", labels, scale=scale, translate=translate)
    written = nib.load(out)
    assert nib.aff2axcodes(written.affine) == ("R", "A", "S")
    assert written.get_data_dtype() == np.uint16
    shown, kwargs, kind = one_layer(out)
    assert kind == "labels"
    np.testing.assert_array_equal(shown, labels)
    assert kwargs["scale"] == pytest.approx(scale) and kwargs["translate"] == pytest.approx(translate)


def test_labels_of_the_wrong_shape_are_refused(tmp_path):
    _, label_path, _ = synthetic_pair(tmp_path, FLIPPED)
    shown, kwargs, _ = one_layer(label_path)
    with pytest.raises(VolumeError, match=r"labels of shape \(9, 24, 19\) do not match.*\(9, 24, 20\)"):
        write_nifti_labels(tmp_path / "x.nii.gz", shown[:, :, 1:], metadata=kwargs["metadata"])
    with pytest.raises(ImageFileError, match=r"\*\.nii\.gz"):
        write_nifti_labels(tmp_path / "x.nrrd", shown, metadata=kwargs["metadata"])
    assert not list(tmp_path.glob("x.*"))


def test_metadata_is_plain_and_picklable(tmp_path):
    import pickle

    _, label_path, _ = synthetic_pair(tmp_path, oblique_affine())
    _, kwargs, _ = one_layer(label_path)
    entry = pickle.loads(pickle.dumps(kwargs["metadata"]))[METADATA_KEY]
    assert np.allclose(entry["affine"], nib.load(label_path).affine)
    assert isinstance(entry["header"], bytes) and len(entry["header"]) == 348
    assert entry["shape"] == [20, 24, 9] and np.array(entry["transform"]).shape == (3, 2)
    assert kwargs["metadata"]["unit"] == "mm" and kwargs["metadata"]["source"] == str(label_path)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    path = save(tmp_path / "scan.nii.gz", np.ones((40, 40, 40), dtype=np.int16), np.eye(4))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageFileError, match="cannot read scan.nii.gz as NIfTI.*truncated.*again"):
        read_nifti(path)


def test_truncated_uncompressed_file_is_a_clear_error(tmp_path):
    path = save(tmp_path / "scan.nii", np.ones((40, 40, 40), dtype=np.int16), np.eye(4))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ImageFileError, match="cannot read scan.nii as NIfTI.*truncated"):
        read_nifti(path)


def test_not_a_nifti_and_missing_files_are_clear_errors(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"this is not an image" * 50))
    with pytest.raises(ImageFileError, match="cannot read notes.nii.gz as NIfTI"):
        read_nifti(path)
    with pytest.raises(ImageFileError, match="does not exist.*check the path"):
        read_nifti(tmp_path / "absent.nii.gz")


def test_5d_file_is_refused_with_what_to_do(tmp_path):
    path = save(tmp_path / "field.nii.gz", np.zeros((4, 5, 6, 1, 3), dtype=np.float32), np.eye(4))
    with pytest.raises(ImageFileError, match=r"5 dimensions \(shape \(4, 5, 6, 1, 3\)\).*slicer"):
        read_nifti(path)
