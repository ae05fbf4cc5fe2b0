"""Scores of one object's predicted mask against its ground truth, and of a click curve.

Pure numpy on boolean ``(frames, rows, cols)`` volumes with voxel ``spacing`` in mm along
the same axes. NSD (normalised surface Dice) is MONAI's ``compute_surface_dice`` with
``use_subvoxels=True``, which measures boundaries by surface-element area exactly as
DeepMind's surface-distance code does (the code the CVPR 2025 interactive segmentation
challenge scores with); empty masks follow MONAI's rules: NaN when both are empty, 0 when
only one is.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

NSD_TOLERANCE_MM = 2.0
DICE_TARGET = 0.9


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """``2 |P ∩ T| / (|P| + |T|)``; NaN when both masks are empty."""
    prediction, truth = _same_shape(prediction, truth)
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(prediction, truth).sum()) / total


def normalized_surface_dice(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance_mm: float = NSD_TOLERANCE_MM
) -> float:
    """The fraction of both boundaries (by area) lying within ``tolerance_mm`` of the other."""
    import torch
    from monai.metrics import compute_surface_dice
    from scipy import ndimage

    prediction, truth = _same_shape(prediction, truth)
    if len(spacing) != prediction.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {prediction.ndim}D mask")
    if not prediction.any() or not truth.any():  # MONAI's rules, without its warning
        return float("nan") if not prediction.any() and not truth.any() else 0.0

    # Both surfaces and every distance between them lie in the masks' bounding box (MONAI pads
    # with background itself): cropped to it, the same value, several times faster.
    (window,) = ndimage.find_objects((prediction | truth).view(np.uint8))
    prediction, truth = prediction[window], truth[window]

    def one_hot(mask: np.ndarray):
        return torch.from_numpy(np.stack([~mask, mask])[None])

    with warnings.catch_warnings():
        # MONAI 1.5-1.6 passes one of its own deprecated arguments internally
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        value = compute_surface_dice(
            one_hot(prediction), one_hot(truth), [float(tolerance_mm)],
            spacing=[float(s) for s in spacing], use_subvoxels=True,
        )
    return float(value.reshape(-1)[0])


def curve_auc(values: Sequence[float]) -> float:
    """Area under a per-step curve with the steps spread evenly over ``[0, 1]`` (trapezoids):
    1.0 for a perfect score from the first prompt on, the mean of the two ends for 2 steps."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        raise ValueError("no steps to integrate")
    if len(values) == 1:
        return float(values[0])
    return float(np.trapezoid(values, np.linspace(0.0, 1.0, len(values))))


def clicks_to_reach(values: Sequence[float], target: float = DICE_TARGET) -> int:
    """Correction clicks needed before the score first reaches ``target`` (0 when the start
    prompt already does); ``len(values)`` (the number of clicks made, plus one) when it never does."""
    for step, value in enumerate(values):
        if value >= target:
            return step
    return len(values)


def _same_shape(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {truth.shape} differ in shape")
    return prediction, truth
