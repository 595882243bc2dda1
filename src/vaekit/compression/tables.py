"""Probability tables for the entropy coder, computed in float64 from model outputs quantised to a
fixed grid, so that the coder and the decoder build bit-identical tables from the same outputs.

- ``quantise``: model outputs rounded to multiples of 1/4096 (``GRID``).
- ``BucketGrid``: a latent layer discretised into K buckets of equal mass under a Gaussian N(m, s^2)
  per dimension (the standard normal prior for a flat VAE and the top of a hierarchy; BB-ANS,
  Townsend et al. 2019); bucket j stands for the value m + s * Phi^-1((j + 1/2) / K).
- ``ObservationCodec``: how the symbols of p(x|z) are coded for each codable likelihood
  (``bernoulli``: one bit per element; ``logistic`` and ``logistic-mix``: one of 256 levels per element).

scipy's ``ndtr``/``ndtri``/``expit`` (scalar C code, not SIMD dispatch) compute the tables.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy.special import expit, ndtr, ndtri

from vaekit.errors import VaekitError

GRID = 4096  # model outputs are rounded to multiples of 1/GRID before any table is built
BUCKETS = 256  # latent buckets per dimension (BB-ANS's 256: 8 bits per latent under the prior)


def quantise(a: np.ndarray) -> np.ndarray:
    """Round to the coder's grid (float64); both sides of the coder see only these values."""
    return np.round(np.asarray(a, dtype=np.float64) * GRID) / GRID


def check_finite(a: np.ndarray, what: str) -> None:
    if not np.isfinite(a).all():
        raise VaekitError(f"the model produced non-finite {what}; it cannot code this data")


def normalise(p: np.ndarray) -> np.ndarray:
    return p / p.sum(-1, keepdims=True)


def gaussian_masses(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Phi(hi) - Phi(lo) for standardised edges, accurate in both tails (no 1 - 1 cancellation)."""
    upper_tail = lo > 0
    return np.where(upper_tail, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))


class BucketGrid:
    """K equal-mass buckets under N(mean, std^2) per dimension (mean, std: [d]); standard when None."""

    def __init__(self, dim: int, mean: np.ndarray | None = None, std: np.ndarray | None = None,
                 buckets: int = BUCKETS) -> None:
        self.dim, self.buckets = dim, buckets
        self.standard = mean is None
        self.mean = np.zeros(dim) if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = np.ones(dim) if std is None else np.asarray(std, dtype=np.float64)
        self.edges = ndtri(np.arange(buckets + 1) / buckets)  # [-inf, ..., inf], standardised
        self.centres = ndtri((np.arange(buckets) + 0.5) / buckets)

    def values(self, buckets: np.ndarray) -> np.ndarray:
        """Bucket indices [n, d] -> latent values [n, d] (the bucket's median under the grid's Gaussian)."""
        return self.mean + self.std * self.centres[buckets]

    def tables(self, mu: np.ndarray, log_sigma: np.ndarray) -> np.ndarray:
        """Masses of N(mu, sigma^2) ([n, d] each) on the buckets: [n, d, K] float64."""
        edges = self.mean[:, None] + self.std[:, None] * self.edges[None, :]  # [d, K+1]
        t = (edges[None] - mu[..., None]) * np.exp(-log_sigma)[..., None]
        return normalise(gaussian_masses(t[..., :-1], t[..., 1:]) + 1e-300)

    def to_json(self) -> dict | None:
        return None if self.standard else {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, dim: int, doc: dict | None, buckets: int) -> BucketGrid:
        if doc is None:
            return cls(dim, buckets=buckets)
        return cls(dim, np.array(doc["mean"], dtype=np.float64), np.array(doc["std"], dtype=np.float64), buckets)


class ObservationCodec:
    """The symbols of p(x|z) and their per-element model parameters."""

    likelihood: ClassVar[str] = ""
    alphabet: ClassVar[int] = 0

    def check(self, x: np.ndarray, what: str) -> np.ndarray:
        """Integer data -> int32 symbols [N, D], or a one-line error naming the offending value."""
        raise NotImplementedError

    def model_input(self, symbols: np.ndarray) -> np.ndarray:
        """Symbols -> the values the model was trained on (float64)."""
        raise NotImplementedError

    def params(self, px) -> np.ndarray:
        """The distribution's parameters, quantised: [n, P, D]."""
        raise NotImplementedError

    def push(self, coder, symbols: np.ndarray, params: np.ndarray) -> float:
        """Encode one example's symbols [D]; returns their information content -log2 P (bits), read off
        the same tables, for the rate check."""
        raise NotImplementedError

    def pop(self, coder, params: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def pop_lanes(self, coders: list, params: np.ndarray) -> np.ndarray:
        """One example from each of ``coders`` (params [m, P, D]) -> symbols [m, D]."""
        return np.stack([self.pop(coders[i], params[i]) for i in range(len(params))])


def _flat(t) -> np.ndarray:
    return t.detach().double().cpu().numpy().reshape(t.shape[0], -1)


class BernoulliCodec(ObservationCodec):
    likelihood = "bernoulli"
    alphabet = 2

    def __init__(self) -> None:
        import constriction

        self.family = constriction.stream.model.Bernoulli(perfect=False)

    def check(self, x: np.ndarray, what: str) -> np.ndarray:
        bad = (x != 0) & (x != 1)
        if bad.any():
            i = np.unravel_index(int(np.argmax(bad)), x.shape)
            raise VaekitError(f"{what}: the run's bernoulli likelihood codes binary data (0 or 1), but example "
                               f"{i[0]} holds {x[i]!r}")
        return x.reshape(len(x), -1).astype(np.int32)

    def model_input(self, symbols: np.ndarray) -> np.ndarray:
        return symbols.astype(np.float64)

    def params(self, px) -> np.ndarray:
        logits = quantise(_flat(px.logits))
        check_finite(logits, "logits")
        return logits[:, None]

    def _p(self, params: np.ndarray) -> np.ndarray:
        return expit(params[0])

    def push(self, coder, symbols, params) -> float:
        p = self._p(params)
        coder.encode_reverse(symbols, self.family, p)
        return float(-np.log2(np.where(symbols == 1, p, 1.0 - p)).sum())

    def pop(self, coder, params) -> np.ndarray:
        return coder.decode(self.family, self._p(params))


class LogisticCodec(ObservationCodec):
    likelihood = "logistic"
    alphabet = 256

    def __init__(self) -> None:
        import constriction

        self.family = constriction.stream.model.Categorical(perfect=False)
        self.edges = (np.arange(self.alphabet - 1) + 0.5) / (self.alphabet - 1)

    def check(self, x: np.ndarray, what: str) -> np.ndarray:
        bad = (x < 0) | (x > 255) | (x != np.round(x)) if np.issubdtype(x.dtype, np.floating) else (x < 0) | (x > 255)
        if bad.any():
            i = np.unravel_index(int(np.argmax(bad)), x.shape)
            raise VaekitError(f"{what}: the run's logistic likelihood codes 8-bit data (integers 0..255), but "
                               f"example {i[0]} holds {x[i]!r}")
        return x.reshape(len(x), -1).astype(np.int32)

    def model_input(self, symbols: np.ndarray) -> np.ndarray:
        return symbols.astype(np.float64) / 255.0

    def params(self, px) -> np.ndarray:
        p = quantise(np.stack([_flat(px.loc), _flat(px.log_scale)], axis=1))
        check_finite(p, "logistic parameters")
        return p

    def masses(self, loc: np.ndarray, log_scale: np.ndarray, inv_scale: np.ndarray | None = None) -> np.ndarray:
        """The 256 masses of one discretised logistic per element ([D] each -> [D, 256]): differences of
        the CDF at the 255 bin edges, with 0 below and 1 above. ``inv_scale``: exp(-log_scale), if known."""
        inv_scale = np.exp(-log_scale) if inv_scale is None else inv_scale
        cdf = expit((self.edges[None, :] - loc[:, None]) * inv_scale[:, None])
        out = np.empty((len(loc), self.alphabet))
        out[:, 0] = cdf[:, 0]
        np.subtract(cdf[:, 1:], cdf[:, :-1], out=out[:, 1:-1])
        out[:, -1] = 1.0 - cdf[:, -1]
        return out

    def tables(self, params: np.ndarray) -> np.ndarray:
        return self.masses(params[0], params[1]) + 1e-300  # params: [2, D]

    def push(self, coder, symbols, params) -> float:
        return self._encode(coder, symbols, self.tables(params))

    def _encode(self, coder, symbols: np.ndarray, tables: np.ndarray) -> float:
        coder.encode_reverse(symbols, self.family, tables)
        return float(-np.log2(tables[np.arange(len(symbols)), symbols] / tables.sum(-1)).sum())

    def pop(self, coder, params) -> np.ndarray:
        return coder.decode(self.family, self.tables(params))


class LogisticMixtureCodec(LogisticCodec):
    likelihood = "logistic-mix"

    def params(self, px) -> np.ndarray:
        parts = [t.detach().double().cpu().numpy() for t in (px.logits, px.loc, px.log_scale)]  # [n, ..., M]
        flat = [np.moveaxis(t, -1, 1).reshape(len(t), t.shape[-1], -1) for t in parts]  # [n, M, D]
        p = quantise(np.concatenate(flat, axis=1))  # [n, 3M, D]
        check_finite(p, "logistic mixture parameters")
        return p

    def tables(self, params: np.ndarray) -> np.ndarray:
        logits, loc, log_scale = np.split(params, 3)  # [M, D] each
        w = np.exp(logits - logits.max(0))
        w /= w.sum(0)
        return sum(w[m][:, None] * self.masses(loc[m], log_scale[m]) for m in range(len(w))) + 1e-300


class AutoregressiveLogisticCodec(LogisticCodec):
    """Each pixel's table depends on the pixels before it: pushes build every table at once from the
    known image; pops decode one pixel position at a time, across all chains together, with the same
    float64 operations in the same order, so both sides build identical tables."""

    likelihood = "logistic-ar"

    def params(self, px) -> np.ndarray:
        from vaekit.distributions import AutoregressiveLogistic

        self.index = AutoregressiveLogistic.neighbour_index(tuple(px.loc.shape[1:]))  # [6, D]; D: off the image
        coefs = np.moveaxis(px.coefs.detach().double().cpu().numpy(), -1, 1)  # [n, 6, C, H, W]
        p = quantise(np.concatenate([_flat(px.loc)[:, None], _flat(px.log_scale)[:, None],
                                     coefs.reshape(len(coefs), coefs.shape[1], -1)], axis=1))  # [n, 8, D]
        check_finite(p, "autoregressive logistic parameters")
        return p

    def tables(self, params: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        """The tables of one known image (params [8, D], symbols [D])."""
        values = np.append(self.model_input(symbols), 0.0)  # a zero for the neighbours off the image
        loc = params[0].copy()
        for k, neighbour in enumerate(self.index):  # one multiply-add per neighbour, in pop_lanes' order
            loc = loc + params[2 + k] * values[neighbour]
        return self.masses(loc, params[1]) + 1e-300

    def push(self, coder, symbols, params) -> float:
        return self._encode(coder, symbols, self.tables(params, symbols))

    def pop_lanes(self, coders: list, params: np.ndarray) -> np.ndarray:
        m, _, d = params.shape
        values = np.zeros((m, d + 1))  # decoded levels / 255, as model_input gives them, and the zero
        symbols = np.zeros((m, d), dtype=np.int32)
        inv_scale = np.exp(-params[:, 1, :])  # [m, D]
        decoders = [coder.decode for coder in coders]
        for p in range(d):
            loc = params[:, 0, p].copy()
            for k, neighbour in enumerate(self.index[:, p]):  # the multiply-adds of tables, in its order
                loc = loc + params[:, 2 + k, p] * values[:, neighbour]
            t = self.masses(loc, params[:, 1, p], inv_scale[:, p]) + 1e-300  # [m, 256]
            for lane in range(m):
                symbols[lane, p] = decoders[lane](self.family, t[lane : lane + 1])[0]
            values[:, p] = self.model_input(symbols[:, p])
        return symbols

    def pop(self, coder, params) -> np.ndarray:
        return self.pop_lanes([coder], params[None])[0]


CODECS: dict[str, type[ObservationCodec]] = {"bernoulli": BernoulliCodec, "logistic": LogisticCodec,
                                            "logistic-mix": LogisticMixtureCodec,
                                            "logistic-ar": AutoregressiveLogisticCodec}


def codec_for(likelihood: str) -> ObservationCodec:
    if likelihood not in CODECS:
        raise VaekitError(f"a run with the {likelihood} likelihood cannot code data losslessly (a density on "
                          f"continuous values is no code length); compress needs a run trained with --likelihood "
                          f"{', '.join(list(CODECS)[:-1])} or {list(CODECS)[-1]}")
    return CODECS[likelihood]()
