"""Settings resolved once (CLI and Python write the same config.json), the resume habit (the same
command plus --resume), and commands that behave alike."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import vaekit
from helpers import read_metrics, without_time
from vaekit.errors import VaekitError
from vaekit.models.ladder import default_topology
from vaekit.settings import resolve_settings
from vaekit.training.config import TrainConfig

TESTS = Path(__file__).parent


def config_json(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def test_ladder_from_python_gets_the_same_settings_as_from_the_cli(cli, tmp_path):
    flags = ["--data", "digits", "--model", "ladder", "--width", "8", "--zdim", "2", "--limit", "64", "--epochs", "1",
             "--batch-size", "32", "--val-fraction", "0"]
    r = cli("train", *flags, "--out", tmp_path / "cli", "--quiet")
    assert r.code == 0, r.err
    vaekit.train(tmp_path / "py", model="ladder", model_overrides={"width": 8, "zdim": 2},
                 data={"spec": "digits", "limit": 64, "val_fraction": 0.0},
                 training=TrainConfig(epochs=1, batch_size=32), progress=False)
    a, b = config_json(tmp_path / "cli"), config_json(tmp_path / "py")
    assert a == b
    assert (a["training"]["grad_clip"], a["training"]["grad_skip"]) == (200.0, 10.0)  # the ladder's defaults
    assert a["model"]["topology"] == "8x2,4x2,1x1"  # follows the 8x8 images


def test_ldm_objective_defaults_apply_from_python_too():
    s = resolve_settings(preset="tiny-f4", data="digits", training={"objective": "ldm", "batch_size": 16})
    assert s.model == "autoencoder-kl"
    assert s.training.lr == pytest.approx(4.5e-6 * 16) and s.training.adam_betas == (0.5, 0.9)
    assert s.training.beta == 1e-6 and s.data.augment is True
    # anything the user says wins over the model's and objective's defaults
    s = resolve_settings(model="ladder", data="digits", training={"grad_clip": 0.0, "lr": 3e-4})
    assert (s.training.grad_clip, s.training.grad_skip, s.training.lr) == (0.0, 10.0, 3e-4)


def test_layers_are_ordered_defaults_preset_config_explicit(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": {"latent_dim": 7}, "training": {"batch_size": 32, "lr": 5e-4}}))
    s = resolve_settings(preset="pytorch-example", config=config, training={"lr": 2e-4}, data="digits")
    assert s.model == "mlp" and s.model_overrides["hidden"] == [400]  # from the preset
    assert s.model_overrides["latent_dim"] == 7 and s.training.batch_size == 32  # the file beats the preset
    assert s.training.lr == 2e-4  # explicit beats the file


def test_unknown_settings_name_the_key():
    with pytest.raises(VaekitError, match=r"'epoch'.*did you mean 'epochs'"):
        resolve_settings(training={"epoch": 3})
    with pytest.raises(VaekitError, match="'limt'"):
        resolve_settings(data={"spec": "digits", "limt": 3})


def test_default_topology_follows_the_image_size():
    assert default_topology(28) == "28x2,14x2,7x2,1x1"
    assert default_topology(8) == "8x2,4x2,1x1"
    assert default_topology(14) == "14x2,7x2,1x1"
    assert default_topology(64) == "64x2,32x2,16x2,8x2,4x2,1x1"
    assert default_topology(5) == "5x2,1x1"


# -- the resume habit ---------------------------------------------------------------------------------

FLAGS = ["--data", "digits", "--hidden", "32", "--latent-dim", "4", "--limit", "400", "--epochs", "3", "--seed",
         "3", "--batch-size", "64", "--checkpoint-every", "5", "--quiet"]


def test_the_same_command_plus_resume_after_kill_9_finishes_as_if_uninterrupted(cli, tmp_path):
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert cli("train", *FLAGS, "--out", reference).code == 0
    script = (
        "import os, signal, sys\n"
        "from vaekit.cli.main import main\n"
        "from vaekit.objectives import ELBO\n"
        "orig = ELBO.training_step\n"
        "def step(self, model, batch, ctx):\n"
        "    if ctx.step == 12: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return orig(self, model, batch, ctx)\n"
        "ELBO.training_step = step\n"
        "main(sys.argv[1:])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, "train", *FLAGS, "--out", str(run)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(read_metrics(run)) == 1  # killed in epoch 2, after the mid-epoch checkpoint at step 10
    r = cli("train", *FLAGS, "--out", run, "--resume")  # the very command that started it, plus --resume
    assert r.code == 0, r.err
    assert without_time(read_metrics(run)) == without_time(read_metrics(reference))
    assert (run / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


def test_resume_refuses_a_differing_flag_naming_both_values(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", *FLAGS, "--epochs", "1", "--out", run).code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    changed = [("--latent-dim", "8", "4"), ("--hidden", "64", "32"), ("--data", "fashion-mnist", "'digits'"),
               ("--seed", "4", "3"), ("--model", "conv", "'mlp'")]
    for flag, new, saved in changed:
        args = [a if prev != flag else new for prev, a in zip(["", *FLAGS], FLAGS)]
        if flag not in FLAGS:
            args += [flag, new]
        r = cli("train", *args, "--out", run, "--resume")
        assert r.code == 2, (flag, r.err)
        line = r.err.strip()
        assert "\n" not in line and flag in line and saved in line and new in line, line
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing clobbered


def test_resume_accepts_restated_flags_and_changes_only_the_resumable_ones(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", *FLAGS, "--epochs", "1", "--out", run).code == 0
    r = cli("train", *FLAGS, "--epochs", "2", "--lr", "5e-4", "--out", run, "--resume")
    assert r.code == 0, r.err
    assert [m["lr"] for m in read_metrics(run)] == [1e-3, 5e-4]
    r = cli("train", "--preset", "pytorch-example", "--out", run, "--resume", "--quiet")
    assert r.code == 2 and "--preset pytorch-example" in r.err and "hidden" in r.err  # the preset says 400
    r = cli("train", *FLAGS, "--out", run, "--resume", "--overwrite")
    assert r.code == 2 and "--overwrite" in r.err


def test_resume_with_a_restated_config_file(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", *FLAGS, "--epochs", "1", "--out", run).code == 0
    copy = tmp_path / "config.json"
    copy.write_bytes((run / "config.json").read_bytes())
    r = cli("train", "--config", copy, "--epochs", "2", "--out", run, "--resume", "--quiet")
    assert r.code == 0, r.err
    assert len(read_metrics(run)) == 2


# -- commands behave alike ------------------------------------------------------------------------------


def test_ladder_trains_on_digits_with_model_ladder_alone(cli, tmp_path):
    r = cli("train", "--data", "digits", "--model", "ladder", "--epochs", "1", "--limit", "64", "--out",
            tmp_path / "l", "--quiet")
    assert r.code == 0, r.err
    assert config_json(tmp_path / "l")["model"]["topology"] == "8x2,4x2,1x1"


def test_disentanglement_and_fit_prior_take_json(cli, tmp_path):
    out = tmp_path / "ds"
    r = cli("train", "--data", "dsprites", "--model", "conv", "--channels", "8,8,8", "--latent-dim", "3",
            "--epochs", "1", "--limit", "128", "--batch-size", "64", "--val-fraction", "0", "--out", out, "--quiet")
    assert r.code == 0, r.err
    r = cli("disentanglement", out, "--metrics", "mig", "--num-train", "200", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)  # the whole of stdout is one JSON object
    assert set(doc) == {"mig"} and 0 <= doc["mig"] <= 1
    r = cli("fit-prior", out, "--components", "2", "--max-examples", "100", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["codes"] == 100


def test_a_relative_data_path_is_recorded_absolute(cli, tmp_path, monkeypatch):
    import numpy as np

    work = tmp_path / "work"
    work.mkdir()
    np.savez(work / "d.npz", x=np.random.default_rng(0).random((64, 1, 8, 8)).astype(np.float32))
    monkeypatch.chdir(work)
    flags = ["--hidden", "8", "--latent-dim", "2", "--quiet"]
    r = cli("train", "--data", "d.npz", "--epochs", "1", "--out", "run", *flags)
    assert r.code == 0, r.err
    assert json.loads((work / "run" / "config.json").read_text())["data"]["spec"] == str(work / "d.npz")
    r = cli("train", "--resume", "--data", "d.npz", "--epochs", "2", "--out", "run", *flags)  # the same file
    assert r.code == 0, r.err
    monkeypatch.chdir(tmp_path)  # elsewhere, the run still finds its data
    r = cli("anomaly", work / "run", "--score", "elbo", "-k", "2", "--json", "--no-figures",
            "--out", tmp_path / "s.csv")
    assert r.code == 0, r.err
    assert json.loads(r.out)["n"] > 0
