import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from napari_samed2 import load_model
from napari_samed2.training import TrainConfig, Trainer, forward_clip, train
from napari_samed2.training.adapters import PARTS, part_of, select_trainable
from napari_samed2.training.data import load_pairs, make_clip
from napari_samed2.training.clips import clip_loss_terms, clip_targets
from napari_samed2.training.trainer import load_config
from napari_samed2.training.losses import combine
from tests.training.conftest import ellipse_pair

SMALL = dict(clip_length=3, correction_frames=0, val_every=0, save_every=0, warmup_steps=0)


def _trainer(model, tmp_path, train="decoder,memory", **options):
    config = TrainConfig(**{**SMALL, "steps": 10, "train": train, **options})
    return Trainer(model, load_pairs(*ellipse_pair(0)), config, tmp_path)


def _eval_loss(model, clip):
    model.sam.eval()
    with torch.no_grad():
        outputs = forward_clip(model, clip)
        return float(combine(clip_loss_terms(outputs, clip_targets(clip, model.image_size))))


def test_a_few_steps_reduce_the_loss_on_a_fixed_clip(fresh_model, tmp_path):
    trainer = _trainer(fresh_model, tmp_path, lr=1e-3, grad_clip=1.0)
    clip = make_clip(trainer.sampler.pairs[0], 1, [1, 2, 3], "box", np.random.default_rng(0))
    before = _eval_loss(fresh_model, clip)
    losses = [trainer.train_step(clip)[0] for _ in range(4)]
    after = _eval_loss(fresh_model, clip)
    assert after < 0.8 * before, (before, losses, after)


def test_a_batch_step_averages_the_gradients_of_its_clips(fresh_model, tmp_path, monkeypatch):
    trainer = _trainer(fresh_model, tmp_path, train="decoder", clip_length=1, prompt_probs={"box": 1.0})
    pair = trainer.sampler.pairs[0]
    clips = [make_clip(pair, 1, [f], "box", np.random.default_rng(f)) for f in (1, 4)]
    parameters = trainer.parameters
    fresh_model.sam.train()
    expected = [torch.zeros_like(p) for p in parameters]
    losses = []
    for clip in clips:  # each clip alone, by hand
        for p in parameters:
            p.grad = None
        total, _ = trainer.loss_on(clip)
        total.backward()
        losses.append(float(total))
        for e, p in zip(expected, parameters):
            if p.grad is not None:  # e.g. the object pointer's projection on a single slice
                e += p.grad / len(clips)
    seen = {}
    monkeypatch.setattr(trainer.optimizer, "step", lambda: seen.update(grads=[torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in parameters]))
    loss, _, _ = trainer.train_step(clips)
    assert loss == pytest.approx(np.mean(losses), rel=1e-5)
    scale = min(1.0, trainer.config.grad_clip / float(torch.linalg.vector_norm(torch.stack([e.norm() for e in expected]))))
    assert sum(bool(e.any()) for e in expected) > 10
    for e, g in zip(expected, seen["grads"]):
        torch.testing.assert_close(g, e * scale, rtol=1e-4, atol=1e-6)


def test_a_revival_clip_is_clicked_where_its_object_appears_and_trains(fresh_model, tmp_path):
    trainer = _trainer(fresh_model, tmp_path, clip_length=4, revive_prob=1.0, correction_clicks=1)
    clip = trainer.sampler.sample()
    assert clip.prompt_kind == "absent" and clip.correct_at
    assert set(clip.correct_at) <= set(trainer.correction_frames(clip))
    fresh_model.sam.eval()
    with torch.no_grad():
        outputs = forward_clip(fresh_model, clip, correct=clip.correct_at, clicks=1, rng=np.random.default_rng(0))
    (gap,) = clip.correct_at
    assert outputs.clicks == 1 and len(outputs.outputs[gap]) == 2  # tracked, then clicked
    assert outputs.memory.entries[gap].conditioning and outputs.memory.entries[0].object_score < 0
    loss, terms, _ = trainer.train_step(clip)
    assert np.isfinite(loss) and terms["dice"] > 0
    with pytest.raises(Exception, match="revival clips .* correction_clicks >= 1"):
        TrainConfig(revive_prob=0.5, correction_clicks=0)


def test_batch_is_a_setting_of_its_own():
    assert TrainConfig(batch=4).batch == 4
    with pytest.raises(Exception, match="batch must be at least 1"):
        TrainConfig(batch=0)


def test_frozen_modules_get_no_gradient_and_no_optimizer_state(fresh_model, tmp_path):
    trainer = _trainer(fresh_model, tmp_path, train="decoder")
    clip = make_clip(trainer.sampler.pairs[0], 1, [1, 2, 3], "click", np.random.default_rng(0))
    trainer.train_step(clip)
    trained = set(trainer.trainable)
    assert trained and all(part_of(n) == "decoder" for n in trained)
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    with_state = {id(p) for p in trainer.optimizer.state}
    for name, parameter in fresh_model.sam.named_parameters():
        if name in trained:
            assert parameter.requires_grad and id(parameter) in in_optimizer
        else:
            assert not parameter.requires_grad and parameter.grad is None, name
            assert id(parameter) not in in_optimizer and id(parameter) not in with_state, name
    # trainable parameters that this clip used got gradients and optimiser state (some, such
    # as the mask-prompt downsampler, are unused by a click prompt and get neither)
    parameters = dict(fresh_model.sam.named_parameters())
    assert {id(parameters[n]) for n in trained if parameters[n].grad is not None} == with_state
    assert len(with_state) > 0.8 * len(trained)


def test_every_parameter_belongs_to_exactly_one_part(tiny_model):
    names = [n for n, _ in tiny_model.sam.named_parameters()]
    assert all(part_of(n) in PARTS for n in names)
    for part, prefixes in PARTS.items():
        assert any(n.startswith(prefixes) for n in names), part


def test_zero_initialised_lora_changes_nothing_until_it_trains(fresh_model, tmp_path):
    clip = make_clip(load_pairs(*ellipse_pair(0))[0], 1, [1, 2, 3], "box", np.random.default_rng(0))
    fresh_model.sam.eval()
    with torch.no_grad():
        plain = [t[-1].low_res for t in forward_clip(fresh_model, clip).outputs]
    trainable = select_trainable(fresh_model.sam, "lora", lora_rank=2)
    assert trainable and all(".lora_" in n for n in trainable)
    assert len(trainable) == 2 * 2 * len(fresh_model.sam.image_encoder.trunk.blocks)  # A and B, qkv and proj
    fresh_model.sam.eval()
    with torch.no_grad():
        adapted = [t[-1].low_res for t in forward_clip(fresh_model, clip).outputs]
    assert all(torch.equal(a, b) for a, b in zip(plain, adapted))
    trainer = _trainer(fresh_model, tmp_path, train="lora", lr=1e-2)
    trainer.train_step(clip)
    fresh_model.sam.eval()
    with torch.no_grad():
        trained = [t[-1].low_res for t in forward_clip(fresh_model, clip).outputs]
    assert not torch.equal(plain[0], trained[0])


def test_training_checkpoint_round_trips_through_load_model(fresh_model, tmp_path):
    out = tmp_path / "run"
    progress = list(train(
        *ellipse_pair(0), out=out, model=fresh_model, train="decoder,lora", steps=1, lora_rank=2, lr=1e-2, **SMALL
    ))
    assert progress[-1].saved == out / "model.safetensors"
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        meta = handle.metadata()
    assert meta["architecture"] == "sam2.1-tiny" and meta["image_size"] == str(fresh_model.image_size)
    assert meta["train"] == "decoder,lora" and meta["step"] == "1"
    saved_config = load_config(json.loads(meta["config"]))  # the settings, reusable with --config
    assert saved_config.lora_rank == 2 and saved_config.train == ("decoder", "lora") and saved_config.steps == 1
    loaded = load_model(out / "model.safetensors", device="cpu", dtype="float32")  # no architecture, no size
    assert loaded.spec.name == "sam2.1-tiny" and loaded.image_size == fresh_model.image_size
    trained_state = fresh_model.sam.state_dict()
    for key, value in loaded.sam.sam_mask_decoder.state_dict().items():
        assert torch.equal(value, trained_state[f"sam_mask_decoder.{key}"])
    clip = make_clip(load_pairs(*ellipse_pair(0))[0], 1, [1, 2, 3], "box", np.random.default_rng(0))
    fresh_model.sam.eval()
    with torch.no_grad():
        ours = forward_clip(fresh_model, clip).outputs
        theirs = forward_clip(loaded, clip).outputs
    for a, b in zip(ours, theirs):  # LoRA merged into the weights: equal up to rounding
        torch.testing.assert_close(a[-1].low_res, b[-1].low_res, atol=1e-3, rtol=1e-4)


def test_ctrl_c_saves_and_resume_continues_exactly(tiny_checkpoint, tmp_path, monkeypatch):
    options = dict(model=tiny_checkpoint, device="cpu", image_size=128, steps=2, lr=1e-3, train="decoder", **SMALL)
    options["correction_frames"] = 2
    straight = list(train(*ellipse_pair(0), out=tmp_path / "a", **options))
    assert [p.step for p in straight] == [1, 2]

    calls = []
    original = Trainer.train_step

    def interrupted(self, clip):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, clip)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        list(train(*ellipse_pair(0), out=tmp_path / "b", **options))
    monkeypatch.setattr(Trainer, "train_step", original)
    with safe_open(str(tmp_path / "b" / "model.safetensors"), "pt") as handle:
        assert handle.metadata()["step"] == "1"
    resumed = list(train(*ellipse_pair(0), out=tmp_path / "b", resume=tmp_path / "b", **options))
    assert [p.step for p in resumed] == [2]
    assert resumed[0].loss == straight[1].loss
    a = load_file(str(tmp_path / "a" / "resume.safetensors"))
    b = load_file(str(tmp_path / "b" / "resume.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_validation_dice_is_reported_and_the_best_model_kept(fresh_model, tmp_path):
    image, label = ellipse_pair(3, frames=6)
    progress = list(train(
        *ellipse_pair(0), out=tmp_path, model=fresh_model, val_images=[image], val_labels=[label],
        **{**SMALL, "val_every": 1}, steps=1,
    ))
    assert 0.0 <= progress[-1].val_dice <= 1.0
    assert (tmp_path / "best.safetensors").is_file()
    assert fresh_model.sam.training  # validation switched to eval and back


def test_temporal_adapters_train_alone_and_only_where_they_exist(tiny_model):
    from napari_samed2.errors import TrainingError
    from napari_samed2.models import build_model, get_spec

    with pytest.raises(TrainingError, match="no temporal adapters"):
        select_trainable(tiny_model.sam, "temporal_adapter")  # refused before any flag changes
    assert all(p.requires_grad for p in tiny_model.sam.parameters())
    samed2 = build_model(get_spec("samed2"), 128)
    trainable = select_trainable(samed2, "temporal_adapter")
    assert len(trainable) == 16 * 8 and all(".adapter." in n for n in trainable)
    assert sum(p.requires_grad for p in samed2.parameters()) == len(trainable)


def test_subnormal_adam_moments_are_flushed_to_zero():
    """A parameter whose gradient is exactly zero has its first moment shrink by 0.9 a step
    into subnormal floats, which slowed CPU training 2.5x; the trainer zeroes them."""
    from types import SimpleNamespace

    from napari_samed2.training.trainer import Trainer

    weight = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    weight.grad = torch.ones(4)
    optimizer.step()
    moments = optimizer.state[weight]
    moments["exp_avg"].copy_(torch.tensor([1e-39, -1e-40, 1e-30, 0.5]))
    Trainer._flush_subnormal_moments(SimpleNamespace(optimizer=optimizer))
    flushed = moments["exp_avg"].tolist()
    assert flushed[:2] == [0.0, 0.0]  # exactly zero, not merely tiny
    assert flushed[2:] == pytest.approx([1e-30, 0.5], rel=1e-6, abs=0)
    assert moments["step"].item() == 1  # counters are left alone


def test_merged_keys_name_what_training_each_parameter_changes():
    """A version saves only the merged keys its trained parameters change: a LoRA factor and a
    bias trained in full inside a LoRA-wrapped layer must both name keys of the merged file."""
    from torch import nn

    from napari_samed2.training.adapters import LoRALinear, merged_key, merged_state_dict

    net = nn.Sequential(nn.Linear(3, 4), LoRALinear(nn.Linear(4, 2), rank=2))
    with torch.no_grad():
        net[1].lora_b.fill_(0.5)
    merged = merged_state_dict(net)
    assert sorted(merged) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    assert {name: merged_key(net, name) for name, _ in net.named_parameters()} == {
        "0.weight": "0.weight", "0.bias": "0.bias", "1.base.weight": "1.weight", "1.base.bias": "1.bias",
        "1.lora_a": "1.weight", "1.lora_b": "1.weight",
    }
    x = torch.randn(5, 3)
    plain = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    plain.load_state_dict(merged)
    assert torch.allclose(plain(x), net(x), atol=1e-6)  # the merged file computes what the adapted net does
