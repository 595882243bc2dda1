"""Lossless compression (issue 20): the discretised logistic is a true pmf, bits-back ANS round
trips exactly for binary and 8-bit data (one image, sizes not divisible by the chain count, every
model family the coder takes, both hierarchy orders), the coded rate is the coded symbols'
information content, and every damaged file or bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit.compression import compress, decompress, read_info
from vaekit.compression.container import FORMAT_VERSION, MAGIC, pack, unpack
from vaekit.compression.layers import Layers
from vaekit.distributions import DiscretizedLogistic
from vaekit.errors import VaekitError
from vaekit.models.conv import ConvConfig, ConvVAE
from vaekit.models.hvae import HVAE, HVAEConfig
from vaekit.models.mlp import MLPVAE, MLPConfig

pytest.importorskip("constriction")

SHAPE = (1, 8, 8)
EIGHT_BIT = ("logistic", "logistic-mix", "logistic-ar")  # the likelihoods of 8-bit data


def assert_user_error(r, *needles: str) -> None:
    assert r.code == 2, (r.code, r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def mlp(likelihood: str, seed: int = 0) -> MLPVAE:
    torch.manual_seed(seed)
    return MLPVAE(MLPConfig(data_shape=SHAPE, hidden=(16,), latent_dim=3, likelihood=likelihood)).eval()


def hvae(likelihood: str = "bernoulli") -> HVAE:
    torch.manual_seed(1)
    return HVAE(HVAEConfig(data_shape=SHAPE, latent_dims=(6, 3), hidden=(16, 8), depth=1,
                           likelihood=likelihood)).eval()


def eight_bit(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(1, *SHAPE))
    return np.clip(base + rng.integers(-20, 21, size=(n, *SHAPE)), 0, 255).astype(np.uint8)


def binary(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, *SHAPE)) < 0.3).astype(np.float32)


# -- the discretised logistic ---------------------------------------------------------------------------


def test_logistic_masses_sum_to_one_and_match_log_prob():
    torch.manual_seed(0)
    loc = torch.cat([torch.rand(40) * 1.6 - 0.3, torch.tensor([-5.0, 6.0, 0.0, 1.0])]).double()
    log_scale = torch.cat([torch.rand(40) * 8 - 7, torch.tensor([-6.9, -6.9, 2.0, -6.9])]).double()
    d = DiscretizedLogistic(loc[None], log_scale[None])
    p = d.probs()  # [1, 44, 256]
    assert p.shape == (1, 44, 256) and (p >= 0).all()
    assert torch.allclose(p.sum(-1), torch.ones(1, 44, dtype=torch.float64), atol=1e-12, rtol=0)
    levels = torch.arange(256, dtype=torch.float64) / 255
    log_masses = torch.stack([d.element_log_prob(levels[k].expand(1, 44)) for k in range(256)], -1)
    assert torch.allclose(log_masses.exp(), p, atol=1e-12, rtol=0)
    assert torch.allclose(d.mean, (p * levels).sum(-1), atol=1e-12)  # the exact mean
    s = d.sample(torch.Generator().manual_seed(0))
    assert torch.equal(s, (s * 255).round() / 255) and s.min() >= 0 and s.max() <= 1


def test_logistic_mixture_is_a_pmf_whose_log_prob_reads_its_table():
    from vaekit.likelihoods import LIKELIHOODS

    torch.manual_seed(0)
    lik = LIKELIHOODS.get("logistic-mix")(SHAPE)
    out = torch.randn(3, 15, *SHAPE[1:]).double() * 2
    d = lik(out)
    p = d.probs()  # [3, 1, 8, 8, 256]
    assert p.shape == (3, *SHAPE, 256) and (p >= 0).all()
    assert torch.allclose(p.sum(-1), torch.ones(3, *SHAPE, dtype=torch.float64), atol=1e-12, rtol=0)
    x = torch.from_numpy(eight_bit(3)).double() / 255
    k = (x * 255).round().long()
    direct = torch.log(p.gather(-1, k.unsqueeze(-1)).squeeze(-1))
    assert torch.allclose(d.element_log_prob(x), direct, atol=1e-9)
    levels = torch.arange(256, dtype=torch.float64) / 255
    assert torch.allclose(d.mean, (p * levels).sum(-1), atol=1e-9)
    assert torch.equal(d.mode(), p.argmax(-1).double() / 255)
    # one component: the mixture is that logistic
    one = lik(torch.cat([torch.full((3, 5, *SHAPE[1:]), -1e4).double().index_fill(1, torch.tensor([2]), 0.0),
                         out[:, 5:]], 1))
    single = DiscretizedLogistic(one.loc[..., 2], one.log_scale[..., 2])
    assert torch.allclose(one.probs(), single.probs(), atol=1e-12)
    s = d.sample(torch.Generator().manual_seed(0))
    assert s.shape == x.shape and torch.equal(s, (s * 255).round() / 255)


def test_autoregressive_logistic_is_a_pmf_over_whole_images():
    from vaekit.distributions import AutoregressiveLogistic
    from vaekit.errors import VaekitError
    from vaekit.likelihoods import LIKELIHOODS

    torch.manual_seed(0)
    lik = LIKELIHOODS.get("logistic-ar")((1, 1, 2))
    d = lik(torch.randn(1, 8, 1, 2).double() * 2)
    # every pair of levels of a 1x2 image: the joint masses sum to one (pixel 2 depends on pixel 1)
    levels = torch.arange(256, dtype=torch.float64) / 255
    pairs = torch.stack(torch.meshgrid(levels, levels, indexing="ij"), -1).reshape(-1, 1, 1, 2)
    joint = AutoregressiveLogistic(d.loc.expand(len(pairs), -1, -1, -1), d.log_scale.expand(len(pairs), -1, -1, -1),
                                   d.coefs.expand(len(pairs), -1, -1, -1, -1)).log_prob(pairs).exp()
    assert abs(joint.sum().item() - 1) < 1e-9
    assert abs(d.coefs[0, 0, 0, 1, 0].item()) > 0.1  # the second pixel's left coefficient is in play
    # log_prob is the raster chain rule: each pixel's logistic, located by its already-known neighbours
    lik = LIKELIHOODS.get("logistic-ar")(SHAPE)
    d = lik(torch.randn(2, 8, *SHAPE[1:]).double())
    x = torch.from_numpy(eight_bit(2)).double() / 255
    lp = d.element_log_prob(x)
    for i, j in ((0, 0), (0, 5), (3, 0), (3, 7), (7, 4)):
        nb = torch.stack([x[..., i + di, j + dj] if i + di >= 0 and 0 <= j + dj < 8 else torch.zeros(2, 1).double()
                          for di, dj in AutoregressiveLogistic.OFFSETS], -1)
        loc = d.loc[..., i, j] + (d.coefs[..., i, j, :] * nb).sum(-1)
        one = DiscretizedLogistic(loc, d.log_scale[..., i, j], 0).element_log_prob(x[..., i, j])
        assert torch.allclose(lp[..., i, j], one, atol=1e-12)
    for v in (d.sample(torch.Generator().manual_seed(0)), d.mode()):
        assert v.shape == x.shape and torch.equal(v, (v * 255).round() / 255)
    with pytest.raises(VaekitError, match="logistic-ar likelihood is for images"):
        LIKELIHOODS.get("logistic-ar")((30,))


def test_every_family_sizes_its_decoder_for_two_parameters_and_keeps_its_keys():
    from vaekit.models.ladder import LadderConfig, LadderVAE

    builders = {
        "mlp": lambda lik: MLPVAE(MLPConfig(data_shape=SHAPE, hidden=(8,), latent_dim=2, likelihood=lik)),
        "conv": lambda lik: ConvVAE(ConvConfig(data_shape=SHAPE, channels=(8,), latent_dim=2, likelihood=lik)),
        "hvae": lambda lik: HVAE(HVAEConfig(data_shape=SHAPE, latent_dims=(4, 2), hidden=(8, 8), likelihood=lik)),
        "hvae-conv": lambda lik: HVAE(HVAEConfig(data_shape=SHAPE, latent_dims=(4, 2), hidden=(8, 8),
                                                 channels=(8,), likelihood=lik)),
        "ladder": lambda lik: LadderVAE(LadderConfig(data_shape=SHAPE, topology="8x1,1x1", width=8, zdim=2,
                                                     likelihood=lik)),
    }
    x = torch.from_numpy(eight_bit(3)).float() / 255
    for name, build in builders.items():
        plain, logistic = build("bernoulli"), build("logistic")
        assert plain.state_dict().keys() == logistic.state_dict().keys(), name
        out = logistic(x)
        assert isinstance(out.px, DiscretizedLogistic) and out.px.loc.shape == (3, *SHAPE), name
        assert torch.isfinite(out.px.log_prob(x)).all(), name


def test_evaluate_reports_a_true_discrete_nll(tmp_path):
    from helpers import tiny_train
    from vaekit.data import DataConfig, load_data
    from vaekit.elbo import elbo_parts
    from vaekit.evaluation.likelihood import evaluate

    np.save(tmp_path / "u8.npy", eight_bit(120))
    model, _ = tiny_train(tmp_path / "run", data=tmp_path / "u8.npy", epochs=1, overrides={"likelihood": "logistic"})
    test = load_data(DataConfig(spec=str(tmp_path / "u8.npy"))).test
    result = evaluate(model, test, k=4)
    assert result.nll > 0 and math.isclose(result.bits_per_dim, result.nll / (64 * math.log(2)))
    # the reconstruction term is -sum log P(level) read off the 256-level table
    x = test.x
    with torch.no_grad():
        out = model(x, generator=torch.Generator().manual_seed(0))
        recon = elbo_parts(model, out, x)["recon"]
        table = out.px.probs()
        k = (x.double() * 255).round().long()
        direct = -torch.log(table.gather(-1, k.unsqueeze(-1)).squeeze(-1)).flatten(1).sum(1)
    assert torch.allclose(recon.double(), direct, rtol=1e-4)


def test_logistic_refuses_data_that_is_not_8_bit(cli, tmp_path):
    r = cli("train", "--data", "digits", "--out", tmp_path / "r", "--likelihood", "logistic", "--epochs", "1",
            "--quiet")
    assert_user_error(r, "logistic likelihood models 8-bit data", "digits")
    np.save(tmp_path / "u8.npy", eight_bit(50))
    r = cli("train", "--data", tmp_path / "u8.npy", "--binarize", "static", "--out", tmp_path / "r",
            "--likelihood", "logistic", "--epochs", "1", "--quiet")
    assert_user_error(r, "not 8-bit")
    assert not (tmp_path / "r").exists()


# -- round trips and rates -----------------------------------------------------------------------------


@pytest.mark.parametrize("n, lanes", [(1, 32), (13, 5), (9, 1)])
def test_round_trip_bernoulli_and_logistic(n, lanes):
    cases = [(mlp("bernoulli"), binary(n))] + [(mlp(lik), eight_bit(n)) for lik in EIGHT_BIT]
    for model, x in cases:
        blob = compress(model, x, lanes=lanes)
        y = decompress(model, blob)
        assert y.dtype == x.dtype and y.shape == x.shape and np.array_equal(x, y)
        assert read_info(blob)["coder"]["lanes"] == min(lanes, n)


def test_round_trip_conv_and_hvae_both_orders_and_the_initial_bits():
    torch.manual_seed(0)
    conv = ConvVAE(ConvConfig(data_shape=SHAPE, channels=(8,), latent_dim=3, likelihood="logistic")).eval()
    x = eight_bit(11)
    assert np.array_equal(decompress(conv, compress(conv, x, lanes=4)), x)
    model, xb = hvae(), binary(11).astype(np.uint8)
    initial = {}
    for order in ("bit-swap", "bb-ans"):
        blob = compress(model, xb, lanes=1, order=order)
        assert np.array_equal(decompress(model, blob), xb)
        info = read_info(blob)
        initial[order] = info["rate"]["initial_bits"]
        assert info["coder"]["method"] == order and len(info["coder"]["latent_grids"]) == 2
    # Bit-Swap's first image needs seed bits for z_1 only, BB-ANS's for z_1 and z_2
    assert initial["bit-swap"] < initial["bb-ans"]


def test_rate_is_the_information_of_the_coded_symbols():
    for model, x in ((mlp("logistic"), eight_bit(40)), (mlp("bernoulli"), binary(40)), (hvae(), binary(40)),
                     (mlp("logistic-mix"), eight_bit(40)), (mlp("logistic-ar"), eight_bit(40))):
        rate = read_info(compress(model, x, lanes=2))["rate"]
        ideal = rate["information_bits"] + rate["initial_bits"]
        assert abs(rate["payload_bits"] - ideal) < 0.01 * ideal, rate
        assert rate["initial_bits"] > 0
        dims = x[0].size * len(x)
        assert math.isclose(rate["bits_per_dim"], rate["payload_bits"] / dims)


def test_the_same_input_gives_the_same_bytes_and_outputs_agree_across_batch_sizes():
    model, x = mlp("logistic"), eight_bit(23)
    assert compress(model, x, lanes=4) == compress(model, x, lanes=4)
    # the coder quantises float64 outputs to 1/4096: whatever the batch, the same numbers
    layers = Layers(model)
    inp = x.reshape(23, -1) / 255.0
    whole = layers.posterior(0, inp)
    parts = [layers.posterior(0, inp[i : i + 5]) for i in range(0, 23, 5)]
    for a, b in zip(whole, (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))):
        assert np.array_equal(a, b)
    z = np.random.default_rng(0).standard_normal((23, 3))
    from vaekit.compression.tables import LogisticCodec

    codec = LogisticCodec()
    whole = codec.params(layers.observation(z))
    one_by_one = np.concatenate([codec.params(layers.observation(z[i : i + 1])) for i in range(23)])
    assert np.array_equal(whole, one_by_one)


def test_bernoulli_codes_black_and_white_8_bit_images():
    model = mlp("bernoulli")
    x = (binary(6) * 255).astype(np.uint8)
    blob = compress(model, x)
    assert read_info(blob)["data"]["one"] == 255
    assert np.array_equal(decompress(model, blob), x)


# -- the file's checks --------------------------------------------------------------------------------


def test_every_single_byte_change_is_detected_and_truncation_too():
    model = mlp("bernoulli")
    blob = compress(model, binary(2))
    for i in range(len(blob)):
        damaged = bytearray(blob)
        damaged[i] ^= 0x01 if i % 2 else 0xFF
        with pytest.raises(VaekitError, match="compressed data: "):
            decompress(model, bytes(damaged))
    for cut in (0, 3, 12, len(blob) // 2, len(blob) - 1):
        with pytest.raises(VaekitError, match=r"truncated|not a vaekit|damaged"):
            decompress(model, blob[:cut])


def test_another_model_and_a_newer_format_are_refused():
    model, x = mlp("bernoulli"), binary(3)
    blob = compress(model, x)
    with pytest.raises(VaekitError, match="compressed with another model"):
        decompress(mlp("bernoulli", seed=1), blob)
    header, payload = unpack(blob)
    newer = bytearray(pack(header, payload))
    newer[len(MAGIC)] = FORMAT_VERSION + 1
    with pytest.raises(VaekitError, match="newer than this vaekit"):
        unpack(bytes(newer))


def test_runs_that_cannot_code_are_refused():
    gaussian = MLPVAE(MLPConfig(data_shape=SHAPE, hidden=(8,), latent_dim=2, likelihood="gaussian"))
    with pytest.raises(VaekitError, match=r"gaussian likelihood cannot code.*bernoulli, logistic, logistic-mix or "):
        compress(gaussian, eight_bit(2))
    with pytest.raises(VaekitError, match="binary data"):
        compress(mlp("bernoulli"), eight_bit(2))
    with pytest.raises(VaekitError, match=r"integers 0\.\.255"):
        compress(mlp("logistic"), np.full((2, *SHAPE), 256, dtype=np.int16))
    with pytest.raises(VaekitError, match=r"integers 0\.\.255"):
        compress(mlp("logistic"), np.full((2, *SHAPE), 0.5, dtype=np.float32))
    with pytest.raises(VaekitError, match="do not fit"):
        compress(mlp("logistic"), np.zeros((2, 1, 4, 4), dtype=np.uint8))


# -- the commands -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logistic_run(tmp_path_factory):
    from helpers import tiny_train

    root = tmp_path_factory.mktemp("logistic")
    np.save(root / "u8.npy", eight_bit(150))
    tiny_train(root / "run", data=root / "u8.npy", epochs=1, overrides={"likelihood": "logistic"})
    return root / "run"


def test_cli_round_trip_of_an_array_and_a_folder(cli, tmp_path, logistic_run):
    import json

    x = eight_bit(7, seed=3)
    np.save(tmp_path / "x.npy", x)
    r = cli("compress", logistic_run, "--data", tmp_path / "x.npy", "--out", tmp_path / "x.vkz", "--json")
    assert r.code == 0, r.err
    values = json.loads(r.out)
    assert values["count"] == 7 and values["bits_per_dim"] > 0 and values["initial_bits"] > 0
    r = cli("decompress", tmp_path / "x.vkz", "--out", tmp_path / "y.npy")  # the run named in the file
    assert r.code == 0, r.err
    assert np.array_equal(np.load(tmp_path / "y.npy"), x)

    folder = tmp_path / "images"
    for i, a in enumerate(x):
        (folder / ("sub" if i % 2 else "")).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a[0], "L").save(folder / ("sub" if i % 2 else "") / f"im{i}.png")
    assert cli("compress", logistic_run, "--data", folder, "--out", tmp_path / "f.vkz").code == 0
    r = cli("decompress", tmp_path / "f.vkz", "--out", tmp_path / "back", "--run", logistic_run)
    assert r.code == 0, r.err
    originals = sorted(p.relative_to(folder) for p in folder.rglob("*.png"))
    assert sorted(p.relative_to(tmp_path / "back") for p in (tmp_path / "back").rglob("*.png")) == originals
    for rel in originals:
        with Image.open(folder / rel) as a, Image.open(tmp_path / "back" / rel) as b:
            assert a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))


def test_cli_bad_inputs_are_one_line_with_nothing_written(cli, tmp_path, logistic_run):
    np.save(tmp_path / "x.npy", eight_bit(3))
    np.save(tmp_path / "bad.npy", np.full((3, *SHAPE), 300, dtype=np.int16))
    r = cli("compress", logistic_run, "--data", tmp_path / "bad.npy", "--out", tmp_path / "bad.vkz")
    assert_user_error(r, "integers 0..255", "300")
    assert not (tmp_path / "bad.vkz").exists()
    assert cli("compress", logistic_run, "--data", tmp_path / "x.npy", "--out", tmp_path / "x.vkz").code == 0
    before = (tmp_path / "x.vkz").read_bytes()
    assert_user_error(cli("compress", logistic_run, "--data", tmp_path / "x.npy", "--out", tmp_path / "x.vkz"),
                      "already exists", "--overwrite")
    assert (tmp_path / "x.vkz").read_bytes() == before
    np.save(tmp_path / "y.npy", np.zeros(1))
    assert_user_error(cli("decompress", tmp_path / "x.vkz", "--out", tmp_path / "y.npy"), "already exists")
    damaged = bytearray(before)
    damaged[len(damaged) // 2] ^= 0x10
    (tmp_path / "d.vkz").write_bytes(bytes(damaged))
    assert_user_error(cli("decompress", tmp_path / "d.vkz", "--out", tmp_path / "z.npy"), "d.vkz", "damaged")
    assert not (tmp_path / "z.npy").exists()
    assert_user_error(cli("decompress", tmp_path / "x.vkz", "--out", tmp_path / "z.png"), "must be a .npy")


def test_cli_refuses_a_gaussian_run(cli, tmp_path):
    from helpers import tiny_train

    np.save(tmp_path / "x.npy", eight_bit(60))
    tiny_train(tmp_path / "g", data=tmp_path / "x.npy", epochs=1, overrides={"likelihood": "gaussian"})
    r = cli("compress", tmp_path / "g", "--data", tmp_path / "x.npy", "--out", tmp_path / "g.vkz")
    assert_user_error(r, "gaussian likelihood cannot code", "bernoulli, logistic, logistic-mix or logistic-ar")
    assert not (tmp_path / "g.vkz").exists()


@pytest.mark.parametrize("name", ["../escaped.png", "ABSOLUTE", "sub/../../up.png", "x.exe", "a\\b.png"])
def test_a_crafted_header_cannot_write_outside_the_output_folder(cli, tmp_path, logistic_run, name):
    from vaekit.compression.container import pack, unpack

    folder = tmp_path / "images"
    folder.mkdir()
    for i, a in enumerate(eight_bit(2, seed=4)):
        Image.fromarray(a[0], "L").save(folder / f"im{i}.png")
    assert cli("compress", logistic_run, "--data", folder, "--out", tmp_path / "f.vkz").code == 0
    header, payload = unpack((tmp_path / "f.vkz").read_bytes())
    header.pop("payload_bytes")
    absolute = tmp_path / "absolute.png"
    header["data"]["names"][0] = str(absolute) if name == "ABSOLUTE" else name  # the checksum is no signature
    (tmp_path / "evil.vkz").write_bytes(pack(header, payload))
    out = tmp_path / "deep" / "out"
    assert_user_error(cli("decompress", tmp_path / "evil.vkz", "--out", out, "--run", logistic_run),
                      "refusing the file name")
    assert not out.exists() and not (tmp_path / "deep" / "escaped.png").exists()
    assert not absolute.exists()
