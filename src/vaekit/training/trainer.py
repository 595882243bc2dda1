"""The one trainer: loop, device, precision, checkpoints, logging, resume.

Objectives plug in through the training-step protocol (``vaekit.protocol``): the trainer calls
``training_step(model, batch, ctx)``, and the step calls ``ctx.optimize(name, loss)`` for each of its
optimizers and returns batch means to log.

Resumption is exact: a checkpoint holds the model, the objective's modules, every optimizer, the
global and shuffling RNG states, the position inside the epoch (the shuffling generator's state at
the epoch's start plus the number of batches done) and the running sums, so a run interrupted
anywhere (Ctrl-C, kill -9 between checkpoints, a crash) continues from its last checkpoint as if
it had never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from vaekit.data import DataSplits
from vaekit.elbo import KLSchedule, bits_per_dim
from vaekit.errors import Interrupted, TrainingStopped
from vaekit.io import write_text
from vaekit.protocol import Batch, TrainingStep
from vaekit.run import CHECKPOINT, METRICS, save_weights
from vaekit.runtime import tune_cpu
from vaekit.training.checkpoint import load_checkpoint, save_checkpoint
from vaekit.training.config import TrainConfig
from vaekit.training.ema import EMA

GRAD_SKIP_WARMUP = 50  # accepted updates that only feed the running mean gradient norm
GRAD_SKIP_DECAY = 0.99  # of that running mean afterwards

VAL_BATCH = 1024


class StepContext:
    """The trainer's implementation of ``vaekit.protocol.StepContext``: the step number, the KL
    weight, autocast, and ``optimize``."""

    def __init__(self, trainer: Trainer) -> None:
        self._t = trainer
        self.step = 0
        self.epoch = 0
        self.kl_anneal = 1.0  # the KL schedule's multiplier in [0, 1] at this step
        self.kl_weight = 1.0  # beta * kl_anneal
        self.skipped = False
        self.accumulating = False
        self.stepped: set[str] = set()  # optimizers that updated their parameters in this step

    @property
    def device(self) -> torch.device:
        return self._t.device

    @property
    def dataset_size(self) -> int:
        return len(self._t.data.train)

    def autocast(self) -> contextlib.AbstractContextManager:
        enabled = self._t.config.precision == "bf16"
        return torch.autocast(self._t.device.type, dtype=torch.bfloat16, enabled=enabled)

    def optimize(self, name: str, loss: Tensor) -> bool:
        """Backpropagate ``loss`` and step optimizer ``name``. A non-finite loss (or gradient
        norm, when clipping) skips the step; returns whether parameters were updated."""
        opt = self._t.optimizers[name]
        if not math.isfinite(loss.item()):  # one sync; cheaper than a tensor isfinite on every step
            self.skipped = True
            opt.zero_grad(set_to_none=True)
            return False
        accum = self._t.config.grad_accum
        (loss / accum if accum > 1 else loss).backward()
        if self.accumulating:
            return False
        cfg = self._t.config
        if cfg.grad_clip > 0 or cfg.grad_skip > 0:
            params = [p for g in opt.param_groups for p in g["params"]]
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if not math.isfinite(norm) or self._exploding(name, norm):
                self.skipped = True  # a non-finite or exploding update (VDVAE's skip): counted, not applied
                opt.zero_grad(set_to_none=True)
                return False
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.stepped.add(name)
        return True

    def _exploding(self, name: str, norm: float) -> bool:
        """VDVAE's skip, made scale-free: an update whose gradient norm exceeds ``grad_skip`` times
        the running mean of accepted norms is dropped. The loss is in nats per example, so absolute
        norms grow with the data's size; a ratio works on any data. The first ``GRAD_SKIP_WARMUP``
        updates only feed the mean (a plain average, then an exponential one)."""
        skip = self._t.config.grad_skip
        if skip <= 0:
            return False
        mean, count = self._t.grad_norms.get(name, (0.0, 0))
        if count >= GRAD_SKIP_WARMUP and norm > skip * mean:
            return True
        rate = 1.0 / (count + 1) if count < GRAD_SKIP_WARMUP else 1.0 - GRAD_SKIP_DECAY
        self._t.grad_norms[name] = (mean + rate * (norm - mean), count + 1)
        return False


class Trainer:
    def __init__(
        self,
        run_dir: str | Path,
        model: torch.nn.Module,
        objective: TrainingStep,
        data: DataSplits,
        config: TrainConfig,
        *,
        progress: bool | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.objective = objective.to(self.device)
        self.data = data
        self.optimizers = objective.optimizers(self.model)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.log = log or (lambda msg: None)
        self.steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
        self.schedule = KLSchedule(
            kind=config.kl_schedule,
            warmup_steps=round(config.warmup_epochs * self.steps_per_epoch),
            total_steps=config.epochs * self.steps_per_epoch,
            cycles=config.cycles,
            ratio=config.cycle_ratio,
        )
        self.shuffle = torch.Generator().manual_seed(config.seed + 1)
        self.ctx = StepContext(self)
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        # position and running state (all of it goes into the checkpoint)
        self.epoch = 0  # completed epochs
        self.batch_in_epoch = 0
        self.epoch_start_shuffle = self.shuffle.get_state()
        self.sum_names: list[str] = []  # the objective's logged values, summed over this epoch
        self.sum_values: Tensor | None = None
        self.count = 0
        self.seconds = 0.0
        self.nonfinite_run = 0
        self.skipped_epoch = 0
        self.grad_norms: dict[str, tuple[float, int]] = {}  # optimizer -> (running mean norm, updates seen)
        self.history: list[dict] = []
        self.stopped_by_budget = False
        self._stop = False

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> list[dict]:
        if resume:
            self.restore(load_checkpoint(self.run_dir / CHECKPOINT))
        tune_cpu()
        with self._interrupt_handler():
            while self.epoch < self.config.epochs and not self._budget_spent():
                self._train_epoch()
                self._finish_epoch()
        return self.history

    def _budget_spent(self, running: float = 0.0) -> bool:
        """Whether the training-time budget (--max-minutes) is used up, counting finished epochs, the
        current one, and ``running`` seconds not yet added."""
        if self.config.max_minutes <= 0:
            return False
        spent = sum(r["seconds"] for r in self.history) + self.seconds + running
        return spent >= 60 * self.config.max_minutes

    def _train_epoch(self) -> None:
        cfg, n = self.config, len(self.data.train)
        if self.batch_in_epoch == 0:
            self.epoch_start_shuffle = self.shuffle.get_state()
        else:  # resuming mid-epoch: redraw the same permutation
            self.shuffle.set_state(self.epoch_start_shuffle)
        perm = torch.randperm(n, generator=self.shuffle)
        self.model.train()
        self.objective.train()
        bar = self._bar()
        started = time.perf_counter()
        for b in range(self.batch_in_epoch, self.steps_per_epoch):
            metrics = self.train_step(perm[b * cfg.batch_size : (b + 1) * cfg.batch_size], b)
            self.batch_in_epoch = b + 1
            if bar is not None:
                bar.update(1)
                if b % 20 == 0 and "loss" in metrics:
                    bar.set_postfix(loss=f"{float(metrics['loss']):.3f}", refresh=False)
            if self._budget_spent(time.perf_counter() - started):
                self.stopped_by_budget = True
                break
            if self._stop or (cfg.checkpoint_every and (self.ctx.step + 1) % cfg.checkpoint_every == 0):
                self.seconds += time.perf_counter() - started
                started = time.perf_counter()
                self.save_checkpoint()
                if self._stop:
                    if bar is not None:
                        bar.close()
                    raise Interrupted(
                        f"interrupted at epoch {self.epoch + 1}, batch {self.batch_in_epoch}/{self.steps_per_epoch}; "
                        f"checkpoint saved in {self.run_dir}; continue with --resume"
                    )
        self.seconds += time.perf_counter() - started
        if bar is not None:
            bar.close()

    def train_step(self, index: Tensor, b: int) -> dict[str, Tensor]:
        """One optimizer step on the examples ``index`` (batch ``b`` of the current epoch)."""
        cfg = self.config
        batch = self._batch(index)
        ctx = self.ctx
        ctx.step = self.epoch * self.steps_per_epoch + b
        ctx.epoch = self.epoch
        ctx.kl_anneal = self.schedule(ctx.step)
        ctx.kl_weight = cfg.beta * ctx.kl_anneal
        ctx.skipped = False
        ctx.stepped = set()
        ctx.accumulating = (b + 1) % cfg.grad_accum != 0 and b + 1 < self.steps_per_epoch
        metrics = self.objective.training_step(self.model, batch, ctx)
        if self.ema is not None and "model" in ctx.stepped:
            self.ema.update(self.model)
        if ctx.skipped:
            self.nonfinite_run += 1
            self.skipped_epoch += 1
            if self.nonfinite_run >= cfg.max_nonfinite:
                raise TrainingStopped(self._diverged_message())
            return metrics
        self.nonfinite_run = 0
        k = len(index)
        # one stacked add per step, in float64 so the running sums survive a resume exactly
        values = torch.stack([v.detach().float() for v in metrics.values()]).to(torch.float64) * k
        if self.sum_values is None:
            self.sum_names, self.sum_values = list(metrics), values
        elif list(metrics) == self.sum_names:
            self.sum_values += values
        else:  # an objective whose logged values changed mid-epoch: merge by name
            merged = self._sums()
            for name, v in zip(metrics, values):
                merged[name] = merged.get(name, torch.zeros((), dtype=torch.float64)) + v
            self.sum_names, self.sum_values = list(merged), torch.stack(list(merged.values()))
        self.count += k
        return metrics

    def _batch(self, index: Tensor) -> Batch:
        x, y = self.data.train.batch(index)
        x = x.to(self.device, non_blocking=True)
        if self.data.binarize == "dynamic":  # a fresh binarisation every time an example is seen
            x = torch.bernoulli(x)
        return Batch(x, None if y is None else y.to(self.device, non_blocking=True))

    def _finish_epoch(self) -> None:
        record: dict = {"epoch": self.epoch + 1, "step": (self.epoch + 1) * self.steps_per_epoch}
        dims = self.data.info.dims
        count = max(self.count, 1)
        for name, total in self._sums().items():
            record[f"train_{name}"] = float(total) / count
        if "elbo" in self.sum_names:
            record["train_bits_per_dim"] = bits_per_dim(-record["train_elbo"], dims)
        if self.data.val is not None and len(self.data.val):
            for name, value in self.validate().items():
                record[f"val_{name}"] = value
        record["lr"] = self.optimizers[next(iter(self.optimizers))].param_groups[0]["lr"]
        record["kl_weight"] = self.config.beta * self.schedule(record["step"] - 1)
        record["seconds"] = round(self.seconds, 4)
        record["skipped_steps"] = self.skipped_epoch
        if self.stopped_by_budget:
            record["stopped_by_budget"] = True  # the --max-minutes budget ended this epoch early
            record["step"] = self.epoch * self.steps_per_epoch + self.batch_in_epoch
        self.history.append(record)
        self.epoch += 1
        self.batch_in_epoch = 0
        self.sum_names, self.sum_values = [], None
        self.count, self.seconds, self.skipped_epoch = 0, 0.0, 0
        self.save_checkpoint()
        self.log(_summary(record, self.config.epochs))

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Per-example means of the objective's validation parts on the validation split, with a
        fixed noise generator so epochs are comparable and training's RNG stream is untouched."""
        with self._evaluation_weights():
            return self._validate()

    def _evaluation_weights(self):
        return self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext()

    def _validate(self) -> dict[str, float]:
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed + 2)
        val = self.data.val
        sums: dict[str, float] = {}
        for start in range(0, len(val), VAL_BATCH):
            index = torch.arange(start, min(start + VAL_BATCH, len(val)))
            x, y = val.batch(index)
            batch = Batch(x.to(self.device), None if y is None else y.to(self.device))
            with self.ctx.autocast():
                parts = self.objective.validation_step(self.model, batch, gen)
            for name, v in parts.items():
                sums[name] = sums.get(name, 0.0) + float(v.double().sum())
        out = {name: total / len(val) for name, total in sums.items()}
        if "elbo" in out:
            out["bits_per_dim"] = bits_per_dim(-out["elbo"], self.data.info.dims)
        self.model.train()
        return out

    # -- checkpoints ----------------------------------------------------------------------------
    def state(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "rng": rng,
            "epoch_start_shuffle": self.epoch_start_shuffle,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "sums": self._sums(),
            "count": self.count,
            "seconds": self.seconds,
            "nonfinite_run": self.nonfinite_run,
            "skipped_epoch": self.skipped_epoch,
            "grad_norms": {k: {"mean": m, "count": c} for k, (m, c) in self.grad_norms.items()},
            "history": self.history,
            "ema": None if self.ema is None else self.ema.state_dict(),
        }

    def save_checkpoint(self) -> None:
        """Checkpoint first (it holds the history), then the weights and metrics derived from it."""
        save_checkpoint(self.run_dir / CHECKPOINT, self.state())
        self._save_weights()
        self._write_metrics()

    def _save_weights(self) -> None:
        """model.safetensors holds the weights evaluation should use: the average, when kept."""
        with self._evaluation_weights():
            save_weights(self.run_dir, self.model)

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        for name, opt in self.optimizers.items():
            # the objective built each optimizer at the config's learning rate; loading the state would
            # bring back the saved one, so a run resumed with a new --lr (a step decay) keeps the new one
            built = [group["lr"] for group in opt.param_groups]
            opt.load_state_dict(state["optimizers"][name])
            for group, lr in zip(opt.param_groups, built, strict=True):
                group["lr"] = lr
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle.set_state(state["rng"]["shuffle"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.epoch_start_shuffle = state["epoch_start_shuffle"]
        self.epoch = state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        sums = state["sums"]
        self.sum_names = list(sums)
        self.sum_values = torch.stack([sums[k].to(torch.float64) for k in sums]) if sums else None
        self.count = state["count"]
        self.seconds = state["seconds"]
        self.nonfinite_run = state["nonfinite_run"]
        self.skipped_epoch = state["skipped_epoch"]
        self.grad_norms = {k: (v["mean"], v["count"]) for k, v in state.get("grad_norms", {}).items()}
        self.history = list(state["history"])
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:  # an average first asked for on resume (--resume --ema) starts from the restored weights
                self.ema = EMA(self.model, self.config.ema_decay)
        # after a kill -9: a write may have been cut short (its temp file is debris), and the files
        # derived from the checkpoint may be older or newer than it
        for debris in self.run_dir.glob(".*.tmp"):
            debris.unlink()
        self._save_weights()
        self._write_metrics()

    def _sums(self) -> dict[str, Tensor]:
        return {} if self.sum_values is None else dict(zip(self.sum_names, self.sum_values))

    def _write_metrics(self) -> None:
        write_text(self.run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in self.history))

    # -- plumbing ---------------------------------------------------------------------------------
    def _bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch, leave=False, file=sys.stderr,
                    desc=f"epoch {self.epoch + 1}/{self.config.epochs}", unit="batch", dynamic_ncols=True)

    def _diverged_message(self) -> str:
        last = f"epoch {self.epoch}" if self.epoch else "the start (no epoch completed)"
        why = "not finite" if self.config.grad_skip <= 0 else "not finite or exploding (see --grad-skip)"
        return (f"training stopped at epoch {self.epoch + 1}, batch {self.batch_in_epoch + 1}: the loss or its "
                f"gradient was {why} for {self.config.max_nonfinite} consecutive steps; the last good checkpoint "
                f"({last}) is intact in {self.run_dir}. Try a lower --lr or --grad-clip")

    @contextlib.contextmanager
    def _interrupt_handler(self) -> Iterator[None]:
        """First Ctrl-C: finish the step, save, stop. Second: stop at once (files stay whole)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _summary(r: dict, epochs: int) -> str:
    parts = [f"epoch {r['epoch']}/{epochs}"]
    for key in ("train_loss", "train_elbo", "val_loss", "val_elbo", "val_kl", "val_psnr", "val_lpips"):
        if key in r:
            parts.append(f"{key} {r[key]:.3f}")
    parts.append(f"{r['seconds']:.2f}s")
    if r.get("skipped_steps"):
        parts.append(f"skipped {r['skipped_steps']} non-finite steps")
    return "  ".join(parts)
