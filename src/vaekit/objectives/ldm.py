"""The autoencoder objective of latent diffusion (Rombach et al. 2022), as in CompVis'
``LPIPSWithDiscriminator`` (after Esser et al. 2021, "Taming Transformers"):

    rec   = |x - x_hat| (or squared) + perceptual_weight * LPIPS(x, x_hat)   (LPIPS broadcast per pixel)
    nll   = sum(rec / exp(logvar) + logvar) / B
    loss  = nll + kl_weight * KL + d_weight * disc_factor * g_loss,   g_loss = -mean(D(x_hat))
    d_weight = disc_weight * ||grad nll|| / (||grad g_loss|| + 1e-4) at the decoder's last layer,
               clamped to [0, 1e4]

with a PatchGAN discriminator trained by the hinge loss 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))
once ``disc_start`` optimizer steps have passed. The KL weight is ``beta`` (1e-6 by default here),
and both optimizers are Adam(0.5, 0.9). Images are in [-1, 1].

On N ranks the adaptive weight uses the global batch's gradient norms (``ctx.batch_mean``), and the
discriminator's BatchNorm normalises with each rank's own batch statistics (as LDM's multi-GPU
training did: no synchronised BatchNorm), its running statistics being rank 0's after each step;
before ``disc_start`` a run on N ranks is the run of one process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.errors import VaekitError
from vaekit.models.discriminator import NLayerDiscriminator
from vaekit.objectives.base import OBJECTIVES, Objective, adam

if TYPE_CHECKING:
    from vaekit.models.base import VAE
    from vaekit.protocol import Batch, StepContext
    from vaekit.training.config import TrainConfig

BASE_LR = 4.5e-6  # LDM's base learning rate, scaled by the batch size (and accumulation)


@OBJECTIVES.register("ldm")
class LDMLoss(Objective):
    name = "ldm"

    def __init__(self, model: VAE, config: TrainConfig) -> None:
        super().__init__(model, config)
        if not hasattr(model, "scale_latents"):
            raise VaekitError(f"the ldm objective trains the autoencoder-kl model, not '{model.name}'")
        self.discriminator = NLayerDiscriminator(model.config.out_channels, config.disc_ndf, config.disc_layers)
        self.logvar = nn.Parameter(torch.tensor(float(config.logvar_init)), requires_grad=config.learn_logvar)
        self._lpips = None

    @classmethod
    def default_settings(cls, training: dict) -> dict:
        batch = training.get("batch_size", 128) * training.get("grad_accum", 1)
        return {"beta": 1e-6, "adam_betas": (0.5, 0.9), "lr": BASE_LR * batch}

    def optimizers(self, model: VAE) -> dict[str, torch.optim.Optimizer]:
        params = [p for p in model.parameters() if p.requires_grad]
        if self.config.learn_logvar:
            params.append(self.logvar)
        betas = self.config.adam_betas
        return {"model": adam(params, self.config.lr, betas),
                "disc": adam(self.discriminator.parameters(), self.config.lr, betas)}

    def lpips(self, device) -> nn.Module | None:
        if self.config.perceptual_weight <= 0:
            return None
        if self._lpips is None:
            from vaekit.perceptual import load_lpips

            self._lpips = load_lpips(self.config.lpips_net, device)
        return self._lpips

    def reconstruction(self, x: Tensor, xr: Tensor) -> tuple[Tensor, Tensor]:
        """Per-element reconstruction term [B, C, H, W] and the per-example LPIPS [B]."""
        rec = (x - xr).abs() if self.config.pixel_loss == "l1" else (x - xr) ** 2
        lp = self.lpips(x.device)
        p = lp(x, xr) if lp is not None else x.new_zeros(x.shape[0])
        return rec + self.config.perceptual_weight * p[:, None, None, None], p

    def training_step(self, model: VAE, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        cfg = self.config
        x = batch.x
        disc_on = ctx.step >= cfg.disc_start and cfg.disc_factor > 0 and cfg.disc_weight > 0
        with ctx.autocast():
            posterior = model.encode(x)
            xr = model.decode(posterior.sample()).float()
        rec, p = self.reconstruction(x, xr)
        nll = (rec / torch.exp(self.logvar) + self.logvar).sum() / x.shape[0]
        kl = posterior.kl().float().mean()
        loss = nll + ctx.kl_weight * kl
        zero = x.new_zeros(())
        g_loss = d_weight = d_loss = zero
        if disc_on:
            self.discriminator.requires_grad_(False)  # the generator step must not touch D
            g_loss = -self.discriminator(xr).mean()
            last = model.decoder.conv_out.weight
            d_weight = self.adaptive_weight(nll, g_loss, last, ctx.batch_mean) * cfg.disc_weight
            loss = loss + d_weight * cfg.disc_factor * g_loss
            self.discriminator.requires_grad_(True)
        ctx.optimize("model", loss)
        if disc_on:
            real = self.discriminator(x.detach())
            fake = self.discriminator(xr.detach())
            d_loss = cfg.disc_factor * 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
            ctx.optimize("disc", d_loss)
        return {"loss": loss.detach(), "nll": nll.detach(), "rec": (x - xr).abs().mean().detach(),
                "lpips": p.mean().detach(), "kl": kl.detach(), "g_loss": g_loss.detach(),
                "d_weight": torch.as_tensor(d_weight).detach(), "d_loss": d_loss.detach(),
                "logvar": self.logvar.detach().clone()}

    @staticmethod
    def adaptive_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor, batch_mean=None) -> Tensor:
        """||grad nll|| / (||grad g_loss|| + 1e-4) at the decoder's last layer, clamped, detached.
        ``batch_mean`` (``ctx.batch_mean``) turns this rank's gradients into the global batch's."""
        nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        if batch_mean is not None:
            nll_grad, g_grad = batch_mean(nll_grad), batch_mean(g_grad)
        return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    @torch.no_grad()
    def validation_step(self, model: VAE, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        """Per-example: L1, LPIPS (when used), PSNR on [0, 1] and KL, reconstructing from the mode."""
        x = batch.x
        posterior = model.encode(x)
        xr = model.decode(posterior.mode()).float().clamp(-1, 1)
        out = {"l1": (x - xr).abs().flatten(1).mean(1), "kl": posterior.kl().float()}
        mse = (((x - xr) / 2) ** 2).flatten(1).mean(1)
        out["psnr"] = -10 * torch.log10(mse.clamp(min=1e-10))
        lp = self.lpips(x.device)
        if lp is not None:
            out["lpips"] = lp(x, xr)
        return out
