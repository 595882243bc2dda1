"""The (beta-)ELBO objective: E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)) (Kingma & Welling 2014;
Higgins et al. 2017), with the KL-weight schedule and free bits (Kingma et al. 2016) applied to the
KL term."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from vaekit.elbo import elbo_parts, free_bits_kl
from vaekit.objectives.base import OBJECTIVES, Objective, layer_kls

if TYPE_CHECKING:
    from vaekit.models.base import VAE
    from vaekit.protocol import Batch, StepContext


@OBJECTIVES.register("elbo")
class ELBO(Objective):
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
