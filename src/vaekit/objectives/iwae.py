"""The importance-weighted autoencoder objective (Burda et al. 2016): maximise

    E[ log (1/K) sum_k p(x, z_k) / q(z_k|x) ],   z_k ~ q(z|x),

a bound that tightens with K (K = 1 is the ELBO). Any model that gives ``importance_terms`` trains
with it, hierarchical ones included. The KL-weight schedule scales log p(z) - log q(z|x) inside the
weights; free bits stop the gradient of a latent group's log-ratio while its batch-mean KL estimate
is below lambda, which leaves the bound's value unchanged.

With ``elbo_epochs`` = E the first E epochs are the vanilla VAE's (the ELBO with its closed-form KL),
and the k-sample bound takes over from there: a VAE trained further with the IWAE bound, as in Burda
et al. (2016, sec. 5.2). Under a fixed compute budget this spends the cheap early epochs, where the
two objectives learn alike, at 1/k of IWAE's cost per example.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vaekit.objectives.base import OBJECTIVES
from vaekit.objectives.elbo import ELBO

if TYPE_CHECKING:
    from vaekit.models.base import VAE
    from vaekit.protocol import Batch, StepContext


@OBJECTIVES.register("iwae")
class IWAE(ELBO):
    name = "iwae"

    def training_step(self, model: VAE, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        if ctx.epoch < self.config.elbo_epochs:
            return super().training_step(model, batch, ctx)
        k = self.config.k
        with ctx.autocast():
            posterior = model.encode(batch.x, batch.y)
            log_px, ratio = model.importance_terms(batch.x, batch.y, posterior, k)  # [k, B], [k, B, G]
        ratio = ratio.float()
        if self.config.free_bits > 0:
            below = (-ratio.mean(dim=(0, 1))) < self.config.free_bits  # [G] groups under lambda nats
            ratio = torch.where(below, ratio.detach(), ratio)
        log_w = log_px.float() + ctx.kl_weight * ratio.sum(-1)
        bound = torch.logsumexp(log_w, dim=0) - math.log(k)  # [B]
        loss = -bound.mean()
        ctx.optimize("model", loss)
        with torch.no_grad():
            recon = -log_px.float().mean()
            kl = -ratio.sum(-1).mean()
        return {"loss": loss.detach(), "iw_elbo": bound.mean().detach(), "recon": recon, "kl": kl,
                "elbo": -(recon + kl)}
