"""Diffusion models as model families: DDPM (Ho et al. 2020) in the latent space of a trained vaekit
VAE (latent diffusion, Rombach et al. 2022) or on pixels.

The forward process, the training target and the samplers are diffusers' schedulers
(``DDPMScheduler`` to add noise in training; ``DDIMScheduler``, Song et al. 2021, and
``DPMSolverMultistepScheduler``, Lu et al. 2022, to sample in few steps; ``DDPMScheduler`` for
ancestral sampling), with ``clip_sample`` off since latents are not bounded. The network predicts
the noise (``epsilon``) or the velocity (``v_prediction``, Salimans & Ho 2022). A conditional
model learns with labels dropped to a null label with probability ``class_dropout`` and samples
with classifier-free guidance (Ho & Salimans 2022): eps = eps(x, null) + w (eps(x, y) - eps(x, null)).

- ``latent-diffusion`` trains on the latents of a VAE run (``vae``), encoded once: each example's
  posterior mean and log-variance are kept, and a fresh z ~ q(z|x) is drawn every time it is served
  (``latents: sample``; or the means). Codes are standardised: per element for flat latents (and
  any VAE but the KL autoencoder), and with the run's own ``scale_latents`` convention,
  (z - shift_factor) * scaling_factor, for autoencoder-kl runs (``latent_scaling: run``; ``std``
  measures 1 / std instead, as LDM's ``scale_by_std``). The statistics are saved in the run's config.
  The run records the VAE's path and the SHA-256 of its weights and refuses a VAE whose weights
  changed. ``sample`` decodes through the VAE; the VAE is not part of this run's weights.
- ``pixel-diffusion`` is a DDPM on images in [-1, 1] (padded to 32x32 by default), the comparison a
  latent-diffusion run is measured against.

The denoiser is a residual MLP for flat latents and diffusers' ``UNet2DModel`` for spatial ones
(``vaekit.models.denoisers``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit import sharding
from vaekit.config import check
from vaekit.errors import VaekitError
from vaekit.models.denoisers import ResidualMLP, UNet
from vaekit.models.registry import MODELS

DENOISERS = ("auto", "mlp", "unet")
PREDICTIONS = ("epsilon", "v_prediction")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SAMPLERS = ("ddim", "dpm", "ddpm")
LATENT_SOURCES = ("sample", "mean")
LATENT_SCALINGS = ("run", "std")
ENCODE_BATCH = 256


@dataclass(frozen=True)
class DiffusionConfig:
    data_shape: tuple[int, ...] = ()  # what the denoiser sees: one latent, or one (padded) image
    num_classes: int = 0  # > 0: class-conditional, with classifier-free guidance
    denoiser: str = "auto"  # mlp | unet | auto (unet for spatial inputs of 4 px and more)
    width: int = 512  # mlp: hidden width
    depth: int = 4  # mlp: residual blocks
    unet_channels: tuple[int, ...] = (64, 128)  # unet: block widths, one resolution level each
    layers_per_block: int = 2  # unet: resnets per level
    attention: bool = True  # unet: self-attention in the levels below the first
    prediction: str = "epsilon"  # epsilon | v_prediction
    timesteps: int = 1000  # of the training noise schedule
    beta_schedule: str = "linear"  # linear (DDPM) | scaled_linear (LDM) | squaredcos_cap_v2 (Nichol & Dhariwal)
    class_dropout: float = 0.1  # conditional: labels replaced by the null label in training
    sampler: str = "ddim"  # default sampler: ddim | dpm (multistep DPM-Solver++) | ddpm (ancestral)
    steps: int = 50  # default sampling steps

    def __post_init__(self) -> None:
        check(self.denoiser in DENOISERS, f"unknown --denoiser '{self.denoiser}' (choose from: {', '.join(DENOISERS)})")
        check(self.prediction in PREDICTIONS,
              f"unknown --prediction '{self.prediction}' (choose from: {', '.join(PREDICTIONS)})")
        check(self.beta_schedule in BETA_SCHEDULES,
              f"unknown --beta-schedule '{self.beta_schedule}' (choose from: {', '.join(BETA_SCHEDULES)})")
        check(self.sampler in SAMPLERS, f"unknown --sampler '{self.sampler}' (choose from: {', '.join(SAMPLERS)})")
        check(self.width >= 1 and self.depth >= 1, "the mlp denoiser needs --width and --depth >= 1")
        check(len(self.unet_channels) >= 1 and all(c >= 1 for c in self.unet_channels),
              f"--unet-channels must be positive, got {self.unet_channels}")
        check(self.layers_per_block >= 1, f"--layers-per-block must be >= 1, got {self.layers_per_block}")
        check(self.timesteps >= 2, f"--timesteps must be >= 2, got {self.timesteps}")
        check(0 <= self.class_dropout < 1, f"--class-dropout must be in [0, 1), got {self.class_dropout}")
        check(self.steps >= 1, f"--steps must be >= 1, got {self.steps}")
        check(self.num_classes >= 0, f"num_classes must be >= 0, got {self.num_classes}")

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def spatial_denoiser(self) -> bool:
        if self.denoiser != "auto":
            return self.denoiser == "unet"
        return len(self.data_shape) == 3 and min(self.data_shape[1:]) >= 4


def noise_scheduler(cfg: DiffusionConfig):
    """diffusers' DDPMScheduler for the forward process q(x_t | x_0) and the training target."""
    try:
        from diffusers import DDPMScheduler
    except ImportError:
        raise VaekitError("diffusion models need diffusers (pip install 'vaekit[diffusers]')") from None
    return DDPMScheduler(num_train_timesteps=cfg.timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction, clip_sample=False)


def sampling_scheduler(cfg: DiffusionConfig, kind: str):
    """A sampler sharing the training schedule's betas: DDIM (eta 0), multistep DPM-Solver++, or DDPM."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if kind not in SAMPLERS:
        raise VaekitError(f"unknown --sampler '{kind}' (choose from: {', '.join(SAMPLERS)})")
    base = noise_scheduler(cfg).config
    cls = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "ddpm": DDPMScheduler}[kind]
    return cls.from_config(base)


class DiffusionModel(nn.Module):
    """Base class of the diffusion families: the denoiser, the noise schedule and the samplers."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = DiffusionConfig
    input_range: ClassVar[tuple[float, float]] = (-1.0, 1.0)
    evaluator: ClassVar[str] = "diffusion"
    data_defaults: ClassVar[Mapping] = MappingProxyType({})
    training_defaults: ClassVar[Mapping] = MappingProxyType({"objective": "diffusion", "ema_decay": 0.999,
                                                             "grad_clip": 1.0})
    hierarchical: ClassVar[bool] = False

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.config = config
        shape = tuple(config.data_shape)
        if config.spatial_denoiser:
            if len(shape) != 3:
                raise VaekitError(f"the unet denoiser needs spatial inputs (channels, height, width), got {shape}")
            self.denoiser = UNet(shape, config.unet_channels, config.layers_per_block, config.attention,
                                 config.num_classes)
        else:
            self.denoiser = ResidualMLP(math.prod(shape), config.width, config.depth, config.num_classes)
        self._scheduler = None

    # -- what the trainer and the settings ask a model family ----------------------------------------
    @classmethod
    def data_settings(cls, data: dict, model: Mapping) -> dict:
        return data

    @classmethod
    def prepare_data(cls, data_cfg, model_fields: Mapping, saved=None, open_run: Callable | None = None):
        """The training data as DataSplits (``open_run(path) -> (RunConfig, model)`` opens other runs)."""
        from vaekit.data import load_data

        return load_data(data_cfg, saved=saved, input_range=cls.input_range)

    def attach(self, open_run: Callable) -> None:
        """Called with ``vaekit.run.open_run`` once the model is built from its config."""

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"all": list(self.parameters())}

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.config.data_shape)

    @property
    def scheduler(self):
        if self._scheduler is None:
            self._scheduler = noise_scheduler(self.config)
        return self._scheduler

    # -- the denoiser and the forward process -------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The network's prediction (eps or v) for x_t [B, *shape] at timesteps t ([B] or a scalar)."""
        if not self.config.conditional:
            y = None
        elif y is None:
            raise VaekitError(f"this diffusion model is conditional on {self.config.num_classes} classes: "
                              "labels are required")
        if isinstance(self.denoiser, UNet):
            return self.denoiser(x, t, y)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        return self.denoiser(x.flatten(1), t, y).view_as(x)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        return self.scheduler.add_noise(x0, noise, t)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network learns to predict: eps, or v = sqrt(abar) eps - sqrt(1 - abar) x_0."""
        return noise if self.config.prediction == "epsilon" else self.scheduler.get_velocity(x0, noise, t)

    def predict_x0(self, xt: Tensor, t: Tensor, prediction: Tensor) -> Tensor:
        """x_0 from x_t and a prediction of eps (or v) at timesteps t [B]."""
        abar = self.scheduler.alphas_cumprod.to(xt.device)[t].view(-1, *[1] * (xt.dim() - 1)).to(xt.dtype)
        if self.config.prediction == "epsilon":
            return (xt - (1 - abar).sqrt() * prediction) / abar.sqrt()
        return abar.sqrt() * xt - (1 - abar).sqrt() * prediction

    def training_labels(self, y: Tensor | None) -> Tensor | None:
        """Labels with a fraction ``class_dropout`` replaced by the null label (for guidance)."""
        if not self.config.conditional:
            return None
        drop = sharding.draw(lambda s: torch.rand(s, device=y.device), y.shape, 0) < self.config.class_dropout
        return torch.where(drop, torch.full_like(y, self.config.num_classes), y)

    def denoising_loss(self, x0: Tensor, y: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        """Per-example mean squared error of the prediction, [B], at random timesteps and noise."""
        # drawn for the global batch when the batch is sharded over ranks (vaekit.sharding)
        noise = sharding.draw(lambda s: torch.randn(s, generator=generator, device=x0.device, dtype=x0.dtype),
                              x0.shape, 0)
        t = sharding.draw(lambda s: torch.randint(0, self.config.timesteps, s, generator=generator, device=x0.device),
                          (x0.shape[0],), 0)
        pred = self(self.add_noise(x0, noise, t), t, y)
        return F.mse_loss(pred.float(), self.target(x0, noise, t).float(), reduction="none").flatten(1).mean(1)

    # -- sampling --------------------------------------------------------------------------------------
    def check_sampling(self, steps: int | None, guidance: float | None) -> None:
        if steps is not None and steps < 1:
            raise VaekitError(f"--steps must be >= 1, got {steps}")
        if guidance is not None and guidance != 1.0 and not self.config.conditional:
            raise VaekitError("--guidance needs a class-conditional diffusion model (train with --conditional)")
        if guidance is not None and guidance < 0:
            raise VaekitError(f"--guidance must be >= 0, got {guidance}")

    @torch.no_grad()
    def generate(self, n: int, y: Tensor | None = None, generator: torch.Generator | None = None,
                 steps: int | None = None, sampler: str | None = None, guidance: float | None = None,
                 temperature: float = 1.0) -> Tensor:
        """n samples [n, *shape] in the space the denoiser works in (standardised latents, or pixels).

        The initial noise is diffusers' ``randn_tensor`` of the generator, so a UNet run exported as a
        diffusers pipeline gives the same images for the same generator and steps."""
        from diffusers.utils.torch_utils import randn_tensor

        self.check_sampling(steps, guidance)
        steps = steps or self.config.steps
        guidance = 1.0 if guidance is None else guidance
        sched = sampling_scheduler(self.config, sampler or self.config.sampler)
        device = next(self.parameters()).device
        if self.config.conditional and y is None:
            y = torch.arange(n, device=device) % self.config.num_classes
        x = randn_tensor((n, *self.config.data_shape), generator=generator, device=device)
        x = x * sched.init_noise_sigma * temperature
        sched.set_timesteps(steps)
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(sched.step).parameters else {}
        null = None if y is None else torch.full_like(y, self.config.num_classes)
        for t in sched.timesteps:
            inp = sched.scale_model_input(x, t)
            if y is not None and guidance != 1.0:
                cond, uncond = self(torch.cat([inp, inp]), t, torch.cat([y, null])).chunk(2)
                pred = uncond + guidance * (cond - uncond)
            else:
                pred = self(inp, t, y)
            x = sched.step(pred, t, x, **step_kwargs).prev_sample
        return x

    def decode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """From the denoiser's space to data: the identity here (pixels in [-1, 1], clamped)."""
        return x.clamp(*self.input_range)

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, steps: int | None = None, sampler: str | None = None,
               guidance: float | None = None) -> Tensor:
        """n samples in data space (images decoded through the VAE for latent diffusion)."""
        if self.config.conditional and y is None:
            y = torch.arange(n, device=next(self.parameters()).device) % self.config.num_classes
        return self.decode(self.generate(n, y, generator, steps, sampler, guidance, temperature), y)

    @classmethod
    def require_labels(cls, info, conditional: bool) -> int:
        if not conditional:
            return 0
        if info.num_classes < 2:
            raise VaekitError(f"--conditional needs labelled data with at least 2 classes; {info.source} has "
                              f"{'no labels' if info.num_classes == 0 else 'one class'}")
        return info.num_classes


@MODELS.register("pixel-diffusion")
class PixelDiffusion(DiffusionModel):
    """A DDPM on pixels in [-1, 1] with diffusers' UNet2DModel (images zero-padded to 32x32 unless
    --pad-to says otherwise)."""

    name = "pixel-diffusion"
    data_defaults: ClassVar[Mapping] = MappingProxyType({"pad_to": 32})
    training_defaults: ClassVar[Mapping] = MappingProxyType({**DiffusionModel.training_defaults, "lr": 2e-4})

    @classmethod
    def config_for_data(cls, fields: dict, info, conditional: bool) -> dict:
        if info.kind != "image":
            raise VaekitError(f"the pixel-diffusion model needs image data; {info.source} is tabular")
        fields = dict(fields)
        fields["data_shape"] = list(info.shape)
        fields["num_classes"] = cls.require_labels(info, conditional)
        fields.setdefault("denoiser", "unet")
        return fields


@dataclass(frozen=True)
class LatentDiffusionConfig(DiffusionConfig):
    vae: str = ""  # the VAE run whose latents this model learns (an absolute path)
    vae_hash: str = ""  # SHA-256 of its model.safetensors when this run was trained
    latents: str = "sample"  # sample (a fresh z ~ q(z|x) each time) | mean (the posterior means)
    latent_scaling: str = "run"  # autoencoder-kl: run (its scale_latents) | std (1 / std, LDM's scale_by_std)
    latent_mean: tuple[float, ...] = ()  # codes are (z - mean) / std: per element, or one value
    latent_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.latents in LATENT_SOURCES,
              f"unknown --latents '{self.latents}' (choose from: {', '.join(LATENT_SOURCES)})")
        check(self.latent_scaling in LATENT_SCALINGS,
              f"unknown --latent-scaling '{self.latent_scaling}' (choose from: {', '.join(LATENT_SCALINGS)})")
        check(all(s > 0 for s in self.latent_std), "latent_std must be positive")


@MODELS.register("latent-diffusion")
class LatentDiffusion(DiffusionModel):
    """DDPM in the latent space of a trained vaekit VAE run (``--vae RUN``)."""

    name = "latent-diffusion"
    config_class = LatentDiffusionConfig

    def __init__(self, config: LatentDiffusionConfig) -> None:
        super().__init__(config)
        shape = tuple(config.data_shape)
        stats = {"mean": config.latent_mean or (0.0,), "std": config.latent_std or (1.0,)}
        for key, values in stats.items():
            t = torch.tensor(values, dtype=torch.float32)
            self.register_buffer(f"latent_{key}", t.view(shape) if t.numel() > 1 else t, persistent=False)
        self._vae = None
        self.output_info = None  # the VAE run's DataInfo: what ``sample`` returns

    @classmethod
    def data_settings(cls, data: dict, model: Mapping) -> dict:
        vae = model.get("vae")
        if not vae:
            raise VaekitError("the latent-diffusion model needs --vae RUN (the VAE run whose latents it learns)")
        spec = data.get("spec")
        if spec is not None and spec != latent_spec(vae):
            raise VaekitError(f"latent diffusion trains on the latents of --vae {vae}; drop --data {spec}")
        return {**data, "spec": latent_spec(vae)}

    @classmethod
    def prepare_data(cls, data_cfg, model_fields: Mapping, saved=None, open_run: Callable | None = None):
        """Encode the VAE run's splits once into LatentData (standardised as the module docstring says)."""
        from vaekit.data import DataInfo, DataSplits, load_data
        from vaekit.data.latents import LatentData

        vae_dir = vae_path(model_fields.get("vae", ""))
        vae_cfg, vae = load_vae(vae_dir, open_run)
        splits = load_data(vae_cfg.data, saved=vae_cfg.data_info)
        encoded = {name: encode_split(vae, getattr(splits, name)) for name in ("train", "val", "test")
                   if getattr(splits, name) is not None}
        mode = model_fields.get("latents", LatentDiffusionConfig.latents)
        if saved is not None and saved.standardize_mean:
            shift, scale = saved.standardize_mean, saved.standardize_std
        else:
            scaling = model_fields.get("latent_scaling", LatentDiffusionConfig.latent_scaling)
            shift, scale = latent_statistics(vae, *encoded["train"][:2], sample=mode == "sample", scaling=scaling)
        shape = tuple(encoded["train"][0].shape[1:])
        as_tensor = (lambda v: torch.tensor(v).view(shape) if len(v) > 1 else torch.tensor(v))  # noqa: E731
        data = {name: LatentData(m, lv, y, as_tensor(shift), as_tensor(scale), sample=mode == "sample")
                for name, (m, lv, y) in encoded.items()}
        held_out = {name: d.held_out() for name, d in data.items() if name != "train"}
        info = vae_cfg.data_info
        out_info = DataInfo(kind="latent", shape=shape, num_classes=info.num_classes, class_names=info.class_names,
                            value_range=(float(data["train"].x.min()), float(data["train"].x.max())),
                            standardize_mean=tuple(shift), standardize_std=tuple(scale),
                            n_train=len(data["train"]), n_val=len(held_out.get("val", ())),
                            n_test=len(held_out["test"]), test_source=info.test_source,
                            source=f"latents of {vae_dir}")
        return DataSplits(data["train"], held_out.get("val"), held_out["test"], out_info, "none", [])

    @classmethod
    def config_for_data(cls, fields: dict, info, conditional: bool) -> dict:
        from vaekit.io import file_sha256

        fields = dict(fields)
        vae_dir = vae_path(fields.get("vae", ""))
        fields["vae"] = str(vae_dir)
        fields["vae_hash"] = file_sha256(vae_dir / "model.safetensors")
        fields["data_shape"] = list(info.shape)
        fields["num_classes"] = cls.require_labels(info, conditional)
        fields["latent_mean"] = list(info.standardize_mean)
        fields["latent_std"] = list(info.standardize_std)
        return fields

    def attach(self, open_run: Callable) -> None:
        """Load the VAE this run belongs to, refusing one whose weights changed."""
        from vaekit.io import file_sha256

        vae_dir = Path(self.config.vae)
        if not (vae_dir / "model.safetensors").is_file():
            raise VaekitError(f"{vae_dir}: the VAE run of this latent-diffusion run is missing (no model.safetensors)")
        if file_sha256(vae_dir / "model.safetensors") != self.config.vae_hash:
            raise VaekitError(f"{vae_dir}: the VAE's weights changed since this latent-diffusion run was trained "
                              f"(sha256 {self.config.vae_hash[:12]}...); restore them or train a new run")
        vae_cfg, self._vae = load_vae(vae_dir, open_run)
        self.output_info = vae_cfg.data_info

    @property
    def vae(self):
        if self._vae is None:
            raise VaekitError("this latent-diffusion model has no VAE attached (load it with vaekit.load)")
        return self._vae

    def decode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Standardised codes [B, *latent] -> data, through the VAE's decoder mean."""
        vae = self.vae.to(x.device)
        z = x * self.latent_std + self.latent_mean
        labels = y if getattr(vae.config, "conditional", False) else None
        if getattr(vae.config, "conditional", False) and labels is None:
            raise VaekitError("the VAE of this run is conditional: labels are required to decode")
        return vae.decode(z, labels)


def latent_spec(vae: str) -> str:
    return f"latents:{vae}"


def vae_path(vae: str) -> Path:
    if not vae:
        raise VaekitError("the latent-diffusion model needs --vae RUN (the VAE run whose latents it learns)")
    path = Path(vae).expanduser()
    if not path.exists():
        raise VaekitError(f"--vae {vae}: no such run directory")
    if not (path / "config.json").is_file():
        raise VaekitError(f"--vae {vae}: not a vaekit run (no config.json)")
    return path.resolve()


def load_vae(path: Path, open_run: Callable | None):
    """(RunConfig, model) of a VAE run, refusing runs without an encoder (another diffusion run)."""
    if open_run is None:
        raise VaekitError("latent diffusion needs vaekit.run.open_run to open its VAE run")
    cfg, vae = open_run(path)
    if not hasattr(vae, "encode") or getattr(vae, "evaluator", "") not in ("likelihood", "images"):
        raise VaekitError(f"--vae {path}: a {getattr(vae, 'name', 'non-VAE')} run has no encoder; latent diffusion "
                          "needs a VAE run (mlp, conv, hvae, ladder or autoencoder-kl)")
    return cfg, vae.float().eval()


@torch.no_grad()
def encode_split(vae, data) -> tuple[Tensor, Tensor, Tensor | None]:
    """Posterior means and log-variances [N, *latent] (and labels) of a whole split, in fp32."""
    if getattr(data, "augment", False):  # a streamed training split: encode its fixed centre crops once
        import dataclasses

        data = dataclasses.replace(data, augment=False, _pool=None)
    means, logvars, labels = [], [], []
    conditional = getattr(vae.config, "conditional", False)
    for start in range(0, len(data), ENCODE_BATCH):
        x, y = data.batch(torch.arange(start, min(start + ENCODE_BATCH, len(data))))
        q = vae.encode(x, y if conditional else None)
        means.append(q.mean.float())
        logvars.append(q.logvar.float())
        if y is not None:
            labels.append(y)
    return torch.cat(means), torch.cat(logvars), torch.cat(labels) if labels else None


def latent_statistics(vae, mean: Tensor, logvar: Tensor, sample: bool, scaling: str) -> tuple[tuple, tuple]:
    """(shift, std) that standardise the codes, as flat tuples (one value, or one per latent element).

    The moments are those of the aggregate posterior, in closed form: E[z] = E[mu], and
    Var[z] = Var[mu] + E[sigma^2] when codes are sampled (Var[mu] for the means)."""
    m, var = mean.double(), logvar.double().exp() if sample else torch.zeros((), dtype=torch.float64)
    if hasattr(vae, "scale_latents"):  # the KL autoencoder: one shift and one scale, its pipeline convention
        shift = float(vae.config.shift_factor or 0.0)
        if scaling == "run":
            return (shift,), (1.0 / float(vae.config.scaling_factor),)
        second = (m**2 + var).mean() - 2 * shift * m.mean() + shift**2  # E[(z - shift)^2]
        first = m.mean() - shift
        return (shift,), (float((second - first**2).clamp(min=1e-12).sqrt()),)
    centre = m.mean(0)
    second = (m**2 + var).mean(0) - centre**2
    std = second.clamp(min=1e-12).sqrt()
    return tuple(centre.flatten().tolist()), tuple(std.flatten().tolist())
