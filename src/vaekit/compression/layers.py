"""The coder's view of a model: T stochastic layers, bottom first, each a diagonal Gaussian.

- flat VAEs (mlp, conv): one layer, q(z|x) from ``encode`` and p(x|z) from the decoder, prior N(0, I);
- ``hvae`` (a Markov chain both ways): q(z_1|x), q(z_t|z_{t-1}); p(z_T) = N(0, I), p(z_t|z_{t+1}), p(x|z_1).

Every network runs in float64 on a private copy of the model, on the batch of images that the
coder and the decoder both see at the same step, and every output is quantised to the coder's grid.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from vaekit.compression.tables import check_finite, quantise
from vaekit.errors import VaekitError


def _gaussian(q) -> tuple[np.ndarray, np.ndarray]:
    mu = quantise(q.mean.flatten(1).cpu().numpy())
    log_sigma = quantise(0.5 * q.logvar.flatten(1).cpu().numpy())
    check_finite(mu, "posterior means")
    check_finite(log_sigma, "posterior scales")
    return mu, log_sigma


class Layers:
    def __init__(self, model) -> None:
        check_codable(model)
        self.model = copy.deepcopy(model).cpu().double().eval()
        self.shape = tuple(model.config.data_shape)
        self.hvae = getattr(model, "name", "") == "hvae"
        self.dims = list(model.config.latent_dims) if self.hvae else [int(model.latent_shape[0])]

    @property
    def depth(self) -> int:
        return len(self.dims)

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))

    @torch.no_grad()
    def posterior(self, t: int, below: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """q(z_t | below): ``below`` is the model input [n, D] for t = 0, else the values of z_{t-1}."""
        inp = self._t(below)
        if t == 0:
            inp = inp.view(len(inp), *self.shape)
            if not self.hvae:
                return _gaussian(self.model.encode(inp))
            inp = self.model._bottom_input(inp)
        return _gaussian(self.model.encoder[t](inp))

    @torch.no_grad()
    def prior(self, t: int, above: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p(z_t | z_{t+1}) for t < T - 1 (the top layer's prior is N(0, I))."""
        return _gaussian(self.model.decoder[t](self._t(above)))

    @torch.no_grad()
    def observation(self, z0: np.ndarray):
        z = self._t(z0)
        if self.hvae:
            return self.model.likelihood(self.model.out(z))
        return self.model.likelihood(self.model.decoder_output(z, None))

    @torch.no_grad()
    def layer_statistics(self, x: np.ndarray, batch: int = 512) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per layer below the top: the mean and standard deviation of the aggregate posterior on
        ``x`` (model inputs [N, D]), along the posterior means; they place the layer's buckets."""
        means, variances = [[] for _ in self.dims], [[] for _ in self.dims]
        for start in range(0, len(x), batch):
            inp = self._t(x[start : start + batch]).view(-1, *self.shape)
            qs, _ = self.model.posterior_chain(inp, mean_path=True)
            for t, q in enumerate(qs):
                means[t].append(q.mean.numpy())
                variances[t].append(q.var.numpy())
        stats = []
        for t in range(self.depth - 1):
            m, v = np.concatenate(means[t]), np.concatenate(variances[t])
            std = np.sqrt(m.var(0) + v.mean(0))
            stats.append((quantise(m.mean(0)), np.maximum(quantise(std), 1.0 / 64)))
        return stats


def check_codable(model) -> None:
    """Which runs the coder takes: a Gaussian posterior, the N(0, I) prior, no labels; flat mlp/conv
    latents, or the hvae's Markov hierarchy."""
    name = getattr(model, "name", type(model).__name__)
    if getattr(model, "evaluator", "likelihood") != "likelihood":
        raise VaekitError(f"the {name} model is an image autoencoder without a likelihood; compress needs mlp, conv "
                          "or hvae runs")
    if model.config.conditional:
        raise VaekitError(f"this {name} run is conditional; compress codes unlabelled data (train without "
                          "--conditional)")
    if not model.factorized_prior:
        raise VaekitError(f"this {name} run has a {model.config.prior} prior; compress needs the standard normal "
                          "prior (its equal-mass buckets)")
    if getattr(model, "hierarchical", False) and name != "hvae":
        raise VaekitError(f"compress codes mlp, conv and hvae runs (Bit-Swap needs the hvae's Markov chain); "
                          f"not {name}")
    if not getattr(model, "hierarchical", False) and len(model.latent_shape) != 1:
        raise VaekitError(f"compress needs a flat latent; the {name} model's is {tuple(model.latent_shape)}")
