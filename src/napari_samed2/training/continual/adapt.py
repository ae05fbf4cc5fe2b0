"""One adaptation: a copy of the model learns a confirmed case, then becomes a new version.

The steps go through the fine-tuning module's :class:`~napari_samed2.training.trainer.Trainer`
(its ``train_step``: the one tracking path, :func:`~napari_samed2.training.clips.forward_clip`),
extended by :class:`_ContinualTrainer` with replay clips, cached image features (when the
encoder does not adapt) and the distillation and anchor terms.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from napari_samed2.engine.step import Features, encode_images
from napari_samed2.engine.volume import Volume
from napari_samed2.errors import LabelError, TrainingError, VolumeError
from napari_samed2.io.intensity import IntensityWindow
from napari_samed2.models.loading import LoadedModel
from napari_samed2.models.versions import leaves_encoder
from napari_samed2.models.temporal_adapter import has_temporal_adapters
from napari_samed2.training.adapters import check_frozen, merged_key, merged_state_dict
from napari_samed2.training.clips import ClipOutputs, clip_loss_terms, clip_targets, forward_clip
from napari_samed2.training.continual.cases import CaseStore, ConfirmedCase, Retrieved
from napari_samed2.training.continual.distill import anchor, distillation, feature_weight, fisher_importance
from napari_samed2.training.continual.versions import ModelVersions, VersionInfo, default_versions_folder, model_origin
from napari_samed2.training.data import (
    Clip,
    ClipSampler,
    VolumePair,
    check_prompt_probs,
    check_share,
)
from napari_samed2.training.losses import combine
from napari_samed2.training.trainer import TrainConfig, Trainer

MODES = ("none", "naive", "replay", "replay+distill")
#: The new case's first-slice prompts: mostly boxes, as the evaluation and most users start
#: (SAM-2's own mix is half masks; measured in docs/continual.md).
ADAPT_PROMPT_PROBS = {"box": 0.6, "click": 0.2, "mask": 0.2}


@dataclass(frozen=True)
class AdaptConfig:
    """Every adaptation setting (saved, in short, with the version).

    ``mode``: ``none`` (no change), ``naive`` (the new case only), ``replay`` (each step mixes
    clips of the ``top_k`` stored cases most similar to the new one, ``replay_ratio`` of the
    ``batch``), ``replay+distill`` (replay, plus distillation from the model before the update
    on the replayed clips and the importance-weighted anchor). ``train``: the modules that
    adapt (LoRA of rank ``lora_rank`` on memory attention and the mask decoder by default;
    adding ``lora``, the image encoder's attention, gains more on a new modality and forgets
    more of the earlier ones, measured in docs/continual.md);
    ``close``/``far``: the similarities between which distillation turns from output-level
    to feature-level; ``fisher_clips``: earlier-case clips the importance is estimated on.
    ``prompt_probs`` and ``middle_start_prob``: the new case's clips, as in
    :class:`~napari_samed2.training.data.ClipSampler`.
    ``smoothing``: the input smoothings (per unit of a volume's noise level, see
    ``Volume.model_input``) the version may choose from, before training, by the Dice of a box
    on each object's middle slice of the new case and of the replayed cases whose input they
    change; a candidate replaces the model's own only when it gains at least
    ``smoothing_margin`` there. Clean volumes are not smoothed at these strengths, so the
    choice follows noisy modalities (ultrasound-like speckle) and leaves the others as they
    were (measured in docs/continual.md); ``()`` keeps the model's.
    ``check``: keep the adapted model only if it segments the new case (a box on each object's
    middle slice, propagated, as the evaluation starts) at least as well as the model before;
    otherwise no version is written and the model stays (see :class:`CaseCheck`).
    """

    mode: str = "replay+distill"
    steps: int = 20
    batch: int = 2
    replay_ratio: float = 0.5
    top_k: int = 3
    clip_length: int = 4
    lr: float = 1e-3
    lora_rank: int = 4
    train: tuple[str, ...] = ("lora_memory", "lora_decoder")
    distill_weight: float = 1.0
    anchor_weight: float = 100.0
    close: float = 0.9
    far: float = 0.7
    fisher_clips: int = 2
    correction_clicks: int = 1
    seed: int = 0
    prompt_probs: dict[str, float] = field(default_factory=lambda: dict(ADAPT_PROMPT_PROBS))
    middle_start_prob: float = 0.5
    smoothing: tuple[float, ...] = (0.0, 3.0, 6.0)
    smoothing_margin: float = 0.02
    check: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise TrainingError(f"unknown adaptation mode {self.mode!r}; the modes are {', '.join(MODES)}")
        for name in ("steps", "batch", "clip_length", "lora_rank"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("top_k", "fisher_clips", "correction_clicks"):
            if getattr(self, name) < 0:
                raise TrainingError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.replay_ratio < 1.0:
            raise TrainingError(f"replay_ratio must lie in [0, 1) (the new case needs a clip), got {self.replay_ratio}")
        if self.distill_weight < 0 or self.anchor_weight < 0:
            raise TrainingError("distill_weight and anchor_weight must be >= 0")
        feature_weight(1.0, self.close, self.far)  # checks far < close
        object.__setattr__(self, "prompt_probs", check_prompt_probs(self.prompt_probs))
        check_share("middle_start_prob", self.middle_start_prob)
        if any(not np.isfinite(k) or k < 0 for k in self.smoothing):
            raise TrainingError(f"smoothing strengths must be finite and >= 0, got {self.smoothing}")
        object.__setattr__(self, "smoothing", tuple(float(k) for k in self.smoothing))
        train = self.train.split(",") if isinstance(self.train, str) else self.train
        object.__setattr__(self, "train", tuple(t.strip() for t in train if t.strip()))

    @property
    def replays(self) -> bool:
        return self.mode in ("replay", "replay+distill")

    @property
    def distills(self) -> bool:
        return self.mode == "replay+distill"


@dataclass(frozen=True)
class CaseCheck:
    """Mean Dice on the new case before and after adapting (a box on each object's middle
    slice, propagated both ways). Why: adapters that cannot fit a case (e.g. a modality whose
    objects the frozen image encoder does not separate) make the model worse even on the case
    they learnt, and on similar ones (docs/continual.md); such a version is not worth keeping."""

    before: float
    after: float

    @property
    def passed(self) -> bool:
        return self.after >= self.before


@dataclass(frozen=True)
class AdaptResult:
    """What an adaptation produced: the model to use now (the input model for mode ``none``
    and for an adaptation that failed its ``check``), its version (``None`` then), the earlier
    cases replayed, the time it took and the check on the new case (``None`` when not run)."""

    model: LoadedModel
    version: VersionInfo | None
    retrieved: tuple[Retrieved, ...]
    seconds: float
    check: CaseCheck | None = None


@dataclass(frozen=True)
class AdaptProgress:
    """One adaptation step done (``result`` is set on the last item only)."""

    step: int
    steps: int
    loss: float
    terms: dict[str, float]
    lr: float
    elapsed: float
    result: AdaptResult | None = None


@dataclass(frozen=True, eq=False)
class ReplayClip(Clip):
    """A clip of an earlier case: tracked without correction clicks (the teacher must see the
    same inputs), distilled with ``feature_weight`` (from ``similarity`` to the new case)."""

    similarity: float = 0.0
    feature_weight: float = 0.0


@dataclass(frozen=True, eq=False)
class _ReplaySource:
    sampler: ClipSampler
    similarity: float
    feature_weight: float


class _ContinualTrainer(Trainer):
    """The fine-tuning trainer on a copy of the model, with replay and distillation. Nothing
    is written by it: :class:`ModelVersions` saves the result."""

    def __init__(self, student: LoadedModel, teacher: LoadedModel, new_pair: VolumePair, config: AdaptConfig):
        weights = {"distill": config.distill_weight if config.distills else 0.0,
                   "anchor": config.anchor_weight if config.distills else 0.0}
        train_config = TrainConfig(
            steps=config.steps, train=config.train, clip_length=config.clip_length, batch=config.batch, lr=config.lr,
            weight_decay=0.0, seed=config.seed, lora_rank=config.lora_rank, correction_frames=1,
            correction_clicks=config.correction_clicks, loss_weights=weights, val_every=0, save_every=0,
            prompt_probs=config.prompt_probs, middle_start_prob=config.middle_start_prob,
        )
        super().__init__(student, [new_pair], train_config, Path("."))
        self.teacher = teacher
        self.adapt = config
        self.replay: list[_ReplaySource] = []
        self.groups = []
        self._features: dict[tuple[str, int, float], Features] = {}
        self._cache_features = not self.train_encoder and not has_temporal_adapters(student.sam)

    def add_replay(self, pair: VolumePair, similarity: float) -> None:
        cfg = self.adapt
        sampler = ClipSampler([pair], self.rng, clip_length=cfg.clip_length, prompt_probs=self.config.prompt_probs)
        self.replay.append(_ReplaySource(sampler, similarity, feature_weight(similarity, cfg.close, cfg.far)))

    def sample_replay(self) -> ReplayClip:
        source = self.replay[int(self.rng.integers(len(self.replay)))]
        clip = source.sampler.sample()
        values = {f.name: getattr(clip, f.name) for f in fields(Clip)}
        return ReplayClip(**values, similarity=source.similarity, feature_weight=source.feature_weight)

    def batch(self) -> list[Clip]:
        cfg = self.adapt
        replayed = min(cfg.batch - 1, round(cfg.batch * cfg.replay_ratio)) if self.replay else 0
        return [self.sampler.sample() for _ in range(cfg.batch - replayed)] + [self.sample_replay() for _ in range(replayed)]

    # the trainer's hooks -------------------------------------------------------------------
    def correction_frames(self, clip: Clip) -> tuple[int, ...]:
        return () if isinstance(clip, ReplayClip) else super().correction_frames(clip)

    def clip_features(self, clip: Clip, model: LoadedModel | None = None) -> list[Features] | None:
        """The clip's features as ``model`` (default: the student) sees them: the teacher's
        frozen encoder, on the input smoothing of the model asked for."""
        if not self._cache_features:
            return None
        smoothing = (model or self.model).input_smoothing
        for index, frame in enumerate(clip.frames):
            if (clip.source, frame, smoothing) not in self._features:
                image = self.teacher.with_input_smoothing(smoothing).input_for(clip.volume, index)[None]
                with torch.no_grad():
                    self._features[(clip.source, frame, smoothing)] = encode_images(self.teacher.sam, image.to(self.teacher.device))[0]
        return [self._features[(clip.source, frame, smoothing)] for frame in clip.frames]

    def extra_terms(self, clip: Clip, outputs: ClipOutputs) -> dict[str, torch.Tensor]:
        zero = torch.zeros((), device=self.model.device)
        if not self.adapt.distills:
            return {"distill": zero, "anchor": zero}
        distill = zero
        if isinstance(clip, ReplayClip):
            with torch.no_grad():
                taught = forward_clip(self.teacher, clip, policy=self.config.memory_policy, features=self.clip_features(clip, self.teacher))
            distill = distillation(outputs, taught, clip.feature_weight)
        return {"distill": distill, "anchor": anchor(self.groups) if self.groups else zero}

    def estimate_importance(self) -> None:
        """Fisher importance of each adapted layer on ``fisher_clips`` earlier-case clips."""
        if not self.adapt.distills:
            return

        def task_loss(clip: Clip):
            def loss() -> torch.Tensor:
                with self.autocast():
                    outputs = forward_clip(self.model, clip, policy=self.config.memory_policy, features=self.clip_features(clip))
                    targets = clip_targets(clip, self.model.image_size).to(self.model.device)
                    terms = clip_loss_terms(outputs, targets, self.config.loss_weights)
                    return combine({k: terms[k] for k in ("focal", "dice", "iou", "object_score")}, self.config.loss_weights)
            return loss

        clips = [self.sample_replay() for _ in range(self.adapt.fisher_clips)] if self.replay else []
        self.groups = fisher_importance(self.model.sam, [task_loss(clip) for clip in clips])


def _student(model: LoadedModel, input_smoothing: float) -> LoadedModel:
    return LoadedModel(model.spec, copy.deepcopy(model.sam), model.device, model.dtype, model.checkpoint,
                       input_smoothing=input_smoothing)


def choose_smoothing(model: LoadedModel, cases: list[ConfirmedCase], candidates, margin: float) -> float:
    """The input smoothing among ``candidates`` (and the model's own) under which ``model``
    segments ``cases`` best (mean :func:`case_dice` over the cases whose input a candidate
    changes); the model's own unless another gains at least ``margin`` there. Cases whose
    input no candidate changes are not evaluated (their Dice is the same under each, so they
    would only dilute the gain), nor are cases the evaluation cannot score."""
    current = model.input_smoothing
    options = sorted({current, *candidates})
    if len(options) == 1:
        return current
    scores, evaluated = dict.fromkeys(options, 0.0), 0
    for case in cases:
        volume = Volume(case.image, normalise=None if case.window is None else IntensityWindow(*case.window))
        sigmas = {k: volume.smoothing_sigma(k) for k in options}
        if len(set(sigmas.values())) == 1:
            continue
        by_sigma: dict[float, float] = {}
        try:
            for k, sigma in sigmas.items():
                if sigma not in by_sigma:
                    by_sigma[sigma] = case_dice(model.with_input_smoothing(k), case)
        except (LabelError, VolumeError):
            continue
        evaluated += 1
        for k in options:
            scores[k] += by_sigma[sigmas[k]]
    scores = {k: total / max(evaluated, 1) for k, total in scores.items()}  # the mean over the cases it changes
    best = max(options, key=lambda k: (scores[k], -abs(k - current)))
    return best if scores[best] >= scores[current] + margin else current


def adapt(
    model: LoadedModel,
    new_case: ConfirmedCase,
    store: CaseStore,
    *,
    versions: str | Path | ModelVersions | None = None,
    config: AdaptConfig | None = None,
    **settings,
) -> Iterator[AdaptProgress]:
    """Adapt ``model`` to ``new_case``, yielding an :class:`AdaptProgress` per step; the last
    one carries the :class:`AdaptResult` (the new model, loaded as its saved version would
    be). ``settings`` override ``config``'s fields (e.g. ``mode="replay"``, ``steps=10``).

    ``model`` itself is never changed: a copy adapts, and the new version is saved and
    returned only after the last step, so stopping the iteration early (Cancel) leaves
    nothing behind. Earlier cases are read from ``store`` before the first step, so a damaged
    store fails before anything is written. Versions go to ``versions`` (default: beside
    the base weights, see :func:`default_versions_folder`).
    """
    unknown = sorted(set(settings) - {f.name for f in fields(AdaptConfig)})
    if unknown:
        raise TrainingError(f"unknown adaptation settings {unknown}; the settings are {[f.name for f in fields(AdaptConfig)]}")
    config = dataclasses.replace(config or AdaptConfig(), **settings)
    start = time.perf_counter()
    if config.mode == "none":
        yield AdaptProgress(0, 0, 0.0, {}, 0.0, 0.0, AdaptResult(model, None, (), 0.0))
        return
    model_origin(model)  # refuses a model without a file before any work
    folder = versions if isinstance(versions, ModelVersions) else ModelVersions(versions or default_versions_folder(model))
    retrieved = tuple(store.retrieve(new_case.descriptor, config.top_k, exclude={new_case.key})) if config.replays else ()
    earlier = [(r, store.case(r.case_id)) for r in retrieved]

    smoothing = choose_smoothing(model, [new_case] + [case for _, case in earlier], config.smoothing, config.smoothing_margin)
    torch.manual_seed(config.seed)
    student = _student(model, smoothing)
    trainer = _ContinualTrainer(student, model, new_case.pair(f"new:{new_case.name}"), config)
    for found, case in earlier:
        trainer.add_replay(case.pair(f"{found.case_id}:{found.name}"), found.similarity)
    trainer.estimate_importance()
    for _ in range(config.steps):
        loss, terms, lr = trainer.train_step(trainer.batch())
        if trainer.step < config.steps:
            yield AdaptProgress(trainer.step, config.steps, loss, terms, lr, time.perf_counter() - start)

    check_frozen(student.sam, trainer.trainable)
    checked = _check(model, student, new_case) if config.check else None
    if checked is not None and not checked.passed:
        seconds = time.perf_counter() - start
        yield AdaptProgress(trainer.step, config.steps, loss, terms, lr, seconds,
                            AdaptResult(model, None, retrieved, seconds, checked))
        return
    merged = merged_state_dict(student.sam)
    changed = sorted(set(model_origin(model).changed) | {merged_key(student.sam, name) for name in trainer.trainable})
    delta = {key: merged[key] for key in changed}
    info = folder.save(
        model, delta, mode=config.mode, steps=config.steps, trained=",".join(config.train), case=new_case.name,
        case_key=new_case.key, replayed=",".join(r.name for r in retrieved), input_smoothing=smoothing,
    )
    # with the image encoder and its input left as they were, the new version reads the features cached for this one
    same_input = leaves_encoder(delta) and smoothing == model.input_smoothing
    adapted = LoadedModel(model.spec, copy.deepcopy(model.sam).eval(), model.device, model.dtype, info.path,
                          shares_features_with=model.feature_signature if same_input else None,
                          input_smoothing=smoothing)
    state = adapted.sam.state_dict()
    with torch.no_grad():
        for key, value in delta.items():
            state[key].copy_(value)
    if retrieved:
        store.mark_used(r.case_id for r in retrieved)
    seconds = time.perf_counter() - start
    yield AdaptProgress(trainer.step, config.steps, loss, terms, lr, seconds,
                        AdaptResult(adapted, info, retrieved, seconds, checked))


def _check(model: LoadedModel, student: LoadedModel, case: ConfirmedCase) -> CaseCheck | None:
    """The check, or ``None`` for a case the evaluation cannot score (e.g. NaN voxels, which a
    session tolerates): such a case keeps its version unchecked rather than losing it."""
    try:
        return CaseCheck(case_dice(model, case), case_dice(student, case))
    except (LabelError, VolumeError):
        return None


def case_dice(model: LoadedModel, case: ConfirmedCase) -> float:
    """Mean Dice over the case's objects after a box on each one's middle slice, propagated
    both ways through the case's slices (read through its window), without clicks."""
    from napari_samed2.evaluation import EvalCase, evaluate_cases

    was_training = model.sam.training
    model.sam.eval()  # an adapting student is in train mode (dropout)
    try:
        evaluation = EvalCase.from_arrays(case.image, case.labels, case.spacing, name=case.name)
        results = evaluate_cases(model, [evaluation], clicks=0, window=case.window)
    finally:
        model.sam.train(was_training)
    return float(np.mean([r.dice for r in results.records]))


def loss_on_case(model: LoadedModel, case: ConfirmedCase, *, clips: int = 4, clip_length: int = 4, seed: int = 0) -> float:
    """The mean task loss of ``model`` on ``clips`` clips of ``case`` (the same clips for the
    same seed, mask-prompted, no clicks): how well a model fits a case, for tests and reports."""
    from napari_samed2.training.losses import LOSS_WEIGHTS

    rng = np.random.default_rng(seed)
    sampler = ClipSampler([case.pair()], rng, clip_length=clip_length, prompt_probs={"box": 1.0}, reverse_prob=0.0)
    values = []
    was_training = model.sam.training
    model.sam.eval()
    try:
        with torch.no_grad():
            for _ in range(clips):
                clip = sampler.sample()
                outputs = forward_clip(model, clip)
                terms = clip_loss_terms(outputs, clip_targets(clip, model.image_size).to(model.device))
                values.append(float(combine(terms, LOSS_WEIGHTS)))
    finally:
        model.sam.train(was_training)
    return float(np.mean(values))
