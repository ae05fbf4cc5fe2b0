"""Run sam2's own SAM2VideoPredictor on the very frames our engine sees (the oracle)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

import sam2.sam2_video_predictor as stock_module


@contextlib.contextmanager
def stock_state(model, volume):
    """``init_state`` of the stock predictor, fed our preprocessed frame tensors directly
    (its JPEG path is lossy), sharing the weights of ``model``."""
    frames = [volume.model_input(i, model.image_size, model.spec.preprocessing) for i in range(len(volume))]
    height, width = volume.frame_shape

    def load_frames(**_):
        return frames, height, width

    original = stock_module.load_video_frames
    stock_module.load_video_frames = load_frames
    try:
        yield model.sam.init_state(video_path="<in-memory>")
    finally:
        stock_module.load_video_frames = original


def stock_masks(predictor_outputs, num_frames, obj_ids, threshold=0.0) -> dict[int, dict[int, np.ndarray]]:
    """{frame: {obj_id: bool mask}} from (frame, obj_ids, video_res_masks) tuples; later wins."""
    masks: dict[int, dict[int, np.ndarray]] = {}
    for frame, ids, logits in predictor_outputs:
        masks[frame] = {i: (logits[k, 0] > threshold).cpu().numpy() for k, i in enumerate(ids)}
    return masks


def to_sam2_points(points_rc: np.ndarray) -> np.ndarray:
    """(row, col) -> sam2's (x, y)."""
    return np.asarray(points_rc, np.float32)[:, ::-1].copy()


def to_sam2_box(box_rc) -> np.ndarray:
    r0, c0, r1, c1 = box_rc
    return np.array([c0, r0, c1, r1], np.float32)


@torch.inference_mode()
def run(fn, *args, **kwargs):
    return fn(*args, **kwargs)
