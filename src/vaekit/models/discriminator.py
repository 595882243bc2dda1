"""The PatchGAN discriminator of pix2pix (Isola et al. 2017), as latent diffusion's autoencoders
use it (taming-transformers' NLayerDiscriminator): 4x4 convolutions, BatchNorm and LeakyReLU(0.2),
one logit per overlapping patch (30x30 at 256x256 with 3 layers; 2,765,633 parameters at ndf 64).
Keys ``main.{i}`` match the LDM checkpoints' ``loss.discriminator.main.{i}``.
"""

from __future__ import annotations

from torch import Tensor, nn


class NLayerDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=False),
                   nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """pix2pix initialisation: conv weights N(0, 0.02); BatchNorm weights N(1, 0.02), bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, 1, h, w] patch logits
        return self.main(x)
