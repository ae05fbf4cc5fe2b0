"""The fine-tuning loop: clips through the engine's own tracking step, with gradients.

Each clip goes through :func:`~napari_samed2.training.clips.forward_clip`, the engine's
tracking step frame by frame (see :mod:`.clips`).

:class:`Trainer` runs the loop as a generator of :class:`TrainProgress`: AdamW over the
trainable parameters only, linear warm-up then cosine decay, gradient clipping, validation
Dice through a :class:`~napari_samed2.engine.session.Session`, and checkpoints (also on
Ctrl-C, or when the consumer stops early).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_samed2.engine.memory import make_policy
from napari_samed2.engine.step import Features
from napari_samed2.errors import TrainingError
from napari_samed2.io._files import check_writable
from napari_samed2.models.loading import LoadedModel
from napari_samed2.training import checkpoints
from napari_samed2.training.adapters import select_trainable
from napari_samed2.training.clips import ClipOutputs, clip_loss_terms, clip_targets, forward_clip
from napari_samed2.training.data import (
    BOX_NOISE, PROMPT_PROBS, ClipSampler, Clip, VolumePair, check_box_noise, check_prompt_probs, check_share,
    single_slice_prompt_probs,
)
from napari_samed2.training.losses import LOSS_WEIGHTS, check_weights, combine

@dataclass(frozen=True)
class TrainConfig:
    """Every training setting (saved in the checkpoint's metadata).

    ``train``: module names (see :mod:`.adapters`); ``clip_length``: slices per clip;
    ``batch``: clips per optimiser step, their losses averaged (from scratch on a CPU one clip
    a step was measured to learn far less per clip than four, see docs/training.md);
    ``lr``: peak learning rate, reached after ``warmup_steps`` (default 5 % of ``steps``),
    then cosine decay to ``lr * min_lr_ratio``; ``grad_clip``: max gradient norm (sam2's 0.1);
    ``correction_frames``: frames per clip (frame 0 first) that get ``correction_clicks``
    simulated clicks from their error region; ``val_every``: steps between validations
    (0: never); ``save_every``: steps between checkpoints (0: only at the end).
    """

    steps: int = 1000
    train: tuple[str, ...] = ("decoder", "memory")
    clip_length: int = 8
    batch: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.1
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.1
    grad_clip: float = 0.1
    seed: int = 0
    lora_rank: int = 4
    lora_alpha: float | None = None
    prompt_probs: dict[str, float] = field(default_factory=lambda: dict(PROMPT_PROBS))
    reverse_prob: float = 0.5
    middle_start_prob: float = 0.0
    end_start_prob: float = 0.0
    single_slice_prob: float = 0.0
    revive_prob: float = 0.0
    box_noise: float = BOX_NOISE
    correction_frames: int = 2
    correction_clicks: int = 1
    loss_weights: dict[str, float] = field(default_factory=lambda: dict(LOSS_WEIGHTS))
    memory_policy: str = "stock"
    val_every: int = 100
    save_every: int = 500

    def __post_init__(self) -> None:
        train = self.train.split(",") if isinstance(self.train, str) else self.train
        object.__setattr__(self, "train", tuple(t.strip() for t in train if t.strip()))
        for name in ("steps", "clip_length", "batch"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("val_every", "save_every", "correction_frames", "correction_clicks"):
            if getattr(self, name) < 0:
                raise TrainingError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise TrainingError(f"lr must be positive, got {self.lr}")
        for name in ("reverse_prob", "middle_start_prob", "end_start_prob", "single_slice_prob", "revive_prob"):
            check_share(name, getattr(self, name))
        if self.revive_prob and not self.correction_clicks:
            raise TrainingError("revival clips (revive_prob) learn from a correction click: set correction_clicks >= 1")
        check_box_noise(self.box_noise)
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise TrainingError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        object.__setattr__(self, "prompt_probs", check_prompt_probs(self.prompt_probs))
        if self.single_slice_prob:
            single_slice_prompt_probs(self.prompt_probs)
        if self.clip_length == 1 and self.prompt_probs.get("mask", 0.0) > 0:
            raise TrainingError(
                "a 1-slice clip prompted with its own mask has nothing to learn (SAM-2 passes the mask "
                "through): with clip_length 1 give prompt_probs without 'mask', e.g. box=0.6,click=0.4"
            )
        object.__setattr__(self, "loss_weights", check_weights(self.loss_weights))
        make_policy(self.memory_policy)

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, self.steps // 20)

    def lr_at(self, step: int) -> float:
        """Learning rate for (1-based) ``step``: linear warm-up, then cosine decay."""
        if step <= self.warmup:
            return self.lr * step / max(1, self.warmup)
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        low = self.lr * self.min_lr_ratio
        return low + (self.lr - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"train": ",".join(self.train)}


@dataclass(frozen=True)
class TrainProgress:
    """One training step done: its loss and named terms, the learning rate, seconds since the
    start; ``val_dice`` when validation ran on this step, ``saved`` when a checkpoint was written."""

    step: int
    steps: int
    loss: float
    terms: dict[str, float]
    lr: float
    elapsed: float
    val_dice: float | None = None
    saved: Path | None = None


def validation_dice(model: LoadedModel, pairs: list[VolumePair], seed: int = 0, policy="stock") -> float:
    """Mean Dice over every object of ``pairs`` after the evaluation protocol's start (a box
    on the object's middle slice, propagated both ways), measured by the evaluation harness."""
    from napari_samed2.evaluation.cases import EvalCase
    from napari_samed2.evaluation.protocol import EvalProtocol, run_case

    protocol = EvalProtocol(clicks=0, seed=seed)
    scores = []
    was_training = model.sam.training
    model.sam.eval()
    try:
        for index, pair in enumerate(pairs):  # pairs were checked when they were made
            case = EvalCase(pair.name, np.asarray(pair.image), np.asarray(pair.label), pair.spacing)
            scores += [record.dice for record in run_case(model, case, protocol, policy, case_index=index)]
    finally:
        model.sam.train(was_training)
    return float(np.mean(scores))


class Trainer:
    """The training state and loop. Build it with :func:`napari_samed2.training.train`."""

    def __init__(
        self,
        model: LoadedModel,
        pairs: list[VolumePair],
        config: TrainConfig,
        out: Path,
        *,
        val_pairs: list[VolumePair] | None = None,
        resume: str | Path | None = None,
        base: str = "",
        data: str = "",
    ):
        self.model = model
        self.data = data  # what was trained on, for the checkpoint's metadata
        self.config = config
        self.out = out
        self.val_pairs = val_pairs or []
        self.base = base
        torch.manual_seed(config.seed)  # LoRA's initial values, dropout
        self.trainable = select_trainable(
            model.sam, config.train, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha
        )
        parameters = dict(model.sam.named_parameters())
        self.parameters = [parameters[n] for n in self.trainable]
        self.train_encoder = any(n.startswith("image_encoder.") for n in self.trainable)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.best_dice: float | None = None
        self.saved_step = 0
        self.rng = np.random.default_rng(config.seed)
        if resume is not None:
            state = checkpoints.load_resume(resume, model.sam, self.trainable, self.optimizer)
            self.step = self.saved_step = state.step
            self.best_dice = state.best_dice
            self.rng.bit_generator.state = state.numpy_rng
        self._snapshot()
        self.sampler = ClipSampler(
            pairs, self.rng, clip_length=config.clip_length,
            prompt_probs=config.prompt_probs, reverse_prob=config.reverse_prob,
            middle_start_prob=config.middle_start_prob, end_start_prob=config.end_start_prob,
            single_slice_prob=config.single_slice_prob, revive_prob=config.revive_prob, box_noise=config.box_noise,
        )

    # one step ---------------------------------------------------------------------------
    def autocast(self):
        if self.model.device.type == "cuda" and self.model.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.model.dtype)
        return contextlib.nullcontext()

    def correction_frames(self, clip: Clip) -> tuple[int, ...]:
        """The clip frames that get simulated correction clicks: frame 0 and random others, and
        the frames the clip itself asks for (a revival clip's first slice with its object)."""
        cfg = self.config
        others = np.arange(1, len(clip))
        extra = self.rng.choice(others, size=min(len(others), max(0, cfg.correction_frames - 1)), replace=False)
        chosen = {0, *extra.tolist()} if cfg.correction_frames else set()
        return tuple(sorted(chosen | set(clip.correct_at))) if cfg.correction_clicks else ()

    def clip_features(self, clip: Clip) -> list[Features] | None:
        """The clip's image features if known beforehand (here never: :func:`forward_clip` encodes)."""
        return None

    def extra_terms(self, clip: Clip, outputs: ClipOutputs) -> dict[str, torch.Tensor]:
        """Loss terms beyond sam2's (none here; continual adaptation adds its distillation)."""
        return {}

    def loss_on(self, clip: Clip) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The forward pass and loss terms on one clip (model mode and grad mode as set)."""
        cfg = self.config
        correct = self.correction_frames(clip)
        with self.autocast():
            outputs = forward_clip(
                self.model, clip, policy=cfg.memory_policy, correct=correct, clicks=cfg.correction_clicks,
                rng=self.rng, train_encoder=self.train_encoder, features=self.clip_features(clip),
            )
            terms = clip_loss_terms(outputs, clip_targets(clip, self.model.image_size).to(self.model.device), cfg.loss_weights)
            terms |= self.extra_terms(clip, outputs)
            total = combine(terms, cfg.loss_weights)
        return total, terms

    def train_step(self, clips: Clip | list[Clip]) -> tuple[float, dict[str, float], float]:
        """One optimiser step on ``clips`` (a batch): their losses are averaged, each clip's
        backward pass runs before the next clip's forward, so memory holds one clip's graph."""
        clips = [clips] if isinstance(clips, Clip) else list(clips)
        self.model.sam.train()
        lr = self.config.lr_at(self.step + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        totals, per_clip = [], []
        for clip in clips:
            total, terms = self.loss_on(clip)
            if not total.requires_grad:
                raise TrainingError(
                    f"step {self.step + 1}: no trained module ({', '.join(self.config.train)}) affects this clip's "
                    "loss; train modules the clip passes through (e.g. add 'decoder'), or use longer clips"
                )
            if not torch.isfinite(total):
                raise TrainingError(
                    f"the loss is not finite at step {self.step + 1} ({float(total)}): lower the learning rate "
                    "(--lr) or check the images for NaN values"
                )
            (total / len(clips)).backward()
            totals.append(float(total.detach()))
            per_clip.append({k: float(v.detach()) for k, v in terms.items()})
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip)
        self.optimizer.step()
        self._flush_subnormal_moments()
        self.step += 1
        self._snapshot()
        return float(np.mean(totals)), {k: float(np.mean([t[k] for t in per_clip])) for k in per_clip[0]}, lr

    def _flush_subnormal_moments(self) -> None:
        """Set Adam's moments below float32's normal range to zero. A parameter whose gradient
        is exactly zero has its first moment shrink by 0.9 a step, into subnormal numbers after
        ~830 steps, and subnormal numbers are computed in microcode on x86 CPUs. (Flushing
        them everywhere, ``torch.set_flush_denormal``, also sped up activations and gradients,
        but made scipy's KD-tree, which MONAI's NSD builds, recurse until the stack overflowed.)"""
        tiny = torch.finfo(torch.float32).tiny
        for state in self.optimizer.state.values():
            for value in state.values():
                if torch.is_tensor(value) and value.is_floating_point() and value.dim():
                    value.masked_fill_(value.abs() < tiny, 0.0)

    # saving -----------------------------------------------------------------------------
    def _snapshot(self) -> None:
        """The random states as they are after the last finished step: an interrupted step
        may already have drawn its clip, and a resumed run must draw that clip again."""
        self._states = (self.rng.bit_generator.state, torch.get_rng_state())

    def metadata(self, **extra) -> dict[str, str]:
        return {
            "step": str(self.step),
            "train": ",".join(self.config.train),
            "base_model": self.base,
            "data": self.data,
            "config": json.dumps(self.config.to_json()),
            **{k: str(v) for k, v in extra.items() if v is not None},
        }

    def save(self, name: str = checkpoints.MODEL_FILE, **extra) -> Path:
        """Write the model checkpoint ``name`` and the resume state into the output folder."""
        path = checkpoints.save_model(
            self.out / name, self.model.sam, self.trainable,
            architecture=self.model.spec.name, image_size=self.model.image_size,
            metadata=self.metadata(best_dice=self.best_dice, **extra),
        )
        checkpoints.save_resume(
            self.out, self.model.sam, self.trainable, self.optimizer, step=self.step,
            config=self.config.to_json(), numpy_rng=self._states[0], torch_rng=self._states[1],
            best_dice=self.best_dice,
        )
        self.saved_step = self.step
        return path

    def _log(self, progress: TrainProgress) -> None:
        """One row per step in ``log.csv`` (loss, its terms, learning rate, validation Dice):
        the loss curve, kept across resumes."""
        path = self.out / checkpoints.LOG_FILE
        names = sorted(progress.terms)
        new = not path.exists() or progress.step == 1
        with path.open("w" if new else "a") as handle:
            if new:
                handle.write(",".join(["step", "loss", *names, "lr", "val_dice", "seconds"]) + "\n")
            values = [progress.loss, *(progress.terms[n] for n in names), progress.lr]
            val = "" if progress.val_dice is None else f"{progress.val_dice:.6g}"
            handle.write(",".join([str(progress.step), *(f"{v:.6g}" for v in values), val, f"{progress.elapsed:.1f}"]) + "\n")

    # the loop ---------------------------------------------------------------------------
    def run(self) -> Iterator[TrainProgress]:
        """Train until ``config.steps``, yielding after every step. Stopping early (Ctrl-C,
        or closing the generator) saves a checkpoint first."""
        cfg = self.config
        start = time.perf_counter()
        try:
            while self.step < cfg.steps:
                loss, terms, lr = self.train_step([self.sampler.sample() for _ in range(cfg.batch)])
                val = saved = None
                if self.val_pairs and cfg.val_every and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                    val = validation_dice(self.model, self.val_pairs, cfg.seed, cfg.memory_policy)
                    if self.best_dice is None or val > self.best_dice:
                        self.best_dice = val
                        self.save(checkpoints.BEST_FILE, val_dice=val)
                if self.step == cfg.steps or (cfg.save_every and self.step % cfg.save_every == 0):
                    saved = self.save(val_dice=val)
                progress = TrainProgress(self.step, cfg.steps, loss, terms, lr, time.perf_counter() - start, val, saved)
                self._log(progress)
                yield progress
        except (KeyboardInterrupt, GeneratorExit):
            if self.step > self.saved_step:
                self.save()
            raise


SYNTHETIC_VALIDATION = 4  # held-out synthetic volumes validated on when training on synthetic data


def synthetic_pairs(count: int, seed: int = 0, *, held_out: bool = False, distractors: bool = False) -> list[VolumePair]:
    """The first ``count`` volumes of the synthetic stream ``seed`` (or of the held-out stream);
    with ``distractors``, the look-alike blobs are objects too (see ``promptable_labels``)."""
    import itertools

    from napari_samed2.training.data import make_pair
    from napari_samed2.training.synthetic import HELD_OUT_SEED, synthetic_stream

    stream = synthetic_stream(HELD_OUT_SEED if held_out else seed, held_out=held_out)
    return [
        make_pair(
            case.image, case.promptable_labels() if distractors else case.labels, spacing=case.spacing,
            name=f"synthetic {'held-out ' if held_out else ''}{k}",
        )
        for k, case in enumerate(itertools.islice(stream, count))
    ]


def sample_family_pairs(count: int) -> list[VolumePair]:
    """Volumes of the plugin's sample family (:func:`napari_samed2.io.sample.synthetic_volume`)
    with seeds 1..count. Seed 0, the volume the main command opens, is never among them."""
    from napari_samed2.io.sample import synthetic_volume
    from napari_samed2.training.data import make_pair

    pairs = []
    for seed in range(1, count + 1):
        volume = synthetic_volume(seed=seed)
        pairs.append(make_pair(volume.image, volume.labels, spacing=volume.spacing, name=f"sample family {seed}"))
    return pairs


def untrained_model(architecture: str, *, device="auto", dtype="auto", image_size: int | None = None) -> LoadedModel:
    """A registry architecture with the initial weights of sam2's own constructors."""
    from napari_samed2.models.loading import build_model, resolve_device, resolve_dtype
    from napari_samed2.models.registry import get_spec

    spec = get_spec(architecture)
    torch_device = resolve_device(device)
    sam = build_model(spec, image_size, device="cpu").to(torch_device)
    return LoadedModel(spec, sam, torch_device, resolve_dtype(dtype, torch_device), None)


def _check_training_dtype(dtype: str, device: str) -> None:
    """Refuse a reduced precision that training would not use: autocast trains in it on CUDA
    only. On this project's CPUs bf16 autocast was measured 5.3x slower than float32 and its
    loss rose where float32's fell (docs/training.md), so it is not offered there."""
    from napari_samed2.models.loading import resolve_device, resolve_dtype

    if dtype == "auto":
        return
    torch_device = resolve_device(device)
    if resolve_dtype(dtype, torch_device) != torch.float32 and torch_device.type != "cuda":
        raise TrainingError(
            f"training in {dtype} runs on CUDA only; on {torch_device.type} it trains in float32: "
            "drop --dtype or give float32 (bf16 on a CPU was measured 5x slower, see docs/training.md)"
        )


def load_config(source: TrainConfig | str | Path | dict | None) -> TrainConfig:
    """A :class:`TrainConfig` from itself, a dict, or a JSON file (e.g. the ``config`` a
    checkpoint's metadata holds); ``None`` gives the defaults."""
    if source is None:
        return TrainConfig()
    if isinstance(source, TrainConfig):
        return source
    if isinstance(source, str | Path):
        try:
            source = json.loads(Path(source).expanduser().read_text())
        except (OSError, ValueError) as exc:
            raise TrainingError(f"cannot read the training settings {str(source)!r} ({exc}): give a JSON file") from exc
    if not isinstance(source, dict):
        raise TrainingError("training settings must be a TrainConfig, a dict or a JSON file")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(source) - names)
    if unknown:
        raise TrainingError(f"unknown training settings {unknown}; the settings are {sorted(names)}")
    return TrainConfig(**source)


def train(
    images=None,
    labels=None,
    *,
    out: str | Path,
    model: str | Path | LoadedModel = "sam2.1-tiny",
    architecture: str | None = None,
    from_scratch: bool = False,
    synthetic: int = 0,
    synthetic_distractors: bool = False,
    sample_volumes: int = 0,
    val_images=None,
    val_labels=None,
    config: TrainConfig | str | Path | None = None,
    train: str | None = None,
    steps: int | None = None,
    clip_length: int | None = None,
    batch: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    warmup_steps: int | None = None,
    grad_clip: float | None = None,
    seed: int | None = None,
    lora_rank: int | None = None,
    middle_start_prob: float | None = None,
    end_start_prob: float | None = None,
    single_slice_prob: float | None = None,
    revive_prob: float | None = None,
    box_noise: float | None = None,
    correction_frames: int | None = None,
    correction_clicks: int | None = None,
    prompt_probs: dict[str, float] | None = None,
    loss_weights: dict[str, float] | None = None,
    memory_policy: str | None = None,
    val_every: int | None = None,
    save_every: int | None = None,
    image_size: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    axis: int = 0,
    resume: str | Path | None = None,
) -> Iterator[TrainProgress]:
    """Fine-tune a model on (image, label) volumes; returns the training loop as a generator
    of :class:`TrainProgress` (iterate it to train).

    ``images``/``labels``: NIfTI/TIFF paths or arrays (one label volume per image, frames
    along ``axis``), or ``images`` an iterable of ``(image, label)`` pairs and no labels.
    ``model``: a registry name, a checkpoint path (``architecture`` names its model if its
    keys do not), or a :class:`LoadedModel` (trained in place). ``config``: the settings as a
    :class:`TrainConfig` or JSON file; each setting given here as an argument (not ``None``)
    overrides it, e.g. ``train="decoder,memory"`` (module names, see
    :mod:`napari_samed2.training.adapters`) or ``steps``. Checkpoints go to ``out``
    (``model.safetensors``, ``best.safetensors`` with validation, resume state); ``resume``
    continues the run saved in that folder. Every input is checked here, before any
    training: errors are :class:`~napari_samed2.errors.SamEd2Error` subclasses.

    ``synthetic=N`` trains on the first N volumes of the synthetic stream of ``seed`` (see
    :mod:`.synthetic`) and, without validation volumes, validates on held-out synthetic ones
    (their labelled objects only); ``synthetic_distractors`` makes the look-alike blobs of the
    training volumes objects too, so that the prompt must decide; ``sample_volumes=N`` adds N
    volumes of the plugin's own sample family (seeds 1..N, never seed 0, which the main command
    opens; see :func:`sample_family_pairs`);
    ``from_scratch`` starts from the architecture's own initialisation instead of weights
    (how the ``demo`` model is made); ``prompt_probs`` weighs the first slice's prompt kinds,
    e.g. ``{"box": 0.5, "click": 0.25, "mask": 0.25}``; ``loss_weights`` overrides some of
    sam2's term weights, e.g. ``{"dice": 5.0}``; ``middle_start_prob`` starts that share of
    the clips at their object's middle slice, ``end_start_prob`` near an end with another
    object beside it, ``single_slice_prob`` makes that share single slices, and
    ``revive_prob`` revival clips (a click on an object the memory says is absent); ``box_noise``
    sets the box prompts' jitter (see :class:`~.data.ClipSampler`).
    """
    from napari_samed2.models.loading import load_model
    from napari_samed2.training.adapters import parse_modules
    from napari_samed2.training.data import load_pairs

    given = dict(
        steps=steps, train=train, clip_length=clip_length, batch=batch, lr=lr, weight_decay=weight_decay,
        warmup_steps=warmup_steps, grad_clip=grad_clip, seed=seed, lora_rank=lora_rank,
        middle_start_prob=middle_start_prob, end_start_prob=end_start_prob, single_slice_prob=single_slice_prob,
        revive_prob=revive_prob, box_noise=box_noise, correction_frames=correction_frames,
        correction_clicks=correction_clicks, prompt_probs=prompt_probs,
        loss_weights=loss_weights, memory_policy=memory_policy, val_every=val_every, save_every=save_every,
    )
    config = dataclasses.replace(load_config(config), **{k: v for k, v in given.items() if v is not None})
    parse_modules(config.train)
    folder = check_writable(out)
    if synthetic < 0 or (images is None) == (synthetic == 0):
        raise TrainingError("give training volumes (images and labels) or a number of synthetic volumes, not both")
    if synthetic_distractors and not synthetic:
        raise TrainingError("synthetic_distractors applies to synthetic volumes: give synthetic=N too")
    if sample_volumes < 0:
        raise TrainingError(f"sample_volumes must be >= 0, got {sample_volumes}")
    _check_training_dtype(dtype, device)
    pairs = (
        load_pairs(images, labels, axis=axis) if images is not None
        else synthetic_pairs(synthetic, config.seed, distractors=synthetic_distractors)
    )
    pairs += sample_family_pairs(sample_volumes)
    if val_images is not None:
        val_pairs = load_pairs(val_images, val_labels, axis=axis)
    else:
        val_pairs = synthetic_pairs(SYNTHETIC_VALIDATION, held_out=True) if synthetic else []
    if isinstance(model, LoadedModel):
        loaded, base = model, model.spec.name
    elif from_scratch:
        loaded, base = untrained_model(str(model), device=device, dtype=dtype, image_size=image_size), f"{model} (untrained)"
    else:
        loaded = load_model(model, architecture=architecture, device=device, dtype=dtype, image_size=image_size)
        base = str(model)
    if images is None:
        data = f"synthetic volumes 0-{synthetic - 1} of stream {config.seed}"
        data += ", look-alike blobs as objects" if synthetic_distractors else ""
    else:
        data = ", ".join(pair.name for pair in pairs[: len(pairs) - sample_volumes])
    if sample_volumes:
        data += f", sample family volumes 1-{sample_volumes}"
    trainer = Trainer(loaded, pairs, config, folder, val_pairs=val_pairs, resume=resume, base=base, data=data)
    return trainer.run()
