"""Every bad input: one line on stderr naming the problem, exit code 2, no traceback, and nothing
half-written or overwritten."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

FAST = ("--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--quiet")


def assert_user_error(r, *needles: str) -> None:
    assert r.code == 2, (r.code, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert "Traceback" not in r.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    from vaekit.cli.main import main

    out = tmp_path_factory.mktemp("good") / "run"
    assert main(["train", "--data", "digits", "--limit", "100", *FAST, "--out", str(out)]) == 0
    return out


def test_missing_data_path(cli, tmp_path):
    assert_user_error(cli("train", "--data", tmp_path / "nope", "--out", tmp_path / "o", *FAST), "nope")
    assert not (tmp_path / "o").exists()


def test_unsupported_file_type(cli, tmp_path):
    (tmp_path / "x.txt").write_text("1 2 3")
    assert_user_error(cli("train", "--data", tmp_path / "x.txt", "--out", tmp_path / "o"), "x.txt", ".txt")


def make_images(folder, n=6, size=(8, 8)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full(size, 30 * i, np.uint8)).save(folder / f"{i}.png")


def test_corrupt_image_is_named_and_skip_bad_skips_it(cli, tmp_path):
    make_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    r = cli("train", "--data", tmp_path / "imgs", "--out", tmp_path / "o", *FAST)
    assert_user_error(r, "broken.png", "cannot read image")
    r = cli("train", "--data", tmp_path / "imgs", "--out", tmp_path / "o", "--skip-bad", "--epochs", "1",
            "--hidden", "8", "--latent-dim", "2")
    assert r.code == 0, r.err
    assert "skipped 1 unreadable image file" in r.err


def test_nan_in_array_names_the_row(cli, tmp_path):
    x = np.random.default_rng(0).random((20, 4)).astype(np.float32)
    x[13, 2] = np.nan
    np.save(tmp_path / "x.npy", x)
    assert_user_error(cli("train", "--data", tmp_path / "x.npy", "--out", tmp_path / "o"), "row 13", "NaN")


def test_inf_and_text_in_csv_name_the_line(cli, tmp_path):
    (tmp_path / "a.csv").write_text("u,v\n1,2\n3,inf\n")
    assert_user_error(cli("train", "--data", tmp_path / "a.csv", "--out", tmp_path / "o"), "line 3", "'v'", "Inf")
    (tmp_path / "b.csv").write_text("u,v\n1,2\n3,abc\n")
    assert_user_error(cli("train", "--data", tmp_path / "b.csv", "--out", tmp_path / "o"), "line 3", "'abc'")


def test_train_and_test_shapes_differ(cli, tmp_path):
    np.save(tmp_path / "tr.npy", np.zeros((20, 4), np.float32))
    np.save(tmp_path / "te.npy", np.zeros((5, 3), np.float32))
    r = cli("train", "--data", tmp_path / "tr.npy", "--test-data", tmp_path / "te.npy", "--out", tmp_path / "o")
    assert_user_error(r, "(4,)", "(3,)")


@pytest.mark.parametrize("args,needle", [
    (("--latent-dim", "0"), "latent-dim"),
    (("--beta", "-1"), "beta"),
    (("--likelihood", "poisson"), "unknown likelihood 'poisson'"),
    (("--model", "transformer"), "unknown model 'transformer'"),
    (("--preset", "nope"), "unknown preset 'nope'"),
    (("--lr", "0"), "learning rate"),
    (("--binarize", "sometimes"), "--binarize"),
    (("--hidden", "4,x"), "--hidden"),
    (("--sigma", "-2"), "--sigma"),
    (("--sigma", "calibrated"), "--sigma calibrated fits the scale of a gaussian or laplace likelihood"),
    (("--model", "conv", "--data", "PLACEHOLDER_CSV"), "image data"),
    (("--conditional", "--data", "PLACEHOLDER_NPY"), "--conditional needs labelled data"),
])
def test_out_of_range_options(cli, tmp_path, table_csv, args, needle):
    np.save(tmp_path / "plain.npy", np.random.default_rng(0).random((30, 4)).astype(np.float32))
    args = tuple(str(table_csv) if a == "PLACEHOLDER_CSV" else str(tmp_path / "plain.npy")
                 if a == "PLACEHOLDER_NPY" else a for a in args)
    data = () if "--data" in args else ("--data", "digits")
    r = cli("train", *data, "--out", tmp_path / "o", "--epochs", "1", "--quiet", *args)
    assert_user_error(r, needle)
    assert not (tmp_path / "o").exists()


def test_bernoulli_on_data_outside_the_unit_interval(cli, table_csv, tmp_path):
    r = cli("train", "--data", table_csv, "--likelihood", "bernoulli", "--out", tmp_path / "o")
    assert_user_error(r, "bernoulli", "[0, 1]")


def test_not_a_run_directory(cli, tmp_path):
    (tmp_path / "plain").mkdir()
    for cmd in ("evaluate", "sample", "reconstruct", "plot"):
        assert_user_error(cli(cmd, tmp_path / "plain"), "not a vaekit run")
    assert_user_error(cli("evaluate", tmp_path / "missing"), "no such run directory")


def test_weights_that_do_not_match_the_config(cli, good_run, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(good_run, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["latent_dim"] = 5
    (bad / "config.json").write_text(json.dumps(cfg))
    assert_user_error(cli("evaluate", bad), "model.safetensors", "does not match its config", "shape mismatch")
    (bad / "model.safetensors").write_bytes(b"garbage")
    assert_user_error(cli("sample", bad), "model.safetensors", "not a readable safetensors file")


def test_unknown_key_in_run_config_or_config_file(cli, good_run, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(good_run, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["training"]["learning_rate"] = 0.1
    (bad / "config.json").write_text(json.dumps(cfg))
    assert_user_error(cli("evaluate", bad), "unknown key 'learning_rate'")
    (tmp_path / "c.json").write_text(json.dumps({"model": {"latnt_dim": 3}}))
    r = cli("train", "--data", "digits", "--config", tmp_path / "c.json", "--out", tmp_path / "o")
    assert_user_error(r, "c.json", "unknown key 'latnt_dim'", "latent_dim")


def test_existing_run_is_never_overwritten_without_overwrite(cli, good_run, tmp_path):
    before = (good_run / "model.safetensors").read_bytes()
    r = cli("train", "--data", "digits", "--out", good_run, *FAST)
    assert_user_error(r, "already exists", "--overwrite")
    assert (good_run / "model.safetensors").read_bytes() == before
    # a bad option with --overwrite must not destroy the run either
    r = cli("train", "--data", "digits", "--out", good_run, "--overwrite", "--latent-dim", "0", "--quiet")
    assert_user_error(r, "latent-dim")
    assert (good_run / "model.safetensors").read_bytes() == before
    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    r = cli("train", "--data", "digits", "--out", other, "--overwrite", *FAST)
    assert_user_error(r, "not a vaekit run", "refusing")
    assert (other / "precious.txt").exists()
    assert not [p for p in good_run.iterdir() if p.name.endswith(".tmp")]


def test_resume_with_changed_settings_or_without_checkpoint(cli, good_run, tmp_path):
    assert_user_error(cli("train", "--out", good_run, "--resume", "--latent-dim", "3"), "--latent-dim", "--resume")
    assert_user_error(cli("train", "--out", good_run, "--resume", "--max-minutes", "-1"), "--max-minutes")
    assert_user_error(cli("train", "--out", good_run, "--resume", "--lr", "0"), "--lr")
    assert_user_error(cli("train", "--out", good_run, "--resume", "--ema", "1"), "--ema")
    assert_user_error(cli("train", "--out", tmp_path / "none", "--resume"), "no such run directory")


def test_picture_and_evaluation_options(cli, good_run, tmp_path):
    assert_user_error(cli("sample", good_run, "--label", "2", "--out", tmp_path / "s.png"), "--label",
                      "conditional")
    assert_user_error(cli("evaluate", good_run, "--iw", "0"), "--iw")
    assert_user_error(cli("interpolate", good_run, "--to", "100000", "--out", tmp_path / "i.png"), "100000")
    assert_user_error(cli("sample", good_run, "--out", tmp_path / "s.jpg"), ".png")
    assert_user_error(cli("sample", good_run, "-n", "0"), "-n")


def test_exit_code_and_single_line_out_of_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vaekit.cli", "train", "--data", str(tmp_path / "missing"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
