"""The latents of a VAE run as a dataset, for a latent-diffusion model to train on.

The VAE encodes its data once; ``LatentData`` keeps each example's posterior mean and log-variance
[N, *latent] and serves standardised codes ``(z - mean) / std``. With ``sample`` it draws a fresh
z ~ q(z|x) every time an example is served (from torch's global generator, in the main thread, so
runs resume exactly): the diffusion model then learns the aggregate posterior the decoder was
trained on, not just its means. Held-out splits serve the means, so validation losses compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vaekit.data.arrays import ArrayData


@dataclass
class LatentData:
    mean: Tensor  # [N, *latent]
    logvar: Tensor  # [N, *latent]
    y: Tensor | None
    shift: Tensor  # broadcasts against one latent: per element, or a scalar
    scale: Tensor  # the standard deviation the codes are divided by
    sample: bool = True

    def __len__(self) -> int:
        return len(self.mean)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape[1:])

    @property
    def x(self) -> Tensor:
        """The standardised means (what held-out splits serve)."""
        return (self.mean - self.shift) / self.scale

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        mean = self.mean.index_select(0, index)
        if self.sample:
            mean = mean + torch.exp(0.5 * self.logvar.index_select(0, index)) * torch.randn_like(mean)
        y = None if self.y is None else self.y.index_select(0, index)
        return (mean - self.shift) / self.scale, y

    def take(self, n: int) -> ArrayData:
        return ArrayData(self.x[:n], None if self.y is None else self.y[:n])

    def held_out(self) -> LatentData:
        return LatentData(self.mean, self.logvar, self.y, self.shift, self.scale, sample=False)
