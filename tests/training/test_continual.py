"""Continual adaptation: the case store, replay, distillation, versions, cancel and rollback.

A random-weight ``demo`` model at 128 px and 6-slice volumes keep every adaptation to a few
seconds on one CPU core. Tests that need the version an adaptation writes pass ``check=False``:
with random weights the Dice before and after it, which the check compares, is noise.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from napari_samed2 import load_model
from napari_samed2.engine import EmbeddingCache, FramePrompt, Session
from napari_samed2.errors import SavedStateError, SessionError, TrainingError, VolumeError
from napari_samed2.training.continual import (
    BASE,
    CaseCheck,
    CaseStore,
    ConfirmedCase,
    ModelVersions,
    ReplayClip,
    adapt,
    case_dice,
    case_from_arrays,
    feature_weight,
    loss_on_case,
)
from napari_samed2.training.continual.adapt import AdaptConfig, _ContinualTrainer
from napari_samed2.training.continual.distill import distillation
from napari_samed2.training.data import make_clip
from napari_samed2.training.losses import feature_distillation, output_distillation
from napari_samed2.training.clips import forward_clip
from tests.training.conftest import ellipse_pair

SIZE = 128
FRAMES = 6


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory):
    from napari_samed2.models.random_weights import save_random_checkpoint

    return save_random_checkpoint(tmp_path_factory.mktemp("demo") / "demo.pt", "demo", image_size=SIZE, seed=0)


@pytest.fixture
def model(demo_checkpoint):
    return load_model(demo_checkpoint, device="cpu", dtype="float32", image_size=SIZE)


def direction(*values: float) -> torch.Tensor:
    """A unit descriptor of 8 values: cosine similarities between them are easy to set."""
    return torch.nn.functional.normalize(torch.tensor([*values, *[0.0] * (8 - len(values))]), dim=0)


def case(seed: int, descriptor: torch.Tensor, name: str | None = None, gain: float = 1.0) -> ConfirmedCase:
    image, label = ellipse_pair(seed, frames=FRAMES)
    return ConfirmedCase(name or f"case {seed}", image * gain, label.astype(np.uint16), descriptor)


def real_case(model, seed: int, gain: float = 1.0) -> ConfirmedCase:
    image, label = ellipse_pair(seed, frames=FRAMES)
    return case_from_arrays(model, image * gain, label, name=f"case {seed}")


def outputs_of(model, seed: int = 7) -> list[torch.Tensor]:
    """The mask logits of every frame of one fixed clip (eval mode, no grad)."""
    pair = case(seed, direction(1)).pair()
    clip = make_clip(pair, 1, range(4), "box", np.random.default_rng(0))
    model.sam.eval()
    with torch.no_grad():
        out = forward_clip(model, clip)
    return [tries[0].low_res for tries in out.outputs]


def spy_on_clips(monkeypatch) -> list:
    seen = []
    original = _ContinualTrainer.train_step

    def train_step(self, clips):
        seen.extend(clips)
        return original(self, clips)

    monkeypatch.setattr(_ContinualTrainer, "train_step", train_step)
    return seen


def test_retrieval_ranks_by_similarity_and_replay_draws_only_the_top_cases(model, tmp_path, monkeypatch):
    store = CaseStore.open(tmp_path / "store")
    new = case(0, direction(1, 0.1))
    ids = {
        name: store.add(case(seed, d, name))
        for seed, name, d in [(1, "near", direction(1, 0.2)), (2, "far", direction(0, 1)),
                              (3, "nearest", direction(1, 0.1, 0.01)), (4, "opposite", direction(-1))]
    }
    store.add(new)  # the new case itself is stored too, and must not be replayed
    ranked = store.retrieve(new.descriptor, 2, exclude={new.key})
    assert [r.name for r in ranked] == ["nearest", "near"]
    assert ranked[0].similarity > ranked[1].similarity > 0.9

    clips = spy_on_clips(monkeypatch)
    progress = list(adapt(model, new, store, check=False, versions=tmp_path / "versions", mode="replay", steps=3, top_k=2, batch=2))
    replayed = {c.source.split(":", 1)[1] for c in clips if isinstance(c, ReplayClip)}
    assert replayed and replayed <= {"nearest", "near"}
    assert sum(isinstance(c, ReplayClip) for c in clips) == 3  # one clip of two per step
    assert [r.name for r in progress[-1].result.retrieved] == ["nearest", "near"]
    reopened = CaseStore.open(tmp_path / "store")
    uses = {row.name: row.uses for row in reopened.records}
    assert uses == {"near": 1, "far": 0, "nearest": 1, "opposite": 0, "case 0": 0}
    assert ids["far"] in reopened.ids


def test_store_is_bounded_dropping_least_used_then_oldest(tmp_path):
    store = CaseStore.open(tmp_path / "store", max_cases=2)
    first, second = store.add(case(1, direction(1))), store.add(case(2, direction(0, 1)))
    store.mark_used([first])
    third = store.add(case(3, direction(0, 0, 1)))
    assert store.ids == [first, third]  # the second was never replayed: it goes first
    assert not (tmp_path / "store" / "cases" / f"{second}.safetensors").exists()
    assert CaseStore.open(tmp_path / "store").ids == [first, third]


def test_base_weights_stay_bit_identical_and_only_adapted_weights_change(model, tmp_path):
    store = CaseStore.open(tmp_path / "store")
    store.add(real_case(model, 1))
    new = real_case(model, 0)
    before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    result = list(adapt(model, new, store, check=False, versions=tmp_path / "versions", steps=2))[-1].result
    assert all(torch.equal(before[k], v) for k, v in model.sam.state_dict().items())
    changed = {k for k, v in result.model.sam.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.startswith(("memory_attention.layers.", "sam_mask_decoder.transformer.")) for k in changed)
    assert all(k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight")) for k in changed)
    assert result.model.signature != model.signature  # a version is another model for saved sessions
    # ... whose image encoder is the base's: it reads the features cached for the base, on
    # switching to it and when it is loaded again from its file
    assert result.model.feature_signature == model.feature_signature
    image, _ = ellipse_pair(3, frames=FRAMES)
    cache = EmbeddingCache()
    base_session = Session(model, image, cache=cache)
    list(base_session.encode())
    assert base_session.frames_encoded == FRAMES
    for version in (result.model, load_model(result.version.path, device="cpu", dtype="float32")):
        assert version.feature_signature == model.feature_signature
        again = Session(version, image, cache=cache)
        again.segment_frame(1, again.add_object(), FramePrompt(np.array([[32.0, 32.0]]), [1]))
        assert again.frames_encoded == 0


def test_an_adapted_image_encoder_gives_a_version_that_encodes_afresh(model, tmp_path):
    """With ``lora`` named, the encoder's attention adapts too (a new modality is seen
    differently), so the version must not read features cached for the base."""
    store = CaseStore.open(tmp_path / "store")
    new = real_case(model, 0)
    before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    result = list(adapt(model, new, store, check=False, versions=tmp_path / "versions", steps=2,
                        train=("lora", "lora_memory", "lora_decoder")))[-1].result
    assert all(torch.equal(before[k], v) for k, v in model.sam.state_dict().items())
    changed = {k for k, v in result.model.sam.state_dict().items() if not torch.equal(before[k], v)}
    encoder = {k for k in changed if k.startswith("image_encoder.trunk.blocks.")}
    assert encoder and all(k.endswith(("attn.qkv.weight", "attn.proj.weight")) for k in encoder)
    assert changed - encoder and all(
        k.startswith(("memory_attention.layers.", "sam_mask_decoder.transformer.")) for k in changed - encoder)
    image, _ = ellipse_pair(3, frames=FRAMES)
    cache = EmbeddingCache()
    list(Session(model, image, cache=cache).encode())
    again = Session(result.model, image, cache=cache)
    again.segment_frame(1, again.add_object(), FramePrompt(np.array([[32.0, 32.0]]), [1]))
    assert again.frames_encoded == 1 and result.model.feature_signature != model.feature_signature
    reloaded = load_model(result.version.path, device="cpu", dtype="float32")
    assert reloaded.feature_signature == result.model.feature_signature  # the same encoder weights


def test_modules_trained_in_full_are_saved_in_the_version(model, tmp_path):
    store = CaseStore.open(tmp_path / "store")
    new = real_case(model, 0)
    before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    result = list(adapt(model, new, store, check=False, versions=tmp_path / "versions", mode="naive", steps=2,
                        train=("decoder",)))[-1].result
    changed = {k for k, v in result.model.sam.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("sam_mask_decoder.") for k in changed)
    assert not any(k.startswith(("image_encoder.", "memory_attention.")) for k in changed)
    assert any(k.endswith(".bias") for k in changed)  # not only the weights LoRA would touch
    reloaded = load_model(result.version.path, device="cpu", dtype="float32").sam.state_dict()
    assert all(torch.equal(reloaded[k], result.model.sam.state_dict()[k]) for k in changed)


def test_an_adaptation_that_does_worse_on_its_own_case_is_dropped(model, tmp_path, monkeypatch):
    """The check: the adapted model becomes a version only if it segments the new case at
    least as well as the model before; otherwise nothing is written and the model stays."""
    adapting = importlib.import_module("napari_samed2.training.continual.adapt")  # the package's adapt is the function

    after = {}
    monkeypatch.setattr(adapting, "case_dice", lambda m, case: 0.5 if m is model else after["dice"])
    store, versions = CaseStore.open(tmp_path / "store"), ModelVersions(tmp_path / "versions")
    new = real_case(model, 0)
    after["dice"] = 0.4
    result = list(adapt(model, new, store, versions=versions, mode="naive", steps=2))[-1].result
    assert result.model is model and result.version is None and versions.list() == []
    assert result.check == CaseCheck(0.5, 0.4) and not result.check.passed
    after["dice"] = 0.5
    result = list(adapt(model, new, store, versions=versions, mode="naive", steps=2))[-1].result
    assert result.model is not model and result.check.passed and [v.version for v in versions.list()] == ["v1"]

    def unscorable(m, case):
        raise VolumeError("the image holds NaN")

    monkeypatch.setattr(adapting, "case_dice", unscorable)  # a case the evaluation refuses keeps its version
    result = list(adapt(model, new, store, versions=versions, mode="naive", steps=2))[-1].result
    assert result.check is None and [v.version for v in versions.list()] == ["v1", "v2"]


def test_the_check_scores_the_case_as_the_evaluation_starts(model, tmp_path):
    new = real_case(model, 0)
    model.sam.train()
    value = case_dice(model, new)
    assert 0.0 <= value <= 1.0 and model.sam.training  # scored in eval mode, the mode given back
    model.sam.eval()
    assert case_dice(model, new) == value
    store = CaseStore.open(tmp_path / "store")
    result = list(adapt(model, new, store, versions=tmp_path / "versions", mode="naive", steps=2))[-1].result
    assert result.check.before == value and (result.version is None) == (not result.check.passed)


def test_rollback_restores_the_exact_earlier_outputs(model, tmp_path):
    store = CaseStore.open(tmp_path / "store")
    versions = ModelVersions(tmp_path / "versions")
    base_outputs = outputs_of(model)
    v1 = list(adapt(model, real_case(model, 0), store, check=False, versions=versions, mode="naive", steps=2, lr=1e-2))[-1].result
    v1_outputs = outputs_of(v1.model)
    v2 = list(adapt(v1.model, real_case(model, 1), store, check=False, versions=versions, mode="naive", steps=2, lr=1e-2))[-1].result
    assert [v.version for v in versions.list()] == ["v1", "v2"] and versions.current == "v2"
    assert v2.version.parent == "v1" and versions.compare("v1", "v2").weight_distance > 0
    assert not all(torch.equal(a, b) for a, b in zip(outputs_of(v2.model), v1_outputs))

    back = versions.rollback("v1", device="cpu", dtype="float32")
    assert versions.current == "v1"
    assert all(torch.equal(a, b) for a, b in zip(outputs_of(back), v1_outputs))
    assert all(torch.equal(a, b) for a, b in zip(outputs_of(versions.rollback(BASE, device="cpu", dtype="float32")), base_outputs))
    assert versions.current == BASE


def test_corrupted_or_missing_store_says_so_and_loses_no_version(model, tmp_path):
    with pytest.raises(SavedStateError, match="no case store"):
        CaseStore.open(tmp_path / "nowhere", create=False)
    store = CaseStore.open(tmp_path / "store")
    earlier = store.add(real_case(model, 1))
    versions = ModelVersions(tmp_path / "versions")
    list(adapt(model, real_case(model, 0), store, check=False, versions=versions, steps=1))

    (tmp_path / "store" / "cases" / f"{earlier}.safetensors").write_bytes(b"not a case")
    with pytest.raises(SavedStateError, match=f"case {earlier}.*Remove it"):
        list(adapt(model, real_case(model, 2), store, check=False, versions=versions, steps=1))
    (tmp_path / "store" / "index.json").write_text("{ truncated")
    with pytest.raises(SavedStateError, match="index.json cannot be read"):
        CaseStore.open(tmp_path / "store")
    with pytest.raises(SavedStateError):  # a folder with cases but no index is not silently replaced
        (tmp_path / "store" / "index.json").unlink()
        CaseStore.open(tmp_path / "store")
    assert [v.version for v in versions.list()] == ["v1"]
    assert versions.load("v1", device="cpu").checkpoint == versions.get("v1").path


def test_cancelled_adaptation_leaves_the_current_model_in_place(model, tmp_path):
    store = CaseStore.open(tmp_path / "store")
    store.add(real_case(model, 1))
    before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    signature = model.signature
    steps = adapt(model, real_case(model, 0), store, check=False, versions=tmp_path / "versions", steps=5)
    first = next(steps)
    assert first.step == 1 and first.result is None
    steps.close()  # Cancel
    assert all(torch.equal(before[k], v) for k, v in model.sam.state_dict().items())
    assert model.signature == signature
    assert ModelVersions(tmp_path / "versions").list() == []
    assert [row.uses for row in CaseStore.open(tmp_path / "store").records] == [0]


def test_distillation_granularity_follows_the_retrieval_distance(model, tmp_path, monkeypatch):
    assert feature_weight(0.95, close=0.9, far=0.7) == 0.0
    assert feature_weight(0.8, close=0.9, far=0.7) == pytest.approx(0.5)
    assert feature_weight(0.2, close=0.9, far=0.7) == 1.0
    with pytest.raises(TrainingError, match="below"):
        feature_weight(0.5, close=0.7, far=0.9)

    # the weight selects the level: outputs only at 0, memory features only at 1
    pair = case(0, direction(1)).pair()
    clip = make_clip(pair, 1, range(3), "box", np.random.default_rng(0))
    other = load_model(model.checkpoint, device="cpu", dtype="float32", image_size=SIZE)
    with torch.no_grad():
        other.sam.memory_encoder.out_proj.weight.mul_(1.5)  # changes memory features, not frame 0's output
        student, teacher = forward_clip(other, clip), forward_clip(model, clip)
        outputs = torch.stack([output_distillation(s[0], t[0]) for s, t in zip(student.outputs, teacher.outputs)]).mean()
        features = torch.stack([
            feature_distillation(student.memory.entries[f].maskmem_features, teacher.memory.entries[f].maskmem_features,
                                 student.memory.entries[f].obj_ptr, teacher.memory.entries[f].obj_ptr)
            for f in range(len(clip))
        ]).mean()
        assert float(distillation(student, teacher, 0.0)) == pytest.approx(float(outputs))
        assert float(distillation(student, teacher, 1.0)) == pytest.approx(float(features))
        assert float(features) > 0

    # in an adaptation, each replayed case gets the weight of its own similarity
    store = CaseStore.open(tmp_path / "store")
    store.add(case(1, direction(1, 0.1), "close"))  # similarity 0.99
    store.add(case(2, direction(1, 1.5), "far"))  # similarity ~0.6
    clips = spy_on_clips(monkeypatch)
    list(adapt(model, case(0, direction(1)), store, check=False, versions=tmp_path / "versions", steps=4, top_k=2, fisher_clips=1))
    weights = {c.source.split(":", 1)[1]: c.feature_weight for c in clips if isinstance(c, ReplayClip)}
    assert weights == {"close": 0.0, "far": 1.0}


def test_a_few_steps_lower_the_loss_on_the_new_case(model, tmp_path):
    new = real_case(model, 0)
    store = CaseStore.open(tmp_path / "store")
    before = loss_on_case(model, new)
    progress = list(adapt(model, new, store, check=False, versions=tmp_path / "versions", mode="naive", steps=8, lr=5e-3))
    assert {"focal", "dice", "iou", "object_score", "distill", "anchor"} <= set(progress[0].terms)
    assert loss_on_case(progress[-1].result.model, new) < before
    assert loss_on_case(model, new) == before  # the model before is untouched


def test_mode_none_changes_nothing_and_unknown_settings_are_refused(model, tmp_path):
    store = CaseStore.open(tmp_path / "store")
    (only,) = adapt(model, case(0, direction(1)), store, versions=tmp_path / "versions", mode="none")
    assert only.result.model is model and only.result.version is None
    with pytest.raises(TrainingError, match="unknown adaptation mode"):
        next(adapt(model, case(0, direction(1)), store, mode="forget"))
    with pytest.raises(TrainingError, match="unknown adaptation settings"):
        next(adapt(model, case(0, direction(1)), store, stepz=3))


def test_the_new_cases_clips_start_as_configured_and_bad_settings_are_refused(model, tmp_path, monkeypatch):
    """Box prompts on the object's middle slice are how the evaluation (and a user) starts:
    an adaptation can train on clips that start so."""
    store = CaseStore.open(tmp_path / "store")
    new = real_case(model, 0)
    clips = spy_on_clips(monkeypatch)
    list(adapt(model, new, store, check=False, versions=tmp_path / "versions", mode="naive", steps=3, batch=2,
               prompt_probs={"box": 1.0}, middle_start_prob=1.0))
    present = {obj: np.flatnonzero((new.labels == obj).any(axis=(1, 2))) for obj in np.unique(new.labels) if obj}
    assert len(clips) == 6 and {c.prompt_kind for c in clips} == {"box"}
    assert all(c.frames[0] == present[c.object_id][len(present[c.object_id]) // 2] for c in clips)
    with pytest.raises(TrainingError, match="unknown prompt kinds"):
        next(adapt(model, new, store, prompt_probs={"scribble": 1.0}))
    with pytest.raises(TrainingError, match="middle_start_prob"):
        next(adapt(model, new, store, middle_start_prob=2.0))


def test_session_confirm_adds_memories_and_the_case(model, tmp_path):
    from napari_samed2.engine import EmbeddingCache, FramePrompt, Session

    image, label = ellipse_pair(0, frames=FRAMES)
    session = Session(model, image, cache=EmbeddingCache())
    with pytest.raises(SessionError, match="nothing to confirm"):
        session.confirm(CaseStore.open(tmp_path / "store"))
    object_id = session.add_object()
    ys, xs = np.nonzero(label[2])
    session.segment_frame(2, object_id, FramePrompt(box=(ys.min(), xs.min(), ys.max(), xs.max())))
    list(session.propagate("both"))
    store = CaseStore.open(tmp_path / "store")
    done = session.confirm(store, name="ellipse", min_confidence=0.0)
    assert done.library_kept > 0 and len(session.library) == done.library_kept
    stored = CaseStore.open(tmp_path / "store").case(done.case_id)
    labels = session.labels()
    present = np.flatnonzero(labels.any((1, 2)))
    assert stored.first_slice == present[0]
    np.testing.assert_array_equal(stored.labels, labels[present[0] : present[-1] + 1])
    np.testing.assert_array_equal(stored.image, image[present[0] : present[-1] + 1])
    assert [(p.object_id, p.frame + stored.first_slice) for p in stored.prompts] == [(object_id, 2)]
    assert session.undo() is not None and len(session.library) == 0  # one undo step takes the memories out


def test_input_smoothing_is_chosen_where_it_pays_and_only_cases_it_changes_are_evaluated(model, monkeypatch):
    """choose_smoothing: the best candidate by the cases' Dice, the model's own unless another
    gains the margin, and clean cases (whose input no candidate changes) never evaluated."""
    adapt_module = importlib.import_module("napari_samed2.training.continual.adapt")

    rng = np.random.default_rng(0)
    labels = np.pad(np.ones((4, 24, 24), np.uint16), ((0, 0), (12, 12), (12, 12)))
    clean = ConfirmedCase("clean", (100 + 400 * labels + rng.normal(0, 2, labels.shape)).astype(np.float32), labels, direction(1))
    speckled = ConfirmedCase("speckled", (200 * rng.rayleigh(0.8, labels.shape)).astype(np.float32), labels, direction(0, 1))
    evaluated = []

    def fake_dice(scored, case):
        evaluated.append((case.name, scored.input_smoothing))
        return {0.0: 0.2, 3.0: 0.3, 6.0: 0.45}[scored.input_smoothing]

    monkeypatch.setattr(adapt_module, "case_dice", fake_dice)
    assert adapt_module.choose_smoothing(model, [clean, speckled], (0.0, 3.0, 6.0), margin=0.02) == 6.0
    assert {name for name, _ in evaluated} == {"speckled"}
    evaluated.clear()
    # the margin holds on the cases a candidate changes: clean ones do not dilute the gain (0.25)
    assert adapt_module.choose_smoothing(model, [clean, clean, clean, speckled], (0.0, 3.0, 6.0), margin=0.2) == 6.0
    assert adapt_module.choose_smoothing(model, [clean, speckled], (0.0, 3.0, 6.0), margin=0.3) == 0.0  # gain below the margin
    assert adapt_module.choose_smoothing(model, [clean], (0.0, 3.0, 6.0), margin=0.0) == 0.0
    assert adapt_module.choose_smoothing(model, [speckled], (), margin=0.02) == 0.0
    with pytest.raises(TrainingError, match="smoothing"):
        AdaptConfig(smoothing=(-1.0,))


def test_a_version_keeps_its_input_smoothing_and_encodes_afresh(model, tmp_path, monkeypatch):
    adapt_module = importlib.import_module("napari_samed2.training.continual.adapt")

    monkeypatch.setattr(adapt_module, "choose_smoothing", lambda *args: 6.0)
    store = CaseStore.open(tmp_path / "store")
    result = list(adapt(model, real_case(model, 0), store, check=False, versions=tmp_path / "versions", steps=1))[-1].result
    assert result.model.input_smoothing == 6.0 and result.version.input_smoothing == 6.0
    assert result.model.feature_signature != model.feature_signature  # its encoder sees smoothed slices
    reloaded = load_model(result.version.path, device="cpu", dtype="float32")
    assert reloaded.input_smoothing == 6.0 and reloaded.feature_signature == result.model.feature_signature
    monkeypatch.undo()
    # the candidates scored before training read their own features, not the base's (a version
    # that shares the base's features, asked for another smoothing, no longer shares them)
    sharing = load_model(list(adapt(model, real_case(model, 1), store, check=False, versions=tmp_path / "plain",
                                    steps=1, smoothing=()))[-1].result.version.path, device="cpu", dtype="float32")
    assert sharing.feature_signature == model.feature_signature
    assert sharing.with_input_smoothing(3.0).feature_signature not in (model.feature_signature, sharing.feature_signature)
    assert sharing.with_input_smoothing(0.0) is sharing
    image = (200 * np.random.default_rng(1).rayleigh(0.8, (FRAMES, 48, 56))).astype(np.float32)
    from napari_samed2.engine.volume import Volume

    volume = Volume(image)
    assert not torch.equal(reloaded.input_for(volume, 2), model.input_for(volume, 2))
