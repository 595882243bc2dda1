"""Priors over flat latents, chosen by name in the model config (``prior``):

- ``standard``: N(0, I); the KL of the ELBO is analytic, per latent unit.
- ``vamp``: the VampPrior (Tomczak & Welling 2018), p(z) = (1/K) sum_k q(z | u_k) with K learned
  pseudo-inputs u_k in data space pushed through the model's own encoder. log p(z) is a
  log-sum-exp over components and the KL of the ELBO is a one-sample Monte Carlo estimate.

and ``MixturePrior``: a Gaussian mixture fitted after training on the aggregate posterior
(``vaekit fit-prior``), to sample from the regions the decoder knows rather than the holes of N(0, I).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from vaekit.distributions import LOG_2PI
from vaekit.registry import Registry

PRIORS: Registry[type[Prior]] = Registry("prior")


class Prior(nn.Module):
    """Owns the prior's parameters (if any); ``distribution(model)`` gives log_prob and sample."""

    factorized: ClassVar[bool] = False  # per-unit analytic KL available

    def __init__(self, model, components: int) -> None:
        super().__init__()

    def distribution(self, model):
        raise NotImplementedError


@PRIORS.register("standard")
class StandardPrior(Prior):
    factorized = True

    def distribution(self, model):
        from vaekit.distributions import StandardNormal

        return StandardNormal(model.latent_shape, device=model._device(), dtype=model._dtype())


@PRIORS.register("vamp")
class VampPrior(Prior):
    """K pseudo-inputs, stored unconstrained and squashed into the data range by a sigmoid when the
    likelihood wants [0, 1] data."""

    def __init__(self, model, components: int) -> None:
        super().__init__(model, components)
        g = torch.Generator().manual_seed(0)
        self.pseudo_inputs = nn.Parameter(torch.randn(components, *model.config.data_shape, generator=g) * 0.1 - 2.0)
        self.squash = bool(getattr(model.likelihood, "unit_interval", False))

    def inputs(self) -> Tensor:
        return torch.sigmoid(self.pseudo_inputs) if self.squash else self.pseudo_inputs

    def distribution(self, model):
        q = model.encode(self.inputs())  # [K, D]
        return MixturePrior(q.mean, q.logvar)


class MixturePrior:
    """A mixture of diagonal Gaussians over [D] latents: log_prob and sample."""

    def __init__(self, means: Tensor, logvars: Tensor, weights: Tensor | None = None) -> None:
        self.means, self.logvars = means, logvars  # [K, D]
        k = means.shape[0]
        self.log_weights = torch.full((k,), -math.log(k), device=means.device) if weights is None \
            else torch.log(weights.clamp(min=1e-12))

    @property
    def event_shape(self) -> torch.Size:
        return self.means.shape[1:]

    def log_prob(self, z: Tensor) -> Tensor:
        """z [..., D] -> [...]: log sum_k w_k N(z; m_k, v_k), without materialising more than [..., K].

        The squared distances expand into two matrix products, sum_d (z_d - m_kd)^2 / v_kd =
        z^2 @ (1/v)^T - 2 z @ (m/v)^T + sum_d m_kd^2 / v_kd, done in float64 because the terms are
        large and nearly cancel when a component is narrow (its cost is small next to the decoder).
        """
        shape, dtype = z.shape[:-1], z.dtype
        z64 = z.reshape(-1, z.shape[-1]).double()  # [N, D]
        logvars, means = self.logvars.double(), self.means.double()  # [K, D]
        precision = torch.exp(-logvars)
        bias = self.log_weights.double() - 0.5 * (LOG_2PI + logvars + means**2 * precision).sum(-1)  # [K]
        lp = torch.addmm(bias, z64**2, -0.5 * precision.T)  # [N, K]
        lp = lp.addmm_(z64, (means * precision).T)
        return torch.logsumexp(lp, dim=-1).to(dtype).reshape(shape)

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        device = self.means.device if generator is None else generator.device  # draws on the generator's device
        idx = torch.multinomial(self.log_weights.exp().to(device), n, replacement=True, generator=generator)
        eps = torch.randn(n, *self.event_shape, generator=generator, device=device).to(self.means.device)
        idx = idx.to(self.means.device)
        return self.means[idx] + temperature * torch.exp(0.5 * self.logvars[idx]) * eps


class FullCovarianceMixture:
    """A fitted Gaussian mixture with full covariances (for sampling and log_prob)."""

    def __init__(self, weights: Tensor, means: Tensor, scale_tril: Tensor) -> None:
        from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

        self.dist = MixtureSameFamily(Categorical(probs=weights), MultivariateNormal(means, scale_tril=scale_tril))
        self.event_shape = means.shape[1:]
        self.components = int(means.shape[0])

    def log_prob(self, z: Tensor) -> Tensor:
        return self.dist.log_prob(z)

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        if generator is not None:  # torch.distributions samples from the global generator
            state = torch.get_rng_state()
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device)))
        try:
            mix = self.dist
            idx = mix.mixture_distribution.sample((n,))
            comp = mix.component_distribution
            eps = torch.randn(n, *self.event_shape)
            return comp.loc[idx] + temperature * (comp.scale_tril[idx] @ eps.unsqueeze(-1)).squeeze(-1)
        finally:
            if generator is not None:
                torch.set_rng_state(state)
