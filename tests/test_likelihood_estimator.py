"""The importance-weighted estimator on a linear-Gaussian model whose log p(x) is known exactly.

p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I)  =>  p(x) = N(b, W W^T + s^2 I).
With orthogonal columns in W the true posterior is diagonal, so an encoder can be exact: then
every importance weight equals p(x) and even K = 1 gives log p(x) exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vaekit.data import ArrayData
from vaekit.evaluation import evaluate, log_likelihood
from vaekit.models.base import VAE, ModelConfig

D, LATENT, SIGMA = 6, 3, 0.5


class LinearGaussianVAE(VAE):
    def __init__(self, shift: float = 0.0, var_scale: float = 1.0) -> None:
        super().__init__(ModelConfig(data_shape=(D,), latent_dim=LATENT, likelihood="gaussian",
                                     sigma_mode="fixed", sigma=SIGMA))
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(D, LATENT, generator=g, dtype=torch.float64))
        scales = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
        self.W = nn.Parameter(q * scales)  # orthogonal columns
        self.b = nn.Parameter(torch.randn(D, generator=g, dtype=torch.float64))
        self.post_var = 1.0 / (1.0 + scales**2 / SIGMA**2)  # exact posterior variances
        self.shift, self.var_scale = shift, var_scale
        self.double()

    def encoder_params(self, x, c):
        mean = (x - self.b) @ self.W * self.post_var / SIGMA**2 + self.shift
        logvar = torch.log(self.post_var * self.var_scale).expand_as(mean)
        return mean, logvar

    def decoder_output(self, z, c):
        return z @ self.W.T + self.b

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)


def data(n=20):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2


@torch.no_grad()
def test_exact_posterior_gives_exact_log_likelihood_for_any_k():
    m = LinearGaussianVAE()
    x = data()
    exact = m.exact_log_px(x)
    for k in (1, 7, 100):
        est = log_likelihood(m, x, None, k, batch_size=64, generator=torch.Generator().manual_seed(k))
        assert torch.allclose(est, exact, atol=1e-9)


@torch.no_grad()
def test_importance_weighting_tightens_towards_the_exact_value():
    m = LinearGaussianVAE(shift=0.4, var_scale=1.8)  # a deliberately wrong encoder
    x = data(10)
    exact = m.exact_log_px(x)
    gen = torch.Generator().manual_seed(0)
    elbo = torch.stack([log_likelihood(m, x, None, 1, generator=gen) for _ in range(200)]).mean(0)
    k5000 = log_likelihood(m, x, None, 5000, batch_size=4096, generator=gen)
    assert (elbo < exact - 0.05).all()  # K=1 is the ELBO: a strict lower bound here
    assert (k5000 - exact).abs().max() < 0.1
    assert (k5000 - exact).abs().mean() < 0.04
    assert (exact - k5000).mean() < (exact - elbo).mean() / 10


@torch.no_grad()
def test_evaluate_reports_nats_bits_and_active_units():
    m = LinearGaussianVAE()
    x = data(50)
    result = evaluate(m, ArrayData(x), k=10, batch_size=32)
    exact_nll = -m.exact_log_px(x).mean().item()
    assert result.nll == pytest.approx(exact_nll, abs=1e-6)
    assert result.bits_per_dim == pytest.approx(exact_nll / (D * math.log(2)))
    assert result.elbo == pytest.approx(-(result.recon + result.kl))
    assert result.active_units == LATENT
    assert (result.k, result.n) == (10, 50)


def test_k_below_one_is_refused():
    from vaekit.errors import VaekitError

    with pytest.raises(VaekitError, match="must be >= 1"):
        log_likelihood(LinearGaussianVAE(), data(2), None, 0)
