"""Loss parts, likelihood constants, free bits and KL-weight schedules."""

from __future__ import annotations

import math

import pytest
import torch

from vaekit.models.mlp import MLPVAE, MLPConfig
from vaekit.objectives import KLSchedule, elbo_parts, free_bits_kl


def model(likelihood="bernoulli", **kw):
    torch.manual_seed(0)
    return MLPVAE(MLPConfig(data_shape=(12,), latent_dim=3, hidden=(16,), likelihood=likelihood, **kw))


def test_elbo_parts_are_consistent_and_per_example():
    m = model()
    x = torch.rand(5, 12)
    out = m(x)
    parts = elbo_parts(m, out, x)
    assert parts["recon"].shape == parts["kl"].shape == parts["elbo"].shape == (5,)
    assert torch.allclose(parts["elbo"], -(parts["recon"] + parts["kl"]))
    assert torch.allclose(parts["kl"], out.posterior.kl())
    assert (parts["kl"] >= 0).all()


def test_mse_likelihood_is_squared_error_plus_normalising_constant():
    m = model("mse")
    x = torch.rand(4, 12)
    out = m(x)
    mean = out.px.mean
    expected = ((x - mean) ** 2).sum(1) + 12 / 2 * math.log(math.pi)
    assert torch.allclose(-out.px.log_prob(x), expected, atol=1e-5)


def test_gaussian_fixed_sigma_constant_and_learned_sigma_is_a_parameter():
    fixed = model("gaussian", sigma_mode="fixed", sigma=0.1)
    assert "likelihood.log_sigma" not in fixed.state_dict()
    x = torch.rand(3, 12)
    out = fixed(x)
    expected = ((x - out.px.mean) ** 2).sum(1) / (2 * 0.01) + 12 * (math.log(0.1) + 0.5 * math.log(2 * math.pi))
    assert torch.allclose(-out.px.log_prob(x), expected, rtol=1e-5)
    assert model("gaussian").state_dict()["likelihood.log_sigma"].shape == ()
    assert model("gaussian", sigma_mode="per-dim").state_dict()["likelihood.log_sigma"].shape == (12,)


def test_free_bits_floors_each_unit_and_stops_its_gradient():
    terms = torch.tensor([[0.1, 2.0], [0.3, 4.0]], requires_grad=True)  # [B=2, G=2]
    assert free_bits_kl(terms, 0.0).item() == pytest.approx(0.2 + 3.0)
    value = free_bits_kl(terms, 0.5)  # unit 0 averages 0.2 < 0.5 -> counts as 0.5
    assert value.item() == pytest.approx(0.5 + 3.0)
    value.backward()
    assert torch.equal(terms.grad[:, 0], torch.zeros(2))
    assert torch.allclose(terms.grad[:, 1], torch.full((2,), 0.5))


def test_linear_warmup_schedule():
    s = KLSchedule("linear", warmup_steps=10)
    assert [s(t) for t in (0, 5, 10, 50)] == [0.0, 0.5, 1.0, 1.0]
    assert KLSchedule("constant")(0) == 1.0


def test_cyclical_schedule_four_cycles_ratio_half():
    s = KLSchedule("cyclical", total_steps=400, cycles=4, ratio=0.5)
    assert s(0) == 0.0
    assert s(25) == pytest.approx(0.5)
    assert s(50) == 1.0 and s(99) == 1.0
    assert s(100) == 0.0  # the next cycle restarts
    assert s(125) == pytest.approx(0.5)


def test_laplace_likelihood_is_l1_plus_its_constant_and_matches_torch():
    m = model("laplace", sigma_mode="fixed", sigma=1.0)
    x = torch.rand(4, 12)
    out = m(x)
    expected = (x - out.px.mean).abs().sum(1) + 12 * math.log(2.0)
    assert torch.allclose(-out.px.log_prob(x), expected, atol=1e-5)
    ref = torch.distributions.Laplace(out.px.mean, torch.tensor(1.0)).log_prob(x).sum(1)
    assert torch.allclose(out.px.log_prob(x), ref, atol=1e-5)
    k = out.px.sample(generator=torch.Generator().manual_seed(0))
    assert k.shape == x.shape


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace"])
def test_a_calibrated_scale_is_the_batch_optimum_and_evaluation_uses_its_running_value(likelihood):
    m = model(likelihood, sigma_mode="calibrated")
    assert m.state_dict()["likelihood.log_sigma"].shape == ()  # saved with the weights
    x = torch.rand(6, 12)
    m.train()
    px = m(x).px
    loc = px.mean.detach()
    r = x - loc
    fitted = torch.log(r.abs().mean()) if likelihood == "laplace" else 0.5 * torch.log(r.square().mean())
    family = torch.distributions.Laplace if likelihood == "laplace" else torch.distributions.Normal
    lp = px.log_prob(x)
    torch.testing.assert_close(lp, family(loc, fitted.exp()).log_prob(x).sum(1))
    # the maximum-likelihood scale: any other scale gives the batch a lower log-likelihood
    for step in (-0.05, 0.05):
        assert family(loc, (fitted + step).exp()).log_prob(x).sum() < lp.sum()
    torch.testing.assert_close(m.likelihood.log_sigma, fitted)  # the first batch sets the running scale
    lp.sum().backward()  # the scale is held constant: only the decoder gets the gradient
    assert m.likelihood.log_sigma.grad is None
    second = x.flip(0) * 0.5
    px2 = m(second).px
    px2.log_prob(second)  # later batches average into it (in the variance)
    r2 = second - px2.mean.detach()
    new = (0.5 * torch.log(r2.square().mean())) if likelihood == "gaussian" else torch.log(r2.abs().mean())
    var = 0.9 * torch.exp(2 * fitted) + 0.1 * torch.exp(2 * new)
    torch.testing.assert_close(m.likelihood.log_sigma, 0.5 * torch.log(var))
    before = m.likelihood.log_sigma.clone()
    bad = x.clone()
    bad[0, 0] = float("nan")  # a non-finite batch (the trainer skips its step) leaves the running scale alone
    assert not torch.isfinite(m(bad).px.log_prob(bad)).all()
    assert torch.equal(m.likelihood.log_sigma, before)
    from vaekit.training.ema import EMA

    assert "likelihood.log_sigma" not in EMA(m, 0.9).shadow  # fitted, not averaged: the EMA keeps the live one
    m.eval()  # evaluation scores with the running scale, a constant
    out = m(x).px
    torch.testing.assert_close(out.log_prob(x), family(out.mean, m.likelihood.log_sigma.exp()).log_prob(x).sum(1))


def test_a_calibrated_run_saves_its_scale_and_resumes_exactly(tmp_path):
    from helpers import tiny_train
    from vaekit.io import load_tensors
    from vaekit.run import load

    over = {"likelihood": "gaussian", "sigma_mode": "calibrated"}
    tiny_train(tmp_path / "straight", epochs=2, limit=300, overrides=over)
    tiny_train(tmp_path / "resumed", epochs=1, limit=300, overrides=over)
    from vaekit.training.api import resume

    resume(tmp_path / "resumed", epochs=2, progress=False)
    a = load_tensors(tmp_path / "straight" / "model.safetensors")[0]
    b = load_tensors(tmp_path / "resumed" / "model.safetensors")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sigma = float(a["likelihood.log_sigma"].exp())
    m = load(tmp_path / "straight")
    assert float(m.likelihood.log_sigma.exp()) == pytest.approx(sigma)
    # the scale tracks the decoder's error: the training set's RMSE (decoding the posterior means; the
    # batches decoded samples, a little worse). A learned scale would still be near its initial 1.0
    # after these 10 Adam steps of 1e-3.
    from vaekit.data import load_data
    from vaekit.run import read_run_config

    cfg = read_run_config(tmp_path / "straight")
    x, _ = load_data(cfg.data, saved=cfg.data_info).train.batch(torch.arange(270))
    with torch.no_grad():
        rmse = float((x - m.decode(m.encode(x).mean)).square().mean().sqrt())
    assert 0.9 < sigma / rmse < 1.25, (sigma, rmse)
    assert sigma < 0.9
