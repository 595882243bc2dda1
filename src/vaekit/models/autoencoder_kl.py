"""The KL autoencoder of latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis
with Latent Diffusion Models"; the first stage of Stable Diffusion).

ResNet blocks with GroupNorm and SiLU, one-head self-attention in the middle, 2x down/upsampling
per level (8x for the SD layout) to a ``latent_channels``-channel diagonal Gaussian. The config
fields and the module tree are diffusers' ``AutoencoderKL``'s, so state-dict keys map 1:1 to a
diffusers folder; ``vaekit.interop.ldm`` maps them to the original CompVis checkpoints. Images are
in [-1, 1].
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.config import check
from vaekit.distributions import DiagonalGaussian
from vaekit.errors import VaekitError
from vaekit.likelihoods import LIKELIHOODS
from vaekit.models.base import LOGVAR_RANGE, VAE, LikelihoodConfig
from vaekit.models.registry import MODELS, PRESETS

ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


@dataclass(frozen=True)
class AutoencoderKLConfig(LikelihoodConfig):
    """diffusers' AutoencoderKL fields (same names and defaults), plus the likelihood that the
    ELBO objective uses (the LDM objective ignores it)."""

    likelihood: str = "mse"
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups",
                     "sample_size"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(len(self.block_out_channels) >= 1, "block_out_channels must name at least one level")
        for c in self.block_out_channels:
            check(c % self.norm_num_groups == 0,
                  f"norm_num_groups={self.norm_num_groups} does not divide block_out_channels entry {c}")
        check(self.act_fn in ACTIVATIONS, f"unknown act_fn '{self.act_fn}' (choose from: {', '.join(ACTIVATIONS)})")
        check(self.scaling_factor > 0, f"scaling_factor must be positive, got {self.scaling_factor}")
        check(LIKELIHOODS.get(self.likelihood).params_per_element == 1,
              f"the autoencoder-kl model decodes one value per pixel in [-1, 1]; the {self.likelihood} likelihood "
              "is for mlp, conv, hvae and ladder runs")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.sample_size, self.sample_size)

    @property
    def num_classes(self) -> int:
        return 0


# -- building blocks (diffusers' names) ---------------------------------------------------------------


class ResnetBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, act: str, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nonlinearity = ACTIVATIONS[act]()
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = self.conv2(self.nonlinearity(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """One head over all channels: GroupNorm, q/k/v projections, scaled dot-product attention
    (``F.scaled_dot_product_attention``: flash/memory-efficient kernels where available), output
    projection, residual."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).view(b, c, h * w).transpose(1, 2)  # [B, HW, C]
        q, k, v = (proj(t).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # [B, 1, HW, C]
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        out = self.to_out[0](out)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample2D(nn.Module):
    """Pad (0, 1, 0, 1), then a 3x3 convolution with stride 2 and no padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2D(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution.

    Computed without materialising the upsampled image: each of the four output phases (even/odd
    row, even/odd column) of conv3x3(nearest_x2(x)) is a 2x2 convolution of x whose taps are sums of
    the 3x3 kernel's taps. Same result to float rounding, 2.25x fewer multiplications.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        out_c = self.conv.out_channels
        bias = self.conv.bias.repeat(4)  # the bias rides in the convolution: no extra pass over the output
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), phase_kernels(self.conv.weight), bias)  # [B, 4 * O, H + 1, W + 1]
        y = y.view(b, 2, 2, out_c, h + 1, w + 1)
        # interleave the phases with one strided write each (one pass over the output)
        out = y.new_empty(b, out_c, 2 * h, 2 * w)
        for a in (0, 1):
            for c in (0, 1):
                out[:, :, a::2, c::2] = y[:, a, c, :, a : a + h, c : c + w]
        return out

    def reference_forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def phase_kernels(w: Tensor) -> Tensor:
    """[O, I, 3, 3] -> [4 * O, I, 2, 2]: the 2x2 kernels of phases (0,0), (0,1), (1,0), (1,1).

    An even output row reads input rows (i-1, i, i) under the 3x3 window, so its 2x2 kernel's rows
    are (w0, w1 + w2); an odd one reads (i, i, i+1): rows (w0 + w1, w2). Columns likewise.
    """
    pairs = (lambda t, d: torch.stack([t.select(d, 0), t.select(d, 1) + t.select(d, 2)], d),
             lambda t, d: torch.stack([t.select(d, 0) + t.select(d, 1), t.select(d, 2)], d))
    return torch.cat([pairs[c](pairs[a](w, 2), 3) for a in (0, 1) for c in (0, 1)], dim=0)


class DownEncoderBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, act: str, downsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(cin if i == 0 else cout, cout, groups, act) for i in range(layers))
        self.downsamplers = nn.ModuleList([Downsample2D(cout)]) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, act: str, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(cin if i == 0 else cout, cout, groups, act) for i in range(layers))
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class UNetMidBlock2D(nn.Module):
    """resnet -> attention -> resnet."""

    def __init__(self, channels: int, groups: int, act: str, attention: bool) -> None:
        super().__init__()
        # registered in diffusers' order, so state dicts list keys identically
        self.attentions = nn.ModuleList([Attention(channels, groups) if attention else nn.Identity()])
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups, act) for _ in range(2)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderKLConfig) -> None:
        super().__init__()
        ch = cfg.block_out_channels
        groups, act = cfg.norm_num_groups, cfg.act_fn
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock2D(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, groups, act, i < len(ch) - 1)
            for i in range(len(ch))
        )
        self.mid_block = UNetMidBlock2D(ch[-1], groups, act, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], eps=1e-6)
        self.conv_act = ACTIVATIONS[act]()
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, 2 * latent, H / f, W / f]
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderKLConfig) -> None:
        super().__init__()
        rev = tuple(reversed(cfg.block_out_channels))
        groups, act = cfg.norm_num_groups, cfg.act_fn
        self.conv_in = nn.Conv2d(cfg.latent_channels, rev[0], 3, padding=1)
        self.up_blocks = nn.ModuleList(  # up_blocks.0 is the deepest level; registered before mid_block as
            UpDecoderBlock2D(rev[max(i - 1, 0)], rev[i], cfg.layers_per_block + 1, groups, act, i < len(rev) - 1)
            for i in range(len(rev))  # in diffusers, so state dicts list keys in the same order
        )
        self.mid_block = UNetMidBlock2D(rev[0], groups, act, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, rev[-1], eps=1e-6)
        self.conv_act = ACTIVATIONS[act]()
        self.conv_out = nn.Conv2d(rev[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:  # [B, latent, h, w] -> [B, C, h * f, w * f]
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


# -- the model --------------------------------------------------------------------------------------


@MODELS.register("autoencoder-kl")
class AutoencoderKL(VAE):
    """The latent-diffusion KL autoencoder. ``encode`` -> DiagonalGaussian over [B, C, h, w];
    ``decode`` -> images in [-1, 1]; ``scale_latents`` / ``unscale_latents`` apply the pipeline
    convention (z - shift) * scaling_factor and its inverse; ``encode_tiled`` / ``decode_tiled``
    handle any image size in bounded memory."""

    name = "autoencoder-kl"
    config_class = AutoencoderKLConfig
    input_range = (-1.0, 1.0)
    evaluator = "images"
    data_defaults: ClassVar[dict] = {"augment": True}  # image folders: random crops and flips, streamed
    channels_last: ClassVar[bool] = True  # the trainer keeps it channels-last under autocast (faster convolutions)

    def __init__(self, config: AutoencoderKLConfig) -> None:
        super().__init__(config)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        c = config.latent_channels
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c, c, 1) if config.use_post_quant_conv else None

    @classmethod
    def config_for_data(cls, fields: dict, info, conditional: bool) -> dict:
        cls.require(info, conditional)
        fields = dict(fields)
        c, h, w = info.shape
        f = 2 ** (len(fields.get("block_out_channels", AutoencoderKLConfig.block_out_channels)) - 1)
        if min(h, w) < f or h % f or w % f:
            raise VaekitError(f"images of {h}x{w} px do not divide by the model's downsampling factor {f}; "
                              f"use --resolution (a multiple of {f}) or fewer levels")
        fields.setdefault("in_channels", c)
        fields.setdefault("out_channels", c)
        fields.setdefault("sample_size", min(h, w))
        fields.setdefault("likelihood", "mse")
        return fields

    @property
    def latent_shape(self) -> tuple[int, ...]:
        cfg = self.config
        side = cfg.sample_size // cfg.downsample_factor
        return (cfg.latent_channels, side, side)

    def set_precision(self, precision: str = "auto") -> AutoencoderKL:
        """As ``VAE.set_precision``; in bf16, inference runs on a bfloat16 copy of the weights in
        channels-last layout instead of under autocast (on an AMX CPU an SD-layout encode+decode at
        256^2 took 2.9 s this way, 6.6 s under bf16 autocast, 8.5 s in fp32). The model's own weights
        (its state_dict) stay float32; the copy is remade when they change; images and latents come
        back in float32."""
        super().set_precision(precision)
        self.__dict__["_twin"] = None
        if self.inference_precision == "bf16":
            self.__dict__["_autocast_dtype"] = None  # the copy is bf16 itself: nothing to autocast
            self.__dict__["_twin"] = (None, None)  # (copy, the weights' version it was made from)
        return self

    def _bf16_twin(self) -> AutoencoderKL | None:
        """The bf16 channels-last copy inference runs on (None: run this model itself)."""
        twin = self.__dict__.get("_twin")
        if twin is None or self.training or self.__dict__.get("_exact", False) \
                or torch.is_autocast_enabled(self._device().type):
            return None
        copy, made_from = twin
        version = (self._device(), sum(p._version for p in self.parameters()))
        if copy is None or made_from != version:
            self.__dict__["_twin"] = None  # not deep-copied into the copy
            copy = deepcopy(self).to(torch.bfloat16, memory_format=torch.channels_last).eval()
            self.__dict__["_twin"] = (copy, version)
        return copy

    def moments(self, x: Tensor) -> Tensor:
        """Encoder output after quant_conv: [B, 2 * latent, h, w] (mean and logvar stacked)."""
        twin = self._bf16_twin()
        if twin is not None:
            return twin.moments(x.to(torch.bfloat16, memory_format=torch.channels_last)).float()
        m = self.encoder(x)
        return m if self.quant_conv is None else self.quant_conv(m)

    def encoder_params(self, x: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        self._check_input(x)
        mean, logvar = self.moments(x).chunk(2, dim=1)
        return mean, logvar

    def decoder_output(self, z: Tensor, c: Tensor | None) -> Tensor:
        twin = self._bf16_twin()
        if twin is not None:
            return twin.decoder_output(z.to(torch.bfloat16, memory_format=torch.channels_last), c).float()
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def encode(self, x: Tensor, y: Tensor | None = None) -> DiagonalGaussian:
        mean, logvar = self.encoder_params(x, None)
        return DiagonalGaussian(mean, logvar.clamp(*LOGVAR_RANGE))

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Images in [-1, 1] (the decoder output itself; the likelihood's mean)."""
        return self.decoder_output(z, None)

    def _check_input(self, x: Tensor) -> None:
        f = self.config.downsample_factor
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise VaekitError(f"expected images [B, {self.config.in_channels}, H, W], got shape {tuple(x.shape)}")
        if x.shape[2] < f or x.shape[3] < f:
            raise VaekitError(f"images of {x.shape[2]}x{x.shape[3]} px are smaller than the downsampling factor {f}")
        if x.shape[2] % f or x.shape[3] % f:
            raise VaekitError(f"image size {x.shape[2]}x{x.shape[3]} is not a multiple of the downsampling factor {f}")

    # -- the latent-diffusion convention ---------------------------------------------------------
    def scale_latents(self, z: Tensor) -> Tensor:
        """What a diffusion model sees: (z - shift_factor) * scaling_factor."""
        shift = self.config.shift_factor or 0.0
        return (z - shift) * self.config.scaling_factor

    def unscale_latents(self, z: Tensor) -> Tensor:
        shift = self.config.shift_factor or 0.0
        return z / self.config.scaling_factor + shift

    # -- any size, bounded memory ------------------------------------------------------------------
    @torch.no_grad()
    def encode_tiled(self, x: Tensor, tile: int | None = None, overlap: float = 0.25,
                     slice_size: int = 1) -> DiagonalGaussian:
        from vaekit.models.tiling import tiled_encode

        return tiled_encode(self, x, tile or self.config.sample_size, overlap, slice_size)

    @torch.no_grad()
    def decode_tiled(self, z: Tensor, tile: int | None = None, overlap: float = 0.25, slice_size: int = 1) -> Tensor:
        from vaekit.models.tiling import tiled_decode

        latent_tile = (tile or self.config.sample_size) // self.config.downsample_factor
        return tiled_decode(self, z, latent_tile, overlap, slice_size)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parts for partial training (``--train decoder``, as sd-vae-ft-mse did)."""
        decoder = list(self.decoder.parameters()) + list(self.likelihood.parameters())
        if self.post_quant_conv is not None:
            decoder += list(self.post_quant_conv.parameters())
        encoder = list(self.encoder.parameters())
        if self.quant_conv is not None:
            encoder += list(self.quant_conv.parameters())
        return {"all": list(self.parameters()), "decoder": decoder, "encoder": encoder}


def parameter_count(config: AutoencoderKLConfig) -> int:
    return sum(p.numel() for p in AutoencoderKL(config).parameters())


def _preset(name: str, about: str, **fields) -> None:
    PRESETS.register(name)({"model": "autoencoder-kl", "model_config": fields, "about": about})


_SD_LAYOUT = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32}
_preset("sd", "Stable Diffusion 1.x VAE layout (kl-f8, 4 latents, 83.7M parameters)", **_SD_LAYOUT,
        latent_channels=4, sample_size=512, scaling_factor=0.18215)
_preset("sdxl", "SDXL VAE layout (kl-f8, 4 latents)", **_SD_LAYOUT, latent_channels=4, sample_size=1024,
        scaling_factor=0.13025)
_preset("f8c16", "SD3-style 16-latent f8 layout with shift, no quant convs", **_SD_LAYOUT, latent_channels=16,
        sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
_preset("tiny-f4", "CPU-sized kl-f4 (3 latents): 32-64-64 channels, 1 resnet per level",
        block_out_channels=[32, 64, 64], layers_per_block=1, norm_num_groups=8, latent_channels=3, scaling_factor=1.0)
_preset("tiny-f8", "CPU-sized kl-f8 (4 latents): 32-64-128-128 channels, 1 resnet per level",
        block_out_channels=[32, 64, 128, 128], layers_per_block=1, norm_num_groups=8, latent_channels=4,
        scaling_factor=1.0)
_preset("small-f8", "small kl-f8 (4 latents): 64-128-256-256 channels, 2 resnets per level",
        block_out_channels=[64, 128, 256, 256], layers_per_block=2, norm_num_groups=32, latent_channels=4,
        scaling_factor=1.0)

__all__ = ["AutoencoderKL", "AutoencoderKLConfig", "parameter_count"]
