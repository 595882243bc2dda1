"""The trainer: exact resumption (Ctrl-C mid-epoch, kill -9), the non-finite guard, schedules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import read_metrics, tiny_train, without_time
from vaekit.errors import Interrupted, TrainingStopped
from vaekit.io import load_tensors
from vaekit.objectives import ELBO
from vaekit.training import trainer as trainer_module
from vaekit.training.api import resume
from vaekit.training.checkpoint import load_checkpoint
from vaekit.training.trainer import StepContext

TESTS = Path(__file__).parent
RUN_KW = {"epochs": 3, "limit": 400, "seed": 3}  # 400 examples / batch 64 -> 7 steps per epoch


def weights(run: Path) -> dict:
    return load_tensors(run / "model.safetensors")[0]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert without_time(read_metrics(a)) == without_time(read_metrics(b))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    tiny_train(run, **RUN_KW)
    return run


def interrupt_at(monkeypatch, step: int, sig: int = signal.SIGINT) -> None:
    original = ELBO.training_step

    def training_step(self, model, batch, ctx):
        if ctx.step == step:
            os.kill(os.getpid(), sig)
        return original(self, model, batch, ctx)

    monkeypatch.setattr(ELBO, "training_step", training_step)


def test_same_seed_same_numbers(tmp_path, reference):
    tiny_train(tmp_path / "again", **RUN_KW)
    assert_same_run(reference, tmp_path / "again")


def test_ctrl_c_mid_epoch_saves_and_resume_equals_uninterrupted(tmp_path, reference, monkeypatch):
    run = tmp_path / "run"
    interrupt_at(monkeypatch, step=10)  # epoch 2, batch 4 of 7
    with pytest.raises(Interrupted, match="--resume"):
        tiny_train(run, **RUN_KW)
    monkeypatch.undo()
    state = load_checkpoint(run / "checkpoint.safetensors")
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 4)
    assert len(read_metrics(run)) == 1
    resume(run, progress=False)
    assert_same_run(reference, run)


def test_kill_9_then_resume_equals_uninterrupted(tmp_path, reference):
    run = tmp_path / "run"
    script = (
        "import os, signal, sys; sys.path.insert(0, sys.argv[2])\n"
        "from pathlib import Path\n"
        "from vaekit.objectives import ELBO\n"
        "from helpers import tiny_train\n"
        "orig = ELBO.training_step\n"
        "def step(self, model, batch, ctx):\n"
        "    if ctx.step == 17: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return orig(self, model, batch, ctx)\n"
        "ELBO.training_step = step\n"
        "tiny_train(Path(sys.argv[1]), epochs=3, limit=400, seed=3, checkpoint_every=5)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(run), str(TESTS)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = load_checkpoint(run / "checkpoint.safetensors")
    assert (state["epoch"], state["batch_in_epoch"]) == (2, 1)  # the mid-epoch checkpoint at step 15
    resume(run, progress=False)
    assert_same_run(reference, run)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_resume_can_extend_the_number_of_epochs(tmp_path):
    run = tmp_path / "run"
    tiny_train(run, epochs=1, limit=200)
    resume(run, epochs=2, progress=False)
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]


def test_resume_at_a_new_learning_rate_is_a_step_decay(tmp_path):
    run = tmp_path / "run"
    tiny_train(run, epochs=1, limit=200)
    resume(run, epochs=2, lr=1e-4, progress=False)
    assert [r["lr"] for r in read_metrics(run)] == [1e-3, 1e-4]
    assert json.loads((run / "config.json").read_text())["training"]["lr"] == 1e-4
    # config.json now holds the new rate, and the optimizers are rebuilt from it, so a plain resume keeps it
    resume(run, epochs=3, progress=False)
    assert read_metrics(run)[-1]["lr"] == 1e-4


def test_resume_can_start_a_weight_average_from_the_trained_weights(tmp_path):
    run = tmp_path / "run"
    tiny_train(run, epochs=1, limit=200)
    trained = load_tensors(run / "model.safetensors")[0]
    # no further epoch: the new average is the trained weights, not the freshly built model's
    resume(run, epochs=1, ema_decay=0.99, progress=False)
    assert json.loads((run / "config.json").read_text())["training"]["ema_decay"] == 0.99
    assert all(torch.equal(v, trained[k]) for k, v in load_tensors(run / "model.safetensors")[0].items())
    resume(run, epochs=2, progress=False)  # model.safetensors now holds the average, the checkpoint the raw weights
    average, raw = load_tensors(run / "model.safetensors")[0], load_checkpoint(run / "checkpoint.safetensors")["model"]
    for k, v in average.items():
        assert not torch.equal(v, raw[k]) and not torch.equal(v, trained[k])
        # between the two: the average trails the raw weights
        assert (v - raw[k]).norm() < (trained[k] - raw[k]).norm()


def test_a_run_stopped_by_its_time_budget_resumes_with_a_larger_or_no_budget(tmp_path, monkeypatch):
    clock = iter(range(10_000))  # a fake clock: each reading is one second later, so no real timing

    class FakeTime:
        @staticmethod
        def perf_counter() -> float:
            return float(next(clock))

    monkeypatch.setattr(trainer_module, "time", FakeTime)
    run = tmp_path / "run"
    tiny_train(run, epochs=3, limit=400, max_minutes=5 / 60)  # 7 steps per epoch
    first = read_metrics(run)
    # one reading per step: the 5th step sees 5 seconds spent and ends the epoch there
    assert [(r["epoch"], r["step"], r.get("stopped_by_budget")) for r in first] == [(1, 5, True)]
    # the new budget is a total: 10 seconds in all leave 4 more steps after the first 6
    resume(run, max_minutes=10 / 60, progress=False)
    assert [(r["step"], r.get("stopped_by_budget")) for r in read_metrics(run)][1:] == [(11, True)]
    resume(run, max_minutes=0, progress=False)  # no budget: on to the configured 3 epochs
    assert [(r["step"], r.get("stopped_by_budget")) for r in read_metrics(run)][2:] == [(21, None)]
    assert json.loads((run / "config.json").read_text())["training"]["max_minutes"] == 0


def nan_after(monkeypatch, start: int, stop: int | None = None) -> None:
    original = ELBO.training_step

    def training_step(self, model, batch, ctx):
        if ctx.step >= start and (stop is None or ctx.step < stop):
            batch.x = batch.x * float("nan")
        return original(self, model, batch, ctx)

    monkeypatch.setattr(ELBO, "training_step", training_step)


def test_persistent_non_finite_loss_stops_with_last_good_checkpoint_intact(tmp_path, monkeypatch):
    run = tmp_path / "run"
    nan_after(monkeypatch, start=9)  # epoch 1 completes (7 steps), epoch 2 goes bad
    with pytest.raises(TrainingStopped, match="not finite for 5 consecutive steps"):
        tiny_train(run, epochs=3, limit=400, max_nonfinite=5)
    state = load_checkpoint(run / "checkpoint.safetensors")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in weights(run).values())
    assert len(read_metrics(run)) == 1


def test_a_few_non_finite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    nan_after(monkeypatch, start=2, stop=5)
    _, history = tiny_train(tmp_path / "run", epochs=1, limit=400)
    assert history[0]["skipped_steps"] == 3
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "run").values())


def test_kl_warmup_and_cyclical_schedules_are_logged(tmp_path):
    _, h = tiny_train(tmp_path / "lin", epochs=4, limit=400, warmup_epochs=2, kl_schedule="linear")
    weights_by_epoch = [r["kl_weight"] for r in h]
    assert weights_by_epoch[0] < weights_by_epoch[1] <= 1.0 and weights_by_epoch[-1] == 1.0
    _, h = tiny_train(tmp_path / "cyc", epochs=4, limit=400, kl_schedule="cyclical", cycles=2, beta=2.0)
    assert max(r["kl_weight"] for r in h) == 2.0


def test_free_bits_bf16_and_accumulation_train_to_finite_losses(tmp_path):
    _, h = tiny_train(tmp_path / "fb", epochs=2, limit=400, free_bits=0.5, precision="bf16", grad_accum=2)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in h)
    assert h[-1]["train_loss"] >= h[-1]["train_recon"]  # free bits only ever add to the KL term


def test_grad_skip_is_relative_to_the_running_mean_norm():
    ctx = StepContext.__new__(StepContext)
    ctx._t = SimpleNamespace(config=SimpleNamespace(grad_skip=10.0), grad_norms={})
    for _ in range(trainer_module.GRAD_SKIP_WARMUP):
        assert not ctx._exploding("model", 5000.0)  # large absolute norms are not "exploding"
    assert not ctx._exploding("model", 40000.0)  # 8x the mean
    assert ctx._exploding("model", 1e6)
    assert ctx._t.grad_norms["model"] == (pytest.approx(5350.0), trainer_module.GRAD_SKIP_WARMUP + 1)


def test_resume_with_grad_skip_equals_uninterrupted(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "GRAD_SKIP_WARMUP", 3)  # so the running mean decides within the run
    kw = {**RUN_KW, "grad_skip": 1.1}
    _, history = tiny_train(tmp_path / "ref", **kw)
    original = ELBO.training_step
    run = tmp_path / "run"
    interrupt_at(monkeypatch, step=10)
    with pytest.raises(Interrupted):
        tiny_train(run, **kw)
    monkeypatch.setattr(ELBO, "training_step", original)
    assert load_checkpoint(run / "checkpoint.safetensors")["grad_norms"]["model"]["count"] > 3
    resume(run, progress=False)
    assert_same_run(tmp_path / "ref", run)
    assert sum(r["skipped_steps"] for r in history) > 0  # the skip did act
