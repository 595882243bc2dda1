"""The Markovian hierarchical VAE of the source documents (Luo 2022; the 2-layer models of Burda
et al. 2016): T stochastic layers with

    q(z_1|x) prod_t q(z_t|z_{t-1})        and        p(z_T) prod_t p(z_{t-1}|z_t) p(x|z_1),

every conditional a diagonal Gaussian computed by an MLP (the bottom pair x <-> z_1 may be
convolutional). The ELBO is taken over the whole chain; its KL is reported per layer,
KL_t = E[log q(z_t|z_{t-1}) - log p(z_t|z_{t+1})] (one-sample estimates, since each prior
conditions on a sampled layer above).

The user-facing latent is the top layer z_T: ``encode`` gives q(z_T|...) along the mean path,
``decode(z_T)`` follows the generative means down, and ``sample`` draws the whole chain.
State-dict keys: ``encoder.{t}`` (q of layer t+1), ``decoder.{t}`` (p(z_{t+1}|z_{t+2})), ``out``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from vaekit.config import check
from vaekit.distributions import DiagonalGaussian, StandardNormal
from vaekit.models.base import LOGVAR_RANGE, SKIP_EXPLODING, VAE, LikelihoodConfig, VAEOutput
from vaekit.models.mlp import ACTIVATIONS
from vaekit.models.registry import MODELS


@dataclass(frozen=True)
class HVAEConfig(LikelihoodConfig):
    data_shape: tuple[int, ...] = (784,)
    latent_dims: tuple[int, ...] = (64, 32)  # z_1 ... z_T
    hidden: tuple[int, ...] = (256, 128)  # width of the networks next to each layer (x<->z_1, z_1<->z_2, ...)
    depth: int = 2  # hidden layers per network
    activation: str = "tanh"
    channels: tuple[int, ...] = ()  # non-empty: the x <-> z_1 pair is convolutional (as the conv model)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.latent_dims) >= 1 and all(d > 0 for d in self.latent_dims),
              f"latent_dims must be positive sizes, got {self.latent_dims}")
        check(len(self.hidden) == len(self.latent_dims),
              f"hidden needs one width per layer ({len(self.latent_dims)}), got {self.hidden}")
        check(self.depth >= 1, f"depth must be >= 1, got {self.depth}")
        check(self.activation in ACTIVATIONS, f"unknown activation '{self.activation}'")
        if self.channels:
            check(len(self.data_shape) == 3, "channels (a convolutional bottom layer) need image data")

    @property
    def num_classes(self) -> int:
        return 0


class GaussianNet(nn.Module):
    """An MLP from in_dim to the mean and log-variance of an out_dim diagonal Gaussian."""

    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int, activation: str) -> None:
        super().__init__()
        sizes = [in_dim] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.mean = nn.Linear(width, out_dim)
        self.logvar = nn.Linear(width, out_dim)
        self.act = ACTIVATIONS[activation]

    def forward(self, h: Tensor) -> DiagonalGaussian:
        for layer in self.layers:
            h = self.act(layer(h))
        return DiagonalGaussian(self.mean(h), self.logvar(h).clamp(*LOGVAR_RANGE))


class MLPOut(nn.Module):
    def __init__(self, in_dim: int, width: int, depth: int, data_shape: tuple[int, ...], activation: str) -> None:
        super().__init__()
        sizes = [in_dim] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.out = nn.Linear(width, int(torch.Size(data_shape).numel()))
        self.act = ACTIVATIONS[activation]
        self.data_shape = data_shape

    def forward(self, z: Tensor) -> Tensor:
        for layer in self.layers:
            z = self.act(layer(z))
        return self.out(z).view(z.shape[0], *self.data_shape)


@MODELS.register("hvae")
class HVAE(VAE):
    name = "hvae"
    config_class = HVAEConfig
    hierarchical = True
    # p(z_t|z_t+1) may shrink its variance to exp(-30); without the skip a 15-minute Fashion-MNIST
    # run's one-sample KL jumped to 1e17 after 131 epochs and never recovered
    training_defaults: ClassVar[Mapping] = SKIP_EXPLODING

    def __init__(self, config: HVAEConfig) -> None:
        super().__init__(config)
        dims, widths, act, depth = config.latent_dims, config.hidden, config.activation, config.depth
        data_dim = int(torch.Size(config.data_shape).numel())
        if config.channels:
            from vaekit.models.conv import ConvConfig, ConvDecoder, ConvEncoder

            conv = ConvConfig(data_shape=config.data_shape, latent_dim=dims[0], channels=config.channels)
            bottom = _ConvGaussian(ConvEncoder(conv))
            self.out = ConvDecoder(conv, self.likelihood.params_per_element)
        else:
            bottom = GaussianNet(data_dim, widths[0], depth, dims[0], act)
            self.out = MLPOut(dims[0], widths[0], depth, self.likelihood.output_shape, act)
        self.encoder = nn.ModuleList([bottom] + [GaussianNet(dims[t - 1], widths[t], depth, dims[t], act)
                                                 for t in range(1, len(dims))])
        self.decoder = nn.ModuleList([GaussianNet(dims[t + 1], widths[t + 1], depth, dims[t], act)
                                      for t in range(len(dims) - 1)])

    @classmethod
    def config_for_data(cls, fields: dict, info, conditional: bool) -> dict:
        cls.require(info, conditional, image=False)
        fields = dict(fields)
        fields["data_shape"] = list(info.shape)
        return fields

    @property
    def layers(self) -> int:
        return len(self.config.latent_dims)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.config.latent_dims[-1],)

    def _bottom_input(self, x: Tensor) -> Tensor:
        return x if self.config.channels else x.reshape(x.shape[0], -1)

    # -- the chain ------------------------------------------------------------------------------
    def posterior_chain(self, x: Tensor, k: int | None = None, generator=None, mean_path: bool = False):
        """Bottom-up: [q_1, ..., q_T] and [z_1, ..., z_T] ([k, B, d] with k, else [B, d])."""
        qs, zs = [], []
        q = self.encoder[0](self._bottom_input(x))
        for t in range(self.layers):
            if t > 0:
                prev = zs[-1]
                q = self.encoder[t](prev.flatten(0, 1) if prev.dim() == 3 else prev)
                if prev.dim() == 3:
                    q = DiagonalGaussian(q.mean.unflatten(0, prev.shape[:2]), q.logvar.unflatten(0, prev.shape[:2]),
                                         event_ndim=1)
            qs.append(q)
            if mean_path:
                zs.append(q.mean)
            elif t == 0 and k is not None:
                zs.append(q.sample(k, generator=generator))  # [k, B, d]: the upper layers follow each draw
            else:
                zs.append(q.sample(generator=generator))
        return qs, zs

    def prior_terms(self, zs: list[Tensor]) -> list[Tensor]:
        """log p(z_t | z_{t+1}) for t < T and log p(z_T), each [..., ] over the leading dims."""
        out = []
        for t in range(self.layers - 1):
            above = zs[t + 1]
            p = self.decoder[t](above.reshape(-1, above.shape[-1]))
            p = DiagonalGaussian(p.mean.view_as(zs[t]), p.logvar.view_as(zs[t]), event_ndim=1)
            out.append(p.log_prob(zs[t]))
        out.append(StandardNormal((self.config.latent_dims[-1],)).log_prob(zs[-1]))
        return out

    def _px(self, z1: Tensor):
        lead = z1.shape[:-1]
        px = self.likelihood(self.out(z1.reshape(-1, z1.shape[-1])))
        return px.unflatten_batch(lead[0]) if len(lead) == 2 else px

    # -- the VAE API ------------------------------------------------------------------------------
    def forward(self, x: Tensor, y: Tensor | None = None, generator=None) -> VAEOutput:
        qs, zs = self.posterior_chain(x, generator=generator)
        log_q = torch.stack([q.log_prob(z) for q, z in zip(qs, zs)], dim=1)  # [B, T]
        log_p = torch.stack(self.prior_terms(zs), dim=1)
        return VAEOutput(qs[-1], zs[-1], self._px(zs[0]), aux={"kl_layers": log_q - log_p})

    def kl_terms(self, out: VAEOutput) -> Tensor:
        return out.aux["kl_layers"]  # [B, T]: one group per layer

    def importance_terms(self, x: Tensor, y: Tensor | None, posterior, k: int, generator=None):
        qs, zs = self.posterior_chain(x, k=k, generator=generator)
        log_q = torch.stack([q.log_prob(z) for q, z in zip(qs, zs)], dim=-1)  # [k, B, T]
        log_p = torch.stack(self.prior_terms(zs), dim=-1)
        return self._px(zs[0]).log_prob(x), log_p - log_q

    def encode(self, x: Tensor, y: Tensor | None = None) -> DiagonalGaussian:
        """q(z_T | ...) along the mean path of the lower layers."""
        qs, _ = self.posterior_chain(x, mean_path=True)
        return qs[-1]

    def layer_means(self, x: Tensor) -> list[Tensor]:
        """E_q[z_t] along the mean path, per layer (for active units per layer)."""
        return self.posterior_chain(x, mean_path=True)[1]

    def decoder_output(self, z: Tensor, c: Tensor | None) -> Tensor:
        """From the top latent down the generative means to p(x|z_1)'s parameters."""
        for t in reversed(range(self.layers - 1)):
            z = self.decoder[t](z).mean
        return self.out(z)

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0, generator=None) -> Tensor:
        """Ancestral samples of the whole chain, each layer's noise scaled by ``temperature``."""
        z = self.prior().sample(n, generator=generator, temperature=temperature)
        for t in reversed(range(self.layers - 1)):
            z = self.decoder[t](z).sample(generator=generator, temperature=temperature)
        return self.likelihood(self.out(z)).mean

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        decoder = list(self.decoder.parameters()) + list(self.out.parameters()) + list(self.likelihood.parameters())
        return {"all": list(self.parameters()), "decoder": decoder, "encoder": list(self.encoder.parameters())}


class _ConvGaussian(nn.Module):
    """The conv model's encoder, returning a DiagonalGaussian."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.net = encoder

    def forward(self, x: Tensor) -> DiagonalGaussian:
        mean, logvar = self.net(x)
        return DiagonalGaussian(mean, logvar.clamp(*LOGVAR_RANGE))
