"""Anomaly scores, their calibration, `vaekit anomaly` and the scikit-learn-style detector."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from helpers import tiny_train
from test_bad_inputs import assert_user_error
from vaekit.anomaly import (
    SCORES,
    ScoreSettings,
    VAEDetector,
    fit_standardisation,
    load_calibration,
    score,
    score_against_threshold,
    score_all,
    threshold_at,
)
from vaekit.anomaly.scores import DRAWS, _generators, held_out_normal, latent_prior, parse_scores, standardisation
from vaekit.errors import VaekitError
from vaekit.evaluation.aggregate import COMPONENT_CHOICES, choose_components
from vaekit.run import load

FEW = ScoreSettings(k=64)  # regret compares two ELBOs: 64 shared draws keep their difference steady
QUICK = ScoreSettings(k=8, steps=20)  # enough to see determinism


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary 1x8x8 'images': three fixed random prototypes (the same for every seed), 5% of pixels flipped."""
    base = (np.random.default_rng(0).random((3, 1, 8, 8)) > 0.5).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return np.abs(base[y] - (rng.random((n, 1, 8, 8)) < 0.05)).astype(np.float32), y


def simple_images() -> np.ndarray:
    """20 binary images far simpler than the prototypes: stripes, checkerboards, the first k columns or rows on."""
    i, j = np.indices((8, 8))
    patterns = [(j + p) % 2 for p in (0, 1)] + [(i + p) % 2 for p in (0, 1)] + [(i + j + p) % 2 for p in (0, 1)]
    patterns += [j < k for k in range(1, 8)] + [i < k for k in range(1, 8)]
    return np.stack(patterns)[:, None].astype(np.float32)


@pytest.fixture(scope="module")
def blob_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("anomaly")
    x, y = blobs(400, 1)
    np.savez(folder / "blobs.npz", x=x, y=y)
    model, _ = tiny_train(folder / "run", data=str(folder / "blobs.npz"), epochs=20)
    return folder / "run", model, torch.from_numpy(x)


@pytest.fixture(scope="module")
def background(blob_run):
    """The ratio score's background model: the same network on the same blobs, 30% of the pixels noise."""
    run, _, _ = blob_run
    model, _ = tiny_train(run.parent / "background", data=str(run.parent / "blobs.npz"), epochs=20,
                          data_options={"perturb": 0.3})
    return run.parent / "background", model


@pytest.fixture(scope="module")
def planted(blob_run):
    """60 new inliers, then the 20 simple images as planted outliers."""
    return torch.from_numpy(np.concatenate([blobs(60, 5)[0], simple_images()])), np.r_[np.zeros(60), np.ones(20)]


def test_every_score_ranks_planted_outliers_above_every_inlier(blob_run, background, planted):
    _, model, train_x = blob_run
    x, label = planted
    scores = score_all(model, x, SCORES, FEW, prior=latent_prior(model, reference=train_x), background=background[1])
    for name, s in scores.items():
        assert s.dtype == torch.float64 and s.shape == (80,)
        if name != "ratio":
            assert s[label == 1].min() > s[label == 0].max(), name
    # the ratio keeps only what the background model does not explain: one stripe pattern of the 20 is
    # as easy for the noise-trained model, so it ranks far above most inliers but not all
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(label, scores["ratio"].numpy()) > 0.97


def test_scores_are_deterministic_and_do_not_depend_on_the_batch(blob_run, background, planted):
    _, model, train_x = blob_run
    x, _ = planted
    prior, bg = latent_prior(model, reference=train_x), background[1]
    whole = score_all(model, x, SCORES, QUICK, prior=prior, background=bg)
    again = score_all(model, x, SCORES, QUICK, prior=prior, background=bg)
    for name in SCORES:
        assert torch.equal(whole[name], again[name]), name  # bit-equal across calls
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    shuffled = score_all(model, x[order], SCORES, QUICK, prior=prior, background=bg)
    alone = {name: torch.cat([score_all(model, x[i : i + 1], (name,), QUICK, prior=prior, background=bg)[name]
                              for i in (3, 70)]) for name in SCORES}
    for name in SCORES:  # any batch, any position: the same up to float rounding of batched matmuls
        torch.testing.assert_close(shuffled[name], whole[name][order], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(alone[name], whole[name][[3, 70]], rtol=1e-5, atol=1e-5)
    other_seed = score_all(model, x, ("nll",), ScoreSettings(k=16, seed=1))["nll"]
    assert not torch.equal(other_seed, whole["nll"])


def test_scores_have_their_closed_forms(blob_run, planted):
    _, model, _ = blob_run
    x = planted[0][:5]
    with torch.no_grad():
        q = model.encode(x)
    # K = 1: the importance-weighted bound is the one-sample ELBO; recon and elbo share the draw
    one = score_all(model, x, ("nll", "elbo", "recon"), ScoreSettings(k=1))
    torch.testing.assert_close(one["elbo"] - one["recon"], q.kl().double(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        eps = torch.stack([torch.randn(1, 4, generator=g) for g in _generators(x, 0, DRAWS)])[:, 0]
        z = q.mean + q.std * eps
        log_w = model.observation(z).log_prob(x) + model.prior().log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(one["nll"], -log_w.double(), rtol=1e-5, atol=1e-5)
    # complexity = nll in bits minus the PNG's bits (the Bernoulli likelihood needs no bin width)
    from vaekit.anomaly.scores import compressed_bits

    nll = score(model, x, "nll", k=16)
    bits = compressed_bits(x, (0.0, 1.0), "png")
    torch.testing.assert_close(score(model, x, "complexity", k=16), nll / np.log(2) - torch.from_numpy(bits))
    assert (compressed_bits(x, (0.0, 1.0), "best") <= bits).all()
    # optimising q(z|x) for an input the encoder never saw raises its ELBO
    assert (score(model, planted[0][60:70], "regret", k=64) > 0.5).all()


def test_ratio_is_the_difference_of_two_nlls(blob_run, background, planted):
    run, model, _ = blob_run
    bg_run, bg = background
    x = planted[0]
    ratio = score(model, x, "ratio", k=16, background=bg)
    torch.testing.assert_close(ratio, score(model, x, "nll", k=16) - score(bg, x, "nll", k=16))
    assert torch.equal(score(run, x, "ratio", k=16, background=bg_run), ratio)  # run directories work too
    assert torch.equal(score(model, x, "ratio", k=16, background=model), torch.zeros(len(x), dtype=torch.float64))


def test_perturbation_replaces_the_asked_share_with_values_of_the_data(tmp_path):
    from vaekit.data import DataInfo
    from vaekit.data.perturb import perturb

    torch.manual_seed(0)
    x = torch.full((64, 1, 16, 16), 128 / 255)
    eight_bit = perturb(x, 0.25, DataInfo(kind="image", input_range=(0.0, 1.0)), binary=False)
    changed = eight_bit != x  # a quarter of the values, less the 1/256 that draw their own level
    assert abs(changed.float().mean().item() - 0.25 * 255 / 256) < 0.01
    levels = eight_bit * 255
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
    assert levels.min() == 0 and levels.max().round() == 255
    assert perturb(x, 0.3, DataInfo(kind="image", input_range=(-1.0, 1.0)), binary=False).min() == -1
    assert perturb(x, 0.5, DataInfo(kind="image"), binary=True).unique().tolist() == [0.0, x[0, 0, 0, 0].item(), 1.0]
    rows = perturb(torch.zeros(4096, 3), 0.5, DataInfo(kind="vector", value_range=(-2.0, 3.0)), binary=False)
    assert rows.min() >= -2 and rows.max() < 3 and abs((rows != 0).float().mean().item() - 0.5) < 0.03
    assert perturb(x, 0.0, DataInfo(), binary=False) is x
    # through the trainer: a seeded background run is reproducible
    data = tmp_path / "b.npz"
    np.savez(data, x=blobs(100, 2)[0])
    runs = [tiny_train(tmp_path / f"r{i}", data=str(data), epochs=2, data_options={"perturb": 0.2})[1]
            for i in range(2)]
    plain = tiny_train(tmp_path / "plain", data=str(data), epochs=2)[1]
    assert runs[0][-1]["train_loss"] == runs[1][-1]["train_loss"] != plain[-1]["train_loss"]


def test_threshold_gives_the_asked_fpr_within_one_over_n():
    rng = np.random.default_rng(0)
    for n in (7, 100, 1001):
        s = rng.standard_normal(n)
        for fpr in (0.01, 0.05, 0.1, 0.5, 0.9):
            rate = (s > threshold_at(s, fpr)).mean()
            assert fpr - 1 / n < rate <= fpr + 1e-12, (n, fpr, rate)


def test_the_latent_mixture_size_is_chosen_by_held_out_likelihood():
    rng = np.random.default_rng(0)
    centres = rng.uniform(-50, 50, (20, 2))
    clusters = centres[rng.integers(0, 20, 2000)] + rng.standard_normal((2000, 2))
    assert choose_components(clusters, choices=(5, 20, 50)) == 20  # 20 planted clusters: 5 underfit, 50 overfit
    assert choose_components(rng.standard_normal((2000, 3)), choices=(5, 20)) == 5  # one Gaussian
    # 30 codes in 3 dimensions: only the smallest choice has enough codes per full covariance
    assert choose_components(rng.standard_normal((30, 3))) == min(COMPONENT_CHOICES)


def test_anomaly_command_calibrates_flags_and_measures(cli, blob_run, planted, tmp_path):
    run, _, _ = blob_run
    x, label = planted
    data = tmp_path / "mixed.npz"
    np.savez(data, x=x.numpy(), y=np.where(label == 1, 9, 0))
    r = cli("anomaly", run, "--data", data, "--anomaly-classes", "9", "--score", "regret,nll,latent", "--fpr", "0.1",
            "-k", "64", "--out", tmp_path / "s.csv", "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["score"] == "regret" and summary["n"] == 80 and summary["roc_auc"] == 1.0
    assert summary["pr_auc"] == pytest.approx(1.0) and set(summary["per_score"]) == {"regret", "nll", "latent"}
    cal = summary["calibration"]
    assert cal["split"] == "val" and cal["n"] == 36  # the run's own held-out normal data
    assert 0.1 - 1 / cal["n"] < cal["flagged"] / cal["n"] <= 0.1
    with open(tmp_path / "s.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "anomaly", "regret", "nll", "latent", "flagged"]
    flagged = [int(r["flagged"]) for r in rows]
    assert sum(flagged) == summary["flagged"] and all(flagged[60:])  # every planted outlier is flagged
    assert (tmp_path / "s_roc.png").is_file() and (tmp_path / "s_hist.png").is_file()
    # the calibration is saved with the run; new inputs score against it exactly as the CSV does
    calibration = load_calibration(run)
    assert calibration.score == "regret" and calibration.threshold == summary["threshold"]
    # the mixture's size was chosen (components=None) and is recorded, so a later score refits the same one
    assert calibration.settings == ScoreSettings(k=64, components=calibration.settings.components)
    assert calibration.settings.components in COMPONENT_CHOICES
    s, threshold, flags = score_against_threshold(run, x[55:65])
    np.testing.assert_allclose(s.numpy(), [float(r["regret"]) for r in rows[55:65]], atol=2e-6)
    assert threshold == summary["threshold"] and flags.tolist() == [bool(f) for f in flagged[55:65]]


def test_latent_score_over_posterior_means_and_log_variances(cli, blob_run, planted, tmp_path):
    run, model, train_x = blob_run
    x, label = planted
    both = ScoreSettings(codes="mean+logvar")
    mixture = latent_prior(model, reference=train_x, codes="mean+logvar")
    assert tuple(mixture.event_shape) == (8,)  # 4 means and 4 log-variances
    s = score_all(model, x, ("latent",), both, prior=mixture)["latent"]
    assert s[label == 1].min() > s[label == 0].max()
    assert not torch.allclose(s, score_all(model, x, ("latent",), QUICK, prior=latent_prior(model, reference=train_x))
                              ["latent"])
    with pytest.raises(VaekitError, match="over 4 dimensions"):  # a mixture over the means alone
        score_all(model, x, ("latent",), both, prior=latent_prior(model, reference=train_x))
    copy = tmp_path / "run"  # the calibration is saved in the run: a copy keeps the shared run's
    shutil.copytree(run, copy)
    r = cli("anomaly", copy, "--score", "latent", "--latent-codes", "mean+logvar", "--out", tmp_path / "s.csv",
            "--json", "--no-figures")
    assert r.code == 0, r.err
    calibration = load_calibration(copy)
    assert calibration.settings.codes == "mean+logvar"
    again, _, _ = score_against_threshold(copy, x)  # refits the same mixture over the same features
    torch.testing.assert_close(again, score(copy, x, "latent", settings=calibration.settings))


def test_a_combined_score_is_the_sum_of_its_parts_standardised_on_held_out_normal_data(cli, blob_run, planted,
                                                                                      tmp_path):
    run, model, train_x = blob_run
    x, label = planted
    copy = tmp_path / "run"  # the calibration is saved in the run: a copy keeps the shared run's
    shutil.copytree(run, copy)
    data = tmp_path / "mixed.npz"
    np.savez(data, x=x.numpy(), y=np.where(label == 1, 9, 0))
    r = cli("anomaly", copy, "--data", data, "--anomaly-classes", "9", "--score", "latent+complexity,latent,complexity",
            "--fpr", "0.1", "-k", "8", "--out", tmp_path / "s.csv", "--json", "--no-figures")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["score"] == "latent+complexity" and summary["roc_auc"] == 1.0
    cal = load_calibration(copy)
    # each part's mean and std are those of its scores on the run's validation split
    split, normal = held_out_normal(copy)
    assert split == "val" and cal.n == len(normal) == 36
    plain = ScoreSettings(k=8, components=cal.settings.components)
    saved = load(copy)  # the run's saved weights, as the command scores with
    parts = score_all(saved, normal.x, ("latent", "complexity"), plain, prior=latent_prior(
        saved, run=copy, components=plain.components))
    for name in ("latent", "complexity"):
        mean, std = cal.settings.standardise[name]
        assert mean == pytest.approx(float(parts[name].mean())) and std == pytest.approx(float(parts[name].std()))
    combined = sum((parts[n] - cal.settings.standardise[n][0]) / cal.settings.standardise[n][1] for n in parts)
    assert float(combined.mean()) == pytest.approx(0.0, abs=1e-9) and float(combined.max()) <= 2 * 6
    assert 0.1 - 1 / cal.n < cal.flagged / cal.n <= 0.1
    with open(tmp_path / "s.csv") as f:
        rows = list(csv.DictReader(f))
    column = lambda name: np.array([float(r[name]) for r in rows])  # noqa: E731
    expected = sum((column(n) - cal.settings.standardise[n][0]) / cal.settings.standardise[n][1]
                   for n in ("latent", "complexity"))
    np.testing.assert_allclose(column("latent+complexity"), expected, atol=1e-4)
    assert column("latent+complexity")[60:].min() > column("latent+complexity")[:60].max()
    # later scores reuse the saved standardisation; score() on a run standardises on the same split
    s, threshold, flags = score_against_threshold(copy, x)
    np.testing.assert_allclose(s.numpy(), column("latent+complexity"), atol=2e-6)
    assert threshold == cal.threshold and flags.tolist() == [r["flagged"] == "1" for r in rows]
    torch.testing.assert_close(score(copy, x, "latent+complexity", k=8), s)
    # without a standardisation: from normal= examples, or a one-line error
    settings = ScoreSettings(k=8)
    mixture = latent_prior(model, reference=train_x)
    with pytest.raises(VaekitError, match="latent, complexity has no mean and std yet"):
        score_all(model, x, ("latent+complexity",), settings, prior=mixture)
    with pytest.raises(VaekitError, match="has no mean and std yet"):
        score(model, x, "latent+complexity", prior=mixture, settings=settings)
    mine = score(model, x, "latent+complexity", prior=mixture, settings=settings, normal=x[:60])
    assert float(mine[:60].mean()) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(VaekitError, match="names a score twice"):
        parse_scores("latent+latent")
    with pytest.raises(VaekitError, match="unknown score 'nope' in 'latent\\+nope'"):
        parse_scores("latent+nope")
    with pytest.raises(VaekitError, match="the same on every normal example"):
        standardisation({"nll": torch.ones(5), "elbo": torch.arange(5.0)}, ("nll+elbo",))
    with pytest.raises(VaekitError, match="nll needs a finite mean and a positive std"):
        ScoreSettings(standardise={"nll": (0.0, 0.0)})
    assert_user_error(cli("anomaly", copy, "--score", "nll+bogus", "--out", tmp_path / "t.csv"),
                      "unknown score 'bogus' in 'nll+bogus'")
    fitted = fit_standardisation(model, x[:60], "latent+complexity", settings, prior=mixture)
    assert set(fitted.standardise) == {"latent", "complexity"}
    with pytest.raises(VaekitError, match="bernoulli likelihood of grey levels"):  # a part's checks still apply
        score_all(model, torch.full((2, 1, 8, 8), 0.5), ("latent+complexity",), fitted, prior=mixture)
    # a later calibration of plain scores carries no standardisation over from this one
    r = cli("anomaly", copy, "--score", "nll", "-k", "8", "--out", tmp_path / "t.csv", "--no-figures")
    assert r.code == 0, r.err
    assert load_calibration(copy).settings.standardise == {}


def test_detector_scores_latent_over_mean_and_logvar(tmp_path):
    x = blobs(200, 3)[0].reshape(200, -1)
    with pytest.raises(ValueError, match="latent_codes"):  # before any training
        VAEDetector(anomaly_score="latent", latent_codes="logvar").fit(x)
    det = VAEDetector(anomaly_score="latent", latent_codes="mean+logvar", hidden=(16,), latent_dim=2, epochs=3,
                      run_dir=str(tmp_path / "run")).fit(x)
    assert tuple(det.prior_.event_shape) == (4,) and load_calibration(tmp_path / "run").settings.codes == "mean+logvar"
    assert det.decision_function(x[:5]).shape == (5,)
    # a sum: its parts standardised on X, where the threshold is set too
    det = VAEDetector(anomaly_score="latent+elbo", hidden=(16,), latent_dim=2, epochs=3, k=4).fit(x)
    assert set(det.settings_.standardise) == {"latent", "elbo"}
    assert float(det.decision_scores_.mean()) == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(det.decision_function(x), det.decision_scores_)


def test_ood_data_and_tables(cli, blob_run, tmp_path, table_csv):
    run, _, _ = blob_run
    np.save(tmp_path / "simple.npy", simple_images())
    r = cli("anomaly", run, "--ood-data", tmp_path / "simple.npy", "--score", "elbo,complexity", "-k", "8",
            "--out", tmp_path / "ood.csv", "--no-figures", "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["n"] == 40 + 20 and summary["per_score"]["complexity"]["roc_auc"] == 1.0
    with open(tmp_path / "ood.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["source"] for r in rows].count("ood") == 20 and rows[-1]["anomaly"] == "1"
    assert not (tmp_path / "ood_roc.png").exists()
    # table rows go through the run's saved standardisation; a far-off row is flagged
    table = tiny_train(tmp_path / "table-run", data=str(table_csv), epochs=10,
                       overrides={"likelihood": "gaussian"})[0]
    assert table is not None
    lines = table_csv.read_text().splitlines()
    (tmp_path / "new.csv").write_text("\n".join([*lines[:6], "500,500,-500,500,0"]) + "\n")
    r = cli("anomaly", tmp_path / "table-run", "--data", tmp_path / "new.csv", "--score", "nll,elbo,recon,latent",
            "--out", tmp_path / "t.csv", "--json")
    assert r.code == 0, r.err
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[-1]["flagged"] == "1"
    assert all(float(rows[-1][n]) > max(float(r[n]) for r in rows[:-1]) for n in ("nll", "elbo", "recon", "latent"))


@pytest.fixture(scope="module")
def hvae_run(tmp_path_factory):
    from vaekit import train

    out = tmp_path_factory.mktemp("hvae") / "run"
    model, _ = train(out, model="hvae", model_overrides={"latent_dims": [4, 2], "hidden": [16, 8]},
                     data={"spec": "digits", "limit": 100}, training={"epochs": 1}, progress=False)
    return out, model


def test_bad_inputs_are_one_line_errors_that_write_nothing(cli, blob_run, background, hvae_run, tmp_path):
    run, _, _ = blob_run
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    out = tmp_path / "s.csv"
    assert_user_error(cli("anomaly", run, "--score", "likelihood", "--out", out), "unknown score 'likelihood'")
    for fpr in ("0", "1", "1.5", "-0.1"):
        assert_user_error(cli("anomaly", run, "--fpr", fpr, "--out", out), "--fpr", "(0, 1)")
    np.save(tmp_path / "wide.npy", np.zeros((4, 1, 9, 9), np.float32))
    assert_user_error(cli("anomaly", run, "--data", tmp_path / "wide.npy", "--out", out), "(1, 9, 9)", "(1, 8, 8)")
    assert_user_error(cli("anomaly", run, "--anomaly-classes", "2,42", "--out", out), "42", "0-2")
    np.save(tmp_path / "plain.npy", np.zeros((4, 1, 8, 8), np.float32))
    assert_user_error(cli("anomaly", run, "--data", tmp_path / "plain.npy", "--anomaly-classes", "1", "--out", out),
                      "needs labelled data")
    for name in ("config.json", "model.safetensors", "anomaly.json"):
        assert_user_error(cli("anomaly", run, "--out", run / name), "would overwrite", name)
    assert_user_error(cli("anomaly", run, "--out", tmp_path / "s.txt"), ".csv")
    assert_user_error(cli("anomaly", hvae_run[0], "--score", "nll,regret", "--out", out), "regret", "hvae",
                      "not one encoder output to optimise")
    # the ratio score's background model
    assert_user_error(cli("anomaly", run, "--score", "ratio", "--out", out), "ratio", "background model", "--perturb")
    assert_user_error(cli("anomaly", run, "--score", "nll", "--background", background[0], "--out", out),
                      "add ratio to --score")
    assert_user_error(cli("anomaly", run, "--score", "ratio", "--background", run, "--out", out),
                      "is the run being scored")
    assert_user_error(cli("anomaly", run, "--score", "ratio", "--background", tmp_path, "--out", out),
                      "not a vaekit run directory")
    gaussian = run.parent / "gaussian"
    tiny_train(gaussian, data=str(run.parent / "blobs.npz"), epochs=1, overrides={"likelihood": "gaussian"})
    assert_user_error(cli("anomaly", run, "--score", "ratio", "--background", gaussian, "--out", out),
                      "likelihood is gaussian", "bernoulli")
    with pytest.raises(Exception, match=r"shape \(1, 9, 9\); this run.s are \(1, 8, 8\)"):
        score(run, torch.zeros(2, 1, 8, 8), "ratio", background=tiny_train(
            run.parent / "wide", data=str(tmp_path / "wide.npy"), epochs=1)[0])
    shutil.rmtree(run.parent / "wide")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.npy", "wide.npy"]
    with pytest.raises(Exception, match="unknown score"):
        score(run, torch.zeros(1, 1, 8, 8), "nope")
    with pytest.raises(Exception, match="bernoulli likelihood of grey levels is a cross-entropy"):
        score(run, torch.full((1, 1, 8, 8), 0.5), "complexity")


def test_anomaly_command_scores_the_ratio_and_reopens_its_background(cli, blob_run, background, planted, tmp_path):
    run, model, _ = blob_run
    x, label = planted
    data = tmp_path / "mixed.npz"
    np.savez(data, x=x.numpy(), y=np.where(label == 1, 9, 0))
    r = cli("anomaly", run, "--data", data, "--anomaly-classes", "9", "--score", "ratio,nll", "-k", "16",
            "--background", background[0], "--out", tmp_path / "s.csv", "--json", "--no-figures")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["score"] == "ratio" and set(summary["per_score"]) == {"ratio", "nll"}
    with open(tmp_path / "s.csv") as f:
        column = [float(row["ratio"]) for row in csv.DictReader(f)]
    expected = score(model, x, "ratio", k=16, background=background[1])
    np.testing.assert_allclose(column, expected.numpy(), atol=1e-5)
    assert load_calibration(run).background == str(background[0].resolve())
    s, threshold, flags = score_against_threshold(run, x)  # the background reopened from the calibration
    torch.testing.assert_close(s, expected)
    assert threshold == summary["threshold"] and torch.equal(flags, s > threshold)


def test_hierarchical_scores_are_seeded_per_example_too(cli, hvae_run, tmp_path):
    run, model = hvae_run
    # --score all: those this run gives (no regret for a hierarchy, no complexity for Bernoulli grey levels)
    r = cli("anomaly", run, "--score", "all", "-k", "4", "--out", tmp_path / "s.csv", "--json")
    assert r.code == 0, r.err
    assert list(json.loads(r.out)["thresholds"]) == ["nll", "elbo", "recon", "latent"]
    x = torch.rand(6, 1, 8, 8)
    s = score_all(model, x, ("nll", "elbo", "recon"), ScoreSettings(k=8))
    for name, v in s.items():
        torch.testing.assert_close(score_all(model, x[2:4], (name,), ScoreSettings(k=8))[name], v[2:4])


def test_detector_follows_pyod_conventions(tmp_path):
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    benign, malignant = X[y == 1], X[y == 0]
    det = VAEDetector(epochs=15, hidden=(32,), latent_dim=4, k=8, contamination=0.05, run_dir=str(tmp_path / "run"))
    assert det.fit(benign[:300]) is det
    assert det.labels_.sum() == int(0.05 * 300) and det.threshold_ == threshold_at(det.decision_scores_, 0.05)
    scores = det.decision_function(np.concatenate([benign[300:], malignant]))
    from sklearn.metrics import roc_auc_score

    truth = np.r_[np.zeros(len(benign) - 300), np.ones(len(malignant))]
    assert roc_auc_score(truth, scores) > 0.9
    assert set(det.predict(malignant)) <= {0, 1} and det.predict(malignant).mean() > 0.5
    np.testing.assert_array_equal(det.score_samples(malignant), -det.decision_function(malignant))
    assert load_calibration(tmp_path / "run").threshold == det.threshold_  # the run keeps its calibration
    # images: rows of image_shape, 8-bit, through a conv model
    imgs = (blobs(64, 2)[0] * 255).astype(np.uint8).reshape(64, -1)
    conv = VAEDetector(model="conv", channels=(8,), latent_dim=2, epochs=2, k=4, image_shape=(1, 8, 8),
                       anomaly_score="elbo").fit(imgs)
    assert conv.decision_function(imgs[:5]).shape == (5,)
    # the ratio trains a background VAE on perturbed rows, kept beside the run and named by its calibration
    ratio = VAEDetector(anomaly_score="ratio", perturb=0.3, epochs=5, hidden=(32,), latent_dim=4, k=8,
                        run_dir=str(tmp_path / "ratio")).fit(benign[:300])
    assert load_calibration(tmp_path / "ratio").background == str((tmp_path / "ratio-background").resolve())
    expected = score(tmp_path / "ratio", ratio._prepare(malignant[:5]), "ratio", k=8,
                     background=tmp_path / "ratio-background")
    np.testing.assert_allclose(ratio.decision_function(malignant[:5]), expected.numpy())


# scikit-learn's estimator checks with tiny settings. VAEDetector declares no estimator type, so
# scikit-learn runs its generic checks (input validation, fit idempotence, subset and order invariance
# of decision_function, pickling, n_features_in_, ...). The outlier-detector checks
# (check_outliers_train, check_outlier_contamination, check_outliers_fit_predict) do not apply: they
# require scikit-learn's sign conventions (predict in {-1, 1}, decision_function >= 0 for inliers),
# and the detector follows PyOD's (predict in {0, 1}, higher = more anomalous). check_array_api_input
# skips itself (SCIPY_ARRAY_API is not set).
def _checks():
    from sklearn.utils.estimator_checks import parametrize_with_checks

    return parametrize_with_checks([VAEDetector(epochs=1, hidden=(8,), latent_dim=2, k=2)])


@_checks()
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
