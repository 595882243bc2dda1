"""Convolutional VAE for small images (28-64 px): stride-2 convolutions with GroupNorm and SiLU
down to a few pixels, a linear layer to (mean, logvar), and the mirror image up (nearest
upsampling to the exact encoder sizes, so odd sizes such as 28 -> 14 -> 7 -> 4 round-trip).

State-dict keys: ``encoder.conv_in``, ``encoder.down.{i}.{conv,norm}``, ``encoder.mean``,
``encoder.logvar``, ``decoder.fc``, ``decoder.up.{i}.{conv,norm}``, ``decoder.conv_out``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.config import check
from vaekit.models.base import VAE, ModelConfig
from vaekit.models.registry import MODELS


@dataclass(frozen=True)
class ConvConfig(ModelConfig):
    data_shape: tuple[int, ...] = (1, 28, 28)
    channels: tuple[int, ...] = (32, 64)  # one stride-2 stage each
    groups: int = 8  # GroupNorm groups (capped by the channel count)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.data_shape) == 3,
              f"the conv model needs image data (channels, height, width); got data of shape {self.data_shape}")
        check(len(self.channels) > 0 and all(c > 0 for c in self.channels),
              f"channels must be positive, got {self.channels}")
        for c in self.channels:
            check(c % min(self.groups, c) == 0, f"groups={self.groups} does not divide {c} channels")
        smallest = min(self.data_shape[1:])
        check(smallest >= 2 ** len(self.channels),
              f"images of {smallest} px are too small for {len(self.channels)} stride-2 stages")


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(min(groups, cout), cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(self.norm(self.conv(x)))


def stage_sizes(hw: tuple[int, int], n: int) -> list[tuple[int, int]]:
    """Spatial size after each stride-2, padding-1, 3x3 convolution: ceil(s / 2)."""
    sizes = [hw]
    for _ in range(n):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class ConvEncoder(nn.Module):
    def __init__(self, cfg: ConvConfig) -> None:
        super().__init__()
        c_in = cfg.data_shape[0] + cfg.num_classes
        ch = cfg.channels
        self.conv_in = nn.Conv2d(c_in, ch[0], 3, padding=1)
        self.down = nn.ModuleList(
            ConvBlock(a, b, cfg.groups, stride=2) for a, b in zip((ch[0], *ch[:-1]), ch)
        )
        h, w = stage_sizes(tuple(cfg.data_shape[1:]), len(ch))[-1]
        self.mean = nn.Linear(ch[-1] * h * w, cfg.latent_dim)
        self.logvar = nn.Linear(ch[-1] * h * w, cfg.latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.conv_in(x)
        for block in self.down:
            h = block(h)
        h = h.flatten(1)
        return self.mean(h), self.logvar(h)


class ConvDecoder(nn.Module):
    """``params``: outputs per pixel and channel (the likelihood's ``params_per_element``)."""

    def __init__(self, cfg: ConvConfig, params: int = 1) -> None:
        super().__init__()
        ch = cfg.channels
        self.sizes = stage_sizes(tuple(cfg.data_shape[1:]), len(ch))
        self.base_shape = (ch[-1], *self.sizes[-1])
        self.fc = nn.Linear(cfg.latent_dim + cfg.num_classes, math.prod(self.base_shape))
        outs = (ch[0], *ch[:-1])
        self.up = nn.ModuleList(ConvBlock(a, b, cfg.groups, stride=1) for a, b in zip(reversed(ch), reversed(outs)))
        self.conv_out = nn.Conv2d(ch[0], cfg.data_shape[0] * params, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = F.silu(self.fc(z)).view(z.shape[0], *self.base_shape)
        for block, size in zip(self.up, reversed(self.sizes[:-1])):
            h = block(F.interpolate(h, size=size, mode="nearest"))
        return self.conv_out(h)


@MODELS.register("conv")
class ConvVAE(VAE):
    """Convolutional VAE; a conditional one gets the one-hot label as extra input planes."""

    name = "conv"
    config_class = ConvConfig

    def __init__(self, config: ConvConfig) -> None:
        super().__init__(config)
        self.encoder = ConvEncoder(config)
        self.decoder = ConvDecoder(config, self.likelihood.params_per_element)

    def encoder_params(self, x: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        if c is not None:
            planes = c[:, :, None, None].expand(-1, -1, *x.shape[2:])
            x = torch.cat([x, planes], dim=1)
        return self.encoder(x)

    def decoder_output(self, z: Tensor, c: Tensor | None) -> Tensor:
        if c is not None:
            z = torch.cat([z, c], dim=1)
        return self.decoder(z)
