"""The training-step protocol: the contract between the one trainer and whatever it trains.

An objective (a VAE loss, an adversarial loss with its discriminator, a denoiser's loss) is an
``nn.Module`` that implements ``TrainingStep``: it builds its optimizers, runs one step on a
``Batch`` through the ``StepContext`` the trainer hands it, and scores held-out batches. The trainer
implements ``StepContext`` and owns everything else: the loop, devices, precision, distribution,
checkpoints, logging and resumption. Objectives import this module, never the trainer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


@dataclass
class Batch:
    """One batch on the training device: data x [B, ...] and labels y [B] (or None)."""

    x: Tensor
    y: Tensor | None = None


class StepContext(Protocol):
    """What a training step may use. The trainer sets the counters before each step."""

    step: int  # optimizer steps taken so far (the global step)
    epoch: int  # completed epochs
    kl_anneal: float  # the KL schedule's multiplier in [0, 1] at this step
    kl_weight: float  # beta * kl_anneal

    @property
    def device(self) -> torch.device: ...

    @property
    def dataset_size(self) -> int:
        """Training examples per epoch (all ranks together)."""
        ...

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's mixed-precision context for the forward pass (a no-op in fp32)."""
        ...

    def optimize(self, name: str, loss: Tensor) -> bool:
        """Backpropagate ``loss`` and step optimizer ``name`` (with clipping, skipping of
        non-finite or exploding updates, and gradient accumulation); returns whether parameters
        were updated. ``loss`` is a mean over the batch's examples (on N ranks: over this rank's
        rows; the trainer makes the gradient the global batch's)."""
        ...

    def gather(self, t: Tensor) -> Tensor:
        """Every rank's rows of a per-example tensor [b, ...], in rank order (gradients flow back to
        each rank's rows); ``t`` itself in one process. For losses that are not a mean over
        examples (a minibatch estimator over the whole batch)."""
        ...

    def batch_mean(self, t: Tensor) -> Tensor:
        """The global batch's mean of a value computed as a mean over this rank's rows (e.g. a
        gradient of such a mean); ``t`` itself in one process. Not differentiable."""
        ...


@runtime_checkable
class TrainingStep(Protocol):
    """What the trainer needs from an objective (besides ``nn.Module``'s state_dict, to and train)."""

    def optimizers(self, model: nn.Module) -> dict[str, torch.optim.Optimizer]:
        """Named optimizers; 'model' is the one whose updates an EMA of the weights follows."""
        ...

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        """One step (calling ``ctx.optimize`` for each optimizer); returns batch means to log."""
        ...

    def validation_step(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        """Per-example values [B] on held-out data (averaged by the trainer)."""
        ...
