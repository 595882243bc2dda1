"""Hierarchical models, importance-weighted training, priors, disentangling objectives, dSprites and the
disentanglement metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import read_metrics, tiny_train
from vaekit.data.dsprites import FACTOR_SIZES, DSprites
from vaekit.disentanglement.metrics import METRICS, sample_factors
from vaekit.errors import VaekitError
from vaekit.evaluation import log_likelihood
from vaekit.models.hvae import HVAE, HVAEConfig
from vaekit.models.ladder import LadderConfig, LadderVAE
from vaekit.models.mlp import MLPVAE, MLPConfig
from vaekit.models.priors import MixturePrior
from vaekit.objectives import elbo_parts


def hvae(**kw) -> HVAE:
    torch.manual_seed(0)
    return HVAE(HVAEConfig(data_shape=(1, 8, 8), latent_dims=(6, 3), hidden=(32, 16), **kw))


def ladder() -> LadderVAE:
    torch.manual_seed(0)
    return LadderVAE(LadderConfig(data_shape=(1, 8, 8), topology="8x1,4x1,1x1", width=16, zdim=3))


def binary(n=5) -> torch.Tensor:
    return torch.bernoulli(torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("model", [hvae, ladder], ids=["hvae", "ladder"])
def test_hierarchical_models_report_per_layer_kl_and_tighten_with_k(model):
    m = model()
    x = binary()
    parts = elbo_parts(m, m(x), x)
    assert parts["kl_terms"].shape == (5, m.layers)
    with torch.no_grad():
        elbo = torch.stack([log_likelihood(m, x, None, 1, generator=torch.Generator().manual_seed(i))
                            for i in range(50)]).mean(0)
        iw = log_likelihood(m, x, None, 500, generator=torch.Generator().manual_seed(0))
        assert (iw > elbo).all()  # the bound tightens with K
        assert m.sample(4, generator=torch.Generator().manual_seed(0)).shape == (4, 1, 8, 8)
        assert m.decode(m.encode(x).mean).shape == (5, 1, 8, 8)
        assert [t.shape[0] for t in m.layer_means(x)] == [5] * m.layers


def test_ladder_patch_folds_pixels_and_keeps_one_logit_per_pixel():
    torch.manual_seed(0)
    m = LadderVAE(LadderConfig(data_shape=(1, 8, 8), topology="4x1,2x1,1x1", width=16, zdim=3, patch=2))
    x = binary()
    out = m(x)
    assert out.px.log_prob(x).shape == (5,) and out.aux["kl_layers"].shape == (5, 3)
    # the 2x2 pixels of a patch come from separate output channels, so the unfolded logits are not
    # constant within a patch (as they would be after a nearest-neighbour upsample)
    logits = m.output_logits(torch.randn(2, 16, 4, 4))
    assert logits.shape == (2, 1, 8, 8)
    assert not torch.allclose(logits[..., 0::2, 0::2], logits[..., 1::2, 1::2])
    with pytest.raises(VaekitError, match="patch 3 does not divide"):
        LadderConfig(data_shape=(1, 8, 8), topology="8x1", patch=3)
    with pytest.raises(VaekitError, match=r"patch 2: 4x4"):
        LadderConfig(data_shape=(1, 8, 8), topology="8x1,1x1", patch=2)


def test_hvae_one_sample_importance_weight_is_its_elbo():
    """The same draws give log w = log p(x|z1) + sum log p - sum log q = ELBO of the whole chain."""
    m = hvae()
    x = binary()
    with torch.no_grad():
        parts = elbo_parts(m, m(x, generator=torch.Generator().manual_seed(3)), x)
        log_w = m.log_importance_weights(x, None, None, 1, generator=torch.Generator().manual_seed(3))[0]
    assert torch.allclose(log_w, parts["elbo"], atol=1e-4)


def test_vamp_prior_is_a_normalised_mixture_and_used_by_the_estimator():
    torch.manual_seed(0)
    m = MLPVAE(MLPConfig(data_shape=(12,), latent_dim=2, hidden=(16,), prior="vamp", prior_components=7))
    assert m.prior_model.pseudo_inputs.shape == (7, 12)
    prior = m.prior()
    q = m.encode(m.prior_model.inputs())
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(7)),
        torch.distributions.Independent(torch.distributions.Normal(q.mean, q.std), 1))
    z = torch.randn(50, 2)
    assert torch.allclose(prior.log_prob(z), ref.log_prob(z), atol=1e-5)
    # narrow components far from 0, points right on them, extra batch dims: the expanded-square
    # form must not lose digits to cancellation
    means, logvars = torch.randn(9, 3) * 5, torch.full((9, 3), -12.0)
    mix = MixturePrior(means, logvars)
    z = (means[torch.arange(15) % 9] + torch.randn(15, 3) * 0.0025).reshape(3, 5, 3)
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(9)),
        torch.distributions.Independent(torch.distributions.Normal(means.double(), (0.5 * logvars).exp().double()), 1))
    assert mix.log_prob(z).shape == (3, 5)
    assert torch.allclose(mix.log_prob(z).double(), ref.log_prob(z.double()), atol=1e-4)
    x = torch.rand(4, 12)
    posterior = m.encode(x)
    _, ratio = m.importance_terms(x, None, posterior, 3, generator=torch.Generator().manual_seed(1))
    zz = posterior.sample(3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ratio[..., 0], prior.log_prob(zz) - posterior.log_prob(zz), atol=1e-5)


def test_beta_tcvae_terms_add_up_to_the_minibatch_kl_estimate():
    from vaekit.distributions import LOG_2PI

    torch.manual_seed(0)
    b, d, n = 16, 3, 1000
    mu, logvar = torch.randn(b, d), torch.randn(b, d) * 0.3
    z = mu + torch.exp(0.5 * logvar) * torch.randn(b, d)
    mat = -0.5 * (LOG_2PI + logvar[None] + (z[:, None] - mu[None]) ** 2 * torch.exp(-logvar[None]))
    norm = np.log(b * n)
    log_qz = torch.logsumexp(mat.sum(-1), 1) - norm
    log_qz_dims = torch.logsumexp(mat, 1) - norm
    log_qzx = mat.diagonal(dim1=0, dim2=1).T.sum(-1)
    log_pz = (-0.5 * (LOG_2PI + z**2)).sum(-1)
    mi, tc, dw = log_qzx - log_qz, log_qz - log_qz_dims.sum(-1), log_qz_dims.sum(-1) - log_pz
    assert torch.allclose(mi + tc + dw, log_qzx - log_pz, atol=1e-5)


def test_permute_dims_shuffles_each_dimension_independently():
    from vaekit.objectives.disentangling import permute_dims

    z = torch.arange(40.0).view(10, 4)
    p = permute_dims(z)
    for j in range(4):
        assert sorted(p[:, j].tolist()) == z[:, j].tolist()
    assert not torch.equal(p, z)


@pytest.mark.parametrize("objective,extra", [("iwae", {"k": 5}), ("beta-tcvae", {}), ("factorvae", {})])
def test_objectives_train_through_the_one_trainer(tmp_path, objective, extra):
    _, history = tiny_train(tmp_path / "run", epochs=3, limit=300, objective=objective, lr=3e-3, **extra)
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]
    if objective == "factorvae":
        from vaekit.training.checkpoint import load_checkpoint

        ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
        assert set(ckpt["optimizers"]) == {"model", "disc"} and "d_accuracy" in " ".join(history[-1])
    if objective == "beta-tcvae":
        assert {"train_mi", "train_tc", "train_dim_kl"} <= set(history[-1])


def test_iwae_elbo_epochs_train_the_vanilla_vae_first(tmp_path):
    from helpers import without_time

    _, elbo = tiny_train(tmp_path / "elbo", epochs=3, limit=200, seed=3)
    _, iwae = tiny_train(tmp_path / "iwae", epochs=3, limit=200, seed=3, objective="iwae", k=5, elbo_epochs=2)
    assert without_time(iwae[:2]) == without_time(elbo[:2])  # the first two epochs are exactly the ELBO's
    assert "train_iw_elbo" in iwae[2] and "train_iw_elbo" not in iwae[1]  # then the k-sample bound takes over
    assert iwae[2]["train_elbo"] != elbo[2]["train_elbo"]


def test_iwae_free_bits_changes_gradients_not_the_bound(tmp_path):
    from vaekit.objectives.iwae import IWAE
    from vaekit.training.config import TrainConfig

    torch.manual_seed(0)
    m = MLPVAE(MLPConfig(data_shape=(12,), latent_dim=3, hidden=(16,)))
    x = torch.rand(8, 12)

    class Ctx:
        epoch = 0
        kl_weight = 1.0
        skipped = False

        def autocast(self):
            import contextlib

            return contextlib.nullcontext()

        def optimize(self, name, loss):
            self.loss = loss
            loss.backward()

    values, grads = [], []
    for lam in (0.0, 1e6):
        m.zero_grad()
        torch.manual_seed(1)
        ctx = Ctx()
        IWAE(m, TrainConfig(k=4, free_bits=lam)).training_step(m, type("B", (), {"x": x, "y": None})(), ctx)
        values.append(ctx.loss.item())
        grads.append(m.encoder.logvar.bias.grad.clone())
    assert values[0] == pytest.approx(values[1], abs=1e-5)
    assert not torch.allclose(grads[0], grads[1])


def test_hvae_and_ladder_train_and_evaluate_with_per_layer_keys(cli, tmp_path):
    for model, flags in (("hvae", ["--latent-dims", "6,3", "--hidden", "32,16"]),
                         ("ladder", ["--topology", "4x1,2x1,1x1", "--patch", "2", "--width", "16", "--zdim", "3"])):
        out = tmp_path / model
        r = cli("train", "--data", "digits", "--binarize", "dynamic", "--model", model, *flags, "--epochs", "2",
                "--limit", "300", "--out", out, "--quiet")
        assert r.code == 0, r.err
        assert "val_kl_z2" in read_metrics(out)[-1]
        assert json.loads((out / "config.json").read_text())["training"]["grad_skip"] == 10.0  # SKIP_EXPLODING
        r = cli("evaluate", out, "--iw", "10", "--json")
        assert r.code == 0, r.err
        values = json.loads(r.out)
        assert len(values["kl_per_layer"]) == len(values["active_units_per_layer"]) >= 2
        assert cli("sample", out, "-n", "4", "--out", tmp_path / f"{model}.png").code == 0


def test_fit_prior_then_sample_from_it(cli, tmp_path):
    tiny_train(tmp_path / "run", epochs=1, limit=300)
    r = cli("fit-prior", tmp_path / "run", "--components", "3")
    assert r.code == 0, r.err
    assert (tmp_path / "run" / "prior_gmm.safetensors").is_file()
    assert cli("sample", tmp_path / "run", "--prior", "gmm", "-n", "9", "--out", tmp_path / "s.png").code == 0


def test_dsprites_enumerates_every_factor_combination_once():
    ds = DSprites()
    assert len(ds) == 737_280 == int(np.prod(FACTOR_SIZES))
    idx = torch.tensor([0, 1, 32, 1024, len(ds) - 1])
    f = ds.factors(idx)
    assert f[1].tolist() == [0, 0, 0, 0, 1] and f[2].tolist() == [0, 0, 0, 1, 0]  # pos_y varies fastest
    assert f[-1].tolist() == [s - 1 for s in FACTOR_SIZES]
    assert torch.equal(ds.index_of(f), idx)
    x, _ = ds.batch(idx)
    assert x.shape == (5, 1, 64, 64) and set(x.unique().tolist()) <= {0.0, 1.0}
    area = [float(ds.images_for(torch.tensor([[1, s, 0, 16, 16]])).sum()) for s in range(6)]
    assert area == sorted(area) and area[0] < area[-1]  # scale grows the shape
    moved = ds.images_for(torch.tensor([[0, 5, 0, 0, 16], [0, 5, 0, 31, 16]]))
    assert moved[0].sum() == moved[1].sum() and not torch.equal(moved[0], moved[1])


TOY = (3, 4, 5)


def true_codes(f: np.ndarray) -> np.ndarray:
    return f / (np.array(TOY) - 1) + np.random.default_rng(0).normal(0, 1e-3, f.shape)


def random_codes(f: np.ndarray) -> np.ndarray:
    return np.random.default_rng(int(f.sum()) % 997).normal(size=(len(f), 6))


SMALL = {"beta_vae": {"num_train": 300, "num_eval": 200, "batch_size": 32},
         "factor_vae": {"num_train": 300, "num_eval": 200, "num_variance": 2000, "batch_size": 32},
         "mig": {"num_train": 3000}, "sap": {"num_train": 2000, "num_eval": 1000, "continuous": True},
         "dci": {"num_train": 600, "num_eval": 300}}
HEADLINE = {"beta_vae": "eval_accuracy", "factor_vae": "eval_accuracy", "mig": "mig", "sap": "sap",
            "dci": "disentanglement"}


@pytest.mark.parametrize("name", list(METRICS))
def test_metrics_score_true_factors_near_one_and_random_codes_near_chance(name):
    good = METRICS[name](TOY, true_codes, np.random.default_rng(0), **SMALL[name])[HEADLINE[name]]
    bad = METRICS[name](TOY, random_codes, np.random.default_rng(0), **SMALL[name])[HEADLINE[name]]
    chance = 1 / len(TOY) if name in ("beta_vae", "factor_vae") else 0.0  # accuracies: 1 / number of factors
    assert good > 0.9
    assert bad < chance + 0.15


def test_discrete_sap_is_low_even_for_true_factors_with_many_values():
    """LinearSVC on one dimension cannot carve many classes: a property of the estimator (documented)."""
    sizes = (3, 6, 40, 32, 32)
    codes = lambda f: f / (np.array(sizes) - 1)  # noqa: E731
    assert METRICS["sap"](sizes, codes, np.random.default_rng(0), num_train=2000, num_eval=1000)["sap"] < 0.5
    assert sample_factors(sizes, 10, np.random.default_rng(0)).max(0).tolist() <= [s - 1 for s in sizes]


def assert_user_error(r, *needles):
    assert r.code == 2, r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    for needle in needles:
        assert needle in r.err, (needle, r.err)


def test_bad_inputs_of_the_beyond_elbo_features(cli, tmp_path):
    out = tmp_path / "o"
    assert_user_error(cli("train", "--data", "digits", "--model", "ladder", "--topology", "8x2,banana", "--out", out),
                      "topology", "banana")
    assert_user_error(cli("train", "--data", "digits", "--model", "ladder", "--topology", "8x1,3x1", "--out", out),
                      "whole factors")
    assert_user_error(cli("train", "--data", "digits", "--model", "hvae", "--prior", "vamp", "--out", out),
                      "hvae model has no setting 'prior'")
    assert_user_error(cli("train", "--data", "digits", "--model", "hvae", "--objective", "beta-tcvae", "--out", out),
                      "beta-tcvae", "hvae")
    assert_user_error(cli("train", "--data", "digits", "--prior", "vamp", "--objective", "factorvae", "--out", out),
                      "factorvae")
    assert_user_error(cli("train", "--data", "digits", "--objective", "iwae", "--k", "0", "--out", out), "--k")
    assert_user_error(cli("train", "--data", "digits", "--objective", "iwae", "--elbo-epochs", "-1", "--out", out),
                      "--elbo-epochs")
    assert_user_error(cli("train", "--data", "digits", "--prior", "gaussian-mixture", "--out", out), "unknown prior")
    assert not out.exists()
    tiny_train(tmp_path / "digits", epochs=1, limit=100)
    assert_user_error(cli("disentanglement", tmp_path / "digits"), "no ground-truth factors", "dsprites")


def test_disentanglement_command_on_dsprites(cli, tmp_path):
    out = tmp_path / "ds"
    r = cli("train", "--data", "dsprites", "--model", "conv", "--channels", "8,8,8", "--latent-dim", "4",
            "--epochs", "1", "--limit", "256", "--batch-size", "64", "--val-fraction", "0", "--out", out, "--quiet")
    assert r.code == 0, r.err
    # two cheap metrics: factor_vae's votes encode ~30,000 images (7 s here); it is tested above on true factors
    r = cli("disentanglement", out, "--metrics", "mig,sap", "--num-train", "200", "--num-eval", "100")
    assert r.code == 0, r.err
    doc = json.loads((out / "disentanglement.json").read_text())
    assert set(doc["results"]) == {"mig", "sap"} and 0 <= doc["results"]["mig"]["mig"] <= 1
    assert (out / "disentanglement_traversal.png").is_file()
