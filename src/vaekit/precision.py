"""Numeric precision: what ``--precision auto`` picks on this machine, and the autocast that runs it.

- ``fp32``: everything in float32.
- ``bf16``: bfloat16 autocast for the networks' matrix products and convolutions (torch.autocast),
  weights and optimizer state in float32.
- ``fp16``: float16 autocast with a gradient scaler (torch.amp.GradScaler); CUDA only.
- ``auto`` (the default): bf16 where the device runs it faster than fp32, fp32 elsewhere.

  - CUDA: a GPU with bf16 support (``torch.cuda.is_bf16_supported()``: Ampere and later).
  - A CPU with AMX (Sapphire Rapids and later, ``torch.cpu._is_amx_tile_supported()``): bf16, from
    what the machine is (a bf16 product there runs ~6x faster than fp32).
  - A CPU with AVX512-BF16 but no AMX (Cooper Lake, AMD Zen 4 and 5): it depends on the chip. On one
    Intel VM oneDNN's bf16 products ran below MKL's fp32 ones (~140 against ~220 GFLOP/s); on a Zen 5
    EPYC they ran 4.4x faster (796 against 181), and a conv step 3.2x. So auto measures: a short
    start-up probe (a training step of small MLP and conv layers in each precision, ~0.5 s) picks
    bf16 when it is ``PROBE_MARGIN`` times faster overall and slower on neither. The result is cached per CPU model,
    torch version and thread count in ``$VAEKIT_CACHE/precision-probe/``, so every later command
    on the machine (evaluate after train, a resume) makes the same choice without timing anything,
    and a resumed run keeps the precision its checkpoint was trained in. ``VAEKIT_PRECISION_PROBE=0``
    turns the probe off (auto then picks fp32 on these CPUs).
  - Any other CPU: fp32 (bf16 would be emulated in software).

Whatever the autocast, densities, KL terms and logsumexps are computed in float32
(``vaekit.distributions`` upcasts network outputs before any density).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch

from vaekit.errors import VaekitError
from vaekit.io import cache_dir, write_json

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PROBE_ENV = "VAEKIT_PRECISION_PROBE"
PROBE_DIR = "precision-probe"
# bf16 must win clearly: a near tie is noise on a loaded machine, and bf16 costs accuracy
PROBE_MARGIN = 1.25


@dataclasses.dataclass(frozen=True)
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
    return "amx_bf16" in _cpu_flags()  # pragma: no cover - older torch


@functools.cache
def cpu_bf16_isa() -> str | None:
    """The CPU's bf16 instructions: ``"amx"``, ``"avx512_bf16"`` (dot products, no tiles) or None."""
    if cpu_has_amx():
        return "amx"
    query = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if query is not None:
        try:
            return "avx512_bf16" if query() else None
        except RuntimeError:  # pragma: no cover
            pass
    return "avx512_bf16" if "avx512_bf16" in _cpu_flags() else None  # pragma: no cover


@functools.cache
def cpuinfo(field: str) -> str | None:
    """The first value of ``field`` ("model name", "cpu family", "flags") in /proc/cpuinfo, or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return None


def _cpu_flags() -> set[str]:
    return set((cpuinfo("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo; the platform's processor string elsewhere)."""
    model = cpuinfo("model name")
    if model:
        return model
    import platform

    return platform.processor() or platform.machine()


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Seconds per training step of the probe's two workloads in each precision."""

    mlp_fp32_s: float
    mlp_bf16_s: float
    conv_fp32_s: float
    conv_bf16_s: float

    @property
    def speedups(self) -> tuple[float, float]:
        """bf16's speed-up over fp32 on the MLP step and on the conv step."""
        return self.mlp_fp32_s / self.mlp_bf16_s, self.conv_fp32_s / self.conv_bf16_s

    @property
    def speedup(self) -> float:
        """The geometric mean of the two speed-ups."""
        mlp, conv = self.speedups
        return math.sqrt(mlp * conv)

    def pays(self) -> bool:
        """bf16 wins clearly overall and loses on neither workload."""
        return self.speedup >= PROBE_MARGIN and min(self.speedups) >= 1.0


def measure_bf16_speedup(scale: int = 1, repeats: int = 5) -> ProbeResult:
    """Time a training step (forward, backward) of two workloads shaped like vaekit's models, in
    fp32 and under bf16 autocast: an MLP VAE's layers (784-400-40-400-784, batch 128*scale) and a
    conv encoder's (3x3 convs 1-32-64 at 28x28 and 14x14, batch 16*scale, channels-last). A real
    step includes autocast's casts, which is where bf16 without AMX can lose what its products gain.
    Best of ``repeats`` steps after one warm-up, on the CPU (~0.5 s in all)."""
    # whatever the caller's mode (load() under no_grad or inference_mode, an outer autocast), the
    # probe times real fp32 and bf16 training steps
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        return _measure(scale, repeats)


def _measure(scale: int, repeats: int) -> ProbeResult:
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # the layers' init must not move the global generator
        mlp = torch.nn.Sequential(torch.nn.Linear(784, 400), torch.nn.ReLU(), torch.nn.Linear(400, 40),
                                  torch.nn.Linear(40, 400), torch.nn.ReLU(), torch.nn.Linear(400, 784))
        conv = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.SiLU(),
                                   torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.SiLU(),
                                   torch.nn.Conv2d(64, 64, 3, padding=1))
    conv = conv.to(memory_format=torch.channels_last)
    rows = torch.rand(128 * scale, 784, generator=gen)
    images = torch.rand(16 * scale, 1, 28, 28, generator=gen).contiguous(memory_format=torch.channels_last)

    def best(net: torch.nn.Module, x: torch.Tensor, name: str) -> float:
        times = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            with autocast("cpu", name):
                out = net(x)
            out.float().square().mean().backward()
            if i:  # the first step warms oneDNN's kernel caches up
                times.append(time.perf_counter() - start)
        return min(times)

    return ProbeResult(best(mlp, rows, "fp32"), best(mlp, rows, "bf16"),
                       best(conv, images, "fp32"), best(conv, images, "bf16"))


def _probe_key() -> str:
    return f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


_probed: dict[str, ProbeResult] = {}


def cpu_bf16_probe() -> ProbeResult:
    """The probe's result for this CPU, torch and thread count: remembered in this process, else read
    from its cache file, else measured now and cached. One file per key
    (``$VAEKIT_CACHE/precision-probe/<hash>.json``, written atomically), so processes never overwrite
    each other's entries; an unreadable or implausible file is measured over, not an error."""
    key = _probe_key()
    if key in _probed:
        return _probed[key]
    path = cache_dir() / PROBE_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    result = None
    try:
        entry = json.loads(path.read_text())
        if entry.get("key") == key:
            times = [float(entry[f.name]) for f in dataclasses.fields(ProbeResult)]
            if all(math.isfinite(t) and t > 0 for t in times):
                result = ProbeResult(*times)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    if result is None:
        result = measure_bf16_speedup()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, {"key": key, **dataclasses.asdict(result)})
        except OSError:  # a read-only cache: the choice is still made, and remembered in this process
            pass
    _probed[key] = result
    return result


def check_precision(name: str) -> None:
    if name not in PRECISIONS:
        raise VaekitError(f"unknown precision '{name}' (choose from: {', '.join(PRECISIONS)})")


def resolve_precision(requested: str, device: str | torch.device, *, probe: bool = True) -> Precision:
    """The precision ``requested`` (auto, fp32, bf16, fp16) means on ``device``; one-line errors for
    an unknown name, fp16 off CUDA and bf16 on a GPU without it. ``probe=False`` never times
    anything (a CPU that would need the probe gets fp32): for ranks that take rank 0's choice."""
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
    if dev.type != "cpu":
        return Precision("fp32", requested, f"no bf16 rule for '{dev.type}' devices")
    isa = cpu_bf16_isa()
    if isa == "amx":
        return Precision("bf16", requested, "CPU with AMX (amx_bf16)")
    if isa is None:
        return Precision("fp32", requested, "CPU without AMX or AVX512-BF16: bf16 would be emulated, slower than fp32")
    if not probe or os.environ.get(PROBE_ENV, "1") == "0":
        return Precision("fp32", requested, f"CPU with AVX512-BF16 but no AMX, not probed ({PROBE_ENV}=0)")
    result = cpu_bf16_probe()
    mlp, conv = result.speedups
    verdict = (f"AVX512-BF16 CPU without AMX: the start-up probe ran bf16 at {mlp:.2f}x fp32 on an MLP step "
               f"and {conv:.2f}x on a conv step")
    if result.pays():
        return Precision("bf16", requested, verdict)
    return Precision("fp32", requested, f"{verdict}; bf16 takes {PROBE_MARGIN}x overall and no loss on either")


def autocast(device: str | torch.device, precision: Precision | str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    name = precision.name if isinstance(precision, Precision) else precision
    dtype = DTYPES.get(name)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
