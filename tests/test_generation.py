"""Generation beyond N(0, I): latent and pixel diffusion through the one trainer, the diffusers
pipeline export, and the offline sample-quality metrics."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

import vaekit
from helpers import read_metrics, tiny_train, without_time
from vaekit.errors import Interrupted, VaekitError
from vaekit.evaluation.sample_quality import frechet_distance, precision_recall
from vaekit.models.diffusion import DiffusionConfig, PixelDiffusion
from vaekit.objectives.diffusion import DiffusionLoss

LD_SMALL = {"width": 32, "depth": 1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny conv VAE on digits, a latent-diffusion run on it, and a conditional one."""
    root = tmp_path_factory.mktemp("gen")
    vae = root / "vae"
    tiny_train(vae, model="conv", epochs=2, limit=400, overrides={"channels": [8, 16], "latent_dim": 4})
    ld = root / "ld"
    vaekit.train(ld, model="latent-diffusion", model_overrides={"vae": str(vae), **LD_SMALL},
                 training={"epochs": 2, "batch_size": 64}, progress=False)
    ldc = root / "ldc"
    vaekit.train(ldc, model="latent-diffusion", conditional=True, model_overrides={"vae": str(vae), **LD_SMALL},
                 training={"epochs": 1, "batch_size": 64}, progress=False)
    return {"vae": vae, "ld": ld, "ldc": ldc, "root": root}


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    """One classifier cache for the module's sample-quality tests (trained once on digits)."""
    path = tmp_path_factory.getbasetemp() / "vaekit-cache"
    monkeypatch.setenv("VAEKIT_CACHE", str(path))
    return path


# -- the noise schedule and the samplers ---------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_noise_then_denoise_with_the_true_noise_returns_the_input(prediction):
    model = PixelDiffusion(DiffusionConfig(data_shape=(1, 4, 4), denoiser="mlp", width=8, depth=1,
                                           prediction=prediction))
    x0 = torch.randn(16, 1, 4, 4)
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (16,))
    xt = model.add_noise(x0, noise, t)
    assert torch.allclose(model.predict_x0(xt, t, model.target(x0, noise, t)), x0, atol=1e-4)


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_a_sampler_fed_the_true_noise_returns_the_data(sampler, monkeypatch):
    model = PixelDiffusion(DiffusionConfig(data_shape=(2, 4, 4), denoiser="mlp", width=8, depth=1))
    x0 = torch.rand(3, 2, 4, 4) * 2 - 1
    abar = model.scheduler.alphas_cumprod

    def oracle(self, x, t, y=None):  # the exact eps that takes x0 to x at timestep t
        a = abar[int(t)]
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    monkeypatch.setattr(PixelDiffusion, "forward", oracle)
    out = model.generate(3, generator=torch.Generator().manual_seed(0), steps=25, sampler=sampler)
    assert torch.allclose(out, x0, atol=1e-3)


# -- latent diffusion through the trainer --------------------------------------------------------------


def test_latent_diffusion_records_its_vae_and_samples_images(runs):
    doc = json.loads((runs["ld"] / "config.json").read_text())
    assert doc["_class_name"] == "LatentDiffusion"
    assert doc["model"]["vae"] == str(runs["vae"].resolve()) and len(doc["model"]["vae_hash"]) == 64
    assert len(doc["model"]["latent_mean"]) == 4 and all(s > 0 for s in doc["model"]["latent_std"])
    assert doc["data"]["spec"].startswith("latents:")
    assert doc["training"]["objective"] == "diffusion" and doc["training"]["ema_decay"] == 0.999
    model = vaekit.load(runs["ld"])
    x = model.sample(5, generator=torch.Generator().manual_seed(0), steps=4)
    assert x.shape == (5, 1, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1  # Bernoulli means
    again = model.sample(5, generator=torch.Generator().manual_seed(0), steps=4)
    assert torch.equal(x, again)


def test_the_standardised_latents_have_unit_scale(runs):
    from vaekit.models.diffusion import LatentDiffusion
    from vaekit.run import open_run, read_run_config

    cfg = read_run_config(runs["ld"])
    splits = LatentDiffusion.prepare_data(cfg.data, {"vae": str(runs["vae"])}, None, open_run)
    torch.manual_seed(0)
    z, _ = splits.train.batch(torch.arange(len(splits.train)))  # fresh draws of q(z|x)
    assert z.mean(0).abs().max() < 0.15 and (z.std(0) - 1).abs().max() < 0.15


def test_a_diffusion_run_resumes_exactly(runs, tmp_path, monkeypatch):
    kw = {"model": "latent-diffusion", "model_overrides": {"vae": str(runs["vae"]), **LD_SMALL},
          "training": {"epochs": 2, "batch_size": 64, "seed": 5}, "progress": False}
    vaekit.train(tmp_path / "ref", **kw)
    original = DiffusionLoss.training_step

    def step(self, model, batch, ctx):
        if ctx.step == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, model, batch, ctx)

    monkeypatch.setattr(DiffusionLoss, "training_step", step)
    with pytest.raises(Interrupted):
        vaekit.train(tmp_path / "run", **kw)
    monkeypatch.undo()
    vaekit.resume(tmp_path / "run", progress=False)
    assert without_time(read_metrics(tmp_path / "run")) == without_time(read_metrics(tmp_path / "ref"))
    weights = [(tmp_path / name / "model.safetensors").read_bytes() for name in ("run", "ref")]
    assert weights[0] == weights[1]  # the EMA weights too


def test_class_conditional_samples_and_guidance(runs, cli, tmp_path):
    model = vaekit.load(runs["ldc"])
    assert model.config.num_classes == 10
    x = model.sample(10, guidance=3.0, steps=3, generator=torch.Generator().manual_seed(1))
    assert x.shape == (10, 1, 8, 8)
    r = cli("sample", runs["ldc"], "-n", "20", "--steps", "3", "--guidance", "2", "--out", tmp_path / "c.png")
    assert r.code == 0, r.err
    assert (tmp_path / "c.png").is_file()


# -- into diffusers ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_autoencoder_kl_latent_diffusion_run_exports_as_an_ldm_pipeline(tmp_path, cli):
    from diffusers import LDMPipeline

    ae, ld, out = tmp_path / "ae", tmp_path / "ld", tmp_path / "pipe"
    r = cli("train", "--data", "digits", "--preset", "tiny-f4", "--pad-to", "16", "--epochs", "1", "--limit", "64",
            "--out", ae, "--quiet")
    assert r.code == 0, r.err
    r = cli("train", "--model", "latent-diffusion", "--vae", ae, "--unet-channels", "16,16", "--layers-per-block",
            "1", "--epochs", "1", "--batch-size", "32", "--out", ld, "--quiet")
    assert r.code == 0, r.err
    assert cli("export-diffusers", ld, out).code == 0
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "LDMPipeline"
    pipe = LDMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=3, generator=torch.Generator().manual_seed(4), num_inference_steps=6,
                  output_type="np").images
    ours = vaekit.load(ld).sample(3, generator=torch.Generator().manual_seed(4), steps=6)
    ours = ((ours + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    # the same noise, scheduler and UNet; the decoders differ only in float rounding (vaekit's upsampling
    # computes the nearest-x2 convolution in four phases)
    assert np.abs(theirs - ours).max() < 1e-4


# -- pixel-space diffusion -----------------------------------------------------------------------------


def test_pixel_diffusion_trains_on_images_and_samples_them(cli, tmp_path):
    r = cli("train", "--data", "digits", "--model", "pixel-diffusion", "--pad-to", "8", "--unet-channels", "16,16",
            "--layers-per-block", "1", "--epochs", "1", "--limit", "64", "--out", tmp_path / "px", "--quiet")
    assert r.code == 0, r.err
    model = vaekit.load(tmp_path / "px")
    x = model.sample(2, steps=3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 8, 8) and float(x.min()) >= -1 and float(x.max()) <= 1


# -- sample quality --------------------------------------------------------------------------------------


def test_fcd_of_a_set_against_itself_is_zero_and_grows_with_noise():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    noisy = [frechet_distance(a, a + s * torch.randn(a.shape, generator=g, dtype=torch.float64))
             for s in (0.1, 0.5, 1.0, 2.0)]
    assert noisy == sorted(noisy) and noisy[0] > 0
    # a mean shift of d adds d^2 per dimension
    assert frechet_distance(a, a + 1.5) == pytest.approx(8 * 1.5**2, rel=1e-6)


def test_precision_and_recall_of_identical_sets_are_one():
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(1))
    assert precision_recall(x, x) == (1.0, 1.0)
    p, r = precision_recall(x, x[:30] * 0.01)  # a collapsed generator: precise, no recall
    assert p == 1.0 and r < 0.2


def test_sample_quality_command(runs, cli, cache):
    r = cli("sample-quality", runs["ldc"], "-n", "120", "--steps", "3", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert {"fcd", "precision", "recall", "accuracy", "floor_fcd", "samples_per_second", "classifier_accuracy"} <= \
        set(doc)
    assert 0 <= doc["accuracy"] <= 1 and doc["floor_fcd"] < doc["fcd"] and doc["steps"] == 3
    assert doc["classifier_accuracy"] > 0.9
    assert list((cache / "classifiers").glob("*.safetensors"))  # trained once, cached with its accuracy
    r = cli("sample-quality", runs["vae"], "-n", "120", "--prior", "standard")
    assert r.code == 0, r.err
    assert "FCD" in r.out and "floor" in r.out


def test_the_aggregate_posterior_is_every_training_code(runs, cli, cache, tmp_path):
    from vaekit.data import load_examples
    from vaekit.evaluation.aggregate import aggregate_posterior
    from vaekit.run import open_run

    cfg, model = open_run(runs["vae"])
    train = load_examples(cfg.data, cfg.data_info, "train").data
    q = aggregate_posterior(runs["vae"], model)
    with torch.no_grad():
        post = model.encode(train.batch(torch.arange(len(train)))[0])
    means, variances = post.mean.flatten(1), post.var.flatten(1)  # [N, 4]
    # at temperature 0 every draw is the posterior mean of a training example
    z0 = q.sample(50, generator=torch.Generator().manual_seed(0), temperature=0.0)
    assert z0.shape == (50, 4)
    assert torch.cdist(z0, means, compute_mode="donot_use_mm_for_euclid_dist").min(1).values.max() < 1e-4
    # its moments: E z = mean of the posterior means; Var z = their variance + the mean posterior variance
    z = q.sample(200_000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), means.mean(0), atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(0), means.var(0, unbiased=False) + variances.mean(0), rtol=0.03, atol=0)
    r = cli("sample-quality", runs["vae"], "-n", "120", "--prior", "aggregate", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["prior"] == "aggregate"
    assert cli("sample", runs["vae"], "--prior", "aggregate", "-n", "8", "--out", tmp_path / "s.png").code == 0
    assert (tmp_path / "s.png").is_file()


def test_the_classifier_is_trained_once(runs, cache, monkeypatch):
    from vaekit.evaluation import classifier
    from vaekit.evaluation.sample_quality import sample_quality

    sample_quality(runs["vae"], n=50)  # trains (or finds) the cached classifier
    monkeypatch.setattr(classifier, "train_classifier", lambda *a: pytest.fail("retrained"))
    assert sample_quality(runs["vae"], n=50).classifier_accuracy > 0.9


# -- bad input -------------------------------------------------------------------------------------------


def assert_user_error(r, *fragments):
    assert r.code == 2, (r.code, r.err)
    line = r.err.strip()
    assert "\n" not in line and "Traceback" not in line, line
    for f in fragments:
        assert f in line, (f, line)


def test_bad_inputs_for_latent_diffusion(runs, cli, tmp_path, blobs_npz, table_csv, cache):
    out = tmp_path / "x"
    assert_user_error(cli("train", "--model", "latent-diffusion", "--out", out), "--vae")
    assert_user_error(cli("train", "--model", "latent-diffusion", "--vae", tmp_path / "nope", "--out", out),
                      "no such run")
    assert_user_error(cli("train", "--model", "latent-diffusion", "--vae", tmp_path, "--out", out), "not a vaekit run")
    assert_user_error(cli("train", "--model", "latent-diffusion", "--vae", runs["ld"], "--out", out), "no encoder")
    assert_user_error(cli("train", "--model", "latent-diffusion", "--vae", runs["vae"], "--data", "digits", "--out",
                          out), "drop --data")
    assert not out.exists()
    png = tmp_path / "s.png"
    assert_user_error(cli("sample", runs["ld"], "--steps", "0", "--out", png), "--steps")
    assert_user_error(cli("sample", runs["ld"], "--guidance", "2", "--out", png), "--guidance", "conditional")
    assert_user_error(cli("sample", runs["vae"], "--steps", "5", "--out", png), "--steps", "diffusion")
    assert_user_error(cli("sample-quality", runs["vae"], "--prior", "diffusion"), "latent-diffusion")
    assert_user_error(cli("sample-quality", runs["ld"], "--prior", "aggregate"), "samples by diffusion")
    assert not png.exists()
    # unlabelled and tabular data have no sample quality
    np.savez(tmp_path / "unlabelled.npz", x=np.load(blobs_npz)["x"])
    for data, what in ((tmp_path / "unlabelled.npz", "unlabelled"), (table_csv, "tabular")):
        run = tmp_path / what
        tiny_train(run, data=data, epochs=1)
        assert_user_error(cli("sample-quality", run, "-n", "10"), "labelled image data", what)


def test_a_latent_diffusion_run_refuses_a_missing_or_changed_vae(runs, cli, tmp_path):
    import shutil

    vae, ld = tmp_path / "vae", tmp_path / "ld"
    shutil.copytree(runs["vae"], vae)
    vaekit.train(ld, model="latent-diffusion", model_overrides={"vae": str(vae), **LD_SMALL},
                 training={"epochs": 1}, progress=False)
    weights = vae / "model.safetensors"
    original = weights.read_bytes()
    tiny_train(vae, model="conv", epochs=1, limit=100, seed=9, overrides={"channels": [8, 16], "latent_dim": 4})
    assert weights.read_bytes() != original
    png = tmp_path / "s.png"
    assert_user_error(cli("sample", ld, "--out", png), str(vae), "weights changed")
    with pytest.raises(VaekitError, match="weights changed"):
        vaekit.load(ld)
    shutil.rmtree(vae)
    assert_user_error(cli("sample", ld, "--out", png), str(vae), "missing")
    assert not png.exists()
