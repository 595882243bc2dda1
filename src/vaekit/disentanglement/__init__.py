"""Disentanglement: the procedural dSprites dataset and the metrics of disentanglement_lib."""

from __future__ import annotations

import time

import numpy as np
import torch

from vaekit.errors import VaekitError

DEFAULT_METRICS = ("beta_vae", "factor_vae", "mig", "sap", "dci")


def codes_function(model, dataset, batch_size: int = 1024):
    """factor indices [N, F] -> posterior means [N, L] (flattened), rendering the images on the way."""
    device = next(model.parameters()).device
    lo, hi = model.input_range

    @torch.no_grad()
    def codes_for(factors: np.ndarray) -> np.ndarray:
        out = []
        f = torch.from_numpy(np.asarray(factors))
        for i in range(0, len(f), batch_size):
            x = dataset.images_for(f[i : i + batch_size]) * (hi - lo) + lo
            out.append(model.encode(x.to(device)).mean.flatten(1).cpu().numpy())
        return np.concatenate(out)

    return codes_for


def evaluate_disentanglement(model, dataset, metrics=DEFAULT_METRICS, seed: int = 0, settings: dict | None = None,
                             log=None) -> dict:
    """The chosen metrics on posterior means, each with its own seeded generator."""
    from vaekit.disentanglement.metrics import METRICS

    if not hasattr(dataset, "images_for"):
        raise VaekitError("disentanglement metrics need data with ground-truth factors (--data dsprites)")
    model.eval()
    codes_for = codes_function(model, dataset)
    sizes = tuple(int(s) for s in dataset.factor_sizes)
    results = {}
    for i, name in enumerate(metrics):
        if name not in METRICS:
            raise VaekitError(f"unknown metric '{name}' (choose from: {', '.join(METRICS)})")
        started = time.perf_counter()
        kwargs = dict((settings or {}).get(name, {}))
        results[name] = METRICS[name](sizes, codes_for, np.random.default_rng(seed + i), **kwargs)
        results[name]["seconds"] = round(time.perf_counter() - started, 1)
        if log:
            log(f"{name}: {results[name]}")
    return results
