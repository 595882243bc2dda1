"""Numeric precision: what ``--precision auto`` picks on this machine, and the autocast that runs it.

- ``fp32``: everything in float32.
- ``bf16``: bfloat16 autocast for the networks' matrix products and convolutions (torch.autocast),
  weights and optimizer state in float32.
- ``fp16``: float16 autocast with a gradient scaler (torch.amp.GradScaler); CUDA only.
- ``auto`` (the default): bf16 where the device runs it faster than fp32, fp32 elsewhere. On CUDA
  that is a GPU with bf16 support (``torch.cuda.is_bf16_supported()``: Ampere and later); on a
  CPU it is one with AMX (Sapphire Rapids and later: ``amx_bf16`` in /proc/cpuinfo, as torch's own
  ``torch.cpu._is_amx_tile_supported()`` reports it). Without AMX, oneDNN's bf16 products run
  below MKL's fp32 ones (measured on an AVX-512-BF16 VM: ~140 against ~220 GFLOP/s), so fp32 wins.
  The choice follows from what the machine is, not from a timing probe: a probe would let machine
  load change a run's numerics, and a resumed run could come back in another precision.

Whatever the autocast, densities, KL terms and logsumexps are computed in float32
(``vaekit.distributions`` upcasts network outputs before any density).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from vaekit.errors import VaekitError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is fp32, bf16 or fp16; ``reason`` says why (for the log)."""

    name: str
    requested: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None for fp32)."""
        return DTYPES.get(self.name)

    def describe(self) -> str:
        if self.requested == "auto":
            return f"precision auto -> {self.name} ({self.reason})"
        return f"precision {self.name}"


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU runs bf16 matrix products on AMX tiles."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:  # pragma: no cover - a build without the CPU capability query
            pass
    try:  # pragma: no cover - older torch
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:  # pragma: no cover
        return False


def check_precision(name: str) -> None:
    if name not in PRECISIONS:
        raise VaekitError(f"unknown precision '{name}' (choose from: {', '.join(PRECISIONS)})")


def resolve_precision(requested: str, device: str | torch.device) -> Precision:
    """The precision ``requested`` (auto, fp32, bf16, fp16) means on ``device``; one-line errors for
    an unknown name, fp16 off CUDA and bf16 on a GPU without it."""
    check_precision(requested)
    dev = torch.device(device)
    if requested == "fp16":
        if dev.type != "cuda":
            raise VaekitError(f"--precision fp16 needs a CUDA device (it trains with a gradient scaler on the GPU); "
                              f"the device is '{device}': use bf16, fp32 or auto")
        return Precision("fp16", requested, "float16 autocast with a gradient scaler")
    if requested == "bf16":
        if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise VaekitError(f"--precision bf16: the GPU of '{device}' has no bf16 support; use fp16, fp32 or auto")
        return Precision("bf16", requested, "bfloat16 autocast")
    if requested == "fp32":
        return Precision("fp32", requested, "float32")
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", requested, f"{torch.cuda.get_device_name(dev)} supports bf16")
        return Precision("fp32", requested, f"{torch.cuda.get_device_name(dev)} has no bf16 support")
    if dev.type == "cpu":
        if cpu_has_amx():
            return Precision("bf16", requested, "CPU with AMX (amx_bf16)")
        return Precision("fp32", requested, "CPU without AMX: bf16 would be slower than fp32")
    return Precision("fp32", requested, f"no bf16 rule for '{dev.type}' devices")


def autocast(device: str | torch.device, precision: Precision | str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    name = precision.name if isinstance(precision, Precision) else precision
    dtype = DTYPES.get(name)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
