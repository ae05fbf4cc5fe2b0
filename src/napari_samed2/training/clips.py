"""One clip through the engine's own tracking step, with gradients, and its loss terms.

:func:`forward_clip` tracks one clip frame by frame with the pieces the engine uses, the
memory (:class:`ObjectMemory`, :class:`MemoryEntry`, a memory policy's view) and
:func:`napari_samed2.engine.step.track_step`: the prompt on frame 0, then each frame attending
to the memory so far, with simulated correction clicks on some frames (a corrected frame
becomes a conditioning frame, as in the engine). Under ``torch.no_grad`` in eval mode it
gives the engine's masks (``tests/training/test_forward_matches_session.py`` checks that).
Fine-tuning (:mod:`.trainer`) and continual adaptation (:mod:`.continual`) both train
through it: one tracking path for inference and training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_samed2.engine.memory import MemoryEntry, ObjectMemory, make_policy
from napari_samed2.engine.step import Features, StepOutput, encode_images, encode_prompt_memory, track_step
from napari_samed2.errors import TrainingError
from napari_samed2.evaluation.prompts import correction_click, with_click
from napari_samed2.models.loading import LoadedModel
from napari_samed2.models.temporal_adapter import encoder_pair, has_temporal_adapters
from napari_samed2.training.data import Clip
from napari_samed2.training.losses import LOSS_WEIGHTS, mask_losses, mean_terms

_LOGIT_CLAMP = 32.0  # as the engine: previous logits fed back with new clicks are clamped


@dataclass
class ClipOutputs:
    """What :func:`forward_clip` produced: per clip frame, each output in order (the tracked
    one, then one after each correction click); and the object's memory at the end."""

    outputs: list[list[StepOutput]]
    memory: ObjectMemory
    clicks: int = 0


def _frame_features(model: LoadedModel, clip: Clip, paired: bool) -> Iterator[tuple[int, Features]]:
    """Each frame's features, computed one frame (or, with temporal adapters, one pair of
    frames) at a time, as the engine does; gradients follow the caller's grad mode."""
    cached: dict[int, Features] = {}
    for frame in range(len(clip)):
        if frame not in cached:
            frames = encoder_pair(frame, len(clip)) if paired else (frame,)
            images = torch.stack([model.input_for(clip.volume, f) for f in frames])
            for f, features in zip(frames, encode_images(model.sam, images.to(model.device))):
                cached.setdefault(f, features)
        yield frame, cached.pop(frame)


def _prediction(out: StepOutput, frame_shape: tuple[int, int], threshold: float) -> np.ndarray:
    with torch.no_grad():
        logits = F.interpolate(out.low_res.detach().float(), size=frame_shape, mode="bilinear", align_corners=False)
    return (logits[0, 0] > threshold).cpu().numpy()


def forward_clip(
    model: LoadedModel,
    clip: Clip,
    *,
    policy="stock",
    correct: tuple[int, ...] = (),
    clicks: int = 0,
    rng: np.random.Generator | None = None,
    train_encoder: bool = False,
    memory_dtype: torch.dtype | None = None,
    features: Sequence[Features] | None = None,
) -> ClipOutputs:
    """Track ``clip``'s object from its prompt on frame 0 through every frame.

    ``correct``: clip frames that get up to ``clicks`` simulated correction clicks each (drawn
    from ``rng`` by :func:`~napari_samed2.evaluation.prompts.correction_click`); the corrected
    frame becomes a conditioning frame. Image features carry gradients only with
    ``train_encoder``. ``memory_dtype`` casts stored memory features (the engine keeps them
    in bfloat16; training keeps them as computed, so gradients flow through memory).
    ``features``: each clip frame's image features, computed beforehand (a frozen encoder's,
    reused over many steps, as continual adaptation does); by default they are computed here.
    """
    sam = model.sam
    device = model.device
    size = model.image_size
    frame_shape = clip.volume.frame_shape
    policy = make_policy(policy)
    memory = ObjectMemory(clip.object_id)
    pos_enc: list[torch.Tensor] = []
    outputs: list[list[StepOutput]] = []
    clicks_made = 0
    if correct and rng is None:
        raise TrainingError("correction clicks need a random generator (rng=np.random.default_rng(seed))")
    grad_for_images = torch.enable_grad() if train_encoder and torch.is_grad_enabled() else torch.no_grad()

    def store(maskmem: torch.Tensor | None) -> torch.Tensor | None:
        return maskmem if maskmem is None or memory_dtype is None else maskmem.to(memory_dtype)

    if features is not None and len(features) != len(clip):
        raise TrainingError(f"{len(features)} frames of features were given for a clip of {len(clip)} frames")
    features_iter = enumerate(features) if features is not None else _frame_features(model, clip, has_temporal_adapters(sam))
    for frame in range(len(clip)):
        with grad_for_images:
            _, features = next(features_iter)
        descriptor = features.descriptor.detach()
        view = policy.view(memory, frame, False, sam, descriptor)
        first = frame == 0
        prompt = clip.prompt if first else None
        out = track_step(
            sam, features, view.to_sam2(pos_enc), frame, len(clip),
            is_init_cond_frame=first, reverse=False,
            point_inputs=prompt.point_inputs(frame_shape, size, device) if first else None,
            mask_inputs=prompt.mask_input(size, device) if first else None,
            encode_memory=not first,
        )
        tries = [out]
        if frame in correct:
            gt = clip.masks[frame]
            for _ in range(clicks):
                click = correction_click(
                    gt[None], _prediction(out, frame_shape, model.spec.mask_threshold)[None], clip.spacing, rng
                )
                if click is None:
                    break
                prompt = with_click(prompt, click)
                previous = out.low_res.clamp(-_LOGIT_CLAMP, _LOGIT_CLAMP)
                out = track_step(
                    sam, features, view.to_sam2(pos_enc), frame, len(clip),
                    is_init_cond_frame=first, reverse=False,
                    point_inputs=prompt.point_inputs(frame_shape, size, device),
                    prev_logits=previous, encode_memory=False,
                )
                tries.append(out)
                clicks_made += 1
        conditioning = first or len(tries) > 1
        if conditioning:  # the prompted frame's memory, from its final mask (as the engine commits it)
            maskmem, enc = encode_prompt_memory(sam, features, out.low_res, out.object_score)
        else:
            maskmem, enc = out.maskmem_features, out.maskmem_pos_enc
        if not pos_enc:
            pos_enc = [p[0:1] for p in enc]
        with torch.no_grad():
            iou, score = float(out.ious.max()), float(out.object_score.max())
        memory.entries[frame] = MemoryEntry(
            object_id=clip.object_id, frame=frame, conditioning=conditioning, reverse=False,
            predicted_iou=iou, object_score=score, low_res_logits=out.low_res, obj_ptr=out.obj_ptr,
            maskmem_features=store(maskmem), descriptor=descriptor.cpu(),
        )
        memory.tracked[frame] = False
        outputs.append(tries)
    return ClipOutputs(outputs, memory, clicks_made)


def clip_targets(clip: Clip, image_size: int) -> torch.Tensor:
    """The clip's masks at the model's image size, ``[K, 1, S, S]`` bool (resized as the
    engine resizes mask prompts)."""
    masks = torch.from_numpy(clip.masks)[:, None].float()
    if masks.shape[-2:] != (image_size, image_size):
        masks = F.interpolate(masks, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return masks >= 0.5


def clip_loss_terms(outputs: ClipOutputs, targets: torch.Tensor, weights=LOSS_WEIGHTS) -> dict[str, torch.Tensor]:
    """Every supervised output's terms, averaged over the clip."""
    per_output = [
        mask_losses(out.high_res_multimasks, out.ious, out.object_score, targets[frame : frame + 1], weights)
        for frame, tries in enumerate(outputs.outputs)
        for out in tries
    ]
    return mean_terms(per_output)
