"""SAMed-2's temporal adapter, attached to sam2's Hiera blocks without touching their code.

In the SAMed-2 release every Hiera block runs, right after its (windowed) attention and before
the window un-partition, a small bottleneck whose 3D convolution mixes *pairs of consecutive
batch items*. In global-attention blocks those items are neighbouring slices; in windowed
blocks they are mostly neighbouring windows of one slice. We reproduce that by registering the
adapter as ``block.adapter`` (so checkpoint keys match the release) and applying it with a
forward hook on ``block.attn``: the hooked output is exactly the tensor the release adapts.
"""

from __future__ import annotations

import torch
from torch import nn

ADAPTER_CHANNELS = 32
PAIR = 2  # the release's temporal split factor: items are processed in consecutive pairs


def encoder_pair(frame: int, length: int) -> tuple[int, int]:
    """The slices of a ``length``-slice volume that go through the encoder together with
    ``frame``, in order: (0, 1), (2, 3), ...; a last odd slice is paired with itself."""
    first = frame - frame % PAIR
    return first, min(first + 1, length - 1)


class TemporalAdapter(nn.Module):
    """LayerNorm -> Linear(C->32) -> Conv3d over (pair, H, W) -> GELU -> Linear(32->C), residual."""

    def __init__(self, dim: int, channels: int = ADAPTER_CHANNELS):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.linear_down = nn.Linear(dim, channels)
        self.conv = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.act = nn.GELU()
        self.linear_up = nn.Linear(channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        if batch % PAIR:
            raise ValueError(
                f"the temporal adapter processes items in pairs; got a batch of {batch}. "
                "Encode slices two at a time (a single slice is duplicated)."
            )
        y = self.linear_down(self.norm(x))
        # (B, H, W, c) -> (B/2, c, 2, H, W): each consecutive pair becomes one 3D clip
        y = y.reshape(batch // PAIR, PAIR, height, width, -1).permute(0, 4, 1, 2, 3)
        y = self.conv(y)
        y = y.permute(0, 2, 3, 4, 1).reshape(batch, height, width, -1)
        return x + self.linear_up(self.act(y))


def _adapt_attention_output(block: nn.Module):
    def hook(_attn: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return block.adapter(output)

    return hook


def insert_temporal_adapters(trunk: nn.Module) -> None:
    """Give every block of a sam2 ``Hiera`` trunk a temporal adapter (random weights)."""
    for block in trunk.blocks:
        if hasattr(block, "adapter"):
            raise ValueError("this Hiera trunk already has temporal adapters")
        block.adapter = TemporalAdapter(block.dim_out)
        block.attn.register_forward_hook(_adapt_attention_output(block))


def has_temporal_adapters(sam: nn.Module) -> bool:
    return any(hasattr(block, "adapter") for block in sam.image_encoder.trunk.blocks)
