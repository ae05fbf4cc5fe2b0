"""From napari layers to engine prompts: world coordinates to the image's pixels.

Prompt layers may have their own scale and translate (a Points layer made before the image,
a box drawn on a layer with another voxel size): every coordinate goes data -> world through
the prompt layer's transform and world -> data through the image layer's, as napari itself
places layers in the canvas. No Qt here; scripts can use these functions as the GUI does.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from napari_samed2.engine.prompts import NEGATIVE, POSITIVE, FramePrompt
from napari_samed2.engine.volume import Volume
from napari_samed2.errors import PromptError


def to_image_pixels(coords: np.ndarray, layer, image_layer) -> np.ndarray:
    """``(N, ndim)`` data coordinates of ``layer`` as data coordinates of ``image_layer``."""
    coords = np.asarray(coords, dtype=float).reshape(-1, layer.ndim)
    if layer.ndim != image_layer.ndim:
        raise PromptError(
            f"layer {layer.name!r} has {layer.ndim} dimensions but the image {image_layer.name!r} has "
            f"{image_layer.ndim}: draw prompts on a layer made for this image"
        )
    return np.array([image_layer.world_to_data(layer.data_to_world(c)) for c in coords]).reshape(-1, layer.ndim)


def _frame_and_plane(pixels: np.ndarray, volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame index, in-plane (row, col), and whether each point lies on the volume's fixed indices."""
    frames = np.rint(pixels[:, volume.axis]).astype(int)
    plane = pixels[:, list(volume.plane_axes)]
    on_fixed = np.ones(len(pixels), bool)
    for dim, index in volume.fixed.items():
        on_fixed &= np.rint(pixels[:, dim]).astype(int) == index
    return frames, plane, on_fixed


def prompts_from_layers(
    volume: Volume,
    image_layer,
    points_layer=None,
    shapes_layer=None,
    object_key: str = "object",
    polarity_key: str = "positive",
) -> dict[tuple[int, int], FramePrompt]:
    """Every prompt drawn in the layers, keyed by ``(object id, frame)``.

    Points carry features ``object`` (id) and ``positive`` (bool); rectangles carry ``object``.
    Points outside the volume or off its fixed indices are ignored; an object with more than one
    box on a frame is refused (SAM-2 takes one box per object and frame).
    """
    clicks: dict[tuple[int, int], list[tuple[np.ndarray, int]]] = defaultdict(list)
    boxes: dict[tuple[int, int], tuple[float, float, float, float]] = {}
    if points_layer is not None and len(points_layer.data):
        pixels = to_image_pixels(points_layer.data, points_layer, image_layer)
        frames, plane, on_fixed = _frame_and_plane(pixels, volume)
        objects = points_layer.features[object_key].to_numpy(int)
        positive = points_layer.features[polarity_key].to_numpy(bool)
        for frame, rc, ok, obj, pos in zip(frames, plane, on_fixed, objects, positive):
            if ok and 0 <= frame < len(volume):
                clicks[(int(obj), int(frame))].append((rc, POSITIVE if pos else NEGATIVE))
    if shapes_layer is not None and len(shapes_layer.data):
        objects = shapes_layer.features[object_key].to_numpy(int)
        for vertices, kind, obj in zip(shapes_layer.data, shapes_layer.shape_type, objects):
            if kind != "rectangle":
                continue
            pixels = to_image_pixels(vertices, shapes_layer, image_layer)
            frames, plane, on_fixed = _frame_and_plane(pixels, volume)
            if not on_fixed.all() or len(set(frames)) != 1 or not 0 <= frames[0] < len(volume):
                continue
            key = (int(obj), int(frames[0]))
            if key in boxes:
                raise PromptError(
                    f"object {key[0]} has two boxes on slice {key[1]}: SAM-2 takes one box per object "
                    "and slice; delete one"
                )
            (row0, col0), (row1, col1) = plane.min(axis=0), plane.max(axis=0)
            boxes[key] = (float(row0), float(col0), float(row1), float(col1))
    prompts = {}
    for key in set(clicks) | set(boxes):
        points = clicks.get(key, [])
        prompts[key] = FramePrompt(
            np.array([p for p, _ in points], np.float32).reshape(-1, 2),
            np.array([label for _, label in points], np.int32),
            box=boxes.get(key),
        )
    return prompts


def mask_from_labels(labels_layer, image_layer, volume: Volume, frame: int, object_id: int | None) -> np.ndarray:
    """The ``(H, W)`` mask of ``object_id`` (or of any label, when ``None``) on ``frame`` of a
    Labels layer that covers the image pixel for pixel."""
    if labels_layer.data.shape != volume.spatial_shape:
        raise PromptError(
            f"labels layer {labels_layer.name!r} has shape {labels_layer.data.shape}, not the image's "
            f"{volume.spatial_shape}: paint the mask on a layer the size of the image"
        )
    if not np.allclose(labels_layer.scale, image_layer.scale) or not np.allclose(
        labels_layer.translate, image_layer.translate
    ):
        raise PromptError(
            f"labels layer {labels_layer.name!r} is not aligned with the image (scale or translate differ)"
        )
    frame_labels = np.asarray(labels_layer.data[volume.frame_index(frame)])
    return frame_labels != 0 if object_id is None else frame_labels == object_id


# engine prompts back to layers (undo puts the layers' prompts back as the session has them)
def to_layer_data(pixels: np.ndarray, frame: int, volume: Volume, image_layer, layer) -> np.ndarray:
    """In-plane ``(row, col)`` pixels of ``frame`` as ``(N, ndim)`` data coordinates of
    ``layer``: the inverse of :func:`to_image_pixels` on the volume's frame."""
    plane = np.asarray(pixels, dtype=float).reshape(-1, 2)
    full = np.zeros((len(plane), image_layer.ndim))
    full[:, volume.axis] = frame
    full[:, list(volume.plane_axes)] = plane
    for dim, index in volume.fixed.items():
        full[:, dim] = index
    return np.array([layer.world_to_data(image_layer.data_to_world(v)) for v in full]).reshape(-1, layer.ndim)


def box_corners(box: tuple[float, float, float, float]) -> np.ndarray:
    """A ``(row0, col0, row1, col1)`` box as the four ``(row, col)`` corners of a rectangle."""
    row0, col0, row1, col1 = box
    return np.array([[row0, col0], [row0, col1], [row1, col1], [row1, col0]], dtype=float)


def prompt_keys_of_rows(volume: Volume, image_layer, layer, object_key: str = "object") -> list[tuple[int, int] | None]:
    """The ``(object id, frame)`` each point or shape of a prompt layer belongs to, as
    :func:`prompts_from_layers` reads them (``None``: not a prompt of this volume)."""
    from napari.layers import Points

    if not len(layer.data):
        return []
    objects = layer.features[object_key].to_numpy(int)
    if isinstance(layer, Points):
        frames, _plane, on_fixed = _frame_and_plane(to_image_pixels(layer.data, layer, image_layer), volume)
        return [
            (int(obj), int(frame)) if ok and 0 <= frame < len(volume) else None
            for obj, frame, ok in zip(objects, frames, on_fixed)
        ]
    keys = []
    for vertices, kind, obj in zip(layer.data, layer.shape_type, objects):
        frames, _plane, on_fixed = _frame_and_plane(to_image_pixels(vertices, layer, image_layer), volume)
        ok = kind == "rectangle" and on_fixed.all() and len(set(frames)) == 1 and 0 <= frames[0] < len(volume)
        keys.append((int(obj), int(frames[0])) if ok else None)
    return keys
