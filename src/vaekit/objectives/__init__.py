"""Training objectives, the KL-weight schedules and free bits.

An objective is an ``nn.Module`` (so any networks it owns, such as a discriminator, are saved and
restored with the run) registered with ``@OBJECTIVES.register(name)``. It builds its optimizers and
runs one training step through the trainer's ``StepContext``; the trainer owns everything else.
All loss parts are in nats per example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from vaekit.registry import Registry

if TYPE_CHECKING:
    from vaekit.models.base import VAE, VAEOutput
    from vaekit.training.config import TrainConfig
    from vaekit.training.trainer import Batch, StepContext

OBJECTIVES: Registry[type[Objective]] = Registry("objective")


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


def free_bits_kl(kl_terms: Tensor, lam: float) -> Tensor:
    """KL term with free bits (Kingma et al. 2016, IAF): each latent unit's KL, averaged over the
    batch, counts as at least ``lam`` nats; returns the per-example sum over units.

    kl_terms: [B, G]. With lam = 0 this is kl_terms.sum(1).mean().
    """
    per_unit = kl_terms.mean(0)
    if lam > 0:
        per_unit = per_unit.clamp(min=lam)
    return per_unit.sum()


def elbo_parts(model: VAE, out: VAEOutput, x: Tensor) -> dict[str, Tensor]:
    """recon = -log p(x|z), kl = KL(q||p), elbo = -(recon + kl), all [B] in nats;
    plus kl_terms [B, G] for free bits."""
    recon = -out.px.log_prob(x)
    kl_terms = model.kl_terms(out).float()
    kl = kl_terms.sum(1)
    return {"recon": recon, "kl": kl, "elbo": -(recon + kl), "kl_terms": kl_terms}


class Objective(nn.Module):
    """Base class: one optimizer named 'model' (Adam) over the trained part of the model
    (``train_part``: all, or only the decoder/encoder, the rest frozen)."""

    name: ClassVar[str] = ""

    def __init__(self, model: VAE, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        trained = {id(p) for p in model.parameter_groups()[config.train_part]}
        for p in model.parameters():
            p.requires_grad_(id(p) in trained)

    @classmethod
    def default_settings(cls, training: dict) -> dict:
        """Training settings this objective changes from TrainConfig's defaults (applied under the
        user's own), given the settings so far."""
        return {}

    def optimizers(self, model: VAE) -> dict[str, torch.optim.Optimizer]:
        params = [p for p in model.parameters() if p.requires_grad]
        return {"model": adam(params, self.config.lr, self.config.adam_betas)}

    def training_step(self, model: VAE, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        """Run one step (through ``ctx.optimize``) and return batch means to log."""
        raise NotImplementedError

    @torch.no_grad()
    def validation_step(self, model: VAE, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        """Per-example loss parts [B] on held-out data (the true ELBO: beta = 1, no free bits)."""
        out = model(batch.x, batch.y, generator=generator)
        parts = elbo_parts(model, out, batch.x)
        return {k: parts[k] for k in ("recon", "kl", "elbo")} | layer_kls(model, parts["kl_terms"], per_example=True)


def layer_kls(model: VAE, kl_terms: Tensor, per_example: bool = False) -> dict[str, Tensor]:
    """For hierarchical models, the KL of each stochastic layer (``kl_z1``, ``kl_z2``, ...)."""
    if not getattr(model, "hierarchical", False):
        return {}
    terms = kl_terms.detach().float()
    return {f"kl_z{i + 1}": terms[:, i] if per_example else terms[:, i].mean() for i in range(terms.shape[1])}


def adam(params, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """Adam with the fused kernel (one pass over the parameters; several times faster on CPU)."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), fused=True)


@OBJECTIVES.register("elbo")
class ELBO(Objective):
    """The (beta-)ELBO: E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)) (Kingma & Welling 2014;
    Higgins et al. 2017), with the KL weight schedule and free bits applied to the KL term."""

    name = "elbo"

    def training_step(self, model: VAE, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        with ctx.autocast():
            out = model(batch.x, batch.y)
        parts = elbo_parts(model, out, batch.x)
        recon = parts["recon"].mean()
        kl = parts["kl"].mean()
        kl_for_loss = free_bits_kl(parts["kl_terms"], self.config.free_bits)
        loss = recon + ctx.kl_weight * kl_for_loss
        ctx.optimize("model", loss)
        out = {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach(), "elbo": -(recon + kl).detach()}
        return out | layer_kls(model, parts["kl_terms"])


def bits_per_dim(nats: float, dims: int) -> float:
    return nats / (dims * math.log(2.0))


def _register_all() -> None:
    """Objectives defined in their own modules register when imported."""
    from vaekit.objectives import disentangling, iwae, ldm  # noqa: F401


_register_all()
