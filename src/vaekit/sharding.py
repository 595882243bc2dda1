"""Randomness that does not depend on how a batch is split across processes.

When a global batch of ``total`` rows is split across ranks, rank r holds rows [start, stop). For a
run on N ranks to equal a run in one process, every random draw that belongs to the batch (the
reparameterisation noise, dynamic binarisation, a stream's crops and flips) must give each row the
number the one process would have given it. The scheme: every rank keeps the same RNG state, draws
the noise of the GLOBAL batch and keeps its own rows. One process is the world-size-one case (its
draws are unchanged), and every rank consumes the same random numbers, so the generators stay in
lock-step and the checkpoint's RNG state is the single-process one.

``rows(start, stop, total)`` declares the shard around a step; ``draw(sample, shape, batch_dim)``
is how a distribution (or the trainer, or a stream) draws; ``batch_sum(t)`` sums a statistic over
the ranks that hold the batch (the trainer passes ``rows`` its all_reduce), so a value fitted to the
batch (a calibrated likelihood's scale) is the global batch's on every rank. A draw whose batch dimension holds
``m * (stop - start)`` rows is taken as m sample-major copies of the shard (``x.repeat(m, ...)``,
as the ladder's k-sample path does); any other size is drawn as asked (it has no global meaning).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Shard:
    start: int  # this rank's first row of the global batch
    stop: int
    total: int  # rows in the global batch
    sum_ranks: Callable[[Tensor], Tensor] | None = None  # a tensor summed over the ranks sharing the batch

    @property
    def size(self) -> int:
        return self.stop - self.start


_SHARD: ContextVar[Shard | None] = ContextVar("vaekit_shard", default=None)


@contextlib.contextmanager
def rows(start: int, stop: int, total: int,
         sum_ranks: Callable[[Tensor], Tensor] | None = None) -> Iterator[Shard]:
    """Within this block, batch-shaped draws are those of rows [start, stop) of a ``total``-row batch
    (and ``batch_sum`` uses ``sum_ranks``)."""
    shard = Shard(start, stop, total, sum_ranks)
    token = _SHARD.set(shard)
    try:
        yield shard
    finally:
        _SHARD.reset(token)


def current() -> Shard | None:
    return _SHARD.get()


def batch_sum(t: Tensor) -> Tensor:
    """``t`` summed over the ranks that share this step's batch; ``t`` itself in one process."""
    s = _SHARD.get()
    if s is None or s.size == s.total or s.sum_ranks is None:
        return t
    return s.sum_ranks(t)


def global_rows(local: int) -> int:
    """The global batch's row count for a local batch of ``local`` rows (``local`` outside a shard)."""
    s = _SHARD.get()
    return s.total if s is not None and local == s.size else local


def draw(sample: Callable[[torch.Size], Tensor], shape: tuple[int, ...] | torch.Size, batch_dim: int) -> Tensor:
    """``sample(shape)`` for this rank's rows of the global batch: the global batch's draw, narrowed.

    ``sample`` draws a tensor of a given shape (``lambda s: torch.randn(s, generator=g)``);
    ``batch_dim`` is the dimension that indexes examples (negative: none).
    """
    shape = torch.Size(shape)
    s = _SHARD.get()
    if s is None or s.size == s.total or batch_dim < 0 or batch_dim >= len(shape):
        return sample(shape)
    n = shape[batch_dim]
    if n == s.size:
        full = torch.Size((*shape[:batch_dim], s.total, *shape[batch_dim + 1 :]))
        return sample(full).narrow(batch_dim, s.start, s.size)
    if s.size > 0 and n % s.size == 0:  # m sample-major copies of the shard: [m * size] rows
        m = n // s.size
        full = torch.Size((*shape[:batch_dim], m * s.total, *shape[batch_dim + 1 :]))
        t = sample(full).unflatten(batch_dim, (m, s.total)).narrow(batch_dim + 1, s.start, s.size)
        return t.flatten(batch_dim, batch_dim + 1)
    return sample(shape)
