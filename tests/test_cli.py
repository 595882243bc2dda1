"""The CLI end to end on tiny data: train, evaluate, every picture, presets, configs, the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from vaekit.cli.evaluate import KEYS

TRAIN = ("train", "--data", "digits", "--hidden", "32", "--latent-dim", "3", "--epochs", "2", "--limit", "300",
         "--quiet")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from vaekit.cli.main import main

    out = tmp_path_factory.mktemp("cli") / "run"
    assert main([*TRAIN, "--out", str(out), "--conditional"]) == 0
    return out


def is_png(path) -> bool:
    with Image.open(path) as im:
        return im.format == "PNG" and im.width > 10 and im.height > 10


def test_train_writes_a_complete_run(run):
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "model.safetensors", "checkpoint.safetensors", "metrics.jsonl"} <= names
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    record = json.loads(lines[0])
    for key in ("epoch", "train_loss", "train_recon", "train_kl", "train_elbo", "val_recon", "val_kl", "val_elbo",
                "lr", "seconds"):
        assert key in record


def test_evaluate_json_has_exactly_the_documented_keys(cli, run):
    r = cli("evaluate", run, "--iw", "20", "--json")
    assert r.code == 0, r.err
    values = json.loads(r.out)
    assert tuple(values) == KEYS
    assert values["k"] == 20 and values["n"] == 180
    assert values["nll"] <= -values["elbo"] + 1.0  # the IW bound is (on average) tighter than the ELBO
    text = cli("evaluate", run, "--split", "val")
    assert text.code == 0 and "bits_per_dim" in text.out


@pytest.mark.parametrize("args,name", [
    (("sample", "-n", "16"), "samples.png"),
    (("sample", "-n", "8", "--label", "3", "--temperature", "0.7"), "samples.png"),
    (("reconstruct", "-n", "6"), "reconstructions.png"),
    (("interpolate", "--from", "2", "--to", "5", "--steps", "6"), "interpolation.png"),
    (("traverse", "--dims", "3", "--steps", "5"), "traversal.png"),
])
def test_picture_commands_write_pngs(cli, run, tmp_path, args, name):
    out = tmp_path / name
    r = cli(args[0], run, *args[1:], "--out", out)
    assert r.code == 0, r.err
    assert is_png(out)


def test_plot_writes_loss_curves_and_latent_scatter(cli, run, tmp_path):
    r = cli("plot", run, "--out", tmp_path)
    assert r.code == 0, r.err
    assert is_png(tmp_path / "loss_curves.png") and is_png(tmp_path / "latent.png")


def test_tabular_data_gets_plots(cli, tmp_path, table_csv):
    out = tmp_path / "tab"
    r = cli("train", "--data", table_csv, "--label-column", "label", "--out", out, "--epochs", "2", "--quiet")
    assert r.code == 0, r.err
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["likelihood"] == "gaussian"  # standardised data is not in [0, 1]
    for cmd in ("sample", "reconstruct", "interpolate", "traverse"):
        assert cli(cmd, out, "--out", tmp_path / f"{cmd}.png").code == 0
        assert is_png(tmp_path / f"{cmd}.png")


def test_conv_model_and_preset_and_config_file(cli, tmp_path):
    out = tmp_path / "conv"
    r = cli("train", "--data", "digits", "--model", "conv", "--channels", "8,16", "--latent-dim", "2", "--epochs",
            "1", "--limit", "200", "--out", out, "--quiet")
    assert r.code == 0, r.err
    again = tmp_path / "again"
    r = cli("train", "--config", out / "config.json", "--out", again, "--epochs", "1", "--quiet")
    assert r.code == 0, r.err
    cfg = json.loads((again / "config.json").read_text())
    assert cfg["_class_name"] == "ConvVAE" and cfg["model"]["channels"] == [8, 16]
    preset = tmp_path / "preset"
    r = cli("train", "--data", "digits", "--preset", "pytorch-example", "--epochs", "1", "--limit", "100",
            "--out", preset, "--quiet")
    assert r.code == 0, r.err
    cfg = json.loads((preset / "config.json").read_text())
    assert cfg["model"]["hidden"] == [400] and cfg["model"]["latent_dim"] == 20
    assert cfg["training"]["batch_size"] == 128


def test_resume_flag_continues_a_run(cli, tmp_path):
    out = tmp_path / "r"
    assert cli(*TRAIN, "--out", out).code == 0
    r = cli("train", "--out", out, "--resume", "--epochs", "3", "--max-minutes", "0", "--quiet")
    assert r.code == 0, r.err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_demo_writes_a_report(cli, tmp_path):
    r = cli("demo", "--out", tmp_path / "demo", "--epochs", "2", "--iw", "5")
    assert r.code == 0, r.err
    html = (tmp_path / "demo" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 12
    for word in ("nll", "active_units", "Conditional VAE"):
        assert word in html


def test_console_script_runs_out_of_process():
    r = subprocess.run([sys.executable, "-m", "vaekit.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout
