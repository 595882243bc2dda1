"""Objectives that target disentanglement by penalising the total correlation (TC) of q(z).

- ``beta-tcvae`` (Chen et al. 2018): the KL splits into index-code mutual information, total
  correlation and dimension-wise KL,
      KL = E[log q(z|x) - log q(z)] + E[log q(z) - sum_d log q(z_d)] + E[sum_d log q(z_d) - log p(z)],
  weighted by ``tc_alpha``, ``beta`` and ``tc_gamma``. log q(z) and log q(z_d) use the minibatch-
  weighted sampling estimator: log q(z_i) ~ logsumexp_j log q(z_i|x_j) - log(B N), for batch size B
  and dataset size N. The KL-weight schedule scales all three terms; free bits floor the
  dimension-wise KL per unit. On N ranks j runs over the whole global batch (``ctx.gather``), so
  the estimator, and the run, are those of one process.
- ``factorvae`` (Kim & Mnih 2018): the ELBO plus ``factor_gamma`` x a discriminator's estimate of
  the TC, log D(z) / (1 - D(z)). The discriminator (an MLP, 6 x 1000 units) learns to tell codes
  z ~ q(z) from codes whose dimensions were shuffled independently across a second half-batch, with
  its own Adam optimizer; the trainer only runs the two optimizer steps this objective asks for.
  On N ranks each rank splits its own share into the two halves, and the discriminator sees the
  permuted codes of every rank's second half (``ctx.gather``): the same estimator, though not the
  same halves as one process would take.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.distributions import LOG_2PI
from vaekit.elbo import elbo_parts, free_bits_kl
from vaekit.errors import VaekitError
from vaekit.objectives.base import OBJECTIVES, Objective, adam

if TYPE_CHECKING:
    from vaekit.models.base import VAE
    from vaekit.protocol import Batch, StepContext
    from vaekit.training.config import TrainConfig


def _require_flat_standard(model: VAE, objective: str) -> None:
    if getattr(model, "hierarchical", False) or not getattr(model, "factorized_prior", False) \
            or len(model.latent_shape) != 1:
        raise VaekitError(f"the {objective} objective needs a flat latent with the standard N(0, I) prior "
                          f"(mlp or conv with --prior standard); '{model.name}' cannot use it")


@OBJECTIVES.register("beta-tcvae")
class BetaTCVAE(Objective):
    name = "beta-tcvae"

    def __init__(self, model: VAE, config: TrainConfig) -> None:
        super().__init__(model, config)
        _require_flat_standard(model, self.name)

    @classmethod
    def default_settings(cls, training: dict) -> dict:
        return {"beta": 6.0}

    def training_step(self, model: VAE, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        cfg = self.config
        with ctx.autocast():
            out = model(batch.x, batch.y)
        recon = -out.px.log_prob(batch.x).float()
        q = out.posterior
        z, mu, logvar = out.z.float(), q.mean.float(), q.logvar.float()
        mu_all, logvar_all = ctx.gather(mu), ctx.gather(logvar)  # the whole batch's q(z|x_j) (N ranks: all of them)
        # log q(z_i | x_j) per dimension: [b (i, this rank's rows), B (j, the global batch), D]
        mat = -0.5 * (LOG_2PI + logvar_all[None] + (z[:, None] - mu_all[None]) ** 2 * torch.exp(-logvar_all[None]))
        norm = math.log(mu_all.shape[0] * ctx.dataset_size)
        log_qz = torch.logsumexp(mat.sum(-1), dim=1) - norm
        log_qz_dims = torch.logsumexp(mat, dim=1) - norm  # [b, D]
        log_qzx = (-0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))).sum(-1)  # [b]: the diagonal
        log_pz_dims = -0.5 * (LOG_2PI + z**2)
        mi = (log_qzx - log_qz).mean()
        tc = (log_qz - log_qz_dims.sum(-1)).mean()
        dim_kl_terms = log_qz_dims - log_pz_dims  # [B, D]
        dim_kl = free_bits_kl(dim_kl_terms, cfg.free_bits)
        loss = recon.mean() + ctx.kl_anneal * (cfg.tc_alpha * mi + cfg.beta * tc + cfg.tc_gamma * dim_kl)
        ctx.optimize("model", loss)
        kl = q.kl().float().mean()
        return {"loss": loss.detach(), "recon": recon.mean().detach(), "kl": kl.detach(),
                "elbo": -(recon.mean() + kl).detach(), "mi": mi.detach(), "tc": tc.detach(),
                "dim_kl": dim_kl_terms.sum(-1).mean().detach()}


class TCDiscriminator(nn.Module):
    """FactorVAE's discriminator: z -> 6 x (Linear 1000, LeakyReLU 0.2) -> 2 logits."""

    def __init__(self, latent_dim: int, hidden: int = 1000, layers: int = 6) -> None:
        super().__init__()
        sizes = [latent_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            blocks += [nn.Linear(a, b), nn.LeakyReLU(0.2, inplace=True)]
        self.net = nn.Sequential(*blocks, nn.Linear(hidden, 2))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def permute_dims(z: Tensor) -> Tensor:
    """Shuffle each dimension independently across the batch: a sample of prod_d q(z_d)."""
    idx = torch.argsort(torch.rand(z.shape, device=z.device), dim=0)
    return torch.gather(z, 0, idx)


@OBJECTIVES.register("factorvae")
class FactorVAE(Objective):
    name = "factorvae"
    min_rows = 4  # rows per rank: two halves of at least two

    def __init__(self, model: VAE, config: TrainConfig) -> None:
        super().__init__(model, config)
        _require_flat_standard(model, self.name)
        self.discriminator = TCDiscriminator(model.latent_shape[0])

    def optimizers(self, model: VAE) -> dict[str, torch.optim.Optimizer]:
        opts = super().optimizers(model)
        opts["disc"] = adam(self.discriminator.parameters(), self.config.disc_lr, (0.5, 0.9))
        return opts

    def training_step(self, model: VAE, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        cfg = self.config
        if len(batch.x) < 4:
            raise VaekitError("factorvae splits each batch in two halves: use --batch-size 4 or more")
        half = len(batch.x) // 2
        x1, x2 = batch.x[:half], batch.x[half : 2 * half]
        y1 = None if batch.y is None else batch.y[:half]
        y2 = None if batch.y is None else batch.y[half : 2 * half]
        with ctx.autocast():
            out = model(x1, y1)
        parts = elbo_parts(model, out, x1)
        recon = parts["recon"].mean()
        kl = parts["kl"].mean()
        self.discriminator.requires_grad_(False)
        logits = self.discriminator(out.z.float())
        tc = (logits[:, 0] - logits[:, 1]).mean()
        self.discriminator.requires_grad_(True)
        loss = recon + ctx.kl_weight * free_bits_kl(parts["kl_terms"], cfg.free_bits) + cfg.factor_gamma * tc
        ctx.optimize("model", loss)
        with torch.no_grad():
            # the whole job's second halves, permuted together (one process: this batch's); every rank
            # scores all of them, and the share-weighted gradients add up to the mean over them once
            z2 = permute_dims(ctx.gather(model(x2, y2).z.float()))
        real = self.discriminator(out.z.detach().float())
        fake = self.discriminator(z2)
        zeros = torch.zeros(len(real), dtype=torch.long, device=real.device)
        ones = torch.ones(len(fake), dtype=torch.long, device=fake.device)
        d_loss = 0.5 * (F.cross_entropy(real, zeros) + F.cross_entropy(fake, ones))
        ctx.optimize("disc", d_loss)
        accuracy = 0.5 * ((real.argmax(1) == 0).float().mean() + (fake.argmax(1) == 1).float().mean())
        return {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach(), "elbo": -(recon + kl).detach(),
                "tc": tc.detach(), "d_loss": d_loss.detach(), "d_accuracy": accuracy.detach()}

