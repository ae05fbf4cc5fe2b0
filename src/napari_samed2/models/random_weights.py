"""Checkpoints with random weights in the real sam2 architectures.

No weights can be downloaded in CI, so tests and benchmarks build their own small checkpoints
and load them back through the same public path users take (:func:`load_model`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from napari_samed2.models.loading import build_model
from napari_samed2.models.registry import get_spec


def random_state_dict(architecture: str = "sam2.1-tiny", image_size: int = 256, seed: int = 0) -> dict:
    """The state dict of ``architecture`` initialised by its own constructors under ``seed``.

    Parameters that sam2 initialises to zero (temporal encodings, SAMed-2's adapters,
    no-object embeddings) get small random values, so every part of the model, memory
    included, actually influences the output in tests.
    """
    torch.manual_seed(seed)
    spec = get_spec(architecture)
    sam = build_model(spec, image_size, device="cpu")
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, value in sam.state_dict().items():
            if value.is_floating_point() and not value.any() and "running" not in name:
                value.copy_(torch.randn(value.shape, generator=generator) * 0.02)
    state = {k: v.clone() for k, v in sam.state_dict().items()}
    if spec.temporal_adapter:
        state.update(_fancy_fusion_keys(sam, generator))
    return state


def _fancy_fusion_keys(sam, generator) -> dict:
    """The release's checkpoints also carry a cross-attention "fancy_fusion" block per Hiera
    block that its forward never uses; a SAMed-2-shaped checkpoint has them too."""
    keys = {}
    for i, block in enumerate(sam.image_encoder.trunk.blocks):
        dim = block.dim_out
        prefix = f"image_encoder.trunk.blocks.{i}.fancy_fusion."
        for name, shape in {
            "cross_attn.in_proj_weight": (3 * dim, dim),
            "cross_attn.in_proj_bias": (3 * dim,),
            "cross_attn.out_proj.weight": (dim, dim),
            "cross_attn.out_proj.bias": (dim,),
            "norm.weight": (dim,),
            "norm.bias": (dim,),
        }.items():
            keys[prefix + name] = torch.randn(shape, generator=generator) * 0.02
    return keys


def save_random_checkpoint(
    path: str | Path,
    architecture: str = "sam2.1-tiny",
    image_size: int = 256,
    seed: int = 0,
) -> Path:
    """Write a random-weight checkpoint as sam2 releases do (``{"model": state_dict}``).

    A ``.safetensors`` suffix writes a flat safetensors file instead.
    """
    path = Path(path)
    state_dict = random_state_dict(architecture, image_size, seed)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save({"model": state_dict}, path)
    return path
