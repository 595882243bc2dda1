"""The objective base class and registry.

An objective is an ``nn.Module`` (so any networks it owns, such as a discriminator, are saved and
restored with the run) that implements the training-step protocol (``vaekit.protocol``) and
registers with ``@OBJECTIVES.register(name)``. It builds its optimizers and runs one training step
through the trainer's ``StepContext``; the trainer owns everything else. All loss parts are in nats
per example.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from vaekit.elbo import elbo_parts
from vaekit.registry import Registry

if TYPE_CHECKING:
    from vaekit.models.base import VAE
    from vaekit.protocol import Batch, StepContext
    from vaekit.training.config import TrainConfig

OBJECTIVES: Registry[type[Objective]] = Registry("objective")


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
