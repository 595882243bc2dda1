"""Input perturbation for a background model (Ren et al. 2019, "Likelihood Ratios for
Out-of-Distribution Detection"): every value of a training batch is replaced, independently with
probability ``rate``, by a uniform draw over the values the data can take. A model trained on such
batches learns the data's low-level statistics but less of its semantics; the ``ratio`` anomaly score
subtracts its log-likelihood from the full model's."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vaekit.data.config import DataInfo


def perturb(x: Tensor, rate: float, info: DataInfo, binary: bool,
            rand: Callable[[torch.Size], Tensor] | None = None) -> Tensor:
    """``x`` [B, ...] with each value replaced with probability ``rate`` by: a fair bit (binarised data),
    one of the 256 levels of the input range (images, stored as 8 bits), or a uniform value over the
    training data's range (table rows, as standardised). ``rand(shape)`` gives uniforms in [0, 1)
    (default ``torch.rand`` on x's device, from the global generator: the trainer's seeded stream)."""
    if rate <= 0:
        return x
    rand = rand or (lambda s: torch.rand(s, device=x.device))
    u = rand(torch.Size((2, *x.shape)))  # [2, B, ...]: which values change, and to what
    if binary:
        noise = (u[1] < 0.5).to(x.dtype)
    elif info.kind == "image":
        lo, hi = info.input_range
        noise = (lo + (hi - lo) * torch.floor(u[1] * 256).clamp(max=255) / 255).to(x.dtype)
    else:
        lo, hi = info.value_range
        noise = (lo + (hi - lo) * u[1]).to(x.dtype)
    return torch.where(u[0] < rate, noise, x)
