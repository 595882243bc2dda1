"""Where the explorer's sample grid draws from: a small registry of samplers, one entry per prior.

Each entry says whether it applies to a run (``available``) and draws decoded examples (``draw``).
``standard`` is the model's own prior (N(0, I), or the VampPrior of a vamp run); ``gmm`` is the
mixture fitted on the aggregate posterior by ``vaekit fit-prior`` (RUN/prior_gmm.safetensors);
``diffusion`` is a latent-diffusion run trained on the run's codes and served beside it. A further
prior is one more ``@register(name)`` class.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from vaekit.registry import Registry

RunView = Any  # vaekit.serve.views.RunView, which imports this module (imports point one way)

# FullCovarianceMixture.sample seeds torch's global generator for a moment; runs sample in
# different worker threads, so those moments must not overlap
_GLOBAL_RNG = threading.Lock()


class Sampler:
    """One prior of the sample grid."""

    name: str = ""

    def label(self, view: RunView) -> str:
        return self.name

    def available(self, view: RunView) -> bool:
        return True

    def draw(self, view: RunView, n: int, label: int | None, temperature: float, seed: int) -> Any:
        """A tensor [n, *data_shape] of decoded draws on the CPU (called with the run's lock held)."""
        raise NotImplementedError


SAMPLERS: Registry[Sampler] = Registry("prior")


def register(name: str):
    def decorate(cls: type[Sampler]) -> type[Sampler]:
        cls.name = name
        SAMPLERS.register(name)(cls())
        return cls

    return decorate


@register("standard")
class StandardSampler(Sampler):
    def label(self, view: RunView) -> str:
        if getattr(view.model, "hierarchical", False):
            return "the model's hierarchical prior (ancestral sampling)"
        return "VampPrior (the model's own)" if getattr(view.model.config, "prior", "standard") == "vamp" else "N(0, I)"

    def draw(self, view, n, label, temperature, seed):
        from vaekit.viz.pictures import sample_data

        return sample_data(view.model, n, label, temperature, seed)


@register("gmm")
class GMMSampler(Sampler):
    """The Gaussian mixture on the aggregate posterior (Ghosh et al. 2020), when the run has one."""

    def label(self, view: RunView) -> str:
        return f"GMM on the aggregate posterior ({self._prior(view).dist.mixture_distribution.probs.numel()} " \
               "components)"

    def available(self, view: RunView) -> bool:
        from vaekit.evaluation.aggregate import GMM_FILE

        return (Path(view.path) / GMM_FILE).is_file()

    def draw(self, view, n, label, temperature, seed):
        from vaekit.viz.pictures import sample_data

        with _GLOBAL_RNG:
            return sample_data(view.model, n, label, temperature, seed, prior=self._prior(view))

    def _prior(self, view: RunView):
        from vaekit.evaluation.aggregate import load_gmm_prior

        return view.cached("gmm", lambda: load_gmm_prior(view.path))


def available_samplers(view: RunView) -> list[str]:
    """The names that apply to the run, ``standard`` first."""
    names = sorted(SAMPLERS, key=lambda name: (name != "standard", name))
    return [name for name in names if SAMPLERS.get(name).available(view)]


@register("diffusion")
class DiffusionSampler(Sampler):
    """Latent diffusion (Rombach et al. 2022) on the run's codes: a latent-diffusion run given to
    ``vaekit serve`` is attached to the page of its VAE run (``RunView.diffusion``), and samples with
    its own default sampler and steps, decoded through its VAE."""

    def label(self, view: RunView) -> str:
        path, model = view.diffusion[0]
        return f"latent diffusion ({Path(path).name}: {model.config.steps} {model.config.sampler} steps)"

    def available(self, view: RunView) -> bool:
        return bool(getattr(view, "diffusion", None))

    def draw(self, view, n, label, temperature, seed):
        from vaekit.viz.pictures import sample_data

        return sample_data(view.diffusion[0][1], n, label, temperature, seed)
