"""Dynamic distillation: granularity from the retrieval distance, importance from Fisher.

The rule itself is documented in :mod:`napari_samed2.training.continual`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from napari_samed2.errors import TrainingError
from napari_samed2.training.adapters import LoRALinear
from napari_samed2.training.losses import feature_distillation, output_distillation


def feature_weight(similarity: float, close: float, far: float) -> float:
    """The share of feature-level distillation for a replayed case ``similarity`` (cosine of
    case descriptors) away from the new case: 0 (outputs only) at ``close`` or above, 1
    (features only) at ``far`` or below, linear in between."""
    if not far < close:
        raise TrainingError(f"the 'far' similarity ({far}) must lie below the 'close' one ({close})")
    return float(min(1.0, max(0.0, (close - similarity) / (close - far))))


def distillation(student, teacher, weight: float) -> torch.Tensor:
    """``(1 - weight) * output-level + weight * feature-level`` distillation, averaged over the
    clip's frames; ``student``/``teacher``: :class:`~napari_samed2.training.clips.ClipOutputs`
    of the same clip, tracked without correction clicks (so both saw the same inputs)."""
    per_frame = []
    for frame, (mine, theirs) in enumerate(zip(student.outputs, teacher.outputs)):
        term = torch.zeros((), device=mine[0].low_res.device)
        if weight < 1:
            term = term + (1 - weight) * output_distillation(mine[0], theirs[0])
        if weight > 0:
            s, t = student.memory.entries[frame], teacher.memory.entries[frame]
            term = term + weight * feature_distillation(s.maskmem_features, t.maskmem_features, s.obj_ptr, t.obj_ptr)
        per_frame.append(term)
    return torch.stack(per_frame).mean()


@dataclass(frozen=True)
class ParameterGroup:
    """One adapted layer: its name, the LoRA layer, and its importance (mean 1 over groups)."""

    name: str
    layer: LoRALinear
    importance: float


def lora_layers(sam: torch.nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(name, m) for name, m in sam.named_modules() if isinstance(m, LoRALinear)]


def fisher_importance(sam: torch.nn.Module, losses) -> list[ParameterGroup]:
    """Diagonal Fisher information of each adapted layer's base weight, from the gradients of
    ``losses`` (a callable per earlier-case clip, returning the task loss), averaged over the
    layer, then divided by the mean over layers. Groups that never see a gradient weigh 0;
    with no clips every group weighs 1."""
    layers = lora_layers(sam)
    weights = [layer.base.weight for _, layer in layers]
    before = [w.requires_grad for w in weights]
    totals = [torch.zeros((), device=w.device) for w in weights]
    count = 0
    try:
        for w in weights:
            w.requires_grad_(True)
        for loss in losses:
            value = loss()
            grads = torch.autograd.grad(value, weights, allow_unused=True)
            for i, g in enumerate(grads):
                if g is not None:
                    totals[i] += g.detach().float().pow(2).mean()
            count += 1
    finally:
        for w, flag in zip(weights, before):
            w.requires_grad_(flag)
    values = [float(t) / max(count, 1) for t in totals]
    mean = sum(values) / max(len(values), 1)
    if count == 0 or mean <= 0:
        return [ParameterGroup(name, layer, 1.0) for name, layer in layers]
    return [ParameterGroup(name, layer, v / mean) for (name, layer), v in zip(layers, values)]


def anchor(groups: list[ParameterGroup]) -> torch.Tensor:
    """``mean over groups of importance * |dW|^2 / |W|^2``, ``dW`` the LoRA update of the
    group's weight: an EWC-style pull towards the weights before the update, scale-free."""
    terms = []
    for group in groups:
        layer = group.layer
        delta = layer.scale * (layer.lora_b @ layer.lora_a)
        terms.append(group.importance * delta.pow(2).sum() / layer.base.weight.detach().pow(2).sum().clamp(min=1e-12))
    return torch.stack(terms).mean()
