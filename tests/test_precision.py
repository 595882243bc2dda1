"""Issue 18: --precision auto, fp16 with a gradient scaler, inference precision, and the pieces of
the distributed scheme that need no process group (global-batch randomness, shares, chunks)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import vaekit
from helpers import read_metrics, tiny_train
from vaekit import precision as precision_module
from vaekit import sharding
from vaekit.errors import VaekitError
from vaekit.precision import Precision, resolve_precision
from vaekit.training import distributed
from vaekit.training.config import TrainConfig


@pytest.fixture(params=[True, False], ids=["amx", "no-amx"])
def amx(request, monkeypatch):
    """Pretend the CPU has AMX (or no bf16 instructions at all)."""
    monkeypatch.setattr(precision_module, "cpu_bf16_isa", lambda: "amx" if request.param else None)
    return request.param


@pytest.fixture
def avx512_bf16(monkeypatch, tmp_path):
    """Pretend the CPU has AVX512-BF16 without AMX, with the probe on, a fresh cache, and a fake
    timing whose bf16 speed-up the test sets; counts the measurements."""
    monkeypatch.setattr(precision_module, "cpu_bf16_isa", lambda: "avx512_bf16")
    monkeypatch.setenv("VAEKIT_PRECISION_PROBE", "1")
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
    fake = {"speedup": 3.0, "calls": 0}

    def measure(*args, **kwargs):
        fake["calls"] += 1
        return precision_module.ProbeResult(0.3, 0.3 / fake["speedup"], 0.6, 0.6 / fake["speedup"])

    monkeypatch.setattr(precision_module, "measure_bf16_speedup", measure)
    monkeypatch.setattr(precision_module, "_probed", {})
    return fake


def probe_files(tmp_path) -> list:
    return sorted((tmp_path / "cache" / precision_module.PROBE_DIR).glob("*.json"))


def test_auto_picks_bf16_on_an_amx_cpu_and_fp32_elsewhere(amx):
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == ("bf16" if amx else "fp32") and chosen.requested == "auto"
    assert ("AMX" in chosen.reason) and chosen.describe().startswith(f"precision auto -> {chosen.name} (")
    assert resolve_precision("fp32", "cpu").name == "fp32" and resolve_precision("bf16", "cpu").name == "bf16"
    assert TrainConfig().precision == "auto"


def test_auto_probes_a_cpu_with_avx512_bf16_but_no_amx_once_and_caches_the_result(avx512_bf16, tmp_path,
                                                                                   monkeypatch):
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == "bf16" and avx512_bf16["calls"] == 1
    assert "probe ran bf16 at 3.00x fp32 on an MLP step and 3.00x on a conv step" in chosen.reason
    (path,) = probe_files(tmp_path)
    entry = json.loads(path.read_text())
    assert "torch " in entry["key"] and "threads" in entry["key"]
    assert {k: v for k, v in entry.items() if k != "key"} == pytest.approx(
        {"mlp_fp32_s": 0.3, "mlp_bf16_s": 0.1, "conv_fp32_s": 0.6, "conv_bf16_s": 0.2})
    avx512_bf16["speedup"] = 1.0  # the machine got slower: the cached choice stands, nothing is timed
    assert resolve_precision("auto", "cpu").name == "bf16" and avx512_bf16["calls"] == 1
    monkeypatch.setattr(precision_module, "_probed", {})  # a new process reads the file
    assert resolve_precision("auto", "cpu").name == "bf16" and avx512_bf16["calls"] == 1
    assert resolve_precision("auto", "cpu", probe=False).name == "fp32"  # a rank that takes rank 0's choice
    for damaged in ("{not json", "[1, 2]", json.dumps({**entry, "mlp_bf16_s": 0.0}), json.dumps({"key": "other"})):
        path.write_text(damaged)  # unreadable or implausible: measured again, never an error
        monkeypatch.setattr(precision_module, "_probed", {})
        chosen = resolve_precision("auto", "cpu")
        assert chosen.name == "fp32" and "bf16 takes 1.25x overall" in chosen.reason
    assert avx512_bf16["calls"] == 5
    assert resolve_precision("fp32", "cpu").name == "fp32" and avx512_bf16["calls"] == 5  # only auto probes
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)  # another key: its own file, the first one kept
    resolve_precision("auto", "cpu")
    assert len(probe_files(tmp_path)) == 2 and avx512_bf16["calls"] == 6


def test_the_probe_can_be_turned_off(avx512_bf16, monkeypatch):
    monkeypatch.setenv("VAEKIT_PRECISION_PROBE", "0")
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == "fp32" and "VAEKIT_PRECISION_PROBE=0" in chosen.reason and avx512_bf16["calls"] == 0


def test_the_real_probe_times_both_precisions_and_bf16_must_lose_on_neither():
    state = torch.random.get_rng_state()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # as a caller might hold it
        result = precision_module.measure_bf16_speedup(repeats=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # a probe never moves a seeded run
    assert min(dataclasses.astuple(result)) > 0
    assert result.speedup == pytest.approx(math.sqrt(result.speedups[0] * result.speedups[1]))
    assert precision_module.ProbeResult(1.0, 0.25, 1.0, 0.5).pays()  # 4x and 2x
    assert not precision_module.ProbeResult(1.0, 0.1, 1.0, 1.1).pays()  # 10x on one, slower on the other
    assert not precision_module.ProbeResult(1.0, 0.9, 1.0, 0.9).pays()  # 1.1x: within noise


def test_a_resumed_auto_run_keeps_the_precision_its_checkpoint_was_trained_in(cli, tmp_path, avx512_bf16):
    run = tmp_path / "run"
    args = ("--data", "digits", "--limit", "300", "--hidden", "32", "--latent-dim", "4", "--seed", "0", "--out", run)
    assert cli("train", *args, "--epochs", "1").code == 0
    for path in probe_files(tmp_path):
        path.unlink()
    precision_module._probed.clear()
    avx512_bf16["speedup"] = 1.0  # on "another machine" auto would pick fp32
    r = cli("train", *args, "--epochs", "2", "--resume")
    assert r.code == 0, r.err
    assert "trained in bf16; auto continues in bf16" in r.err
    assert [m["precision"] for m in read_metrics(run)] == ["bf16", "bf16"]


def test_unknown_precision_and_fp16_off_cuda_are_refused():
    with pytest.raises(VaekitError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(VaekitError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(VaekitError, match="fp16 needs a CUDA device"):
        TrainConfig(precision="fp16")
    with pytest.raises(VaekitError, match="unknown precision 'half'"):
        TrainConfig(precision="half")
    assert TrainConfig(precision="fp16", device="cuda").precision == "fp16"  # checked against the GPU at start


def test_the_choice_is_logged_and_recorded_and_inference_follows_it(cli, tmp_path, amx):
    run = tmp_path / "run"
    r = cli("train", "--data", "digits", "--limit", "300", "--hidden", "32", "--latent-dim", "4", "--epochs", "1",
            "--out", run)
    assert r.code == 0, r.err
    expected = "bf16" if amx else "fp32"
    assert f"precision auto -> {expected} (" in r.err
    assert read_metrics(run)[-1]["precision"] == expected
    assert json.loads((run / "config.json").read_text())["training"]["precision"] == "auto"
    model = vaekit.load(run)
    assert model.inference_precision == expected and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    x = torch.rand(6, 1, 8, 8)
    q = model.encode(x)
    assert q.mean.dtype == q.logvar.dtype == model.decode(q.mean).dtype == torch.float32
    exact = vaekit.load(run, precision="fp32")
    assert exact.inference_precision == "fp32"
    assert torch.allclose(q.mean, exact.encode(x).mean, atol=0.05)  # bf16 rounding, not a different model
    # the importance-weighted likelihood of these Bernoulli logits follows auto too (a density that tolerates
    # bf16 rounding, VAE.likelihood_precision); bf16 when asked for
    assert model.config.likelihood == "bernoulli"
    auto, fp32, bf16 = (json.loads(cli("evaluate", run, "--iw", "4", "--json", *extra).out)
                        for extra in ((), ("--precision", "fp32"), ("--precision", "bf16")))
    assert auto == (bf16 if amx else fp32)
    assert bf16["nll"] != fp32["nll"] and bf16["nll"] == pytest.approx(fp32["nll"], abs=0.5)


@pytest.mark.parametrize(("model_name", "likelihood", "expected"), [
    ("mlp", "bernoulli", "bf16"), ("mlp", "logistic", "fp32"), ("mlp", "gaussian", "fp32"),
    ("hvae", "bernoulli", "fp32"),
])
def test_auto_estimates_likelihoods_in_bf16_only_where_the_density_tolerates_its_rounding(amx, model_name, likelihood,
                                                                                          expected):
    from vaekit.models import MODELS

    cls = MODELS.get(model_name)
    model = cls(cls.config_class(data_shape=(1, 4, 4), likelihood=likelihood)).eval().set_precision("auto")
    with model.likelihood_precision() as used:
        assert used == (expected if amx else "fp32")
    with model.likelihood_precision(exact=True) as used:  # anomaly scores: fp32 under auto on every machine
        assert used == "fp32"
    assert model.set_precision("bf16").inference_precision == "bf16"
    with model.likelihood_precision() as used:  # an explicit bf16 is honoured
        assert used == "bf16"


def test_the_bernoulli_density_is_exact_under_bf16_autocast():
    """The x * logit term is a product of K x B logits with the data: under autocast it would run in bf16
    while the softplus term stays fp32, and the two would no longer cancel (0.25 nats at K = 1000)."""
    from vaekit.distributions import Bernoulli

    g = torch.Generator().manual_seed(0)
    logits, x = torch.randn(8, 3, 1, 6, 6, generator=g) * 12, torch.rand(3, 1, 6, 6, generator=g)
    exact = Bernoulli(logits, event_ndim=3).log_prob(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = Bernoulli(logits, event_ndim=3).log_prob(x)
    assert under.dtype == torch.float32 and torch.equal(under, exact)


def test_densities_are_float32_under_bf16_autocast():
    from vaekit.elbo import elbo_parts
    from vaekit.models import MODELS

    cls = MODELS.get("mlp")
    model = cls(cls.config_class(data_shape=(12,), hidden=(16,), latent_dim=3))
    x = torch.rand(5, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        parts = elbo_parts(model, out, x)
        log_w = model.log_importance_weights(x, None, model.encode(x), 3)
    assert out.posterior.mean.dtype == out.z.dtype == torch.float32  # the encoder ran in bf16, q(z|x) is fp32
    assert all(parts[k].dtype == torch.float32 for k in ("recon", "kl", "elbo")) and log_w.dtype == torch.float32


def test_autoencoder_kl_runs_bf16_inference_on_a_bf16_channels_last_copy():
    from vaekit.config import from_dict
    from vaekit.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig

    torch.manual_seed(0)
    model = AutoencoderKL(from_dict(AutoencoderKLConfig, {"block_out_channels": [8, 16], "norm_num_groups": 4,
                                                          "latent_channels": 2, "sample_size": 16})).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ref = model.decode(model.encode(x).mode())
        model.set_precision("bf16")
        out = model.decode(model.encode(x).mode())
        twin = model.__dict__["_twin"][0]
        assert twin.encoder.conv_in.weight.dtype == torch.bfloat16
        assert twin.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert out.dtype == torch.float32 and not torch.equal(out, ref)
        assert ((out - ref) ** 2).mean() < 1e-2 * ref.var()  # bf16 rounding: > 20 dB below the signal
        assert all(v.dtype == torch.float32 for v in model.state_dict().values())  # its own weights stay fp32
        tiled = model.decode_tiled(model.encode_tiled(x).mode(), tile=8)
        assert tiled.dtype == torch.float32 and tiled.shape == x.shape
        model.decoder.conv_out.bias.add_(1.0)  # changed weights: the copy is remade
        assert ((model.decode(model.encode(x).mode()) - (out + 1.0)) ** 2).mean() < 1e-2 * ref.var()
        model.train()  # training runs on the model itself (the trainer brings its own autocast)
        assert torch.allclose(model.decode(model.encode(x).mode()), ref + 1.0, atol=1e-5)


def test_fp16_trains_with_a_gradient_scaler_and_resumes_exactly(tmp_path, monkeypatch):
    """fp16 is CUDA-only for users; here its code path runs on the CPU (which has fp16 autocast and a
    GradScaler) by resolving every request to fp16."""
    from vaekit.training import trainer as trainer_module
    from vaekit.training.checkpoint import load_checkpoint

    monkeypatch.setattr(trainer_module, "resolve_precision",
                        lambda requested, device, **kw: Precision("fp16", requested, "test"))
    _, straight = tiny_train(tmp_path / "a", epochs=2, limit=300, precision="bf16")
    state = load_checkpoint(tmp_path / "a" / "checkpoint.safetensors")
    assert state["precision"] == "fp16" and state["scalers"]["model"]["scale"] > 0
    assert all(r["precision"] == "fp16" and math.isfinite(r["train_loss"]) for r in straight)
    tiny_train(tmp_path / "b", epochs=1, limit=300, precision="bf16")
    _, resumed = vaekit.resume(tmp_path / "b", epochs=2, progress=False)
    a, b = vaekit.load(tmp_path / "a", precision="fp32"), vaekit.load(tmp_path / "b", precision="fp32")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in straight]


def test_global_batch_draws_do_not_depend_on_the_split():
    gen = torch.Generator()

    def noise(shape):
        return torch.randn(shape, generator=gen)

    for shape, dim in (((10, 3), 0), ((4, 10, 3), 1), ((20, 2, 2), 0)):  # rows, [k, B, ...], k-major [k*B, ...]
        gen.manual_seed(0)
        full = noise(shape)
        parts = []
        for start, stop in [distributed.span(10, r, 3) for r in range(3)]:  # uneven: 4, 3, 3
            gen.manual_seed(0)
            local = list(shape)
            local[dim] = shape[dim] // 10 * (stop - start)
            with sharding.rows(start, stop, 10):
                parts.append(sharding.draw(noise, local, dim))
                assert sharding.global_rows(stop - start) == 10
        if shape[0] == 20:  # two sample-major copies of each shard
            got = torch.cat([p.unflatten(0, (2, -1)) for p in parts], 1).flatten(0, 1)
        else:
            got = torch.cat(parts, dim)
        assert torch.equal(got, full)
    # dynamic binarisation: u < p is torch.bernoulli's own rule, so one process keeps its numbers
    p = torch.rand(64, 20)
    torch.manual_seed(5)
    a = torch.bernoulli(p)
    torch.manual_seed(5)
    assert torch.equal(a, (torch.rand(p.shape) < p).float())


def test_shares_chunks_and_their_errors():
    assert distributed.shares(61, 2) == [31, 30] and distributed.span(61, 1, 2) == (31, 61)
    assert [distributed.span(10, r, 4) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    world = distributed.World(rank=1, size=3)
    assert distributed.chunk_rows(0, 7, world) == (3, 5)  # a share of a chunk with a row for every rank
    assert distributed.chunk_rows(4, 2, world) == (0, 2) and distributed.chunk_rows(5, 2, world) == (0, 0)
    assert distributed.chunk_seeds(3, 4) == distributed.chunk_seeds(3, 4) != distributed.chunk_seeds(4, 4)
    distributed.check_shares(100, 30, world)  # 30, 30, 30, 10: every batch has a row per rank
    with pytest.raises(VaekitError, match="torchrun started 3 ranks but there are only 2 training examples"):
        distributed.check_shares(2, 30, world)
    with pytest.raises(VaekitError, match="the last batch of each epoch has 1 of the 61 training examples"):
        distributed.check_shares(61, 30, world)
    with pytest.raises(VaekitError, match="4 rows per rank"):
        distributed.check_shares(100, 10, world, min_rows=4)
    distributed.check_shares(1, 128, distributed.SINGLE)  # one process: anything goes


def test_an_autoencoder_kl_resumed_across_a_layout_change_ends_as_if_uninterrupted(cli, tmp_path, avx512_bf16):
    """auto trains fp32 (contiguous weights); on resume auto would pick bf16 (channels-last): the run
    keeps fp32, and its weights' layout is settled before the fused Adam's moments are restored."""
    from test_image_autoencoders import AE_FLAGS, image_folder

    data = image_folder(tmp_path / "imgs", n=8)

    def train(out, epochs, *extra):
        r = cli("train", "--data", data, "--model", "autoencoder-kl", *AE_FLAGS, "--epochs", epochs,
                "--samples-per-epoch", "8", "--eval-samples", "4", "--seed", "0", "--out", out, *extra)
        assert r.code == 0, r.err
        return r

    avx512_bf16["speedup"] = 1.0
    train(tmp_path / "a", 2)
    train(tmp_path / "b", 1)
    for path in probe_files(tmp_path):
        path.unlink()
    precision_module._probed.clear()
    avx512_bf16["speedup"] = 3.0
    train(tmp_path / "b", 2, "--resume")  # (--quiet: the note is not logged; metrics.jsonl says it)
    assert [m["precision"] for m in read_metrics(tmp_path / "b")] == ["fp32", "fp32"]
    a, b = vaekit.load(tmp_path / "a", precision="fp32"), vaekit.load(tmp_path / "b", precision="fp32")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
