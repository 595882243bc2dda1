"""The aggregate posterior q(z) = E_x q(z|x): a Gaussian mixture fitted to the training codes
(scikit-learn's ``GaussianMixture``), saved in the run as ``prior_gmm.safetensors``, to sample from
the regions the decoder knows rather than the holes of N(0, I) (Ghosh et al. 2020; Dai & Wipf 2019)
and to score how typical a code is. ``aggregate_posterior`` is q(z) itself, the equal-weight mixture of
every training posterior: sampling it decodes noisy reconstructions, the best any fitted prior on
this decoder can do, so its sample quality separates the prior's error from the decoder's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaekit.errors import VaekitError
from vaekit.evaluation.likelihood import FEATURES, posterior_means
from vaekit.io import load_tensors, save_tensors
from vaekit.models.priors import FullCovarianceMixture

GMM_FILE = "prior_gmm.safetensors"
COVARIANCES = ("full", "diag")
COMPONENT_CHOICES = (5, 10, 20, 50, 100)  # what components=None chooses among
HELD_OUT = 0.2  # of the codes, scored to choose the number of components


@dataclass
class FittedPrior:
    path: Path
    n_codes: int
    mean_log_likelihood: float  # of the codes under the mixture (nats per code)
    standard_log_likelihood: float  # of the same codes under N(0, I)


def fit_gmm_prior(run: str | Path, model, data, components: int = 10, covariance: str = "full",
                  max_examples: int = 20000, seed: int = 0) -> FittedPrior:
    """Fit a mixture to the posterior means of (up to ``max_examples`` of) ``data`` and save it in RUN."""
    codes, tensors, fitted = _fit(model, data, components, covariance, max_examples, seed)
    path = Path(run) / GMM_FILE
    save_tensors(path, tensors, metadata={"fitted_on": f"{len(codes)} training posterior means"})
    standard = float(-0.5 * (codes**2 + np.log(2 * np.pi)).sum(1).mean())
    return FittedPrior(path, len(codes), fitted, standard)


def fit_gmm(model, data, components: int | None = 10, covariance: str = "full", max_examples: int = 20000,
            seed: int = 0, features: str = "mean") -> FullCovarianceMixture:
    """The same mixture as ``fit_gmm_prior``, fitted in memory and not saved (deterministic for a seed).
    ``components=None`` chooses the number (``choose_components``). ``features="mean+logvar"`` fits it
    to each posterior's mean and log-variance side by side ([N, 2D]): a density over posteriors, for
    scoring (``posterior_features``), not a prior to sample codes from."""
    return _mixture(_fit(model, data, components, covariance, max_examples, seed, features)[1])


def choose_components(codes: np.ndarray, covariance: str = "full", seed: int = 0,
                      choices: tuple[int, ...] = COMPONENT_CHOICES) -> int:
    """The number of components, of ``choices``, whose mixture fitted on a seeded 80% of the codes gives
    the other 20% the highest mean log-likelihood. Choices with fewer fitting codes than components x
    latent dimensions are skipped (too few to fit a full covariance each)."""
    from sklearn.mixture import GaussianMixture

    order = np.random.default_rng(seed).permutation(len(codes))
    cut = round(len(codes) * (1 - HELD_OUT))
    fit_on, held_out = codes[order[:cut]], codes[order[cut:]]
    usable = [c for c in choices if c * codes.shape[1] <= len(fit_on)] or [min(choices)]
    if len(held_out) == 0 or len(usable) == 1:
        return usable[0]
    scores = {c: GaussianMixture(c, covariance_type=covariance, random_state=seed, reg_covar=1e-5)
              .fit(fit_on).score(held_out) for c in usable}
    return max(scores, key=scores.get)


def _fit(model, data, components: int | None, covariance: str, max_examples: int,
         seed: int, features: str = "mean") -> tuple[np.ndarray, dict, float]:
    """(the codes, the mixture's tensors, the codes' mean log-likelihood under it)."""
    from sklearn.mixture import GaussianMixture

    if covariance not in COVARIANCES:
        raise VaekitError(f"unknown covariance '{covariance}' (choose from: {', '.join(COVARIANCES)})")
    if components is not None and components < 1:
        raise VaekitError(f"--components must be >= 1, got {components}")
    if features not in FEATURES:
        raise VaekitError(f"unknown latent features '{features}' (choose from: {', '.join(FEATURES)})")
    codes = posterior_means(model, data.take(min(len(data), max_examples)), features=features).double().numpy()
    if components is None:
        components = choose_components(codes, covariance, seed)
    if len(codes) < components:
        raise VaekitError(f"{len(codes)} codes are too few for {components} mixture components")
    gmm = GaussianMixture(components, covariance_type=covariance, random_state=seed, reg_covar=1e-5).fit(codes)
    cov = gmm.covariances_ if covariance == "full" else np.stack([np.diag(c) for c in gmm.covariances_])
    tensors = {"weights": torch.tensor(gmm.weights_), "means": torch.tensor(gmm.means_),
               "scale_tril": torch.linalg.cholesky(torch.tensor(cov))}
    return codes, {k: v.float() for k, v in tensors.items()}, float(gmm.score(codes))


def _mixture(t: dict) -> FullCovarianceMixture:
    return FullCovarianceMixture(t["weights"], t["means"], t["scale_tril"])


def load_gmm_prior(run: str | Path) -> FullCovarianceMixture:
    """The mixture saved by ``fit_gmm_prior`` (``vaekit fit-prior``)."""
    path = Path(run) / GMM_FILE
    if not path.is_file():
        raise VaekitError(f"{path}: no fitted prior; run 'vaekit fit-prior {run}' first")
    t, _ = load_tensors(path)
    return _mixture(t)


class AggregatePosterior:
    """q(z) = (1/N) sum_n q(z|x_n) over the N examples of ``data``: an equal-weight mixture, so a draw
    picks a training example uniformly and samples its posterior. Only the drawn examples are
    encoded (memory O(n), whatever N and the latent size). Samples are flattened latents [n, D]."""

    def __init__(self, model, data) -> None:
        self.model, self.data = model, data
        self.event_shape = torch.Size((int(torch.Size(model.latent_shape).numel()),))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        device = next(self.model.parameters()).device
        draw_on = generator.device if generator is not None else torch.device("cpu")
        index = torch.randint(len(self.data), (n,), generator=generator, device=draw_on).cpu()
        x, _ = self.data.batch(index)
        q = self.model.encode(x.to(device))
        eps = torch.randn(q.mean.shape, generator=generator, device=draw_on).to(device)
        return (q.mean + temperature * q.std * eps).flatten(1).float()


def aggregate_posterior(run: str | Path, model) -> AggregatePosterior:
    """RUN's aggregate posterior over its training split as the run made it (image folders: centre
    crops, no augmentation); refused for runs whose codes do not decode on their own."""
    if getattr(model, "hierarchical", False) or not hasattr(model, "encode"):
        raise VaekitError(f"--prior aggregate needs a one-layer VAE with an encoder; a {model.name} run has none")
    if getattr(model.config, "conditional", False):
        raise VaekitError("--prior aggregate: a conditional run decodes each code with its own label; "
                          "sample it with its own prior")
    from vaekit.data import load_examples
    from vaekit.run import read_run_config

    cfg = read_run_config(run)
    return AggregatePosterior(model, load_examples(cfg.data, cfg.data_info, "train").data)
