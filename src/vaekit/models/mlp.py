"""Fully connected VAE (Kingma & Welling 2014, appendix C). ``--preset pytorch-example`` is the
784-400-20 network of pytorch/examples' ``vae`` with ReLU and a Bernoulli likelihood.

State-dict keys: ``encoder.layers.{i}``, ``encoder.mean``, ``encoder.logvar``,
``decoder.layers.{i}``, ``decoder.out`` (pytorch/examples' fc1, fc21, fc22, fc3, fc4 in order).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.config import check
from vaekit.models.base import VAE, ModelConfig
from vaekit.models.registry import MODELS

# relu in place: its backward needs only its output, so this saves a pass over memory for free
ACTIVATIONS = {"relu": functools.partial(F.relu, inplace=True), "silu": F.silu, "gelu": F.gelu, "tanh": torch.tanh,
               "elu": F.elu}


@dataclass(frozen=True)
class MLPConfig(ModelConfig):
    hidden: tuple[int, ...] = (512, 256)
    activation: str = "silu"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(all(h > 0 for h in self.hidden), f"hidden sizes (--hidden) must be positive, got {self.hidden}")
        check(self.activation in ACTIVATIONS,
              f"unknown activation '{self.activation}' (choose from: {', '.join(ACTIVATIONS)})")


class MLPEncoder(nn.Module):
    def __init__(self, in_dim: int, hidden: tuple[int, ...], latent_dim: int, activation: str) -> None:
        super().__init__()
        sizes = (in_dim, *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.mean = nn.Linear(sizes[-1], latent_dim)
        self.logvar = nn.Linear(sizes[-1], latent_dim)
        self.act = ACTIVATIONS[activation]

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:  # h: [B, D(+K)]
        for layer in self.layers:
            h = self.act(layer(h))
        return self.mean(h), self.logvar(h)


class MLPDecoder(nn.Module):
    def __init__(self, latent_dim: int, hidden: tuple[int, ...], out_dim: int, activation: str) -> None:
        super().__init__()
        sizes = (latent_dim, *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.out = nn.Linear(sizes[-1], out_dim)
        self.act = ACTIVATIONS[activation]

    def forward(self, h: Tensor) -> Tensor:  # h: [N, latent(+K)] -> [N, D]
        for layer in self.layers:
            h = self.act(layer(h))
        return self.out(h)


@MODELS.register("mlp")
class MLPVAE(VAE):
    """MLP encoder and decoder; the decoder mirrors the encoder's hidden sizes."""

    name = "mlp"
    config_class = MLPConfig

    def __init__(self, config: MLPConfig) -> None:
        super().__init__(config)
        self.data_dim = math.prod(config.data_shape)
        k = config.num_classes
        self.encoder = MLPEncoder(self.data_dim + k, config.hidden, config.latent_dim, config.activation)
        out_dim = self.data_dim * self.likelihood.params_per_element
        self.decoder = MLPDecoder(config.latent_dim + k, tuple(reversed(config.hidden)), out_dim, config.activation)

    def encoder_params(self, x: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        h = x.reshape(x.shape[0], self.data_dim)
        if c is not None:
            h = torch.cat([h, c], dim=1)
        return self.encoder(h)

    def decoder_output(self, z: Tensor, c: Tensor | None) -> Tensor:
        if c is not None:
            z = torch.cat([z, c], dim=1)
        return self.decoder(z).view(z.shape[0], *self.likelihood.output_shape)
