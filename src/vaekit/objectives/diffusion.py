"""The denoising objective of diffusion models (Ho et al. 2020, "Denoising Diffusion Probabilistic
Models"; the "simple" loss): E_{x_0, eps, t} || target - f_theta(x_t, t, y) ||^2 with t uniform over
the training timesteps, x_t from the model's noise schedule, and the target eps or, for
``prediction: v_prediction``, v (Salimans & Ho 2022). For a class-conditional model a fraction
``class_dropout`` of the labels is replaced by the null label, so one network learns both the
conditional and the unconditional prediction that classifier-free guidance combines (Ho & Salimans
2022). The noise, timesteps and dropped labels come from torch's global generator, so runs resume
exactly; they are drawn for the global batch (``vaekit.sharding``), and the loss is a mean over
examples of one size, so a run on N ranks is the run of one process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from vaekit import sharding
from vaekit.errors import VaekitError
from vaekit.objectives.base import OBJECTIVES, Objective

if TYPE_CHECKING:
    from vaekit.protocol import Batch, StepContext
    from vaekit.training.config import TrainConfig


@OBJECTIVES.register("diffusion")
class DiffusionLoss(Objective):
    name = "diffusion"

    def __init__(self, model, config: TrainConfig) -> None:
        if not hasattr(model, "add_noise"):
            raise VaekitError(f"the diffusion objective trains latent-diffusion or pixel-diffusion models, not "
                              f"'{model.name}'")
        if config.train_part != "all":
            raise VaekitError("--train applies to VAEs (decoder or encoder); a diffusion model trains all of it")
        super().__init__(model, config)

    def training_step(self, model, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        x0 = batch.x
        noise = sharding.draw(lambda s: torch.randn(s, device=x0.device, dtype=x0.dtype), x0.shape, 0)
        t = sharding.draw(lambda s: torch.randint(0, model.config.timesteps, s, device=x0.device), (x0.shape[0],), 0)
        y = model.training_labels(batch.y)
        with ctx.autocast():
            pred = model(model.add_noise(x0, noise, t), t, y)
        loss = F.mse_loss(pred.float(), model.target(x0, noise, t).float())
        ctx.optimize("model", loss)
        return {"loss": loss.detach()}

    @torch.no_grad()
    def validation_step(self, model, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        return {"loss": model.denoising_loss(batch.x, batch.y, generator)}
