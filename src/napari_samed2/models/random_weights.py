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
    sam = build_model(get_spec(architecture), image_size, device="cpu")
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, value in sam.state_dict().items():
            if value.is_floating_point() and not value.any() and "running" not in name:
                value.copy_(torch.randn(value.shape, generator=generator) * 0.02)
    return {k: v.clone() for k, v in sam.state_dict().items()}


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
