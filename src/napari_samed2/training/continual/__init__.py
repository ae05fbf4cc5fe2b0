"""Continual adaptation: the model learns from every confirmed volume without forgetting.

Our reading of "Forging a Dynamic Memory" (arXiv 2512.13072) for an annotation tool: the
tasks are the user's confirmed volumes, in the order they are confirmed.

* :func:`confirm` (``Session.confirm(store)``) adds the session's confident memories to its
  memory library and the case (slices, masks, prompts, fingerprint) to a :class:`CaseStore`.
* :func:`adapt` makes a new model version from a case, as a generator of
  :class:`AdaptProgress` (the GUI runs it in a worker; stopping it early cancels).
* :class:`ModelVersions` lists, loads, compares and rolls back versions;
  ``load_model(version file)`` loads one.

What adapts: low-rank adapters (rank 4) on the q/k/v/out projections of memory attention and
of the mask decoder's transformer, trained on a copy of the model. They are small (39 k
parameters, 1 % of the demo model), cheap to train, and leave the image encoder alone, so image features
are computed once per slice and reused by every step (and case fingerprints stay comparable
across versions). At the end the adapters are merged and only the changed weights are saved.

And the input: before training, the version chooses an *input smoothing* ``k`` among
``smoothing`` (0, 3, 6): slices are blurred in-plane by ``k`` x the volume's noise level
pixels and stretched to the smoothed range (``engine.Volume.model_input``). Each candidate is
scored by the Dice of a box on each object's middle slice (as the check below) on the new case
and on the replayed cases whose input it changes (clean volumes, noise ~0.03, are not
smoothed at these strengths, so they are neither evaluated nor changed); the best replaces the
model's own only when it gains ``smoothing_margin`` (0.02). Why: the demo model's encoder never
saw speckle, and a few adapter steps cannot teach it to (docs/continual.md); smoothing in
proportion to the noise gives it an image it reads, for the modalities that need it only, as
adapting normalisation statistics per domain does. A version with smoothing encodes afresh.

The rule, per step (``batch`` clips, mode ``replay+distill``):

1. **Retrieval.** The stored cases are ranked by the cosine similarity ``s`` of their
   descriptor to the new case's; the ``top_k`` best (the new case itself excluded) are the
   replay sources. ``round(batch * replay_ratio)`` clips (at most ``batch - 1``) come from a
   source chosen uniformly among them, the rest from the new case. Replay clips are supervised
   with their stored masks like the new case's, but get no correction clicks, so that the
   teacher below sees exactly the inputs the student sees.
2. **Granularity.** For a replay clip from a case of similarity ``s``:
   ``w = clip((close - s) / (close - far), 0, 1)`` (defaults ``close=0.9``, ``far=0.7``) and
   ``distill = (1 - w) * output-level + w * feature-level``, averaged over the clip's frames.
   Output-level: Bernoulli KL from the teacher's to the student's mask logits (every
   candidate) and object score. Feature-level: relative MSE (``|s - t|^2 / |t|^2``) of the
   64-channel memory features each frame leaves for later frames and of its object pointer.
   The teacher is the model before the update (the caller's model, frozen, ``no_grad``).
   Why: near the earlier cases (close), the new case refines the same kind of image, and
   holding only the outputs on the replayed clips keeps what the user saw while leaving the
   internals free to improve; far from them (a new modality), the update moves the shared
   representation a lot and a few output maps constrain it too weakly, so the intermediate
   features the earlier cases are tracked with are held instead.
3. **Importance.** Before the first step, a diagonal Fisher estimate of each adapted layer
   (mean squared gradient of the task loss with respect to its frozen weight, on
   ``fisher_clips`` replay clips of the earlier cases, divided by its mean over layers) gives
   each layer's importance ``F_g``. The ``anchor`` term is
   ``mean_g F_g * |dW_g|^2 / |W_g|^2``, ``dW_g`` the layer's LoRA update: EWC's penalty per
   parameter group, scale-free, so layers the earlier cases depend on move least.
4. **Loss.** sam2's terms on every clip, plus ``distill_weight * distill`` (replay clips) and
   ``anchor_weight * anchor``, through the trainer's named, weighted and logged terms.
5. **Check.** After the last step, the new case is segmented by the model before and after
   (a box on each object's middle slice, propagated, no clicks); the adapted model becomes a
   version only if its mean Dice there is at least the earlier one (``check``; on by default).
   Adapters that cannot fit a case lower even its own Dice, and the cases like it
   (docs/continual.md): such an update is dropped rather than kept.

Modes, for ablations: ``none`` (no change), ``naive`` (new case only, no retrieval),
``replay`` (1 and 5), ``replay+distill`` (1-5); ``naive`` also checks (5). Without stored earlier cases, ``replay`` and
``replay+distill`` reduce to ``naive``.
"""

from napari_samed2.training.continual.adapt import (
    MODES,
    AdaptConfig,
    AdaptProgress,
    AdaptResult,
    CaseCheck,
    ReplayClip,
    adapt,
    case_dice,
    loss_on_case,
)
from napari_samed2.training.continual.cases import (
    CasePrompt,
    CaseRecord,
    CaseStore,
    Confirmation,
    ConfirmedCase,
    Retrieved,
    case_from_arrays,
    case_from_session,
    confirm,
)
from napari_samed2.training.continual.distill import feature_weight
from napari_samed2.training.continual.versions import (
    BASE,
    ModelVersions,
    VersionComparison,
    VersionInfo,
    default_versions_folder,
)

__all__ = [
    "BASE",
    "MODES",
    "AdaptConfig",
    "AdaptProgress",
    "AdaptResult",
    "CaseCheck",
    "CasePrompt",
    "CaseRecord",
    "CaseStore",
    "Confirmation",
    "ConfirmedCase",
    "ModelVersions",
    "ReplayClip",
    "Retrieved",
    "VersionComparison",
    "VersionInfo",
    "adapt",
    "case_from_arrays",
    "case_from_session",
    "confirm",
    "default_versions_folder",
    "feature_weight",
    "case_dice",
    "loss_on_case",
]
