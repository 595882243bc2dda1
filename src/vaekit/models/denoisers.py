"""Denoising networks for diffusion models: eps_theta(x_t, t, y).

- ``ResidualMLP`` for flat latents [B, D]: a sinusoidal time embedding (Vaswani et al. 2017, as in
  DDPM, Ho et al. 2020) through an MLP, an optional label embedding with one extra "null" label for
  classifier-free guidance (Ho & Salimans 2022), and pre-norm residual blocks that add the embedding
  between their two linear layers. The output layer starts at zero, so training starts from the
  prediction 0.
- ``UNet``: diffusers' ``UNet2DModel`` for spatial inputs [B, C, H, W] (latents of an
  autoencoder-kl run, or pixels), wrapped so that both denoisers share one call signature. Its
  weights and config are exactly diffusers', so the UNet exports as a diffusers folder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.errors import VaekitError


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[B] timesteps -> [B, dim] sinusoids (cos then sin, as diffusers with flip_sin_to_cos)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        r = self.fc1(F.silu(self.norm1(h))) + self.emb(F.silu(emb))
        return h + self.fc2(F.silu(self.norm2(r)))


class ResidualMLP(nn.Module):
    """eps_theta for flat inputs: [B, D], timesteps [B], labels [B] (num_classes = the null label) -> [B, D]."""

    def __init__(self, dim: int, width: int = 512, depth: int = 4, num_classes: int = 0, time_dim: int = 128) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.inp = nn.Linear(dim, width)
        self.time = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.label = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time(timestep_embedding(t, self.time_dim))
        if self.label is not None:
            emb = emb + self.label(y)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.norm(h)))


class UNet(nn.Module):
    """diffusers' UNet2DModel: [B, C, H, W], timesteps [B] (or a scalar), labels [B] -> [B, C, H, W].

    ``channels`` are the block widths, one resolution level each (the last without downsampling);
    levels after the first get self-attention when ``attention`` is set. A conditional UNet has
    ``num_classes + 1`` class embeddings, the last being the null label."""

    def __init__(self, shape: tuple[int, int, int], channels: tuple[int, ...], layers_per_block: int = 2,
                 attention: bool = True, num_classes: int = 0) -> None:
        super().__init__()
        try:
            from diffusers import UNet2DModel
        except ImportError:
            raise VaekitError("the unet denoiser needs diffusers (pip install 'vaekit[diffusers]')") from None
        c, h, w = shape
        levels = len(channels)
        if h != w:
            raise VaekitError(f"the unet denoiser needs square inputs, got {h}x{w}")
        if h % 2 ** (levels - 1):
            raise VaekitError(f"inputs of {h}x{w} do not halve {levels - 1} times for a unet with {levels} levels; "
                              f"use fewer --unet-channels or pad the images (--pad-to)")
        groups = math.gcd(*channels, 32)
        down = ["DownBlock2D"] + ["AttnDownBlock2D" if attention else "DownBlock2D"] * (levels - 1)
        up = ["AttnUpBlock2D" if attention else "UpBlock2D"] * (levels - 1) + ["UpBlock2D"]
        self.unet = UNet2DModel(
            sample_size=h, in_channels=c, out_channels=c, block_out_channels=tuple(channels),
            layers_per_block=layers_per_block, down_block_types=tuple(down), up_block_types=tuple(up),
            norm_num_groups=groups, attention_head_dim=8,
            num_class_embeds=num_classes + 1 if num_classes else None,
        )

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.unet(x, t, class_labels=y).sample
