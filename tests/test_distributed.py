"""Issue 18: training and evaluation on N ranks under torchrun (gloo on CPU, 127.0.0.1).

Every launch is a real ``torchrun`` (``python -m torch.distributed.run``) with a timeout, in its own
session whose processes are all killed when the test is done. To keep the suite fast, one launch
runs several jobs (tests/torchrun_jobs.py: the vaekit CLI's main, or vaekit.train, in one process
group per rank).

Tolerance for "the same weights as one process": |w_N - w_1| <= 1e-5 after a few dozen Adam steps.
The arithmetic is the same but not in the same order: a rank's gradient is the mean over its rows
scaled by its share, and the all_reduce adds the ranks' parts, where one process sums the whole
batch in one pass (and matrix products over fewer rows round differently). Those float32 rounding
differences (~1e-7 relative) are what remains; a wrong share, a wrong noise row or a dropped
example shows up orders of magnitude above it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from vaekit.io import load_tensors
from vaekit.run import read_metrics

HERE = Path(__file__).resolve().parent
TOL = 1e-5
LAUNCH_TIMEOUT = 240  # seconds; a hang fails the test instead of blocking the suite


@dataclass
class Launch:
    code: int
    out: str
    err: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start(args: list, nproc: int = 2, rdzv: list | None = None) -> subprocess.Popen:
    """torchrun in a new session (so that the test can kill it and every worker at once)."""
    rdzv = rdzv or ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), *rdzv, *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = LAUNCH_TIMEOUT) -> Launch:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s (a rank left hanging?)\n{err[-3000:]}")
    finally:
        kill_group(proc)
    return Launch(proc.returncode, out, err)


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def torchrun(args: list, nproc: int = 2) -> Launch:
    return finish(start(args, nproc))


def jobs(tmp_path: Path, job_list: list[dict], nproc: int = 2) -> tuple[list[list[dict]], Launch]:
    """Run ``job_list`` in one launch; returns each rank's results, and the launch's output."""
    spec, results = tmp_path / "jobs.json", tmp_path / "results"
    results.mkdir(exist_ok=True)
    spec.write_text(json.dumps(job_list, default=str))
    r = torchrun([HERE / "torchrun_jobs.py", spec, results], nproc)
    assert r.code == 0, r.err[-4000:]
    return [json.loads((results / f"rank{i}.json").read_text()) for i in range(nproc)], r


# Attention is invariant to the key bias (q.(k + b) shifts each query's logits by a constant), so its
# gradient is zero up to rounding and Adam turns that rounding noise into steps of +-lr either way:
# it differs between any two summation orders, one process against itself included.
INVARIANT = ("attentions.0.to_k.bias",)


def assert_same_weights(a: Path, b: Path, tol: float = TOL) -> None:
    wa, wb = load_tensors(a / "model.safetensors")[0], load_tensors(b / "model.safetensors")[0]
    assert wa.keys() == wb.keys()
    diffs = {k: float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if not k.endswith(INVARIANT)}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= tol, f"max |w_a - w_b| = {diffs[worst]:.3g} > {tol} ({worst})"


def assert_same_history(a: Path, b: Path) -> None:
    ha, hb = read_metrics(a), read_metrics(b)
    assert len(ha) == len(hb)
    for ra, rb in zip(ha, hb):
        assert ra.keys() == rb.keys()
        for key in ra:
            if key in ("seconds", "ranks"):
                continue
            if isinstance(ra[key], float):
                assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-5), key
            else:
                assert ra[key] == rb[key], key


def image_folder(root: Path, n: int = 8) -> Path:
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype("uint8")).save(root / f"{i}.png")
    return root


def single(kwargs: dict, out: Path):
    """The same job in this (one) process."""
    import vaekit

    return vaekit.train(**{**kwargs, "out": str(out)})


MLP = ["--data", "digits", "--limit", "400", "--binarize", "dynamic", "--hidden", "32", "--latent-dim", "4",
       "--epochs", "2", "--batch-size", "61", "--ema", "0.9", "--precision", "fp32", "--quiet"]
COMMON = {"overwrite": True, "progress": False}


def stream_job(folder: Path) -> dict:
    return {**COMMON, "model": "mlp", "model_overrides": {"hidden": [16], "latent_dim": 3},
            "data": {"spec": str(folder), "resolution": 16, "augment": True, "samples_per_epoch": 24,
                     "eval_samples": 4},
            "training": {"epochs": 2, "batch_size": 6, "precision": "fp32"}}


def assert_same_evaluations(cli, launch: Launch, commands: list[list]) -> None:
    """The JSON lines a launch printed (rank 0 alone) equal one process's, command by command."""
    printed = [json.loads(line) for line in launch.out.splitlines() if line.startswith("{")]
    assert len(printed) == len(commands)
    for shown, args in zip(printed, commands):
        r = cli(*args, "--precision", "fp32", "--json")
        one = json.loads(r.out)
        assert shown.keys() == one.keys()
        for key, value in one.items():
            assert shown[key] == (value if value is None else pytest.approx(value, rel=1e-6, abs=1e-6)), key


def test_two_ranks_train_and_evaluate_as_one_process(cli, tmp_path):
    """mlp with dynamic binarisation, an EMA and uneven shares (61 = 31 + 30), a streamed image folder
    with random crops, beta-TCVAE's whole-batch estimator and a calibrated Gaussian scale each end
    with the weights of one process; evaluate --iw shards the test set and reports the numbers of one process."""
    stream = stream_job(image_folder(tmp_path / "imgs"))
    tc = {**COMMON, "model": "mlp", "model_overrides": {"hidden": [32], "latent_dim": 3},
          "data": {"spec": "digits", "limit": 200}, "training": {"objective": "beta-tcvae", "epochs": 2,
                                                                 "batch_size": 45, "precision": "fp32"}}
    # the sigma-VAE's scale: fitted to the global batch on every rank (its residuals summed over the ranks)
    cal = {**COMMON, "model": "mlp", "model_overrides": {"hidden": [32], "latent_dim": 3, "likelihood": "gaussian",
                                                         "sigma_mode": "calibrated"},
           "data": {"spec": "digits", "limit": 200}, "training": {"epochs": 2, "batch_size": 45, "precision": "fp32"}}
    run = {name: tmp_path / name for name in ("mlp", "stream", "tc", "cal")}
    results, launch = jobs(tmp_path, [
        {"cli": ["train", *MLP, "--out", run["mlp"]]},
        {"cli": ["evaluate", run["mlp"], "--iw", "7", "--precision", "fp32", "--json"]},
        {"api": "train", "kwargs": {**stream, "out": str(run["stream"])}},
        {"api": "train", "kwargs": {**tc, "out": str(run["tc"])}},
        {"api": "train", "kwargs": {**cal, "out": str(run["cal"])}},
    ])
    assert [r["code"] for r in results[0]] == [0] * 5 and results[0] == results[1]  # same weights on both ranks
    r = cli("train", *MLP, "--out", tmp_path / "mlp1")  # one process, the same settings
    assert r.code == 0, r.err
    assert_same_weights(run["mlp"], tmp_path / "mlp1")
    assert_same_history(run["mlp"], tmp_path / "mlp1")
    assert read_metrics(run["mlp"])[-1]["ranks"] == 2 and read_metrics(tmp_path / "mlp1")[-1]["ranks"] == 1
    assert sorted(p.name for p in run["mlp"].iterdir()) == ["checkpoint.safetensors", "config.json",
                                                             "metrics.jsonl", "model.safetensors"]
    for name, kwargs in (("stream", stream), ("tc", tc), ("cal", cal)):
        single(kwargs, tmp_path / f"{name}1")
        assert_same_weights(run[name], tmp_path / f"{name}1")
    assert_same_evaluations(cli, launch, [["evaluate", run["mlp"], "--iw", "7"]])


@pytest.mark.slow
def test_every_objective_and_family_on_two_ranks(cli, tmp_path):
    """The LDM loss before --disc-start and a conditional pixel DDPM (issue 17's objective) end with the
    weights of one process, and so do hvae and the ladder (noise per layer: [B, d] and [k, B, d], and
    k-major [k * B, C, H, W]); evaluate of those and the image evaluator give one process's numbers;
    FactorVAE and the LDM loss with its discriminator train, checkpoint and resume on 2 ranks, every
    rank holding the same weights."""
    folder = image_folder(tmp_path / "imgs")
    kl = {"model": "autoencoder-kl", "model_overrides": {"block_out_channels": [8, 16], "norm_num_groups": 4,
                                                         "latent_channels": 2}}
    ldm = {**COMMON, **kl, "data": {"spec": str(folder), "resolution": 16, "samples_per_epoch": 8,
                                    "eval_samples": 4},
           "training": {"objective": "ldm", "epochs": 2, "batch_size": 4, "perceptual_weight": 0.0,
                        "disc_start": 1000, "disc_ndf": 8, "disc_layers": 1, "lr": 1e-3, "precision": "fp32"}}
    factor = {**COMMON, "model": "mlp", "model_overrides": {"hidden": [16], "latent_dim": 3},
              "data": {"spec": "digits", "limit": 120},
              "training": {"objective": "factorvae", "epochs": 1, "batch_size": 20}}
    gan = {**ldm, "training": {**ldm["training"], "disc_start": 0, "epochs": 1}}
    # a class-conditional DDPM (noise, timesteps and label dropout), clipped, with an EMA
    ddpm = {**COMMON, "model": "pixel-diffusion", "conditional": True,
            "model_overrides": {"denoiser": "mlp", "width": 32, "depth": 1},
            "data": {"spec": "digits", "limit": 150, "pad_to": 8}, "training": {"epochs": 2, "batch_size": 25,
                                                                                "precision": "fp32"}}
    small = ["--data", "digits", "--limit", "120", "--epochs", "1", "--batch-size", "30", "--precision", "fp32",
             "--quiet"]
    deep = {"hvae": ["--model", "hvae", "--latent-dims", "4,2", "--hidden", "16,8", *small],
            "ladder": ["--model", "ladder", "--topology", "4x1,2x1,1x1", "--patch", "2", "--width", "8", "--zdim", "2",
                       *small]}
    run = {name: tmp_path / name for name in ("ldm", "factor", "gan", "ddpm", *deep)}
    # the image evaluator in chunks of 3 of the 4 held-out images: shares of 2 + 1 rows, then 1 image whole
    evaluations = [["evaluate", run["ldm"], "--lpips-net", "none", "--batch-size", "3"],
                   *(["evaluate", run[name], "--iw", "5"] for name in deep)]
    results, launch = jobs(tmp_path, [
        {"api": "train", "kwargs": {**ldm, "out": str(run["ldm"])}},
        {"api": "train", "kwargs": {**ddpm, "out": str(run["ddpm"])}},
        {"api": "train", "kwargs": {**factor, "out": str(run["factor"])}},
        {"api": "train", "kwargs": {**gan, "out": str(run["gan"])}},
        {"api": "resume", "kwargs": {"out": str(run["gan"]), "epochs": 2, "progress": False}},
        *({"cli": ["train", *flags, "--out", run[name]]} for name, flags in deep.items()),
        *({"cli": [*args, "--precision", "fp32", "--json"]} for args in evaluations),
    ])
    assert [r["code"] for r in results[0]] == [0] * 10 and results[0] == results[1]  # same weights on both ranks
    for name, kwargs in (("ldm", ldm), ("ddpm", ddpm)):
        single(kwargs, tmp_path / f"{name}1")
        assert_same_weights(run[name], tmp_path / f"{name}1")
    for name, flags in deep.items():
        assert cli("train", *flags, "--out", tmp_path / f"{name}1").code == 0
        assert_same_weights(run[name], tmp_path / f"{name}1")
    assert_same_evaluations(cli, launch, evaluations)
    assert read_metrics(run["gan"])[-1]["epoch"] == 2 and read_metrics(run["gan"])[0]["train_d_loss"] > 0
    assert read_metrics(run["factor"])[-1]["train_d_loss"] > 0


@pytest.mark.slow
def test_kill_9_of_one_rank_stops_the_job_and_resume_on_2_or_1_ranks_continues_exactly(cli, tmp_path):
    args = ["--data", "digits", "--limit", "300", "--hidden", "32", "--latent-dim", "4", "--epochs", "6",
            "--batch-size", "16", "--checkpoint-every", "5", "--precision", "fp32", "--quiet"]
    killed = tmp_path / "killed"
    proc = start(["-m", "vaekit", "train", *args, "--out", killed])
    try:
        deadline = time.time() + LAUNCH_TIMEOUT
        while not (killed / "metrics.jsonl").is_file() or not read_metrics(killed):  # epoch 1 done
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "training did not start"
            time.sleep(0.01)
        victim = rank_pid(proc.pid, 1)
        os.kill(victim, signal.SIGKILL)
        r = finish(proc, timeout=120)  # torchrun stops the other rank and fails
    finally:
        kill_group(proc)
    assert r.code != 0
    done = len(read_metrics(killed))
    assert 1 <= done < 6, f"the kill came after epoch {done}: not mid-run"
    # the files are whole: each one reads
    from vaekit.run import load
    from vaekit.training.checkpoint import load_checkpoint

    json.loads((killed / "config.json").read_text())
    load_checkpoint(killed / "checkpoint.safetensors")
    load(killed)
    one = tmp_path / "resumed-on-1"
    shutil.copytree(killed, one)
    r = torchrun(["-m", "vaekit", "train", *args, "--out", killed, "--resume"])
    assert r.code == 0, r.err[-3000:]
    assert cli("train", *args, "--out", one, "--resume").code == 0
    straight = tmp_path / "straight"
    assert cli("train", *args, "--out", straight).code == 0
    assert_same_weights(killed, straight)
    assert_same_weights(one, straight)
    assert_same_history(killed, straight)
    assert not list(killed.glob(".*.tmp"))  # the resume swept any temp file a killed write left


def rank_pid(torchrun_pid: int, rank: int) -> int:
    """The worker process of ``rank`` among torchrun's children (from /proc: its parent and RANK)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == torchrun_pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} under torchrun {torchrun_pid}")


@pytest.mark.slow
def test_two_nodes_on_one_host_train_as_one_process(cli, tmp_path):
    """Two torchrun launches, --nnodes 2 with the c10d rendezvous on 127.0.0.1, one rank each."""
    args = [*MLP, "--out", tmp_path / "nodes"]
    rdzv = ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
            "--rdzv-id", "vaekit-test"]
    procs = [start(["-m", "vaekit", "train", *args], nproc=1, rdzv=rdzv) for _ in range(2)]
    results = [finish(p) for p in procs]
    assert [r.code for r in results] == [0, 0], [r.err[-2000:] for r in results]
    assert cli("train", *MLP, "--out", tmp_path / "one").code == 0
    assert_same_weights(tmp_path / "nodes", tmp_path / "one")
    assert read_metrics(tmp_path / "nodes")[-1]["ranks"] == 2


def test_bad_inputs_on_two_ranks_fail_together_with_one_line_each(cli, tmp_path):
    base = ["--data", "digits", "--limit", "200", "--hidden", "16", "--latent-dim", "4", "--epochs", "1", "--quiet"]
    good, edited = tmp_path / "good", tmp_path / "edited"
    assert cli("train", *base, "--out", good).code == 0  # one process: checkpoints do not depend on the ranks
    shutil.copytree(good, edited)
    cfg = json.loads((edited / "config.json").read_text())
    cfg["model"]["latent_dim"] = 5  # the config no longer matches the checkpoint
    (edited / "config.json").write_text(json.dumps(cfg))
    before = {p: p.read_bytes() for d in (good, edited) for p in d.iterdir()}
    new = [tmp_path / name for name in "abcd"]
    cases = [
        (["train", "--data", "digits", "--limit", "1", "--val-fraction", "0", "--quiet", "--out", new[0]],
         "torchrun started 2 ranks but there are only 1 training examples"),
        (["train", "--data", "digits", "--limit", "21", "--val-fraction", "0", "--batch-size", "10", "--quiet",
          "--out", new[1]], "the last batch of each epoch has 1 of the 21 training examples"),
        (["train", *base, "--precision", "fp17", "--out", new[2]], "unknown precision 'fp17'"),
        (["train", *base, "--precision", "fp16", "--out", new[3]], "--precision fp16 needs a CUDA device"),
        (["train", *base, "--latent-dim", "8", "--out", good, "--resume"],
         "--latent-dim differs from the run's saved setting"),
        (["train", "--out", edited, "--resume", "--quiet"], "checkpoint.safetensors: model: does not match"),
        (["sample", good], "'vaekit sample' runs in one process"),
        (["train", "--epochs", "0", "--out", new[0]], "expected a positive integer"),  # argparse's own errors
    ]
    results, launch = jobs(tmp_path, [{"cli": args} for args, _ in cases])
    assert [r["code"] for r in results[0]] == [2] * len(cases) == [r["code"] for r in results[1]], launch.err
    errors = [line for line in launch.err.splitlines() if line.startswith("vaekit") and ": error: " in line]
    assert len(errors) == len(cases), launch.err  # once each (rank 0), no traceback
    for line, (_, needle) in zip(errors, cases):
        assert needle in line, (needle, line)
    assert "Traceback" not in launch.err
    assert not any(p.exists() for p in new)
    assert before == {p: p.read_bytes() for d in (good, edited) for p in d.iterdir()}  # nothing clobbered
    # and in one process
    for args, needle in cases[2:4] + cases[5:6]:
        r = cli(*args)
        assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and needle in r.err, r.err


@pytest.mark.slow
def test_torchrun_m_vaekit_reports_a_user_error_once_and_the_job_fails_with_exit_code_2(tmp_path):
    r = torchrun(["-m", "vaekit", "train", "--data", "digits", "--limit", "1", "--val-fraction", "0", "--quiet",
                  "--out", tmp_path / "run"])
    # torchrun's own status is 1; its report names the first rank to end, with exit code 2 (it stops the
    # others itself, so they may show its SIGTERM instead; the driver test above sees every rank return 2)
    assert r.code != 0 and "exitcode  : 2" in r.err
    errors = [line for line in r.err.splitlines() if line.startswith("vaekit: error:")]
    assert errors == ["vaekit: error: torchrun started 2 ranks but there are only 1 training examples; use at most "
                      "1 ranks"]
    assert not (tmp_path / "run").exists()
