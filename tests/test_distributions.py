"""The probability core against closed forms, Monte Carlo and torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal as TorchNormal

from vaekit.distributions import Bernoulli, DiagonalGaussian, Normal, StandardNormal


def gaussian(shape=(3, 5), seed=0) -> DiagonalGaussian:
    g = torch.Generator().manual_seed(seed)
    return DiagonalGaussian(torch.randn(shape, generator=g, dtype=torch.float64),
                            torch.randn(shape, generator=g, dtype=torch.float64) * 0.5)


def test_kl_to_standard_normal_matches_monte_carlo():
    q = gaussian()
    z = q.sample(200_000, generator=torch.Generator().manual_seed(1))
    mc = (q.log_prob(z) - StandardNormal((5,), dtype=torch.float64).log_prob(z)).mean(0)
    assert torch.allclose(q.kl(), mc, atol=0.03)


def test_kl_between_gaussians_matches_monte_carlo_and_is_zero_on_itself():
    q, p = gaussian(seed=0), gaussian(seed=1)
    z = q.sample(200_000, generator=torch.Generator().manual_seed(2))
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    assert torch.allclose(q.kl(p), mc, rtol=0.02, atol=0.05)
    assert torch.allclose(q.kl(q), torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_kl_to_standard_normal_equals_kl_to_explicit_standard_gaussian():
    q = gaussian()
    std = DiagonalGaussian(torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, 5, dtype=torch.float64))
    assert torch.allclose(q.kl(), q.kl(std))


def test_log_prob_matches_torch_and_reduces_all_non_batch_dims():
    q = gaussian(shape=(2, 4, 3, 3))
    z = torch.randn(7, 2, 4, 3, 3, dtype=torch.float64)
    ref = TorchNormal(q.mean, q.std).log_prob(z).sum(dim=(-3, -2, -1))
    assert q.log_prob(z).shape == (7, 2)
    assert torch.allclose(q.log_prob(z), ref)
    assert q.kl().shape == (2,)
    assert torch.allclose(q.entropy(), TorchNormal(q.mean, q.std).entropy().sum(dim=(1, 2, 3)))


def test_sample_is_reparameterised_and_reproducible():
    mean = torch.zeros(4, 3, requires_grad=True)
    logvar = torch.zeros(4, 3, requires_grad=True)
    q = DiagonalGaussian(mean, logvar)
    a = q.sample(generator=torch.Generator().manual_seed(5))
    b = q.sample(generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    a.sum().backward()
    assert mean.grad is not None and logvar.grad is not None
    assert q.sample(10).shape == (10, 4, 3)
    assert torch.equal(q.mode(), mean)


def test_temperature_scales_the_noise():
    q = DiagonalGaussian(torch.zeros(1, 2), torch.zeros(1, 2))
    a = q.sample(generator=torch.Generator().manual_seed(3))
    b = q.sample(generator=torch.Generator().manual_seed(3), temperature=0.5)
    assert torch.allclose(b, 0.5 * a)


def test_standard_normal_log_prob_is_the_density():
    p = StandardNormal((2,))
    assert torch.allclose(p.log_prob(torch.zeros(1, 2)), torch.tensor([-math.log(2 * math.pi)]))


def test_bernoulli_log_prob_is_negative_bce_and_broadcasts_over_samples():
    logits = torch.randn(6, 2, 10)  # [K, B, D]
    x = torch.rand(2, 10)
    px = Bernoulli(logits.flatten(0, 1), event_ndim=1).unflatten_batch(6)
    direct = -F.binary_cross_entropy_with_logits(logits, x.expand(6, 2, 10), reduction="none").sum(-1)
    assert torch.allclose(px.log_prob(x), direct, atol=1e-5)
    binary = torch.bernoulli(torch.full((2, 10), 0.5))
    ref = torch.distributions.Bernoulli(logits=logits[0]).log_prob(binary).sum(-1)
    assert torch.allclose(Bernoulli(logits[0]).log_prob(binary), ref, atol=1e-5)


@pytest.mark.parametrize("per_dim", [False, True])
def test_normal_log_prob_matches_torch(per_dim):
    mean = torch.randn(4, 3, 2, 2)
    log_scale = torch.randn(3, 2, 2) * 0.3 if per_dim else torch.tensor(-0.7)
    x = torch.randn(4, 3, 2, 2)
    ref = TorchNormal(mean, log_scale.exp().expand_as(mean)).log_prob(x).sum(dim=(1, 2, 3))
    assert torch.allclose(Normal(mean, log_scale, event_ndim=3).log_prob(x), ref, atol=1e-5)
    k = Normal(torch.randn(10, 3, 2, 2), log_scale, event_ndim=3).unflatten_batch(5)
    assert k.log_prob(torch.randn(2, 3, 2, 2)).shape == (5, 2)
