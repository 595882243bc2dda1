"""An exponential moving average of the weights (as latent diffusion's LitEma): after each optimizer
step, shadow <- shadow + (1 - d) * (weights - shadow) with d = min(decay, (1 + n) / (10 + n)), so the
average is not dominated by the initial weights. Evaluation uses the average by default."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from vaekit.training.distributed import fitted_buffers


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        # fitted, not trained (a calibrated likelihood's scale): the averaged weights keep its live value
        fitted = {t.data_ptr() for t in fitted_buffers([model])}
        self.shadow: dict[str, Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()
                                          if v.dtype.is_floating_point and v.data_ptr() not in fitted}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        state = model.state_dict()
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[k] for k in names], [state[k].detach() for k in names], 1.0 - d)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Temporarily load the averaged weights into ``model``."""
        raw = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield
        finally:
            model.load_state_dict(raw, strict=False)

    def averaged_state(self, model: nn.Module) -> dict[str, Tensor]:
        return {**model.state_dict(), **self.shadow}

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
