"""World -> pixel conversion of prompts drawn on layers with their own scale and translate."""

import numpy as np
import pandas as pd
import pytest
from napari.layers import Image, Labels, Points, Shapes

from napari_samed2._widgets.coordinates import (
    box_corners,
    mask_from_labels,
    prompt_keys_of_rows,
    prompts_from_layers,
    to_image_pixels,
    to_layer_data,
)
from napari_samed2.engine import Volume
from napari_samed2.errors import PromptError


@pytest.fixture
def image():
    return Image(np.zeros((6, 40, 50), np.float32), scale=(2.5, 0.8, 0.8), translate=(-5.0, 3.0, 1.0), name="ct")


def _points(coords, objects, positive, **transform):
    features = pd.DataFrame({"object": objects, "positive": positive})
    return Points(np.asarray(coords, float), ndim=3, features=features, **transform)


def test_points_on_a_layer_with_another_transform_land_on_the_right_pixels(image):
    # the same world position expressed in a layer with unit scale and a shift
    pixel = np.array([4, 10, 20])
    world = np.asarray(image.data_to_world(pixel))
    points = _points([world - (1.0, 2.0, 3.0)], [1], [True], translate=(1.0, 2.0, 3.0))
    np.testing.assert_allclose(to_image_pixels(points.data, points, image), [pixel], atol=1e-6)


def test_prompts_are_grouped_by_object_and_slice(image):
    volume = Volume(image.data)
    clicks = [[4, 10, 20], [4, 12, 22], [4.4, 30, 30], [1, 5, 5], [9, 5, 5]]  # the last is outside the volume
    points = _points(
        [image.data_to_world(c) for c in clicks], [1, 1, 2, 1, 1], [True, False, True, True, True],
        scale=(1, 1, 1),
    )
    rectangle = np.array([[2, 5, 6], [2, 5, 16], [2, 15, 16], [2, 15, 6]], float)
    shapes = Shapes(
        [rectangle * (2.5, 0.8, 0.8) + (-5.0, 3.0, 1.0)], shape_type="rectangle",
        features=pd.DataFrame({"object": [2]}),
    )
    prompts = prompts_from_layers(volume, image, points, shapes)
    assert sorted(prompts) == [(1, 1), (1, 4), (2, 2), (2, 4)]
    np.testing.assert_allclose(prompts[(1, 4)].points, [[10, 20], [12, 22]], atol=1e-5)
    assert prompts[(1, 4)].labels.tolist() == [1, 0]
    np.testing.assert_allclose(prompts[(2, 2)].box, (5, 6, 15, 16), atol=1e-5)
    assert len(prompts[(2, 2)].points) == 0


def test_two_boxes_for_one_object_on_a_slice_are_refused(image):
    rectangle = np.array([[2, 5, 6], [2, 5, 16], [2, 15, 16], [2, 15, 6]], float)
    shapes = Shapes([rectangle, rectangle + (0, 1, 1)], shape_type="rectangle", features=pd.DataFrame({"object": [1, 1]}))
    plain = Image(np.zeros((6, 40, 50), np.float32))
    with pytest.raises(PromptError, match="two boxes"):
        prompts_from_layers(Volume(plain.data), plain, shapes_layer=shapes)


def test_a_prompt_layer_of_other_dimensionality_is_refused(image):
    points = Points(np.zeros((1, 2)), features=pd.DataFrame({"object": [1], "positive": [True]}))
    with pytest.raises(PromptError, match="has 2 dimensions"):
        prompts_from_layers(Volume(image.data), image, points)


def test_mask_from_an_aligned_labels_layer(image):
    data = np.zeros((6, 40, 50), np.uint8)
    data[3, 5:10, 5:10] = 2
    labels = Labels(data, scale=image.scale, translate=image.translate)
    mask = mask_from_labels(labels, image, Volume(image.data), 3, 2)
    assert mask.sum() == 25 and mask[5, 5]
    misaligned = Labels(data)
    with pytest.raises(PromptError, match="not aligned"):
        mask_from_labels(misaligned, image, Volume(image.data), 3, 2)


def test_engine_prompts_go_back_to_layers_with_their_own_transform(image):
    """What undo uses to redraw a session's prompt: pixels -> the layer's data, the inverse of
    prompts_from_layers, on a 4D image whose slices are taken at a fixed time point."""
    series = Image(np.zeros((2, 6, 40, 50), np.float32), scale=(1.0, 2.5, 0.8, 0.8), translate=(0, -5.0, 3.0, 1.0))
    volume = Volume(series.data, axis=1, fixed={0: 1})
    points = Points(ndim=4, scale=(1.0, 1.5, 2.0, 2.0), translate=(0.0, 3.0, 1.0, -1.0))
    points.data = to_layer_data([[10.0, 20.0], [12.5, 7.0]], 3, volume, series, points)
    points.features = pd.DataFrame({"object": [2, 2], "positive": [True, False]})
    shapes = Shapes(ndim=4, scale=(1.0, 2.0, 1.0, 1.0))
    shapes.add_rectangles(to_layer_data(box_corners((5.0, 6.0, 15.0, 16.0)), 4, volume, series, shapes))
    shapes.features = pd.DataFrame({"object": [1]})
    prompts = prompts_from_layers(volume, series, points, shapes)
    assert sorted(prompts) == [(1, 4), (2, 3)]
    np.testing.assert_allclose(prompts[(2, 3)].points, [[10.0, 20.0], [12.5, 7.0]], atol=1e-4)
    assert prompts[(2, 3)].labels.tolist() == [1, 0]
    np.testing.assert_allclose(prompts[(1, 4)].box, (5.0, 6.0, 15.0, 16.0), atol=1e-4)
    assert prompt_keys_of_rows(volume, series, points) == [(2, 3), (2, 3)]
    assert prompt_keys_of_rows(volume, series, shapes) == [(1, 4)]
