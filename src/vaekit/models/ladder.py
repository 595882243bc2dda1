"""A top-down hierarchical VAE for images, in the ladder family (Sonderby et al. 2016, "Ladder
Variational Autoencoders"; in the form of VDVAE, Child 2021, and NVAE, Vahdat & Kautz 2020).

A bottom-up encoder stores its activations at each resolution; one top-down path then serves both
the posterior and the prior. Each decoder block reads the top-down state h and

    p(z_l | z_<l) = N(prior(h)),    q(z_l | x, z_<l) = N(posterior([h, encoder activation])),

samples z_l from q when encoding or from p (scaled by a temperature) when sampling, and updates
h <- block(h + prior residual + proj(z_l)). The same code path runs for training, evaluation and
sampling. The KL of each block is analytic (both Gaussians share h) and is reported per layer.

The topology is a short string, high resolution first: "28x2,14x2,7x2,1x1" means two blocks at
28x28, two at 14x14, two at 7x7 and one at 1x1, for the encoder and (mirrored) for the decoder.
Without one, the topology follows the image size (``default_topology``).
With ``patch = P`` the image is first folded into P x P patches (space-to-depth, [B, C, H, W] ->
[B, C*P*P, H/P, W/P]) and the output unfolded the same way, so the topology starts at H/P: every
pixel keeps its own logit, and the blocks run on P*P times fewer positions (on a CPU, 28x28 with
width 32 costs ~3x the time of 14x14 with patch 2).
The last 1x1 convolution of every residual branch and the latent projections start scaled by
1/sqrt(number of blocks), so the top-down sum stays stable at depth; pair it with the trainer's
--grad-skip to drop the rare exploding update.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.config import check
from vaekit.distributions import DiagonalGaussian
from vaekit.errors import VaekitError
from vaekit.models.base import LOGVAR_RANGE, SKIP_EXPLODING, VAE, LikelihoodConfig, VAEOutput
from vaekit.models.registry import MODELS

_GROUP = re.compile(r"^(\d+)x(\d+)$")


def parse_topology(text: str) -> list[tuple[int, int]]:
    """"28x2,14x2,7x2,1x1" -> [(28, 2), (14, 2), (7, 2), (1, 1)] (resolutions strictly decreasing)."""
    groups = []
    for part in text.replace(" ", "").split(","):
        m = _GROUP.match(part)
        if not m:
            raise VaekitError(f"topology '{text}': cannot parse '{part}' (expected RESxBLOCKS, e.g. 28x2,14x2,7x2,1x1)")
        res, n = int(m.group(1)), int(m.group(2))
        if res < 1 or n < 1:
            raise VaekitError(f"topology '{text}': '{part}' needs a resolution and a block count >= 1")
        groups.append((res, n))
    if not groups:
        raise VaekitError(f"topology '{text}' is empty")
    for (a, _), (b, _) in itertools.pairwise(groups):
        if b >= a or a % b:
            raise VaekitError(f"topology '{text}': resolutions must decrease by whole factors ({a} -> {b})")
    return groups


def default_topology(size: int) -> str:
    """Two blocks at the folded image size and at each halving while the result stays even and at
    least 4 px, then one block at 1x1: 28 -> "28x2,14x2,7x2,1x1", 8 -> "8x2,4x2,1x1",
    64 -> "64x2,32x2,16x2,8x2,4x2,1x1"."""
    sizes = [size]
    while sizes[-1] % 2 == 0 and sizes[-1] // 2 >= 4:
        sizes.append(sizes[-1] // 2)
    groups = [f"{s}x2" for s in sizes if s > 1]
    return ",".join([*groups, "1x1"])


@dataclass(frozen=True)
class LadderConfig(LikelihoodConfig):
    data_shape: tuple[int, ...] = (1, 28, 28)
    topology: str = "28x2,14x2,7x2,1x1"
    width: int = 64
    bottleneck: float = 0.25  # residual branches run at width * bottleneck channels
    zdim: int = 8  # latent channels per block
    patch: int = 1  # fold P x P pixels into channels before the first block (space-to-depth)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.data_shape) == 3, f"the ladder model needs image data; got data of shape {self.data_shape}")
        groups = parse_topology(self.topology)
        size = self.data_shape[1]
        check(self.patch >= 1 and size % self.patch == 0,
              f"patch {self.patch} does not divide the image size {size}")
        if groups[0][0] * self.patch != size or size != self.data_shape[2]:
            folded = f" (patch {self.patch}: {size // self.patch}x{size // self.patch})" if self.patch > 1 else ""
            raise VaekitError(f"topology '{self.topology}' starts at {groups[0][0]}x{groups[0][0]} but the images are "
                              f"{size}x{self.data_shape[2]}{folded}")
        check(self.width >= 4 and 0 < self.bottleneck <= 1, "width must be >= 4 and bottleneck in (0, 1]")
        check(self.zdim >= 1, f"zdim must be >= 1, got {self.zdim}")

    @property
    def num_classes(self) -> int:
        return 0


class Block(nn.Module):
    """VDVAE's bottleneck block: GELU-conv1x1, GELU-conv3x3, GELU-conv3x3, GELU-conv1x1 (3x3 become
    1x1 at resolutions of 2 and below), optionally residual."""

    def __init__(self, cin: int, mid: int, cout: int, residual: bool, spatial: bool, scale: float = 1.0) -> None:
        super().__init__()
        k = 3 if spatial else 1
        self.c1 = nn.Conv2d(cin, mid, 1)
        self.c2 = nn.Conv2d(mid, mid, k, padding=k // 2)
        self.c3 = nn.Conv2d(mid, mid, k, padding=k // 2)
        self.c4 = nn.Conv2d(mid, cout, 1)
        self.residual = residual
        with torch.no_grad():
            self.c4.weight.mul_(scale)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1(F.gelu(x))
        h = self.c2(F.gelu(h))
        h = self.c3(F.gelu(h))
        h = self.c4(F.gelu(h))
        return x + h if self.residual else h


class TopDownBlock(nn.Module):
    def __init__(self, width: int, mid: int, zdim: int, res: int, n_blocks: int) -> None:
        super().__init__()
        spatial = res > 2
        self.zdim = zdim
        self.posterior = Block(2 * width, mid, 2 * zdim, residual=False, spatial=spatial)
        self.prior = Block(width, mid, 2 * zdim + width, residual=False, spatial=spatial)
        self.z_proj = nn.Conv2d(zdim, width, 1)
        self.resnet = Block(width, mid, width, residual=True, spatial=spatial, scale=math.sqrt(1 / n_blocks))
        with torch.no_grad():
            self.z_proj.weight.mul_(math.sqrt(1 / n_blocks))
            self.prior.c4.weight[2 * zdim :].zero_()  # the prior's residual into h starts at zero

    def forward(self, h: Tensor, enc: Tensor | None, z: Tensor | None = None, temperature: float = 1.0,
                generator: torch.Generator | None = None, use_mean: bool = False):
        """One step of the shared top-down path; returns (h, z, q or None, p)."""
        pm, pv, h_prior = self.prior(h).split([self.zdim, self.zdim, h.shape[1]], dim=1)
        p = DiagonalGaussian(pm, pv.clamp(*LOGVAR_RANGE))
        q = None
        if enc is not None:
            qm, qv = self.posterior(torch.cat([h, enc], dim=1)).chunk(2, dim=1)
            q = DiagonalGaussian(qm, qv.clamp(*LOGVAR_RANGE))
        if z is None:
            source = q if q is not None else p
            z = source.mean if use_mean else source.sample(generator=generator,
                                                           temperature=1.0 if q is not None else temperature)
        h = h + h_prior
        h = self.resnet(h + self.z_proj(z))
        return h, z, q, p


@MODELS.register("ladder")
class LadderVAE(VAE):
    name = "ladder"
    config_class = LadderConfig
    hierarchical = True
    training_defaults: ClassVar[Mapping] = SKIP_EXPLODING

    def __init__(self, config: LadderConfig) -> None:
        super().__init__(config)
        self.groups = parse_topology(config.topology)
        width, mid = config.width, max(1, int(config.width * config.bottleneck))
        n_blocks = sum(n for _, n in self.groups)
        folded = config.data_shape[0] * config.patch**2
        self.in_conv = nn.Conv2d(folded, width, 3, padding=1)
        self.encoder = nn.ModuleList(
            nn.Sequential(*[Block(width, mid, width, residual=True, spatial=res > 2, scale=math.sqrt(1 / n_blocks))
                            for _ in range(n)]) for res, n in self.groups
        )
        self.decoder = nn.ModuleList(
            nn.ModuleList([TopDownBlock(width, mid, config.zdim, res, n_blocks) for _ in range(n)])
            for res, n in reversed(self.groups)
        )
        top = self.groups[-1][0]
        self.h_top = nn.Parameter(torch.zeros(1, width, top, top))
        self.out_conv = nn.Conv2d(width, folded * self.likelihood.params_per_element, 3, padding=1)

    @classmethod
    def config_for_data(cls, fields: dict, info, conditional: bool) -> dict:
        cls.require(info, conditional)
        fields = dict(fields)
        fields["data_shape"] = list(info.shape)
        if "topology" not in fields:  # follows the image size (after folding by the patch)
            patch = int(fields.get("patch", LadderConfig.patch))
            size = info.shape[-1]
            if len(info.shape) == 3 and patch >= 1 and size % patch == 0:
                fields["topology"] = default_topology(size // patch)
        return fields

    @property
    def layers(self) -> int:
        return sum(n for _, n in self.groups)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        top = self.groups[-1][0]
        return (self.config.zdim, top, top)

    def output_logits(self, h: Tensor) -> Tensor:
        """[B, width, H/P, W/P] -> [B, C, H, W]: each pixel's parameters from its patch's channels."""
        return F.pixel_shuffle(self.out_conv(h), self.config.patch)

    def encoder_activations(self, x: Tensor) -> dict[int, Tensor]:
        h = self.in_conv(F.pixel_unshuffle(x, self.config.patch))
        acts = {}
        for (res, _), blocks in zip(self.groups, self.encoder):
            if h.shape[-1] != res:
                h = F.avg_pool2d(h, h.shape[-1] // res)
            h = blocks(h)
            acts[res] = h
        return acts

    def top_down(self, batch: int, acts: dict[int, Tensor] | None, zs: list[Tensor | None] | None = None,
                 temperature: float = 1.0, generator=None, use_mean: bool = False):
        """The shared path: returns (h at full resolution, [z], [q or None], [p]) over all blocks."""
        h = self.h_top.expand(batch, -1, -1, -1)
        out_z, out_q, out_p = [], [], []
        i = 0
        for (res, _), blocks in zip(reversed(self.groups), self.decoder):
            if h.shape[-1] != res:
                h = F.interpolate(h, size=(res, res), mode="nearest")
            for block in blocks:
                given = zs[i] if zs is not None and i < len(zs) else None
                enc = None if acts is None else acts[res]
                h, z, q, p = block(h, enc, given, temperature, generator, use_mean)
                out_z.append(z)
                out_q.append(q)
                out_p.append(p)
                i += 1
        return h, out_z, out_q, out_p

    # -- the VAE API ------------------------------------------------------------------------------
    def forward(self, x: Tensor, y: Tensor | None = None, generator=None) -> VAEOutput:
        h, zs, qs, ps = self.top_down(len(x), self.encoder_activations(x), generator=generator)
        kl = torch.stack([q.kl(p) for q, p in zip(qs, ps)], dim=1)  # [B, L]: analytic per block
        return VAEOutput(qs[0], zs[0], self.likelihood(self.output_logits(h)), aux={"kl_layers": kl})

    def kl_terms(self, out: VAEOutput) -> Tensor:
        return out.aux["kl_layers"]

    def importance_terms(self, x: Tensor, y: Tensor | None, posterior, k: int, generator=None):
        b = len(x)
        acts = {res: a.repeat(k, 1, 1, 1) for res, a in self.encoder_activations(x).items()}  # [k*B, ...]
        h, zs, qs, ps = self.top_down(k * b, acts, generator=generator)
        ratio = torch.stack([p.log_prob(z) - q.log_prob(z) for z, q, p in zip(zs, qs, ps)], dim=-1)
        px = self.likelihood(self.output_logits(h)).unflatten_batch(k)
        return px.log_prob(x), ratio.view(k, b, -1)

    def encode(self, x: Tensor, y: Tensor | None = None) -> DiagonalGaussian:
        """q of the top block (the lowest resolution), which depends only on x."""
        _, _, qs, _ = self.top_down(len(x), self.encoder_activations(x), use_mean=True)
        return qs[0]

    def layer_means(self, x: Tensor) -> list[Tensor]:
        _, zs, _, _ = self.top_down(len(x), self.encoder_activations(x), use_mean=True)
        return [z.flatten(1) for z in zs]

    def decoder_output(self, z: Tensor, c: Tensor | None) -> Tensor:
        """From the top latent, with the lower blocks at their prior means."""
        h, *_ = self.top_down(len(z), None, zs=[z], use_mean=True)
        return self.output_logits(h)

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0, generator=None) -> Tensor:
        h, *_ = self.top_down(n, None, temperature=temperature, generator=generator)
        return self.likelihood(self.output_logits(h)).mean

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        encoder = list(self.in_conv.parameters()) + list(self.encoder.parameters())
        ids = {id(p) for p in encoder}
        return {"all": list(self.parameters()), "encoder": encoder,
                "decoder": [p for p in self.parameters() if id(p) not in ids]}
