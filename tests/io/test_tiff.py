"""TIFF / OME-TIFF / ImageJ stacks: voxel size, laziness, labels round trip, bad files."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_samed2.errors import ImageFileError
from napari_samed2.io import tiff
from napari_samed2.io.tiff import read_tiff, write_tiff_labels


def one_layer(path):
    layers = read_tiff(path)
    assert len(layers) == 1
    return layers[0]


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4000, size=(6, 20, 30), dtype=np.uint16)


@pytest.mark.parametrize(("high", "dtype"), [(7, np.uint8), (300, np.uint16), (70_000, np.int32)])
def test_labels_round_trip_keeps_shape_values_dtype_and_voxel_size(tmp_path, high, dtype):
    labels = np.zeros((5, 16, 24), dtype=np.int64)
    labels[1:4, 3:9, 5:12] = high
    labels[2, 10:14, 15:20] = 1
    path = write_tiff_labels(tmp_path / "seg.ome.tif", labels, scale=(2.0, 0.5, 0.4), unit="mm")
    shown, kwargs, kind = one_layer(path)
    assert kind == "labels"
    assert shown.shape == labels.shape and shown.dtype == dtype
    np.testing.assert_array_equal(shown, labels)
    assert kwargs["scale"] == pytest.approx((2.0, 0.5, 0.4))
    assert kwargs["metadata"]["unit"] == "mm" and kwargs["metadata"]["tiff"]["axes"] == "ZYX"


def test_plain_tif_suffix_round_trips_too(tmp_path):
    labels = np.eye(12, dtype=np.uint8)[None].repeat(3, axis=0)
    path = write_tiff_labels(tmp_path / "seg.tif", labels, scale=(3.0, 1.0, 1.0))
    shown, kwargs, kind = one_layer(path)
    assert kind == "labels" and shown.dtype == np.uint8
    np.testing.assert_array_equal(shown, labels)
    assert kwargs["scale"] == pytest.approx((3.0, 1.0, 1.0))
    assert kwargs["metadata"]["unit"] == "µm"  # OME's default unit when none was given


def test_ome_tiff_physical_sizes_become_the_scale(tmp_path, image):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(
        path, image, ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeZ": 2.5, "PhysicalSizeY": 0.65, "PhysicalSizeX": 0.6,
                  "PhysicalSizeZUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeXUnit": "µm"},
    )
    shown, kwargs, kind = one_layer(path)
    assert kind == "image" and shown.dtype == np.uint16
    np.testing.assert_array_equal(shown, image)
    assert kwargs["scale"] == pytest.approx((2.5, 0.65, 0.6))
    assert kwargs["metadata"]["unit"] == "µm"
    assert kwargs["name"] == "stack"


def test_ome_time_series_gets_scale_only_on_spatial_axes(tmp_path):
    series = np.random.default_rng(1).integers(0, 4000, size=(3, 4, 10, 12), dtype=np.uint16)
    path = tmp_path / "timelapse.ome.tiff"
    tifffile.imwrite(path, series, ome=True, metadata={"axes": "TZYX", "PhysicalSizeZ": 4.0, "PhysicalSizeX": 0.3})
    shown, kwargs, _ = one_layer(path)
    assert shown.shape == (3, 4, 10, 12)
    assert kwargs["scale"] == pytest.approx((1.0, 4.0, 1.0, 0.3))


def test_imagej_spacing_and_resolution_become_the_scale(tmp_path, image):
    path = tmp_path / "imagej.tif"
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / 0.25, 1 / 0.2),
                     metadata={"spacing": 3.0, "unit": "um", "axes": "ZYX"})
    shown, kwargs, kind = one_layer(path)
    assert kind == "image"
    assert kwargs["scale"] == pytest.approx((3.0, 0.2, 0.25))
    assert kwargs["metadata"]["unit"] == "µm"


@pytest.mark.parametrize("ome", [False, True])
def test_tiff_without_voxel_size_has_unit_scale_and_no_unit(tmp_path, image, ome):
    path = tmp_path / "plain.tiff"
    tifffile.imwrite(path, image, ome=ome, metadata={"axes": "ZYX"})
    shown, kwargs, _ = one_layer(path)
    assert kwargs["scale"] == (1.0, 1.0, 1.0) and kwargs["metadata"]["unit"] is None


def test_rgb_tiff_is_an_image_with_one_scale_per_spatial_axis(tmp_path):
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # a flat colour: few values, but colour samples are never labels
    path = tmp_path / "photo.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    shown, kwargs, kind = one_layer(path)
    assert kind == "image" and shown.shape == (20, 30, 3) and kwargs["scale"] == (1.0, 1.0)


def test_uncompressed_stack_is_memory_mapped(tmp_path, image):
    path = tmp_path / "raw.tif"
    tifffile.imwrite(path, image)
    shown, _, _ = one_layer(path)
    assert isinstance(shown, np.memmap)
    shown[0, 0, 0] = 1  # copy-on-write: the file is untouched
    np.testing.assert_array_equal(tifffile.imread(path), image)


def test_big_compressed_stack_is_read_page_by_page(tmp_path, image, monkeypatch):
    path = tmp_path / "zlib.ome.tif"
    tifffile.imwrite(path, image, ome=True, compression="zlib", metadata={"axes": "ZYX"})
    eager, _, _ = one_layer(path)
    assert isinstance(eager, np.ndarray) and not isinstance(eager, np.memmap)
    monkeypatch.setattr(tiff, "LAZY_BYTES", 0)
    lazy, _, kind = one_layer(path)
    assert kind == "image"
    assert isinstance(lazy, da.Array) and lazy.numblocks == (6, 1, 1)
    np.testing.assert_array_equal(lazy[3].compute(), image[3])
    np.testing.assert_array_equal(lazy.compute(), eager)


def test_unreadable_tiff_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00" + b"\xff" * 64)
    with pytest.raises(ImageFileError, match="cannot read broken.tif as TIFF.*truncated or not a TIFF"):
        read_tiff(path)
    path.write_bytes(b"plain text, not an image")
    with pytest.raises(ImageFileError, match="cannot read broken.tif as TIFF"):
        read_tiff(path)
    with pytest.raises(ImageFileError, match="does not exist"):
        read_tiff(tmp_path / "absent.tif")


def test_truncated_compressed_tiff_is_a_clear_error(tmp_path, image):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, image, compression="zlib")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageFileError, match="cannot read cut.tif as TIFF"):
        read_tiff(path)


def test_writer_refuses_bad_names_and_shapes(tmp_path):
    with pytest.raises(ImageFileError, match=r"\*\.tif"):
        write_tiff_labels(tmp_path / "seg.png", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ImageFileError, match=r"shape \(4,\).*2 to 4 axes"):
        write_tiff_labels(tmp_path / "seg.tif", np.zeros(4, np.uint8))
    assert not list(tmp_path.iterdir())
