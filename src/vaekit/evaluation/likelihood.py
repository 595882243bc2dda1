"""Honest numbers: the ELBO's parts, the importance-weighted estimate of -log p(x) and active units.

The importance-weighted bound (Burda et al. 2015, "Importance Weighted Autoencoders"):

    log p(x) >= E[ log (1/K) sum_j p(x, z_j) / q(z_j|x) ],   z_j ~ q(z|x),

tightens as K grows; K = 1 is the ELBO. Each x is encoded once; its K samples are decoded in
chunks of at most ``batch_size`` rows shared across examples, and the weights are combined with
logsumexp. All normalising constants are included, so the numbers compare across likelihoods and
with published figures.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vaekit import sharding
from vaekit.data import ArrayData
from vaekit.elbo import bits_per_dim, elbo_parts
from vaekit.errors import VaekitError
from vaekit.runtime import tune_cpu
from vaekit.training import distributed

ACTIVE_THRESHOLD = 0.01  # Burda et al.: unit i is active if Var_x(E_q[z_i | x]) > 0.01


@dataclass
class Evaluation:
    elbo: float
    recon: float
    kl: float
    nll: float
    bits_per_dim: float
    active_units: int
    k: int
    n: int
    kl_per_layer: list[float] | None = None  # hierarchical models only
    active_units_per_layer: list[int] | None = None

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        if d["kl_per_layer"] is None:
            del d["kl_per_layer"], d["active_units_per_layer"]
        return d


@torch.no_grad()
def log_likelihood(
    model, x: Tensor, y: Tensor | None, k: int, batch_size: int = 4096, generator: torch.Generator | None = None,
    posterior=None,
) -> Tensor:
    """Importance-weighted estimate of log p(x) for each row of ``x``: [B].

    At most ``batch_size`` (example, sample) pairs are decoded at once, so memory is bounded
    whatever K is.
    """
    if k < 1:
        raise VaekitError(f"the number of importance samples (--iw) must be >= 1, got {k}")
    with estimator_precision(model):
        if posterior is None:
            posterior = model.encode(x, y)
        n = sharding.global_rows(x.shape[0])  # on N ranks, the chunk's global rows set the sample chunks
        chunk = max(1, batch_size // n)
        weights = []
        done = 0
        while done < k:
            kc = min(chunk, k - done)
            weights.append(model.log_importance_weights(x, y, posterior, kc, generator=generator))  # [kc, n]
            done += kc
    log_w = torch.cat(weights).double()
    return torch.logsumexp(log_w, dim=0) - math.log(k)


def estimator_precision(model) -> contextlib.AbstractContextManager:
    """What the likelihood estimator runs in: under ``auto``, bf16 only where the density tolerates it, else
    fp32 (``VAE.likelihood_precision``)."""
    method = getattr(model, "likelihood_precision", None)
    return method() if method is not None else contextlib.nullcontext("fp32")


@torch.no_grad()
def evaluate(
    model, data: ArrayData, k: int = 1, batch_size: int = 4096, seed: int = 0, device: str | torch.device = "cpu"
) -> Evaluation:
    """ELBO parts, the K-sample importance-weighted NLL, bits/dim and active units on ``data``.

    ``batch_size`` bounds the number of decoded rows (examples x samples) held at once. Each chunk
    of examples has its own seed (derived from ``seed``), so under torchrun the ranks share the
    chunks (each chunk's rows, or whole chunks when it has fewer rows than ranks) and the totals
    are the numbers one process gets.
    """
    if k < 1:
        raise VaekitError(f"the number of importance samples (--iw) must be >= 1, got {k}")
    if batch_size < 1:
        raise VaekitError(f"--batch-size must be >= 1, got {batch_size}")
    tune_cpu()
    world = distributed.setup()  # under torchrun: the job's ranks share the work
    model.eval()
    gen = torch.Generator(device=device)
    n = len(data)
    if n == 0:
        raise VaekitError("nothing to evaluate: the data has no examples")
    per_batch = max(1, min(n, batch_size // k if k <= batch_size else 1, 4096))
    hierarchical = getattr(model, "hierarchical", False)
    totals = torch.zeros(4, dtype=torch.float64)  # recon, kl, elbo, log-likelihood
    layer_kl: Tensor | None = None
    means: list[list[Tensor]] = []
    for chunk in distributed.chunks(n, per_batch, seed, world):
        gen.manual_seed(chunk.seed)
        x, y = data.batch(chunk.index)
        x = x.to(device)
        y = None if y is None else y.to(device)
        with sharding.rows(*chunk.rows), estimator_precision(model):  # this rank's rows of the chunk's noise
            layer_means = model.layer_means(x) if hierarchical else [model.encode(x, y).mean]
            means.append([m.flatten(1).double().cpu() for m in layer_means])
            parts = elbo_parts(model, model(x, y, generator=gen), x)
            ll = log_likelihood(model, x, y, k, batch_size, gen)
        totals += torch.stack([parts[name].double().sum().cpu() for name in ("recon", "kl", "elbo")]
                              + [ll.double().sum().cpu()])
        if hierarchical:
            s = parts["kl_terms"].double().sum(0).cpu()
            layer_kl = s if layer_kl is None else layer_kl + s
    totals = distributed.all_reduce_sum(totals, world)
    # the latent layers' widths, from rank 0 (which always has rows; another rank may have none)
    widths = [int(w) for w in distributed.broadcast_text(",".join(str(m.shape[1]) for m in means[0]) if means
                                                          else "", world).split(",")]
    if hierarchical:
        layer_kl = distributed.all_reduce_sum(layer_kl if layer_kl is not None
                                              else torch.zeros(len(widths), dtype=torch.float64), world)
    dims = math.prod(data.shape)
    recon, kl, elbo, ll_total = totals.tolist()
    nll = -ll_total / n
    per_layer = sharded_active_units(means, n, world, widths)
    return Evaluation(
        elbo=elbo / n,
        recon=recon / n,
        kl=kl / n,
        nll=nll,
        bits_per_dim=bits_per_dim(nll, dims),
        active_units=sum(per_layer),
        k=k,
        n=n,
        kl_per_layer=None if layer_kl is None else (layer_kl / n).tolist(),
        active_units_per_layer=per_layer if hierarchical else None,
    )


def active_units(mu: Tensor) -> int:
    """Units whose posterior mean varies across the data: Var_x(E_q[z_i|x]) > 0.01 (Burda et al.)."""
    return int((mu.var(dim=0, unbiased=False) > ACTIVE_THRESHOLD).sum()) if len(mu) > 1 else 0


def sharded_active_units(means: list[list[Tensor]], n: int, world, widths: list[int]) -> list[int]:
    """``active_units`` per layer (of ``widths`` units) over every rank's posterior means (each rank
    holds some rows, maybe none): the mean, then the variance around it, each summed over the ranks
    (two passes in float64, as ``Tensor.var`` computes it in one process)."""
    out = []
    for i, width in enumerate(widths):
        mu = torch.cat([m[i] for m in means]) if means else torch.zeros(0, width, dtype=torch.float64)
        center = distributed.all_reduce_sum(mu.sum(0), world) / n
        var = distributed.all_reduce_sum(((mu - center) ** 2).sum(0), world) / n
        out.append(int((var > ACTIVE_THRESHOLD).sum()) if n > 1 else 0)
    return out


FEATURES = ("mean", "mean+logvar")  # what posterior_means returns: the codes, or the posterior's parameters


def posterior_features(q, features: str = "mean") -> Tensor:
    """[B, D] posterior means, or [B, 2D] means and log-variances, of a posterior q over [B, ...]."""
    if features not in FEATURES:
        raise VaekitError(f"unknown latent features '{features}' (choose from: {', '.join(FEATURES)})")
    if features == "mean":
        return q.mean.flatten(1)
    return torch.cat([q.mean.flatten(1), q.logvar.flatten(1)], dim=1)


@torch.no_grad()
def posterior_means(model, data: ArrayData, batch_size: int = 1024, features: str = "mean") -> Tensor:
    """E_q[z|x] for every example, [N, latent] (flattened); ``features="mean+logvar"``: [N, 2 latent]."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(data), batch_size):
        index = torch.arange(start, min(start + batch_size, len(data)))
        x, y = data.batch(index)
        out.append(posterior_features(model.encode(x.to(device), None if y is None else y.to(device)), features).cpu())
    return torch.cat(out)
