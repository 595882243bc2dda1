"""vaekit encode / decode: latents of whole datasets out to a file, chunk by chunk, and back."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from helpers import tiny_train
from test_bad_inputs import assert_user_error
from vaekit.data import ArrayData, load_examples
from vaekit.encoding import decode_latents, encode_dataset, open_latents
from vaekit.run import read_run_config

FP32 = ("--precision", "fp32")  # exact equality with the in-memory fp32 model (auto may choose bf16 on an AMX CPU)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("latents") / "run"
    model, _ = tiny_train(out, epochs=1, limit=300)
    return out, model


# Equal up to float rounding: on some CPUs (AMD's BLAS blocking) a matrix product's rows depend on how
# many rows the batch has, so a chunked encode can differ from one full batch in the last bit.
ROUNDING = {"rtol": 1e-5, "atol": 1e-6}


def test_encode_then_decode_reproduces_reconstruct_exactly(cli, digits_run, tmp_path):
    run, model = digits_run
    r = cli("encode", run, *FP32, "--out", tmp_path / "z.safetensors", "--batch-size", "100", "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["n"] == 1797 and summary["tensors"] == {"mean": [1797, 4], "logvar": [1797, 4], "y": [1797]}
    cfg = read_run_config(run)
    x = load_examples(cfg.data, cfg.data_info).data.x  # every example, in the source's own order
    with safe_open(str(tmp_path / "z.safetensors"), "pt") as f:  # the preallocated layout reads as safetensors
        mean, logvar, y = f.get_tensor("mean"), f.get_tensor("logvar"), f.get_tensor("y")
        assert f.metadata()["latent"] == "mean" and f.metadata()["split"] == "all"
    with torch.no_grad():
        q = model.encode(x)
        reconstruction = model.decode(q.mean)  # what `vaekit reconstruct` shows
    torch.testing.assert_close(mean, q.mean, **ROUNDING)
    torch.testing.assert_close(logvar, q.logvar, **ROUNDING)
    from sklearn.datasets import load_digits

    assert torch.equal(y, torch.from_numpy(load_digits().target).long())
    r = cli("decode", run, *FP32, tmp_path / "z.safetensors", "--out", tmp_path / "x.npy", "--batch-size", "1797")
    assert r.code == 0, r.err
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), reconstruction.numpy(), **ROUNDING)
    # the same latents as .npz and .npy (the latent alone), read back equal
    for suffix in (".npz", ".npy"):
        assert cli("encode", run, *FP32, "--out", tmp_path / f"z{suffix}", "--quiet").code == 0
        torch.testing.assert_close(open_latents(tmp_path / f"z{suffix}").chunk(0, 1797)[0], mean, **ROUNDING)
    assert sorted(np.load(tmp_path / "z.npz").files) == ["logvar", "mean", "y"]
    r = cli("decode", run, *FP32, tmp_path / "z.npz", "--out", tmp_path / "pngs", "--quiet")
    assert r.code == 0, r.err
    pngs = sorted((tmp_path / "pngs").iterdir())
    assert len(pngs) == 1797 and pngs[0].name == "000000.png"
    expected = (reconstruction[5, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    # one grey level at most: a rounding boundary may fall either side of the last bit
    assert np.abs(np.asarray(Image.open(pngs[5])).astype(int) - expected.astype(int)).max() <= 1
    assert cli("decode", run, *FP32, tmp_path / "z.npy", "--out", tmp_path / "grid.png", "-n", "16").code == 0
    assert Image.open(tmp_path / "grid.png").size[0] > 8


def test_samples_are_seeded_per_example_and_splits_follow_the_run(cli, digits_run, tmp_path):
    run, model = digits_run
    for b in ("7", "300"):
        assert cli("encode", run, "--split", "test", "--sample", "--seed", "3", "--batch-size", b,
                   "--out", tmp_path / f"s{b}.safetensors", "--quiet").code == 0
    a, _ = open_latents(tmp_path / "s7.safetensors").chunk(0, 10**6)
    b, _ = open_latents(tmp_path / "s300.safetensors").chunk(0, 10**6)
    torch.testing.assert_close(a, b, **ROUNDING)  # the same draws whatever the chunk size
    cfg = read_run_config(run)
    test = load_examples(cfg.data, cfg.data_info, "test").data
    assert len(a) == len(test) == cfg.data_info.n_test
    with torch.no_grad():
        q = model.encode(test.x)
    assert not torch.equal(a, q.mean) and torch.allclose(a.mean(0), q.mean.mean(0), atol=0.5)


def test_folder_paths_go_to_a_sidecar(cli, tmp_path):
    folder = tmp_path / "imgs"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(6):
            level = 20 * i + (100 if cls == "b" else 0)
            Image.fromarray(np.full((8, 8), level, np.uint8)).save(folder / cls / f"{i}.png")
    run = tmp_path / "run"
    tiny_train(run, data=str(folder), epochs=1)
    r = cli("encode", run, "--data", folder, "--out", tmp_path / "lat.safetensors", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["paths"] == str(tmp_path / "lat.paths.csv")
    with open(tmp_path / "lat.paths.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "path"] and len(rows) == 13
    assert rows[1] == ["0", str(folder / "a" / "0.png")] and rows[12] == ["11", str(folder / "b" / "5.png")]
    with safe_open(str(tmp_path / "lat.safetensors"), "pt") as f:
        assert f.get_tensor("y").tolist() == [0] * 6 + [1] * 6


def test_table_rows_decode_in_their_own_units(cli, table_csv, tmp_path):
    run = tmp_path / "run"
    model, _ = tiny_train(run, data=str(table_csv), epochs=1, data_options={"label_column": "label"})
    assert cli("encode", run, *FP32, "--out", tmp_path / "z.npz", "--quiet").code == 0
    r = cli("decode", run, *FP32, tmp_path / "z.npz", "--out", tmp_path / "rows.csv", "--quiet")
    assert r.code == 0, r.err
    with open(tmp_path / "rows.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["a", "b", "c", "d"] and len(rows) == 201
    info = read_run_config(run).data_info
    z = torch.from_numpy(np.load(tmp_path / "z.npz")["mean"])
    with torch.no_grad():
        expected = model.decode(z) * torch.tensor(info.standardize_std) + torch.tensor(info.standardize_mean)
    np.testing.assert_allclose(np.array(rows[1:], dtype=np.float64), expected.double().numpy(), rtol=1e-6)


def test_autoencoder_kl_latents_are_scaled_for_diffusion(tmp_path):
    from vaekit.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig

    torch.manual_seed(0)
    model = AutoencoderKL(AutoencoderKLConfig(block_out_channels=(8, 8), norm_num_groups=4, sample_size=8,
                                              in_channels=3, out_channels=3, latent_channels=2, shift_factor=0.1,
                                              mid_block_add_attention=False)).eval()
    data = ArrayData(torch.rand(5, 3, 8, 8) * 2 - 1)
    encode_dataset(model, data, tmp_path / "z.safetensors", sample=True, batch_size=2)
    with safe_open(str(tmp_path / "z.safetensors"), "pt") as f:
        z, scaled = f.get_tensor("z"), f.get_tensor("scaled")
        assert f.metadata()["scaling_factor"] == "0.18215"
    assert z.shape == (5, 2, 4, 4)
    assert torch.allclose(scaled, (z - 0.1) * 0.18215)
    # the scaled latents decode back through unscale_latents
    from vaekit.data import DataInfo

    latents = open_latents(tmp_path / "z.safetensors", key="scaled")
    info = DataInfo(kind="image", shape=(3, 8, 8), input_range=(-1.0, 1.0))
    decode_latents(model, latents, tmp_path / "x.npy", info)
    with torch.no_grad():
        expected = model.decode(z)
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), expected.numpy(), atol=1e-5)


def test_bad_inputs_write_nothing(cli, digits_run, tmp_path):
    run, _ = digits_run
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert_user_error(cli("encode", run, "--out", run / "model.safetensors"), "would overwrite", "model.safetensors")
    assert_user_error(cli("decode", run, tmp_path / "none.npy", "--out", run / "config.json"), "config.json")
    assert_user_error(cli("encode", run, "--out", tmp_path / "z.txt"), "z.txt", ".safetensors")
    np.save(tmp_path / "wrong.npy", np.zeros((3, 5), np.float32))
    assert_user_error(cli("decode", run, tmp_path / "wrong.npy", "--out", tmp_path / "x.npy"), "(5,)", "(4,)")
    np.save(tmp_path / "bad_data.npy", np.zeros((3, 7), np.float32))
    assert_user_error(cli("encode", run, "--data", tmp_path / "bad_data.npy", "--out", tmp_path / "z.npy"),
                      "(7,)", "(1, 8, 8)")
    np.save(tmp_path / "ok.npy", np.zeros((3, 4), np.float32))
    assert_user_error(cli("decode", run, tmp_path / "ok.npy", "--out", tmp_path / "rows.csv"), "images")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert_user_error(cli("decode", run, tmp_path / "ok.npy", "--out", tmp_path / "full"), "not an empty folder")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_data.npy", "full", "ok.npy", "wrong.npy"]
