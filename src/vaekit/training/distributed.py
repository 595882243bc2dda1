"""Several processes on torch.distributed, launched by torchrun: who this process is, how a global
batch is split, and the few collectives the trainer and the evaluator need.

``torchrun --nproc-per-node N -m vaekit train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR/PORT for each process; ``setup()`` reads them and joins the process group (gloo for CPU
tensors, nccl for CUDA ones). Without them (or with WORLD_SIZE=1) everything here is the identity
and no process group is made, so one process runs exactly as before.

How a step is split: the global batch is ``--batch-size`` rows; rank r takes a contiguous share
(``span``), the first ``B mod N`` ranks one row more. Each rank's loss is the mean over its own rows;
the trainer scales it by the rank's share of the global batch before backward and sums the
gradients over the ranks (``GradientSync``: flattened into buckets, one all_reduce each), which is
the gradient of the global batch's mean loss however unevenly the rows fall: the arithmetic
DistributedDataParallel does, done in ``StepContext.optimize`` because objectives call other model
methods than forward and some step two optimizers. Non-finite checks, clipping and the skip rule
then see the same summed gradient on every rank, so every rank takes the same decision and holds
the same weights after every step.

A user error found on one rank must not leave the others waiting in a collective: validation runs
inside ``agreement(world)``, after which every rank raises the error of the lowest failing rank.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from vaekit.errors import AgreedError, VaekitError

BUCKET_ELEMENTS = 1 << 23  # 32 MiB of float32 per all_reduce (DDP's default bucket is 25 MiB)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collectives' tensors live: cpu (gloo) or cuda:LOCAL_RANK (nccl)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def writer(self) -> bool:
        """Whether this process writes files, logs and the progress bar (rank 0)."""
        return self.rank == 0

    def span(self, n: int) -> tuple[int, int]:
        """This rank's rows [start, stop) of a global batch of ``n`` rows."""
        return span(n, self.rank, self.size)


SINGLE = World()
_world: World | None = None


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise VaekitError(f"environment variable {name}={text!r} is not an integer (torchrun sets it)") from None


def from_env() -> World:
    """The world torchrun's environment describes (one process when it describes none)."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise VaekitError(f"RANK={rank} and WORLD_SIZE={size} do not describe a process of a job")
    return World(rank=rank, size=size, local_rank=local)


def is_writer() -> bool:
    """Rank 0 (or a single process), from the environment alone (no torch.distributed needed)."""
    return os.environ.get("RANK", "0") in ("", "0")


def setup() -> World:
    """Join the process group torchrun's environment describes (once per process) and return the
    world; one process without a group when there is none to join."""
    global _world
    if _world is not None:
        return _world
    world = from_env()
    if not world.distributed:
        _world = world
        return world
    import torch.distributed as dist

    if not dist.is_available():
        raise VaekitError("this torch build has no torch.distributed; run without torchrun")
    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=_env_int("VAEKIT_DIST_TIMEOUT", 1800))
        # gloo carries CPU tensors, nccl CUDA ones; a CPU-only build gets gloo alone
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timeout)
    if cuda:
        torch.cuda.set_device(world.local_rank)
    _world = World(rank=world.rank, size=world.size, local_rank=world.local_rank,
                   device=f"cuda:{world.local_rank}" if cuda else "cpu")
    return _world


def shutdown() -> None:
    """Leave the process group cleanly: wait for every rank, then tear it down (a rank whose group
    is torn down by interpreter exit while a peer still talks to it can abort). Call it on paths
    every rank takes together (the end of a command, an agreed error), never after a rank's own
    failure (the others may be inside another collective)."""
    global _world
    if _world is not None and _world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    _world = None


def current() -> World:
    """The world ``setup`` joined (a single process if it was never called)."""
    return _world if _world is not None else SINGLE


def rank_device(device: str, world: World) -> str:
    """The device of this rank: ``cuda`` means cuda:LOCAL_RANK under torchrun."""
    if not world.distributed or not device.startswith("cuda"):
        return device
    if device not in ("cuda", f"cuda:{world.local_rank}"):
        raise VaekitError(f"--device {device}: under torchrun each rank uses its own GPU (cuda:LOCAL_RANK); "
                          "pass --device cuda")
    return f"cuda:{world.local_rank}"


def shares(n: int, size: int) -> list[int]:
    """Rows per rank of a global batch of ``n``: as even as possible, the first ranks one more."""
    base, extra = divmod(n, size)
    return [base + (r < extra) for r in range(size)]


def span(n: int, rank: int, size: int) -> tuple[int, int]:
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def chunk_rows(chunk: int, total: int, world: World) -> tuple[int, int]:
    """This rank's rows [start, stop) of evaluation chunk number ``chunk`` (``total`` rows): a share
    of it when it has a row for every rank, else all of it for rank ``chunk mod N`` and none for the
    others (so no model ever sees an empty batch)."""
    if total >= world.size:
        return world.span(total)
    return (0, total) if chunk % world.size == world.rank else (0, 0)


def chunk_seeds(seed: int, chunks: int) -> list[int]:
    """One seed per evaluation chunk, so a chunk's noise does not depend on which rank ran the ones
    before it (the same list on every rank, and in one process)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**62, (max(chunks, 1),), generator=gen).tolist()


@dataclass(frozen=True)
class Chunk:
    """This rank's part of one evaluation chunk: the examples, its rows of the chunk (for
    ``sharding.rows``) and the chunk's seed."""

    index: Tensor
    rows: tuple[int, int, int]  # start, stop, total
    seed: int


def chunks(n: int, size: int, seed: int, world: World) -> Iterator[Chunk]:
    """The chunks of ``size`` of ``n`` examples that this rank has a part of (``chunk_rows``), each
    with its own seed (``chunk_seeds``): the numbers do not depend on the ranks."""
    starts = range(0, n, size)
    seeds = chunk_seeds(seed, len(starts))
    for c, start in enumerate(starts):
        total = min(size, n - start)
        a, b = chunk_rows(c, total, world)
        if a < b:
            yield Chunk(torch.arange(start + a, start + b), (a, b, total), seeds[c])


def check_shares(examples: int, batch_size: int, world: World, min_rows: int = 1, what: str = "training") -> None:
    """Every rank must get at least ``min_rows`` rows of every batch, the epoch's last one included.

    A world size that does not divide the batch is fine: the shares are uneven and the gradient is
    still the global batch's (each rank's loss is weighted by its share)."""
    if not world.distributed:
        return
    if examples < world.size * min_rows:
        raise VaekitError(f"torchrun started {world.size} ranks but there are only {examples} {what} examples; "
                          f"use at most {examples // min_rows} ranks")
    batch = min(batch_size, examples)
    last = examples - (-(-examples // batch) - 1) * batch  # rows of the epoch's last batch
    smallest = min(batch, last)
    if smallest < world.size * min_rows:
        which = f"the last batch of each epoch has {smallest} of the {examples} {what} examples" \
            if smallest < batch else f"--batch-size {batch_size} gives {smallest} rows per batch"
        need = f"{min_rows} rows per rank" if min_rows > 1 else "one row per rank"
        raise VaekitError(f"{world.size} ranks need at least {world.size * min_rows} rows in every batch "
                          f"({need}), but {which}; choose a --batch-size for which that holds, or fewer ranks")


# -- collectives (the identity for one process) --------------------------------------------------
def _dist():
    import torch.distributed as dist

    return dist


def all_reduce_sum(t: Tensor, world: World) -> Tensor:
    """The sum over ranks of ``t`` (a new tensor on t's device)."""
    if not world.distributed:
        return t
    buf = t.detach().to(world.device, copy=True).contiguous()
    _dist().all_reduce(buf)
    return buf.to(t.device)


def all_reduce_max(t: Tensor, world: World) -> Tensor:
    if not world.distributed:
        return t
    buf = t.detach().to(world.device, copy=True).contiguous()
    _dist().all_reduce(buf, op=_dist().ReduceOp.MAX)
    return buf.to(t.device)


def barrier(world: World) -> None:
    """Wait until every rank is here (e.g. until rank 0 has written what the others will read)."""
    if world.distributed:
        _dist().barrier()


@contextlib.contextmanager
def agreement(world: World) -> Iterator[None]:
    """Run validation on every rank; if it fails on any, every rank raises the lowest failing rank's
    error (so no rank waits in a collective for one that has left)."""
    if not world.distributed:
        yield
        return
    error: str | None = None
    try:
        yield
    except VaekitError as e:
        error = str(e)
    agree(error, world)


def agree(error: str | None, world: World) -> None:
    """A collective: raise ``AgreedError`` on every rank if ``error`` is set on any."""
    if not world.distributed:
        if error is not None:
            raise AgreedError(error)
        return
    dist = _dist()
    first = torch.tensor([world.rank if error is not None else world.size], device=world.device)
    dist.all_reduce(first, op=dist.ReduceOp.MIN)
    src = int(first.item())
    if src == world.size:
        return
    raise AgreedError(broadcast_text(error or "", world, src))


def broadcast_text(text: str, world: World, src: int = 0) -> str:
    """Rank ``src``'s string on every rank (as bytes in a tensor: no pickle)."""
    if not world.distributed:
        return text
    dist = _dist()
    data = text.encode() if world.rank == src else b""
    length = torch.tensor([len(data)], device=world.device)
    dist.broadcast(length, src)
    buf = torch.zeros(int(length.item()), dtype=torch.uint8, device=world.device)
    if world.rank == src and data:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src)
    return bytes(buf.cpu().tolist()).decode()


def _buckets(tensors: list[Tensor]) -> Iterator[list[int]]:
    """Indices of ``tensors`` grouped into buckets of at most BUCKET_ELEMENTS elements."""
    bucket: list[int] = []
    size = 0
    for i, t in enumerate(tensors):
        if bucket and size + t.numel() > BUCKET_ELEMENTS:
            yield bucket
            bucket, size = [], 0
        bucket.append(i)
        size += t.numel()
    if bucket:
        yield bucket


def broadcast_tensors(tensors: Iterable[Tensor], world: World, src: int = 0) -> None:
    """Overwrite floating-point ``tensors`` in place with rank ``src``'s values (bucketed)."""
    if not world.distributed:
        return
    items = [t for t in tensors if t.dtype.is_floating_point]
    for bucket in _buckets(items):
        flat = torch.cat([items[i].detach().reshape(-1).to(world.device, torch.float32) for i in bucket])
        _dist().broadcast(flat, src)
        offset = 0
        for i in bucket:
            t = items[i]
            with torch.no_grad():
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def broadcast_module_state(modules: Iterable[torch.nn.Module], world: World) -> None:
    """Every rank starts from rank 0's parameters and buffers (as DDP does at construction)."""
    if not world.distributed:
        return
    tensors: list[Tensor] = []
    for m in modules:
        tensors += [t for t in m.state_dict(keep_vars=True).values() if isinstance(t, Tensor)]
    broadcast_tensors(tensors, world)


def running_stat_buffers(modules: Iterable[torch.nn.Module]) -> list[Tensor]:
    """The state a step changes besides the parameters: BatchNorm running means and variances, and
    whatever a module lists in ``running_buffers()`` (a calibrated likelihood's running scale)."""
    from torch.nn.modules.batchnorm import _NormBase

    modules = list(modules)
    out: list[Tensor] = []
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, _NormBase) and sub.track_running_stats and sub.running_mean is not None:
                out += [sub.running_mean, sub.running_var]
    return out + fitted_buffers(modules)


def fitted_buffers(modules: Iterable[torch.nn.Module]) -> list[Tensor]:
    """What modules list in ``running_buffers()``: state fitted to the data during training (a
    calibrated likelihood's scale), not trained, so an EMA leaves it out."""
    return [t for m in modules for sub in m.modules() if callable(getattr(sub, "running_buffers", None))
            for t in sub.running_buffers()]


class GradientSync:
    """Sums the gradients of an optimizer's parameters over the ranks, in flattened buckets, and
    carries a few extra values (the scaled loss, stop flags) in the first bucket at no extra cost."""

    def __init__(self, world: World) -> None:
        self.world = world

    def reduce(self, params: list[Tensor], extra: Tensor) -> Tensor:
        """Sum ``p.grad`` over ranks in place and return ``extra`` summed. A parameter without a
        gradient counts as zero and stays without one when no rank has one (Adam then leaves it
        alone, as in one process)."""
        dist = _dist()
        dev = self.world.device
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=dev)
        head = torch.cat([extra.detach().reshape(-1).to(dev, torch.float32), has])
        sizes = [p.numel() for p in params]
        buckets = list(_buckets(params)) or [[]]
        summed_extra = None
        for n, bucket in enumerate(buckets):
            parts = [head] if n == 0 else []
            parts += [(params[i].grad if params[i].grad is not None else torch.zeros_like(params[i]))
                      .reshape(-1).to(dev, torch.float32) for i in bucket]
            flat = torch.cat(parts)
            dist.all_reduce(flat)
            offset = 0
            if n == 0:
                summed_extra = flat[: extra.numel()].clone()
                had = flat[extra.numel() : head.numel()].tolist()
                offset = head.numel()
            for i in bucket:
                p = params[i]
                piece = flat[offset : offset + sizes[i]].view_as(p)
                offset += sizes[i]
                if had[i] == 0:
                    p.grad = None
                elif p.grad is None:
                    p.grad = piece.to(p.dtype).clone()
                else:
                    p.grad.copy_(piece)
        return summed_extra.to(extra.device)

    def reduce_values(self, values: Tensor) -> Tensor:
        return all_reduce_sum(values.float(), self.world)


class _GatherRows(torch.autograd.Function):
    """All ranks' rows of a per-example tensor, in rank order; the backward sums every rank's
    gradient for the gathered tensor and hands each rank its own rows."""

    @staticmethod
    def forward(ctx, t: Tensor, sizes: tuple[int, ...], rank: int, device: str) -> Tensor:
        dist = _dist()
        ctx.sizes, ctx.rank, ctx.device = sizes, rank, device
        most = max(sizes)
        local = t.detach().to(device)
        if local.shape[0] < most:  # gloo's all_gather wants equal sizes: pad, then trim
            pad = local.new_zeros((most - local.shape[0], *local.shape[1:]))
            local = torch.cat([local, pad])
        out = [torch.empty_like(local) for _ in sizes]
        dist.all_gather(out, local.contiguous())
        return torch.cat([o[:s] for o, s in zip(out, sizes)]).to(t.device)

    @staticmethod
    def backward(ctx, grad: Tensor):
        total = grad.detach().to(ctx.device, copy=True).contiguous()
        _dist().all_reduce(total)
        start = sum(ctx.sizes[: ctx.rank])
        return total[start : start + ctx.sizes[ctx.rank]].to(grad.device), None, None, None


def row_counts(rows: int, world: World) -> list[int]:
    """Every rank's ``rows`` (one all_reduce of a one-hot vector)."""
    counts = torch.zeros(world.size, dtype=torch.float64)
    counts[world.rank] = rows
    return [int(c) for c in all_reduce_sum(counts, world).tolist()]


def gather_rows(t: Tensor, sizes: list[int], world: World) -> Tensor:
    """[sum(sizes), ...] from every rank's [sizes[rank], ...]; differentiable."""
    if not world.distributed:
        return t
    if t.shape[0] != sizes[world.rank]:
        raise ValueError(f"gather: expected this rank's {sizes[world.rank]} rows, got {t.shape[0]}")
    return _GatherRows.apply(t, tuple(sizes), world.rank, world.device)
