"""Distributions with explicit event dimensions.

Every distribution here has a batch shape and an event shape; ``log_prob``, ``kl`` and
``entropy`` sum over the event dimensions and keep the rest, so for a posterior over latents of
shape [B, D] (or [B, C, H, W]) they return [B], and for samples of shape [K, B, ...] they return
[K, B]. All densities include their normalising constants.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vaekit import sharding

LOG_2PI = math.log(2 * math.pi)


def _sum_event(t: Tensor, event_ndim: int) -> Tensor:
    return t.sum(dim=tuple(range(-event_ndim, 0))) if event_ndim else t


def _full(t: Tensor) -> Tensor:
    """Densities are summed in at least float32, whatever precision the network ran in."""
    return t if t.dtype == torch.float64 else t.float()


def _at_least_fp32(t: Tensor) -> Tensor:
    """bf16/fp16 network outputs (under autocast) become float32; float32 and float64 stay."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def softplus_sum(t: Tensor) -> Tensor:
    """sum(log(1 + exp(t))) over the last dimension.

    As log(1 + exp(t)) with vectorised exp and log: equal to F.softplus to float32 rounding (for
    t < -17 the term is below 4e-8 and rounds to zero) and ~1.6x faster on CPU, which matters in
    the K-sample estimator. Where exp overflows (t > 88) the sum is inf, and that row is redone
    with F.softplus; checking the small result costs nothing.
    """
    if t.requires_grad:
        return F.softplus(t).sum(-1)
    out = torch.exp(t).add_(1.0).log_().sum(-1)
    overflow = torch.isinf(out)
    if overflow.any():
        out[overflow] = F.softplus(t[overflow]).sum(-1)
    return out


def _noise(shape: torch.Size, like: Tensor, generator: torch.Generator | None, batch_dim: int = 0) -> Tensor:
    """N(0, 1) noise for a batch; under a sharded step, this rank's rows of the global batch's noise
    (``vaekit.sharding``), so the numbers do not depend on how the batch is split across ranks."""
    return sharding.draw(lambda s: torch.randn(s, generator=generator, device=like.device, dtype=like.dtype),
                         shape, batch_dim)


def _batch_dim(t: Tensor, event_ndim: int, leading: int = 0) -> int:
    """The dimension of a draw that indexes examples: the last batch dimension of ``t``, after
    ``leading`` extra sample dimensions (-1 when ``t`` has no batch dimension)."""
    batch_ndim = t.dim() - event_ndim
    return batch_ndim - 1 + leading if batch_ndim > 0 else -1


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))), the posterior q(z|x) of Kingma & Welling (2014).

    ``event_ndim`` defaults to all but the first dimension of ``mean``.
    """

    def __init__(self, mean: Tensor, logvar: Tensor, event_ndim: int | None = None) -> None:
        # an encoder run under bf16/fp16 autocast still gets its KL, log densities and samples in fp32
        self.mean = _at_least_fp32(mean)
        self.logvar = _at_least_fp32(logvar)
        self.event_ndim = mean.dim() - 1 if event_ndim is None else event_ndim

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> Tensor:
        return torch.exp(self.logvar)

    @property
    def event_shape(self) -> torch.Size:
        return self.mean.shape[self.mean.dim() - self.event_ndim :]

    def sample(
        self, n: int | None = None, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """Reparameterised sample mean + std * eps (gradients flow to mean and logvar).

        With ``n``, returns [n, *mean.shape].
        """
        shape = self.mean.shape if n is None else torch.Size((n, *self.mean.shape))
        eps = _noise(shape, self.mean, generator, _batch_dim(self.mean, self.event_ndim, 0 if n is None else 1))
        std = self.std if temperature == 1.0 else temperature * self.std
        return self.mean + std * eps

    rsample = sample

    def mode(self) -> Tensor:
        return self.mean

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z), summed over the event dimensions; ``z`` may carry leading sample dimensions."""
        lp = -0.5 * (LOG_2PI + self.logvar + (z - self.mean) ** 2 * torch.exp(-self.logvar))
        return _sum_event(lp, self.event_ndim)

    def kl_elementwise(self, other: DiagonalGaussian | None = None) -> Tensor:
        """KL(self || other) per latent element (other = N(0, I) when None), not reduced."""
        if other is None:
            return 0.5 * (self.mean**2 + torch.exp(self.logvar) - 1.0 - self.logvar)
        return 0.5 * (
            other.logvar
            - self.logvar
            + (torch.exp(self.logvar) + (self.mean - other.mean) ** 2) * torch.exp(-other.logvar)
            - 1.0
        )

    def kl(self, other: DiagonalGaussian | None = None) -> Tensor:
        """Closed-form KL(self || other), summed over the event dimensions."""
        return _sum_event(self.kl_elementwise(other), self.event_ndim)

    def entropy(self) -> Tensor:
        return _sum_event(0.5 * (LOG_2PI + 1.0 + self.logvar), self.event_ndim)

    def detach(self) -> DiagonalGaussian:
        return DiagonalGaussian(self.mean.detach(), self.logvar.detach(), self.event_ndim)

    def __getitem__(self, index) -> DiagonalGaussian:
        return DiagonalGaussian(self.mean[index], self.logvar[index], self.event_ndim)


class StandardNormal:
    """The prior N(0, I) over latents of shape ``event_shape``."""

    def __init__(self, event_shape: tuple[int, ...], device=None, dtype=None) -> None:
        self.event_shape = torch.Size(event_shape)
        self.device = device
        self.dtype = dtype or torch.float32

    @property
    def event_ndim(self) -> int:
        return len(self.event_shape)

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        z = torch.randn((n, *self.event_shape), generator=generator, device=self.device, dtype=self.dtype)
        return z * temperature

    def log_prob(self, z: Tensor) -> Tensor:
        return _sum_event(-0.5 * (LOG_2PI + z**2), self.event_ndim)


class Bernoulli:
    """Bernoulli on logits. ``log_prob`` accepts grey levels in [0, 1] too (the cross-entropy that
    pytorch/examples optimises); only for binary data is that a normalised likelihood."""

    def __init__(self, logits: Tensor, event_ndim: int | None = None) -> None:
        self.logits = logits
        self.event_ndim = logits.dim() - 1 if event_ndim is None else event_ndim

    @property
    def mean(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def mode(self) -> Tensor:
        return (self.logits > 0).to(self.logits.dtype)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(self.mean, generator=generator)

    def unflatten_batch(self, k: int) -> Bernoulli:
        """View a batch of k*B rows as [k, B, ...] (k samples for each of B examples)."""
        return Bernoulli(self.logits.unflatten(0, (k, -1)), self.event_ndim)

    def log_prob(self, x: Tensor) -> Tensor:
        """sum x*l - softplus(l); ``x`` broadcasts against leading sample dimensions of the logits."""
        logits = _full(self.logits)
        if x.shape == logits.shape:
            lp = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
            return _sum_event(lp, self.event_ndim)
        # [K, B, ...] logits against [B, ...] data: the x*l term as a batched dot product (one BLAS
        # call instead of a K-times larger elementwise product), then the softplus term.
        flat_l = logits.flatten(-self.event_ndim) if self.event_ndim else logits.unsqueeze(-1)
        flat_x = x.flatten(-self.event_ndim) if self.event_ndim else x.unsqueeze(-1)
        if flat_l.dim() == 3:
            # outside autocast: a bf16 product here rounds x*l (up to ~20 per pixel) to three digits while
            # the softplus term stays exact, and the two no longer cancel (-0.25 nats at K = 1000)
            with torch.autocast(flat_l.device.type, enabled=False):
                xl = torch.einsum("kbd,bd->kb", flat_l, flat_x.to(flat_l.dtype))
        else:
            xl = (flat_l * flat_x).sum(-1)
        return xl - softplus_sum(flat_l)


class LocationScale:
    """An observation model with location ``loc`` and scale exp(log_scale) (scalar or per
    dimension, broadcasting against loc); subclasses give the per-element log density."""

    def __init__(self, loc: Tensor, log_scale: Tensor, event_ndim: int | None = None) -> None:
        self.loc = loc
        self.log_scale = log_scale
        self.event_ndim = loc.dim() - 1 if event_ndim is None else event_ndim

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def scale(self) -> Tensor:
        return torch.exp(self.log_scale)

    def mode(self) -> Tensor:
        return self.loc

    def unflatten_batch(self, k: int):
        """View a batch of k*B rows as [k, B, ...] (k samples for each of B examples)."""
        return type(self)(self.loc.unflatten(0, (k, -1)), self.log_scale, self.event_ndim)

    def log_prob(self, x: Tensor) -> Tensor:
        # x [B, ...] broadcasts against loc [K, B, ...] and a scalar or per-dimension log_scale
        return _sum_event(self.element_log_prob(x, _full(self.loc), _full(self.log_scale)), self.event_ndim)

    def element_log_prob(self, x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
        raise NotImplementedError


class Normal(LocationScale):
    """Gaussian: -log p = (x - loc)^2 / (2 sigma^2) + log sigma + log(2 pi) / 2 per element."""

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        eps = _noise(self.loc.shape, self.loc, generator, _batch_dim(self.loc, self.event_ndim))
        return self.loc + self.scale * eps

    def element_log_prob(self, x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
        return -0.5 * ((x - loc) * torch.exp(-log_scale)) ** 2 - log_scale - 0.5 * LOG_2PI


class Laplace(LocationScale):
    """Laplace: -log p = |x - loc| / b + log(2b) per element."""

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        u = sharding.draw(lambda s: torch.rand(s, generator=generator, device=self.loc.device, dtype=self.loc.dtype),
                          self.loc.shape, _batch_dim(self.loc, self.event_ndim)) - 0.5
        return self.loc - self.scale * torch.sign(u) * torch.log1p(-2 * u.abs())

    def element_log_prob(self, x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
        return -(x - loc).abs() * torch.exp(-log_scale) - log_scale - math.log(2.0)


class DiscretizedLogistic:
    """A logistic per element, discretised to the 256 levels k/255 of 8-bit data in [0, 1]: level k
    gets the logistic's mass on [k/255 - 1/510, k/255 + 1/510], and the edge levels 0 and 255 absorb
    the tails (PixelCNN++, Salimans et al. 2017; Bit-Swap, Kingma et al. 2019). A true probability
    mass function: the 256 masses of every element sum to one, so -log p(x|z) is a code length.
    """

    LEVELS = 256

    def __init__(self, loc: Tensor, log_scale: Tensor, event_ndim: int | None = None) -> None:
        self.loc = loc
        self.log_scale = log_scale
        self.event_ndim = loc.dim() - 1 if event_ndim is None else event_ndim

    @property
    def half_bin(self) -> float:
        return 0.5 / (self.LEVELS - 1)

    @property
    def mean(self) -> Tensor:
        """The exact mean sum_k (k/255) P(k) = (1/255) sum_{k=1..255} P(X >= k), one level at a time
        (memory stays that of ``loc``)."""
        top = self.LEVELS - 1
        inv_s = torch.exp(-self.log_scale)
        total = torch.zeros_like(self.loc)
        for k in range(1, self.LEVELS):
            total += torch.sigmoid((self.loc - (k - 0.5) / top) * inv_s)
        return total / top

    def mode(self) -> Tensor:
        """The level nearest the location."""
        return self.mode_of(self.loc)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Inverse-CDF draws of the logistic, rounded to the nearest level (edges absorb the tails)."""
        u = torch.rand(self.loc.shape, generator=generator, device=self.loc.device, dtype=self.loc.dtype)
        u = u.clamp(1e-6, 1 - 1e-6)
        x = self.loc + torch.exp(self.log_scale) * (torch.log(u) - torch.log1p(-u))
        return self.mode_of(x)

    @classmethod
    def mode_of(cls, x: Tensor) -> Tensor:
        """Values rounded to the nearest of the 256 levels."""
        return (x.clamp(0.0, 1.0) * (cls.LEVELS - 1)).round() / (cls.LEVELS - 1)

    def unflatten_batch(self, k: int) -> DiscretizedLogistic:
        """View a batch of k*B rows as [k, B, ...] (k samples for each of B examples)."""
        return DiscretizedLogistic(self.loc.unflatten(0, (k, -1)), self.log_scale.unflatten(0, (k, -1)),
                                   self.event_ndim)

    def element_log_prob(self, x: Tensor) -> Tensor:
        """log P(x) per element, x on the grid k/255 (broadcasting against leading sample dims).

        Interior levels use sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - exp(b - a)), which is exact
        and stable for any scale: no fallback to the density is needed."""
        loc, log_scale = _full(self.loc), _full(self.log_scale)
        x = x.to(loc.dtype)
        inv_s = torch.exp(-log_scale)
        centred = (x - loc) * inv_s
        half = self.half_bin * inv_s
        upper = F.logsigmoid(centred + half)  # log P(X <= x + half bin)
        lower = F.logsigmoid(-(centred - half))  # log P(X >= x - half bin)
        interior = upper + lower + torch.log(-torch.expm1(-2.0 * half))
        lp = torch.where(x < self.half_bin, upper, torch.where(x > 1.0 - self.half_bin, lower, interior))
        return lp

    def log_prob(self, x: Tensor) -> Tensor:
        return _sum_event(self.element_log_prob(x), self.event_ndim)

    def probs(self) -> Tensor:
        """The masses of the 256 levels, [..., 256], in float64 (differences of the CDF at the bin edges)."""
        loc, log_scale = self.loc.double(), self.log_scale.double()
        edges = (torch.arange(self.LEVELS - 1, dtype=torch.float64, device=loc.device) + 0.5) / (self.LEVELS - 1)
        cdf = torch.sigmoid((edges - loc.unsqueeze(-1)) * torch.exp(-log_scale).unsqueeze(-1))
        zero = torch.zeros_like(cdf[..., :1])
        return torch.diff(cdf, dim=-1, prepend=zero, append=zero + 1.0)


class DiscretizedLogisticMixture:
    """A mixture of M discretised logistics per element (PixelCNN++, Salimans et al. 2017, without the
    autoregression): ``logits``, ``loc`` and ``log_scale`` are [..., M], the mixture over the last
    dimension. A pixel whose level given z is either background or ink gets a mode at each, where a
    single logistic must spread its mass over both. Still a true probability mass function over the
    256 levels.
    """

    LEVELS = DiscretizedLogistic.LEVELS

    def __init__(self, logits: Tensor, loc: Tensor, log_scale: Tensor, event_ndim: int | None = None) -> None:
        self.logits, self.loc, self.log_scale = logits, loc, log_scale
        self.event_ndim = loc.dim() - 2 if event_ndim is None else event_ndim
        self.components = DiscretizedLogistic(loc, log_scale, event_ndim)

    def _weights(self) -> Tensor:  # [..., M], summing to one
        return torch.softmax(_full(self.logits), dim=-1)

    @property
    def mean(self) -> Tensor:
        return (self._weights() * self.components.mean).sum(-1)

    def mode(self) -> Tensor:
        """The most probable level (one component's masses at a time, so memory is [..., 256])."""
        return self.probs().argmax(-1).to(self.loc.dtype) / (self.LEVELS - 1)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """A component per element (Gumbel-max on the logits), then that logistic's draw."""
        u = torch.rand(self.logits.shape, generator=generator, device=self.loc.device, dtype=torch.float32)
        pick = (_full(self.logits) - torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))).argmax(-1, keepdim=True)
        one = DiscretizedLogistic(self.loc.gather(-1, pick).squeeze(-1), self.log_scale.gather(-1, pick).squeeze(-1),
                                  self.event_ndim)
        return one.sample(generator)

    def mode_of(self, x: Tensor) -> Tensor:
        return DiscretizedLogistic.mode_of(x)

    def unflatten_batch(self, k: int) -> DiscretizedLogisticMixture:
        return DiscretizedLogisticMixture(self.logits.unflatten(0, (k, -1)), self.loc.unflatten(0, (k, -1)),
                                          self.log_scale.unflatten(0, (k, -1)), self.event_ndim)

    def element_log_prob(self, x: Tensor) -> Tensor:
        """log sum_m w_m P_m(x) per element, x on the grid k/255 (broadcasting against leading sample dims)."""
        per_component = self.components.element_log_prob(x.unsqueeze(-1))  # [..., M]
        return torch.logsumexp(torch.log_softmax(_full(self.logits), dim=-1) + per_component, dim=-1)

    def log_prob(self, x: Tensor) -> Tensor:
        return _sum_event(self.element_log_prob(x), self.event_ndim)

    def probs(self) -> Tensor:
        """The masses of the 256 levels, [..., 256], in float64."""
        w = torch.softmax(self.logits.double(), dim=-1)
        total = torch.zeros((*self.loc.shape[:-1], self.LEVELS), dtype=torch.float64, device=self.loc.device)
        for m in range(self.loc.shape[-1]):
            one = DiscretizedLogistic(self.loc[..., m], self.log_scale[..., m], self.event_ndim)
            total += w[..., m:m + 1] * one.probs()
        return total


class AutoregressiveLogistic:
    """A discretised logistic per pixel whose location also depends, linearly, on the pixel's causal
    neighbours in raster order (left, two left, up-left, up, up-right, two up; zero off the image), with
    coefficients the decoder gives per pixel: loc_ij = a_ij + sum_k c_ijk x_(ij + offset_k). The spatial
    form of PixelCNN++'s linear dependence between colour channels (Salimans et al. 2017), and a
    one-layer version of PixelVAE's autoregressive decoder (Gulrajani et al. 2017): p(x|z) is the
    product of the conditionals in raster order, so still a true probability of the 8-bit image.

    ``loc``, ``log_scale``: [..., C, H, W]; ``coefs``: [..., C, H, W, 6]. Scoring is parallel (x is
    known); ``sample``, ``mode`` and ``mean`` fill the image one pixel at a time. ``mean`` is a plug-in:
    each pixel's conditional mean given the previous pixels' means.
    """

    LEVELS = DiscretizedLogistic.LEVELS
    OFFSETS = ((0, -1), (0, -2), (-1, -1), (-1, 0), (-1, 1), (-2, 0))  # (row, column), all before in raster order

    def __init__(self, loc: Tensor, log_scale: Tensor, coefs: Tensor, event_ndim: int = 3) -> None:
        self.loc, self.log_scale, self.coefs = loc, log_scale, coefs
        self.event_ndim = event_ndim

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def neighbour_index(shape: tuple[int, int, int]) -> np.ndarray:
        """[6, C*H*W] int64: the flat index of each pixel's k-th causal neighbour in its channel, or C*H*W
        (one past the end: a zero appended to the image) off the image. Shared with the codec, so the
        model and the coder read the same neighbours."""
        c, h, w = shape
        ch, i, j = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
        rows = []
        for di, dj in AutoregressiveLogistic.OFFSETS:
            inside = (i + di >= 0) & (j + dj >= 0) & (j + dj < w)
            rows.append(np.where(inside, (ch * h + i + di) * w + j + dj, c * h * w).reshape(-1))
        index = np.stack(rows)
        index.flags.writeable = False  # cached and shared
        return index

    def _index(self) -> Tensor:
        return torch.tensor(self.neighbour_index(tuple(self.loc.shape[-3:])), device=self.loc.device)  # a copy

    @staticmethod
    def _padded(x: Tensor) -> Tensor:
        """[..., C, H, W] -> [..., C*H*W + 1]: the flat image and a zero for the neighbours off it."""
        flat = x.flatten(-3)
        return torch.cat([flat, torch.zeros_like(flat[..., :1])], -1)

    def conditional(self, x: Tensor) -> DiscretizedLogistic:
        """p(x_ij | the pixels before it), with those pixels read from ``x`` (the image being scored)."""
        loc = _full(self.loc)
        nb = self._padded(x.to(loc.dtype))[..., self._index().T]  # [..., D, 6]
        shift = (_full(self.coefs).flatten(-4, -2) * nb).sum(-1).unflatten(-1, loc.shape[-3:])
        return DiscretizedLogistic(loc + shift, self.log_scale, self.event_ndim)

    def element_log_prob(self, x: Tensor) -> Tensor:
        return self.conditional(x).element_log_prob(x)

    def log_prob(self, x: Tensor) -> Tensor:
        return _sum_event(self.element_log_prob(x), self.event_ndim)

    def unflatten_batch(self, k: int) -> AutoregressiveLogistic:
        return AutoregressiveLogistic(self.loc.unflatten(0, (k, -1)), self.log_scale.unflatten(0, (k, -1)),
                                      self.coefs.unflatten(0, (k, -1)), self.event_ndim)

    def mode_of(self, x: Tensor) -> Tensor:
        return DiscretizedLogistic.mode_of(x)

    def _fill(self, pick) -> Tensor:
        """The image one pixel at a time: ``pick(conditional, p)`` gives flat pixel p from its conditional."""
        loc, coefs = _full(self.loc).flatten(-3), _full(self.coefs).flatten(-4, -2)  # [..., D], [..., D, 6]
        log_scale = self.log_scale.flatten(-3)
        index = self._index()
        x = torch.zeros((*loc.shape[:-1], loc.shape[-1] + 1), dtype=loc.dtype, device=loc.device)
        for p in range(loc.shape[-1]):
            at = loc[..., p] + (coefs[..., p, :] * x[..., index[:, p]]).sum(-1)
            x[..., p] = pick(DiscretizedLogistic(at, log_scale[..., p], 0), p)
        return x[..., :-1].unflatten(-1, self.loc.shape[-3:])

    @property
    def mean(self) -> Tensor:
        levels = torch.arange(self.LEVELS, dtype=torch.float64, device=self.loc.device) / (self.LEVELS - 1)
        return self._fill(lambda d, p: (d.probs() * levels).sum(-1).to(d.loc.dtype))

    def mode(self) -> Tensor:
        return self._fill(lambda d, p: d.mode())

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(self.loc.shape, generator=generator, device=self.loc.device, dtype=torch.float32)
        u = u.clamp(1e-6, 1 - 1e-6).flatten(-3)

        def draw(d: DiscretizedLogistic, p: int) -> Tensor:
            v = u[..., p].to(d.loc.dtype)
            return d.mode_of(d.loc + torch.exp(d.log_scale) * (torch.log(v) - torch.log1p(-v)))

        return self._fill(draw)
