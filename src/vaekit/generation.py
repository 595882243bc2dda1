"""Samples from a run, whatever generates them: a VAE's own prior, N(0, I), a Gaussian mixture fitted
to its aggregate posterior, the aggregate posterior itself (every training code: the ceiling for a
prior on that decoder), or a diffusion model (latent or pixel).

``prior_for`` resolves what ``--prior`` asks for into something ``viz.pictures.samples`` and
``Sampler`` can draw from; ``Sampler.draw`` returns images in the dataset's own space ([0, 1], any
``--pad-to`` padding cropped away), which is where sample quality is measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from vaekit.errors import VaekitError

PRIORS = ("model", "standard", "gmm", "vamp", "aggregate", "diffusion")


def is_diffusion(model) -> bool:
    return getattr(model, "evaluator", "") == "diffusion"


def prior_for(run: str | Path, model, prior: str = "model", steps: int | None = None, sampler: str | None = None,
              guidance: float | None = None) -> tuple[object | None, dict]:
    """(a distribution over the flattened latent to decode, or None for ``model.sample``; keyword
    arguments for ``model.sample``)."""
    if prior not in PRIORS:
        raise VaekitError(f"unknown --prior '{prior}' (choose from: {', '.join(PRIORS)})")
    if is_diffusion(model):
        if prior not in ("model", "diffusion"):
            raise VaekitError(f"--prior {prior}: {run} is a {model.name} run, which samples by diffusion")
        model.check_sampling(steps, guidance)
        options = {"steps": steps, "sampler": sampler, "guidance": guidance}
        return None, {k: v for k, v in options.items() if v is not None}
    for flag, value in (("--steps", steps), ("--sampler", sampler), ("--guidance", guidance)):
        if value is not None:
            raise VaekitError(f"{flag} applies to diffusion runs; {run} is a {model.name} VAE run")
    if prior == "diffusion":
        raise VaekitError(f"--prior diffusion: {run} is a VAE run; pass the latent-diffusion run trained on it "
                          f"(vaekit train --model latent-diffusion --vae {run} --out DIFF_RUN)")
    if prior == "vamp":
        if getattr(model.config, "prior", "standard") != "vamp":
            raise VaekitError(f"--prior vamp: {run} was not trained with a VampPrior (train with --prior vamp)")
        return None, {}
    if prior == "standard":
        if getattr(model, "hierarchical", False):
            raise VaekitError(f"--prior standard: {run} is hierarchical; its own prior (the default) samples every "
                              "layer")
        from vaekit.distributions import StandardNormal

        return StandardNormal((int(torch.Size(model.latent_shape).numel()),)), {}
    if prior == "gmm":
        from vaekit.evaluation.aggregate import load_gmm_prior

        return load_gmm_prior(run), {}
    if prior == "aggregate":
        from vaekit.evaluation.aggregate import aggregate_posterior

        return aggregate_posterior(run, model), {}
    return None, {}


def describe_prior(model, prior: str) -> str:
    if is_diffusion(model):
        return model.name
    if prior == "model":
        return "vamp" if getattr(model.config, "prior", "standard") == "vamp" else "standard"
    return prior


@dataclass
class Sampler:
    """Draws images from ``model`` in the dataset's own space: [0, 1], shape ``shape`` (centre-cropped
    when the run padded its images)."""

    model: object
    prior: object | None
    options: dict = field(default_factory=dict)
    value_range: tuple[float, float] = (0.0, 1.0)  # of what the model returns
    shape: tuple[int, ...] | None = None  # the dataset's own image shape
    num_classes: int = 0  # > 0: conditional; labels cycle through the classes unless given

    @torch.no_grad()
    def draw(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None,
             batch_size: int = 256) -> tuple[Tensor, Tensor | None]:
        """(images [n, C, H, W] in [0, 1], the labels they were generated for, or None)."""
        device = next(self.model.parameters()).device
        if self.num_classes and labels is None:
            labels = torch.arange(n) % self.num_classes
        out = []
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            y = None if labels is None else labels[start : start + k].to(device)
            if self.prior is None:
                x = self.model.sample(k, y, generator=generator, **self.options)
            else:
                z = self.prior.sample(k, generator=generator).to(device).float()
                x = self.model.decode(z.view(k, *self.model.latent_shape), y)
            out.append(self.to_dataset_space(x.float().cpu()))
        return torch.cat(out), labels

    def to_dataset_space(self, x: Tensor) -> Tensor:
        lo, hi = self.value_range
        x = ((x - lo) / (hi - lo)).clamp(0, 1)
        if self.shape is not None and tuple(x.shape[1:]) != tuple(self.shape):
            h, w = self.shape[-2:]
            top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2  # as the loader's zero padding
            x = x[..., top : top + h, left : left + w]
        return x


def sampler_for(run: str | Path, model, data_info, prior: str = "model", shape: tuple[int, ...] | None = None,
                steps: int | None = None, sampler: str | None = None, guidance: float | None = None) -> Sampler:
    """A Sampler for RUN's model; ``data_info`` describes what the model's samples are (the VAE
    run's data for a latent-diffusion run), ``shape`` the dataset's own image shape."""
    dist, options = prior_for(run, model, prior, steps, sampler, guidance)
    conditional = getattr(model.config, "conditional", False)
    return Sampler(model, dist, options, tuple(data_info.input_range), shape,
                   model.config.num_classes if conditional else 0)
