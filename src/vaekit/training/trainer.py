"""The one trainer: loop, device, precision, checkpoints, logging, resume.

Objectives plug in through the training-step protocol (``vaekit.protocol``): the trainer calls
``training_step(model, batch, ctx)``, and the step calls ``ctx.optimize(name, loss)`` for each of its
optimizers and returns batch means to log.

Resumption is exact: a checkpoint holds the model, the objective's modules, every optimizer, the
global and shuffling RNG states, the position inside the epoch (the shuffling generator's state at
the epoch's start plus the number of batches done) and the running sums, so a run interrupted
anywhere (Ctrl-C, kill -9 between checkpoints, a crash) continues from its last checkpoint as if
it had never stopped.

Distributed (torchrun, ``vaekit.training.distributed``): every rank runs this loop on the same
permutation; each step's global batch is split into contiguous shares, the gradients are summed
over the ranks inside ``StepContext.optimize``, and batch-shaped random draws are the global
batch's (``vaekit.sharding``), so N ranks end with the weights one process would have (to float32
rounding). Every decision that could differ between ranks (a non-finite loss, Ctrl-C, the time
budget) travels with the gradients and is taken by all of them together. Rank 0 alone writes the
checkpoint, which holds the single-process state: N-rank checkpoints resume on any number of ranks.
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

from vaekit import sharding
from vaekit.data import DataSplits
from vaekit.data.perturb import perturb
from vaekit.elbo import KLSchedule, bits_per_dim
from vaekit.errors import Interrupted, TrainingStopped, VaekitError
from vaekit.io import write_text
from vaekit.precision import Precision, autocast, resolve_precision
from vaekit.protocol import Batch, TrainingStep
from vaekit.run import CHECKPOINT, METRICS, load_state_strict, save_weights
from vaekit.runtime import tune_cpu
from vaekit.training import distributed
from vaekit.training.checkpoint import load_checkpoint, save_checkpoint
from vaekit.training.config import TrainConfig
from vaekit.training.ema import EMA

GRAD_SKIP_WARMUP = 50  # accepted updates that only feed the running mean gradient norm
GRAD_SKIP_DECAY = 0.99  # of that running mean afterwards

VAL_BATCH = 1024


class StepContext:
    """The trainer's implementation of ``vaekit.protocol.StepContext``: the step number, the KL
    weight, autocast, ``optimize``, and the global batch (``gather``, ``batch_mean``) on N ranks."""

    def __init__(self, trainer: Trainer) -> None:
        self._t = trainer
        self.step = 0
        self.epoch = 0
        self.kl_anneal = 1.0  # the KL schedule's multiplier in [0, 1] at this step
        self.kl_weight = 1.0  # beta * kl_anneal
        self.skipped = False
        self.accumulating = False
        self.stepped: set[str] = set()  # optimizers that updated their parameters in this step
        self.share = 1.0  # this rank's fraction of the global batch
        self.sizes: list[int] = []  # rows of each rank in this step
        # decisions the ranks took together in this step (they travel with the gradients)
        self.agreed_stop = False
        self.agreed_budget = False

    @property
    def device(self) -> torch.device:
        return self._t.device

    @property
    def dataset_size(self) -> int:
        return len(self._t.data.train)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self._t.device, self._t.precision)

    def gather(self, t: Tensor) -> Tensor:
        """Every rank's rows of a per-example tensor [b, ...], in rank order: the global batch's
        [B, ...] for a tensor of this rank's share (gradients flow back to each rank's rows). ``t``
        itself in one process. A tensor of another row count (a half batch) costs one more
        collective, to learn the other ranks' counts."""
        world = self._t.world
        if not world.distributed:
            return t
        sizes = self.sizes if t.shape[0] == self.sizes[world.rank] else distributed.row_counts(t.shape[0], world)
        return distributed.gather_rows(t, sizes, world)

    def batch_mean(self, t: Tensor) -> Tensor:
        """The global batch's mean of a value this rank computed as a mean over its own rows (each
        rank weighted by its share); ``t`` itself in one process. Not differentiable."""
        world = self._t.world
        return distributed.all_reduce_sum(t.detach() * self.share, world) if world.distributed else t

    def optimize(self, name: str, loss: Tensor) -> bool:
        """Backpropagate ``loss`` and step optimizer ``name``. A non-finite loss (or gradient
        norm, when clipping) skips the step; returns whether parameters were updated.

        On N ranks ``loss`` is this rank's mean over its rows; scaled by the rank's share of the
        global batch, the ranks' gradients sum to the global batch's, and they are summed (one
        bucketed all_reduce, which also carries the loss and the stop flags) before anything looks
        at them."""
        t = self._t
        cfg = t.config
        opt = t.optimizers[name]
        scaler = t.scalers.get(name)
        accum = cfg.grad_accum
        if t.world.distributed:
            scaled = loss * (self.share / accum)
            if self.accumulating:  # no gradients to sum yet; the ranks still agree on skipping
                if not math.isfinite(self._reduce(scaled, None)):
                    return self._skip(opt)
                self._backward(scaled, scaler)
                return False
            self._backward(scaled, scaler)
            params = [p for g in opt.param_groups for p in g["params"]]
            if not math.isfinite(self._reduce(scaled, params)):
                return self._skip(opt)
        else:
            if not math.isfinite(loss.item()):  # one sync; cheaper than a tensor isfinite on every step
                return self._skip(opt)
            self._backward(loss / accum if accum > 1 else loss, scaler)
            if self.accumulating:
                return False
        if scaler is not None:
            scaler.unscale_(opt)
        if cfg.grad_clip > 0 or cfg.grad_skip > 0:
            params = [p for g in opt.param_groups for p in g["params"]]
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if not math.isfinite(norm) and scaler is not None:
                return self._scaler_step(name, opt, scaler)  # fp16 overflow: the scaler skips it and backs off
            if not math.isfinite(norm) or self._exploding(name, norm):
                return self._skip(opt)  # a non-finite or exploding update (VDVAE's skip): counted, not applied
        if scaler is not None:
            return self._scaler_step(name, opt, scaler)
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.stepped.add(name)
        return True

    def _backward(self, loss: Tensor, scaler) -> None:
        (loss if scaler is None else scaler.scale(loss)).backward()

    def _skip(self, opt) -> bool:
        self.skipped = True
        opt.zero_grad(set_to_none=True)
        return False

    def _scaler_step(self, name: str, opt, scaler) -> bool:
        """fp16: the GradScaler steps unless the scaled gradients overflowed, then adapts its scale."""
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if scaler.get_scale() < before:  # it found inf/nan and skipped the step: calibration, not divergence
            return False
        self.stepped.add(name)
        return True

    def _reduce(self, scaled_loss: Tensor, params: list[Tensor] | None) -> float:
        """Sum this step's gradients (``params``; None: only the values) over the ranks, with the
        scaled loss and this rank's stop flags; returns the global loss."""
        t = self._t
        extra = torch.cat([scaled_loss.detach().float().reshape(1), t.local_flags()])
        total = (t.sync.reduce(params, extra) if params is not None else t.sync.reduce_values(extra)).tolist()
        self.agreed_stop = self.agreed_stop or total[1] > 0
        self.agreed_budget = self.agreed_budget or total[2] > 0
        return total[0]

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
        self.world = distributed.setup()
        self.device = torch.device(distributed.rank_device(config.device, self.world))
        # rank 0 decides (auto may time a probe) and every rank takes its choice; errors are the same on all
        chosen = resolve_precision(config.precision, self.device, probe=self.world.writer)
        if self.world.distributed:
            name, reason = json.loads(distributed.broadcast_text(json.dumps([chosen.name, chosen.reason]), self.world))
            chosen = Precision(name, chosen.requested, reason)
        distributed.check_shares(len(data.train), config.batch_size, self.world,
                                 getattr(objective, "min_rows", 1))
        self.model = model.to(self.device)
        self.objective = objective.to(self.device)
        self._set_precision(chosen)
        self.data = data
        self.optimizers = objective.optimizers(self.model)
        # fp16: one gradient scaler per optimizer (master weights stay float32)
        self.scalers = {name: torch.amp.GradScaler(self.device.type) for name in self.optimizers} \
            if self.precision.name == "fp16" else {}
        self.sync = distributed.GradientSync(self.world)
        # how a statistic fitted to the batch (sharding.batch_sum) sums over the ranks
        self._sum_ranks = (lambda t: distributed.all_reduce_sum(t, self.world)) if self.world.distributed else None
        self._running_stats = distributed.running_stat_buffers([self.model, self.objective])
        writer = self.world.writer  # rank 0 alone logs, draws the progress bar and writes files
        self.progress = writer and (sys.stderr.isatty() if progress is None else progress)
        self.log = (log or (lambda msg: None)) if writer else (lambda msg: None)
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
        self._started = time.perf_counter()  # start of the current timed stretch of the epoch
        self._restored = False

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> list[dict]:
        if resume:
            self.restore(load_checkpoint(self.run_dir / CHECKPOINT))
        tune_cpu()
        if self._restored:
            self._rewrite_derived()
        # every rank starts from rank 0's weights (as DDP does), whatever each built or loaded
        distributed.broadcast_module_state([self.model, self.objective], self.world)
        ranks = f" on {self.world.size} ranks (global batch {self.config.batch_size})" if self.world.distributed else ""
        self.log(self.precision.describe() + ranks)
        with self._interrupt_handler():
            while self.epoch < self.config.epochs and not self._budget_spent():
                self._train_epoch()
                self._finish_epoch()
        distributed.barrier(self.world)  # every rank returns once rank 0's files are written
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
        perm = torch.randperm(n, generator=self.shuffle)  # the same on every rank
        self.model.train()
        self.objective.train()
        bar = self._bar()
        self._started = time.perf_counter()
        for b in range(self.batch_in_epoch, self.steps_per_epoch):
            metrics = self.train_step(perm[b * cfg.batch_size : (b + 1) * cfg.batch_size], b)
            self.batch_in_epoch = b + 1
            if bar is not None:
                bar.update(1)
                if b % 20 == 0 and "loss" in metrics:
                    bar.set_postfix(loss=f"{float(metrics['loss']):.3f}", refresh=False)
            if self._budget_reached():
                self.stopped_by_budget = True
                break
            stop = self._stop_requested()
            if stop or (cfg.checkpoint_every and (self.ctx.step + 1) % cfg.checkpoint_every == 0):
                self.seconds += time.perf_counter() - self._started
                self._started = time.perf_counter()
                self.save_checkpoint()
                if stop:
                    if bar is not None:
                        bar.close()
                    raise Interrupted(
                        f"interrupted at epoch {self.epoch + 1}, batch {self.batch_in_epoch}/{self.steps_per_epoch}; "
                        f"checkpoint saved in {self.run_dir}; continue with --resume"
                    )
        self.seconds += time.perf_counter() - self._started
        if bar is not None:
            bar.close()

    def local_flags(self) -> Tensor:
        """This rank's [stop requested, time budget spent], summed over the ranks with the gradients."""
        return torch.tensor([float(self._stop), float(self._budget_spent(time.perf_counter() - self._started))])

    def _budget_reached(self) -> bool:
        if self.world.distributed:  # every rank's clock differs: the ranks decided together
            return self.ctx.agreed_budget
        return self._budget_spent(time.perf_counter() - self._started)

    def _stop_requested(self) -> bool:
        return self.ctx.agreed_stop if self.world.distributed else self._stop

    def train_step(self, index: Tensor, b: int) -> dict[str, Tensor]:
        """One optimizer step on the examples ``index`` (batch ``b`` of the current epoch)."""
        cfg, world, ctx = self.config, self.world, self.ctx
        total = len(index)
        start, stop = world.span(total)  # this rank's rows of the global batch
        ctx.sizes = distributed.shares(total, world.size)
        ctx.share = (stop - start) / total
        ctx.agreed_stop = ctx.agreed_budget = False
        ctx.step = self.epoch * self.steps_per_epoch + b
        ctx.epoch = self.epoch
        ctx.kl_anneal = self.schedule(ctx.step)
        ctx.kl_weight = cfg.beta * ctx.kl_anneal
        ctx.skipped = False
        ctx.stepped = set()
        ctx.accumulating = (b + 1) % cfg.grad_accum != 0 and b + 1 < self.steps_per_epoch
        with sharding.rows(start, stop, total, self._sum_ranks):  # draws and fitted statistics: the global batch's
            batch = self._batch(index[start:stop])
            metrics = self.objective.training_step(self.model, batch, ctx)
        if world.distributed and self._running_stats:  # BatchNorm statistics: rank 0's, as DDP broadcasts them
            distributed.broadcast_tensors(self._running_stats, world)
        if self.ema is not None and "model" in ctx.stepped:
            self.ema.update(self.model)
        if ctx.skipped:
            self.nonfinite_run += 1
            self.skipped_epoch += 1
            if self.nonfinite_run >= cfg.max_nonfinite:
                raise TrainingStopped(self._diverged_message())
            return metrics
        self.nonfinite_run = 0
        k = stop - start  # this rank's rows; the ranks' sums are added when an epoch ends or a checkpoint is made
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
        x = self._on_device(x)
        if self.data.binarize == "dynamic":  # a fresh binarisation every time an example is seen
            # u < p is torch.bernoulli's own rule on CPU (one uniform per element, in order), drawn for
            # the global batch so that the draws do not depend on the sharding
            u = sharding.draw(lambda s: torch.rand(s, device=x.device), x.shape, 0)
            x = (u < x).to(x.dtype)
        if self.data.perturb > 0:  # a background model's inputs (--perturb), drawn for the global batch too
            x = perturb(x, self.data.perturb, self.data.info, self.data.binarize != "none",
                        rand=lambda s: sharding.draw(lambda t: torch.rand(t, device=x.device), s, 1))
        return Batch(x, None if y is None else y.to(self.device, non_blocking=True))

    def _on_device(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def _finish_epoch(self) -> None:
        record: dict = {"epoch": self.epoch + 1, "step": (self.epoch + 1) * self.steps_per_epoch}
        dims = self.data.info.dims
        sums, count = self._global_sums()
        for name, total in sums.items():
            record[f"train_{name}"] = float(total) / max(count, 1)
        if "elbo" in self.sum_names:
            record["train_bits_per_dim"] = bits_per_dim(-record["train_elbo"], dims)
        if self.data.val is not None and len(self.data.val):
            for name, value in self.validate().items():
                record[f"val_{name}"] = value
        record["lr"] = self.optimizers[next(iter(self.optimizers))].param_groups[0]["lr"]
        record["kl_weight"] = self.config.beta * self.schedule(record["step"] - 1)
        record["seconds"] = round(self.seconds, 4)
        record["skipped_steps"] = self.skipped_epoch
        record["precision"] = self.precision.name
        record["ranks"] = self.world.size
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
        gen = torch.Generator(device=self.device)
        val = self.data.val
        sums: dict[str, Tensor] = {}
        for chunk in distributed.chunks(len(val), VAL_BATCH, self.config.seed + 2, self.world):  # this rank's part
            gen.manual_seed(chunk.seed)
            x, y = val.batch(chunk.index)
            batch = Batch(self._on_device(x), None if y is None else y.to(self.device))
            with self.ctx.autocast(), sharding.rows(*chunk.rows):
                parts = self.objective.validation_step(self.model, batch, gen)
            for name, v in parts.items():
                sums[name] = sums.get(name, 0.0) + v.double().sum().cpu()
        names = self._validation_names(sums)
        totals = distributed.all_reduce_sum(torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float64)
                                                         for k in names]), self.world)
        out = {name: float(total) / len(val) for name, total in zip(names, totals)}
        if "elbo" in out:
            out["bits_per_dim"] = bits_per_dim(-out["elbo"], self.data.info.dims)
        self.model.train()
        return out

    def _validation_names(self, sums: dict) -> list[str]:
        """The validation values' names, rank 0's (it always has rows; a rank may have none)."""
        if not self.world.distributed:
            return list(sums)
        return distributed.broadcast_text("\n".join(sums), self.world).split("\n")

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
            "scalers": {k: s.state_dict() for k, s in self.scalers.items()},
            "precision": self.precision.name,
        }

    def save_checkpoint(self) -> None:
        """Checkpoint first (it holds the history), then the weights and metrics derived from it.
        On N ranks every rank adds its running sums (a collective) and rank 0 alone writes."""
        self._global_sums()
        if not self.world.writer:
            return
        save_checkpoint(self.run_dir / CHECKPOINT, self.state())
        self._save_weights()
        self._write_metrics()

    def _global_sums(self) -> tuple[dict[str, Tensor], int]:
        """The epoch's running sums and count over all ranks. Afterwards rank 0 holds them and the
        other ranks start again from zero, so later additions are counted once."""
        if not self.world.distributed:
            return self._sums(), self.count
        values = self.sum_values if self.sum_values is not None else torch.zeros(0, dtype=torch.float64)
        packed = distributed.all_reduce_sum(torch.cat([values, torch.tensor([float(self.count)], dtype=torch.float64)]),
                                            self.world)
        summed, count = packed[:-1], int(packed[-1].item())
        if self.world.writer:
            self.sum_values = summed.clone() if self.sum_values is not None else None
            self.count = count
        else:
            self.sum_values = torch.zeros_like(summed) if self.sum_values is not None else None
            self.count = 0
        return dict(zip(self.sum_names, summed)), count

    def _save_weights(self) -> None:
        """model.safetensors holds the weights evaluation should use: the average, when kept."""
        with self._evaluation_weights():
            save_weights(self.run_dir, self.model)

    def restore(self, state: dict) -> None:
        """Load a checkpoint's state (on every rank: it is the single-process state). Files derived
        from it are rewritten when training starts (``fit``)."""
        self._keep_checkpoint_precision(state.get("precision"))  # first: it may change the weights' layout
        load_state_strict(self.model, state["model"], f"{self.run_dir / CHECKPOINT}: model")
        self.objective.load_state_dict(state["objective"])
        for name, opt in self.optimizers.items():
            # the objective built each optimizer at the config's learning rate; loading the state would
            # bring back the saved one, so a run resumed with a new --lr (a step decay) keeps the new one
            built = [group["lr"] for group in opt.param_groups]
            opt.load_state_dict(state["optimizers"][name])
            for group, lr in zip(opt.param_groups, built, strict=True):
                group["lr"] = lr
            _match_layouts(opt)
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
        for name, scaler in self.scalers.items():
            if name in state.get("scalers", {}):
                scaler.load_state_dict(state["scalers"][name])
        if not self.world.writer:  # the running sums are rank 0's to carry (see _global_sums)
            self.sum_values = None if self.sum_values is None else torch.zeros_like(self.sum_values)
            self.count = 0
        self._restored = True

    def _keep_checkpoint_precision(self, saved: str | None) -> None:
        """A resumed ``auto`` run continues in the precision its checkpoint was trained in (fp32 or
        bf16) where this device can run it, so a run does not change numerics halfway."""
        if saved is None or saved == self.precision.name:
            return
        if self.config.precision == "auto" and saved in ("fp32", "bf16"):
            try:
                resolve_precision(saved, self.device)
            except VaekitError:  # e.g. bf16 on a GPU without it: auto's own choice stands
                self.log(f"note: the checkpoint was trained in {saved}, which this device cannot run; "
                         f"continuing in {self.precision.name}")
                return
            here = self.precision.name
            self._set_precision(Precision(saved, "auto", f"kept from the checkpoint; auto here would pick {here}"))
            self.log(f"note: the checkpoint was trained in {saved}; auto continues in {saved}")
        else:
            self.log(f"note: the checkpoint was trained in {saved}; continuing in {self.precision.name}")

    def _set_precision(self, precision: Precision) -> None:
        self.precision = precision
        # conv nets under autocast run faster in channels-last layout (an autoencoder-kl step at 128^2 on an AMX
        # CPU: bf16 11.0 s, bf16 channels-last 8.5 s, fp32 18.0 s); the layout changes no value
        was = getattr(self, "channels_last", False)
        self.channels_last = precision.dtype is not None and getattr(self.model, "channels_last", False)
        if self.channels_last != was:
            layout = torch.channels_last if self.channels_last else torch.contiguous_format
            self.model.to(memory_format=layout)
            self.objective.to(memory_format=layout)

    def _rewrite_derived(self) -> None:
        """After a kill -9: a write may have been cut short (its temp file is debris), and the files
        derived from the checkpoint may be older or newer than it."""
        self._restored = False
        if not self.world.writer:
            return
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


def _match_layouts(opt: torch.optim.Optimizer) -> None:
    """Give restored optimizer state (moments) the memory layout of its parameter: a checkpoint stores
    tensors contiguous, and fused kernels pair elements by memory, not by index."""
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if isinstance(value, Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    opt.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _summary(r: dict, epochs: int) -> str:
    parts = [f"epoch {r['epoch']}/{epochs}"]
    for key in ("train_loss", "train_elbo", "val_loss", "val_elbo", "val_kl", "val_psnr", "val_lpips"):
        if key in r:
            parts.append(f"{key} {r[key]:.3f}")
    parts.append(f"{r['seconds']:.2f}s")
    if r.get("skipped_steps"):
        parts.append(f"skipped {r['skipped_steps']} non-finite steps")
    return "  ".join(parts)
