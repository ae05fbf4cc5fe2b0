"""What trains: freeze the model, then unfreeze named parts or add low-rank adapters.

Names (validated, listed in errors): ``encoder`` (Hiera trunk and FPN neck), ``decoder`` (mask
decoder and prompt encoder, with the heads around them: object-pointer projection, no-object
pointer, mask-prompt downsampler), ``memory_attention`` (with the memory's temporal and
"no memory" embeddings), ``memory_encoder`` (with the no-object spatial embedding),
``memory`` (both memory parts), ``temporal_adapter`` (SAMed-2's adapters), ``lora`` (low-rank
adapters on every Hiera attention's ``qkv`` and ``proj``), ``lora_memory`` and ``lora_decoder``
(low-rank adapters on the ``q/k/v/out`` projections of every memory-attention layer, and of the
mask decoder's two-way transformer: small, and leave the image encoder, hence cached image
features, untouched; continual adaptation uses them) and ``all`` (every parameter of the
model; LoRA only if also named). Every model parameter belongs to exactly one of the four
base parts, so ``all`` is their union.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from napari_samed2.errors import TrainingError

#: The model's parameters by part: name prefixes below ``SAM2Base``.
PARTS: dict[str, tuple[str, ...]] = {
    "encoder": ("image_encoder.",),
    "decoder": ("sam_mask_decoder.", "sam_prompt_encoder.", "obj_ptr_proj.", "no_obj_ptr", "mask_downsample."),
    "memory_attention": (
        "memory_attention.", "maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "obj_ptr_tpos_proj.",
    ),
    "memory_encoder": ("memory_encoder.", "no_obj_embed_spatial"),
}
GROUPS: dict[str, tuple[str, ...]] = {"memory": ("memory_attention", "memory_encoder"), "all": tuple(PARTS)}
LORA_TARGETS = ("qkv", "proj")
_ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
#: Where low-rank adapters go, by module name: the prefix of the attention modules wrapped,
#: and their linear projections.
LORA_SITES: dict[str, tuple[str, tuple[str, ...]]] = {
    "lora": ("image_encoder.trunk.blocks.", LORA_TARGETS),
    "lora_memory": ("memory_attention.layers.", _ATTENTION_PROJECTIONS),
    "lora_decoder": ("sam_mask_decoder.transformer.", _ATTENTION_PROJECTIONS),
}
SPECIAL = ("temporal_adapter", *LORA_SITES)
TRAINABLE = tuple(sorted([*PARTS, *GROUPS, *SPECIAL]))


def parse_modules(names: str | Iterable[str]) -> tuple[str, ...]:
    """Validate module names (``"decoder,memory"`` or a list); the canonical, sorted set of
    parts and specials they stand for."""
    if isinstance(names, str):
        names = names.split(",")
    names = [n.strip() for n in names if n and n.strip()]
    if not names:
        raise TrainingError(f"nothing to train: name at least one of {', '.join(TRAINABLE)}")
    unknown = [n for n in names if n not in TRAINABLE]
    if unknown:
        raise TrainingError(
            f"unknown module name(s) to train: {', '.join(unknown)}. Valid names: {', '.join(TRAINABLE)} "
            "(comma-separated, e.g. decoder,memory)"
        )
    chosen: set[str] = set()
    for name in names:
        chosen.update(GROUPS.get(name, (name,)))
    return tuple(sorted(chosen))


def part_of(parameter_name: str) -> str | None:
    """The base part a model parameter belongs to (``None`` for LoRA parameters)."""
    if ".lora_" in parameter_name:
        return None
    for part, prefixes in PARTS.items():
        if parameter_name.startswith(prefixes):
            return part
    return None


def is_temporal_adapter(parameter_name: str) -> bool:
    return parameter_name.startswith("image_encoder.trunk.blocks.") and ".adapter." in parameter_name


class LoRALinear(nn.Module):
    """``base(x) + scale * x A^T B^T``: a frozen linear layer plus a rank-``r`` update.

    ``B`` starts at zero, so an untrained adapter changes nothing (bit for bit: the update
    adds exact zeros); ``A`` gets Kaiming-uniform values, as in the LoRA paper.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = (alpha if alpha is not None else rank) / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:  # sam2 reads e.g. ``attn.qkv.weight`` nowhere, but others may
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t().to(x.dtype)) @ (self.lora_b.t() * self.scale).to(x.dtype)

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight + self.scale * (self.lora_b @ self.lora_a)


def add_lora(sam: nn.Module, rank: int = 4, alpha: float | None = None, targets: Iterable[str] = LORA_TARGETS) -> list[str]:
    """Wrap the ``targets`` linear layers of every Hiera attention block in :class:`LoRALinear`.
    Returns the wrapped layers' names."""
    if not isinstance(rank, int) or rank < 1:
        raise TrainingError(f"LoRA rank must be a positive integer, got {rank!r}")
    targets = tuple(targets)
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad or not targets:
        raise TrainingError(f"LoRA targets must be among {LORA_TARGETS}, got {list(targets)}")
    wrapped = []
    for i, block in enumerate(sam.image_encoder.trunk.blocks):
        for target in targets:
            layer = getattr(block.attn, target)
            if isinstance(layer, LoRALinear):
                raise TrainingError("this model already has LoRA adapters")
            if not isinstance(layer, nn.Linear):
                raise TrainingError(f"block {i}'s attention {target} is a {type(layer).__name__}, not a linear layer")
            setattr(block.attn, target, LoRALinear(layer, rank, alpha))
            wrapped.append(f"image_encoder.trunk.blocks.{i}.attn.{target}")
    return wrapped


def add_lora_at(sam: nn.Module, site: str, rank: int = 4, alpha: float | None = None) -> list[str]:
    """Wrap the projections of every attention module of ``site`` (a :data:`LORA_SITES` name)
    in :class:`LoRALinear`. Returns the wrapped layers' names."""
    if site == "lora":
        return add_lora(sam, rank, alpha)
    if site not in LORA_SITES:
        raise TrainingError(f"unknown LoRA site {site!r}; the sites are {', '.join(LORA_SITES)}")
    if not isinstance(rank, int) or rank < 1:
        raise TrainingError(f"LoRA rank must be a positive integer, got {rank!r}")
    if has_lora(sam, site):
        raise TrainingError(f"this model already has LoRA adapters at {site}")
    prefix, projections = LORA_SITES[site]
    attentions = [
        (name, module) for name, module in sam.named_modules()
        if name.startswith(prefix) and all(isinstance(getattr(module, p, None), nn.Linear) for p in projections)
    ]
    if not attentions:
        raise TrainingError(f"this model has no attention layers with {'/'.join(projections)} under {prefix.rstrip('.')}")
    wrapped = []
    for name, module in attentions:
        for projection in projections:
            setattr(module, projection, LoRALinear(getattr(module, projection), rank, alpha))
            wrapped.append(f"{name}.{projection}")
    return wrapped


def has_lora(sam: nn.Module, site: str | None = None) -> bool:
    """Whether ``sam`` has LoRA adapters (at ``site``, a :data:`LORA_SITES` name, if given)."""
    prefix = "" if site is None else LORA_SITES[site][0]
    return any(isinstance(m, LoRALinear) and n.startswith(prefix) for n, m in sam.named_modules())


def is_lora_of(parameter_name: str, site: str) -> bool:
    return ".lora_" in parameter_name and parameter_name.startswith(LORA_SITES[site][0])


def select_trainable(
    sam: nn.Module, names: str | Iterable[str], *, lora_rank: int = 4, lora_alpha: float | None = None
) -> list[str]:
    """Freeze ``sam``, then let the named parts train (adding LoRA if ``lora`` is named).
    Returns the names of the parameters that train, in ``named_parameters`` order."""
    chosen = parse_modules(names)
    if "temporal_adapter" in chosen and not any(is_temporal_adapter(n) for n, _ in sam.named_parameters()):
        raise TrainingError(
            "temporal_adapter was asked to train but this model has no temporal adapters; they exist in "
            "SAMed-2 (--model samed2 or a SAMed-2 checkpoint). Choose other modules for this model."
        )
    sites = [site for site in LORA_SITES if site in chosen]
    for site in sites:
        if not has_lora(sam, site):
            add_lora_at(sam, site, lora_rank, lora_alpha)
    trainable = []
    for name, parameter in sam.named_parameters():
        wanted = (
            part_of(name) in chosen
            or any(is_lora_of(name, site) for site in sites)
            or ("temporal_adapter" in chosen and is_temporal_adapter(name))
        )
        parameter.requires_grad_(wanted)
        if wanted:
            trainable.append(name)
    return trainable


def check_frozen(sam: nn.Module, trainable: Iterable[str]) -> None:
    """sam2's ``assert_skipped_parameters_are_frozen``: exactly ``trainable`` require grad."""
    trainable = set(trainable)
    wrong = [n for n, p in sam.named_parameters() if p.requires_grad != (n in trainable)]
    if wrong:
        raise TrainingError(f"{len(wrong)} parameters have the wrong trainable flag (first: {wrong[:3]})")


def _lora_layers(sam: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in sam.named_modules() if isinstance(m, LoRALinear)}


def _merged_name(key: str, lora_layers: dict[str, LoRALinear]) -> tuple[str | None, str]:
    """The LoRA layer that owns ``key`` (or ``None``) and the key's name in the merged state
    dict: a LoRA factor and the frozen base weight both end in the layer's ``.weight``; its
    other tensors (a bias) lose the wrapper's ``base.``."""
    owner = next((name for name in lora_layers if key.startswith(name + ".")), None)
    if owner is None:
        return None, key
    rest = key[len(owner) + 1 :]
    if rest.startswith("lora_") or rest == "base.weight":
        return owner, f"{owner}.weight"
    return owner, f"{owner}.{rest.removeprefix('base.')}"


def merged_key(sam: nn.Module, parameter: str) -> str:
    """The key of :func:`merged_state_dict` that training ``parameter`` changes, so that a
    caller saving only what changed asks the module that decides the names."""
    return _merged_name(parameter, _lora_layers(sam))[1]


def merged_state_dict(sam: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with LoRA folded into its base weights, under the plain sam2
    key names: a file any SAM-2 loader reads, no adapter code needed."""
    state = {}
    lora_layers = _lora_layers(sam)
    for key, value in sam.state_dict().items():
        owner, name = _merged_name(key, lora_layers)
        rest = key[len(owner) + 1 :] if owner else ""
        if rest.startswith("lora_"):
            continue  # folded into the layer's weight below
        state[name] = lora_layers[owner].merged_weight().detach() if rest == "base.weight" else value
    return state
