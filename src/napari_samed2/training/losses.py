"""SAM-2's training losses, as separate functions and one weighted combiner.

Per supervised output (one object on one frame, after each correction click): sigmoid focal
loss and Dice loss on the mask logits, an L1 loss between the predicted IoU and the mask's
true IoU, and a binary cross-entropy on the object score ("is the object on this frame?").
As in SAM-2, the mask and IoU terms count only where the object is present (sam2 sets the
mask logits to -1024 where the score says absent, so those frames train through the score),
and with several candidate masks only the best one (lowest focal + Dice) is supervised, while
the IoU head learns the IoU of every candidate.

Continual adaptation adds two terms (:data:`CONTINUAL_TERMS`, weighted and logged like the
others): ``distill``, the student's outputs or memory features against a frozen teacher's
(:func:`output_distillation`, :func:`feature_distillation`), and ``anchor``, an
importance-weighted penalty on the change of the adapted weights (see
:mod:`napari_samed2.training.continual`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from napari_samed2.errors import TrainingError

#: SAM-2's weights (``weight_dict`` of its training configs).
LOSS_WEIGHTS: dict[str, float] = {"focal": 20.0, "dice": 1.0, "iou": 1.0, "object_score": 1.0}
LOSS_TERMS = tuple(LOSS_WEIGHTS)
CONTINUAL_TERMS = ("distill", "anchor")
_LOGIT_CLAMP = 32.0  # sam2 writes -1024 where the object is absent; KL needs finite logits


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss per mask, averaged over pixels: ``[B, M, H, W]`` logits -> ``[B, M]``."""
    targets = targets.to(logits.dtype).expand_as(logits)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - soft Dice`` per mask: ``[B, M, H, W]`` logits -> ``[B, M]``."""
    prob = logits.sigmoid().flatten(2)
    targets = targets.to(prob.dtype).expand_as(logits).flatten(2)
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + smooth) / (denominator + smooth)


def iou_l1_loss(pred_ious: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``|predicted IoU - IoU of the thresholded mask|`` per mask, ``[B, M]``; the true IoU
    carries no gradient (it is the target)."""
    with torch.no_grad():
        pred = logits > 0
        gt = targets.bool().expand_as(pred)
        inter = (pred & gt).flatten(2).sum(-1).float()
        union = (pred | gt).flatten(2).sum(-1).float()
        actual = inter / union.clamp(min=1.0)
    return (pred_ious.float() - actual).abs()


def object_score_loss(score_logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the object score logits ``[B, 1]`` against presence ``[B, 1]``."""
    return F.binary_cross_entropy_with_logits(score_logits.float(), present.to(torch.float32), reduction="none").mean(-1)


def mask_losses(
    multimask_logits: torch.Tensor,
    pred_ious: torch.Tensor,
    object_score: torch.Tensor,
    target: torch.Tensor,
    weights: Mapping[str, float] = LOSS_WEIGHTS,
) -> dict[str, torch.Tensor]:
    """The unweighted terms for one output: ``multimask_logits`` ``[B, M, H, W]`` at the
    target's resolution, ``pred_ious`` ``[B, M]``, ``object_score`` ``[B, 1]``, ``target``
    ``[B, 1, H, W]`` bool. Each term is averaged over the batch."""
    target = target.to(multimask_logits.device)
    logits = multimask_logits.float()
    present = target.flatten(1).any(-1, keepdim=True).float()  # [B, 1]
    focal = sigmoid_focal_loss(logits, target)
    dice = dice_loss(logits, target)
    iou = iou_l1_loss(pred_ious, logits, target)
    if logits.shape[1] > 1:
        combined = focal * weights.get("focal", 0.0) + dice * weights.get("dice", 0.0)
        best = combined.argmin(dim=1, keepdim=True)
        focal, dice = focal.gather(1, best), dice.gather(1, best)
    return {
        "focal": (focal.mean(1, keepdim=True) * present).mean(),
        "dice": (dice.mean(1, keepdim=True) * present).mean(),
        "iou": (iou.mean(1, keepdim=True) * present).mean(),
        "object_score": object_score_loss(object_score, present).mean(),
    }


def bernoulli_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL divergence from the teacher's per-pixel Bernoulli to the student's (zero when
    they agree, unlike a BCE against soft targets); logits clamped to +-32."""
    s = student_logits.float().clamp(-_LOGIT_CLAMP, _LOGIT_CLAMP)
    t = teacher_logits.float().clamp(-_LOGIT_CLAMP, _LOGIT_CLAMP)
    p = t.sigmoid()
    return (p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))).mean()


def output_distillation(student, teacher) -> torch.Tensor:
    """Output-level distillation of one frame (two ``StepOutput``): every candidate mask's
    logits and the object score, as Bernoulli KL."""
    return bernoulli_kl(student.low_res_multimasks, teacher.low_res_multimasks) + bernoulli_kl(
        student.object_score, teacher.object_score
    )


def relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean((s - t)^2) / mean(t^2)``: a feature distance that does not depend on the features' scale."""
    teacher = teacher.float()
    return (student.float() - teacher).pow(2).mean() / teacher.pow(2).mean().clamp(min=1e-8)


def feature_distillation(student_memory: torch.Tensor, teacher_memory: torch.Tensor, student_ptr, teacher_ptr) -> torch.Tensor:
    """Feature-level distillation of one frame: the memory features it leaves for later frames
    (sam2's 64-channel mask memory) and its object pointer, each as :func:`relative_mse`."""
    return relative_mse(student_memory, teacher_memory) + relative_mse(student_ptr, teacher_ptr)


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(weights) - set(LOSS_TERMS) - set(CONTINUAL_TERMS))
    if unknown:
        raise TrainingError(f"unknown loss terms {unknown}; the terms are {[*LOSS_TERMS, *CONTINUAL_TERMS]}")
    merged = {**LOSS_WEIGHTS, **{k: float(v) for k, v in weights.items()}}
    if any(v < 0 for v in merged.values()) or not any(merged.values()):
        raise TrainingError(f"loss weights must be >= 0 and not all zero, got {merged}")
    return merged


def combine(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float] = LOSS_WEIGHTS) -> torch.Tensor:
    """The total loss: the weighted sum of the named terms (sam2's ``weight_dict``)."""
    return sum(weights.get(name, 0.0) * value for name, value in terms.items())


def mean_terms(per_output: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Each term averaged over a clip's supervised outputs."""
    if not per_output:
        raise TrainingError("nothing to supervise: the clip produced no outputs")
    return {name: torch.stack([terms[name] for terms in per_output]).mean() for name in per_output[0]}
