"""One SAM-2 tracking step: the single code path the engine and the trainer share.

:func:`track_step` runs sam2's own step (``SAM2Base._track_step``: memory attention over the
given memory view, prompt encoder, mask decoder) and, when asked, encodes the new memory. It
does not choose the grad mode, cast dtypes, post-process masks or move numbers to the CPU:
:class:`~napari_samed2.engine.session.Session` runs it under ``inference_mode`` and stores
compact results, the trainer runs it with gradients and keeps every tensor as computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from napari_samed2.engine.memory import image_descriptor


@dataclass(frozen=True)
class Features:
    """One frame's backbone features in the flattened form sam2's heads take."""

    vision_feats: list[torch.Tensor]
    vision_pos_embeds: list[torch.Tensor]
    feat_sizes: list[tuple[int, int]]

    @property
    def descriptor(self) -> torch.Tensor:
        top = self.vision_feats[-1]  # (HW, B, C)
        return image_descriptor(top.permute(1, 2, 0).reshape(top.shape[1], top.shape[2], *self.feat_sizes[-1]))


def features_from_backbone(sam, backbone_fpn: Sequence[torch.Tensor], vision_pos_enc: Sequence[torch.Tensor]) -> Features:
    """:class:`Features` from one frame's FPN levels (``[1, C, H, W]`` each) and position encodings."""
    _, feats, pos, sizes = sam._prepare_backbone_features(
        {"backbone_fpn": list(backbone_fpn), "vision_pos_enc": list(vision_pos_enc)}
    )
    return Features(feats, pos, sizes)


def position_encodings(sam, backbone_fpn: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The position encodings sam2's FPN neck gives feature maps of these sizes (its
    ``vision_pos_enc``): a sine encoding of the grid, cast to the features' dtype, the same
    for every frame. Features read from the embedding cache therefore need no image-encoder
    run to get them, so a session on an embedded volume encodes nothing at all."""
    encode = sam.image_encoder.neck.position_encoding
    return [encode(level).to(level.dtype) for level in backbone_fpn]


def encode_images(sam, images: torch.Tensor) -> list[Features]:
    """Run the image encoder on a batch of model-ready frames ``[B, 3, S, S]``, one
    :class:`Features` per frame. Gradients flow if the caller's grad mode allows them."""
    backbone = sam.forward_image(images)
    pos = [p[:1] for p in backbone["vision_pos_enc"]]
    return [
        features_from_backbone(sam, [level[i : i + 1] for level in backbone["backbone_fpn"]], pos)
        for i in range(images.shape[0])
    ]


@dataclass(frozen=True)
class StepOutput:
    """sam2's outputs for one object on one frame.

    ``ious``: predicted IoU per candidate mask ``[1, M]`` (already a sigmoid); ``low_res_multimasks``
    / ``high_res_multimasks``: every candidate's logits ``[1, M, s, s]`` (``s`` a quarter of the
    image size) and ``[1, M, S, S]``; ``low_res`` / ``high_res``: the chosen mask ``[1, 1, ., .]``;
    ``obj_ptr`` ``[1, C]``; ``object_score`` ``[1, 1]`` logits (> 0: the object is present);
    ``maskmem_features`` / ``maskmem_pos_enc``: the new memory, ``None`` unless encoded.
    """

    ious: torch.Tensor
    low_res_multimasks: torch.Tensor
    high_res_multimasks: torch.Tensor
    low_res: torch.Tensor
    high_res: torch.Tensor
    obj_ptr: torch.Tensor
    object_score: torch.Tensor
    maskmem_features: torch.Tensor | None
    maskmem_pos_enc: list[torch.Tensor] | None


def track_step(
    sam,
    features: Features,
    memory: dict,
    frame: int,
    num_frames: int,
    *,
    is_init_cond_frame: bool,
    reverse: bool,
    point_inputs: dict | None = None,
    mask_inputs: torch.Tensor | None = None,
    prev_logits: torch.Tensor | None = None,
    encode_memory: bool,
) -> StepOutput:
    """One object on one frame, attending to ``memory`` (sam2's ``output_dict`` layout, e.g.
    :meth:`MemoryView.to_sam2 <napari_samed2.engine.memory.MemoryView.to_sam2>`).

    ``prev_logits``: the frame's earlier low-resolution logits, read with new clicks (sam2's
    correction path). With ``encode_memory`` the memory encoder runs on the predicted mask,
    as sam2's ``track_step`` does for tracked frames.
    """
    current_out, sam_outputs, _, _ = sam._track_step(
        frame,
        is_init_cond_frame,
        features.vision_feats,
        features.vision_pos_embeds,
        features.feat_sizes,
        point_inputs,
        mask_inputs,
        memory,
        num_frames,
        reverse,
        prev_logits,
    )
    low_multi, high_multi, ious, low_res, high_res, obj_ptr, object_score = sam_outputs
    sam._encode_memory_in_output(
        features.vision_feats, features.feat_sizes, point_inputs, encode_memory,
        high_res, object_score, current_out,
    )
    return StepOutput(
        ious=ious,
        low_res_multimasks=low_multi,
        high_res_multimasks=high_multi,
        low_res=low_res,
        high_res=high_res,
        obj_ptr=obj_ptr,
        object_score=object_score,
        maskmem_features=current_out["maskmem_features"],
        maskmem_pos_enc=current_out["maskmem_pos_enc"],
    )


def encode_prompt_memory(
    sam, features: Features, low_res_logits: torch.Tensor, object_score: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The memory of a prompted frame, encoded from its final (low-resolution) logits, as
    sam2's video predictor does when propagation starts: after every click on the frame, so
    several clicks make one memory."""
    size = int(sam.image_size)
    high_res = F.interpolate(low_res_logits, size=(size, size), mode="bilinear", align_corners=False)
    return sam._encode_new_memory(
        current_vision_feats=features.vision_feats,
        feat_sizes=features.feat_sizes,
        pred_masks_high_res=high_res,
        object_score_logits=object_score,
        is_mask_from_pts=True,
    )
