"""The pieces of the evidence lower bound that training, evaluation and every objective share
(Kingma & Welling 2014):

    ELBO(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || p(z)),

returned per example in nats with the reconstruction and KL terms apart; free bits (Kingma et al.
2016); the KL-weight schedules that anneal the KL term (Bowman et al. 2016; Fu et al. 2019); and
bits per dimension. They depend only on the distributions, never on a training objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from vaekit.models.base import VAE, VAEOutput


def elbo_parts(model: VAE, out: VAEOutput, x: Tensor) -> dict[str, Tensor]:
    """recon = -log p(x|z), kl = KL(q||p), elbo = -(recon + kl), all [B] in nats;
    plus kl_terms [B, G] for free bits."""
    recon = -out.px.log_prob(x)
    kl_terms = model.kl_terms(out).float()
    kl = kl_terms.sum(1)
    return {"recon": recon, "kl": kl, "elbo": -(recon + kl), "kl_terms": kl_terms}


def free_bits_kl(kl_terms: Tensor, lam: float) -> Tensor:
    """KL term with free bits (Kingma et al. 2016, IAF): each latent unit's KL, averaged over the
    batch, counts as at least ``lam`` nats; returns the per-example sum over units.

    kl_terms: [B, G]. With lam = 0 this is kl_terms.sum(1).mean().
    """
    per_unit = kl_terms.mean(0)
    if lam > 0:
        per_unit = per_unit.clamp(min=lam)
    return per_unit.sum()


def bits_per_dim(nats: float, dims: int) -> float:
    """A negative log-likelihood of ``nats`` per example as bits per data dimension."""
    return nats / (dims * math.log(2.0))


@dataclass(frozen=True)
class KLSchedule:
    """The KL weight's multiplier at each optimizer step, in [0, 1].

    - ``constant``: 1.
    - ``linear``: ramps from 0 to 1 over ``warmup_steps`` (Bowman et al. 2016).
    - ``cyclical``: ``cycles`` cycles over ``total_steps``; each ramps 0 -> 1 linearly over the first
      ``ratio`` of the cycle and stays at 1 for the rest (Fu et al. 2019; 4 cycles, ratio 0.5).
    """

    kind: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1
    cycles: int = 4
    ratio: float = 0.5

    def __call__(self, step: int) -> float:
        return _SCHEDULES[self.kind](self, step)


def _constant(s: KLSchedule, step: int) -> float:
    return 1.0


def _linear(s: KLSchedule, step: int) -> float:
    return 1.0 if s.warmup_steps <= 0 else min(1.0, step / s.warmup_steps)


def _cyclical(s: KLSchedule, step: int) -> float:
    period = s.total_steps / s.cycles
    tau = (step % period) / period
    return min(1.0, tau / s.ratio)


_SCHEDULES = {"constant": _constant, "linear": _linear, "cyclical": _cyclical}
