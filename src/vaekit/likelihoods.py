"""Observation models p(x|z): they turn the decoder's output into a distribution over data.

- ``bernoulli``: the decoder gives logits (data in [0, 1]; binary for a true likelihood).
- ``gaussian``: the decoder gives the mean; sigma is one learned scalar (``learned``), learned per
  data dimension (``per-dim``), fixed (``fixed``), or ``calibrated``: the sigma-VAE's analytic optimum
  (Rybkin et al. 2021), the batch's root-mean-square error in training, so sigma never lags behind
  the decoder as a learned one does under Adam (which moves log sigma by about lr per step), and a
  running average of it, saved with the weights, in evaluation.
- ``mse``: a Gaussian with fixed sigma = 1/sqrt(2), so -log p(x|z) = sum (x - mean)^2 + D/2 log(pi):
  the familiar summed squared error plus the normalising constant, which vaekit always reports.
- ``laplace``: the decoder gives the location; the scale b is learned, per-dim or fixed as for the
  Gaussian. With b = 1, -log p(x|z) = sum |x - loc| + D log 2: the L1 loss with its constant.
  ``mse`` and ``laplace`` with the ELBO objective are the source documents' simple objective
  (MSE or L1 plus beta * KL), made into proper likelihoods.
- ``logistic``: for 8-bit data (scaled to [0, 1] by the loader), a discretised logistic per element
  over the 256 levels, edge levels absorbing the tails (PixelCNN++; Bit-Swap). The decoder gives
  two numbers per data element, the location and the log-scale, so the NLL is a true discrete code
  length in nats and bits per dimension.
- ``logistic-mix``: the same 256 levels under a mixture of 5 discretised logistics per element (15
  decoder outputs per element), for pixels whose level given z has more than one mode.
- ``logistic-ar``: images only; the discretised logistic with each pixel's location shifted by a linear
  function of its six causal neighbours (coefficients from the decoder, 8 outputs per pixel), so p(x|z)
  models the pixel-to-pixel dependence a factorised likelihood leaves to z.

A likelihood says how many decoder outputs it reads per data element (``params_per_element``); the
model families size their decoder's last layer by ``output_shape``, the parameters stacked along the
first data dimension ([B, P*C, H, W] for images, [B, P*D] for vectors).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from vaekit import sharding
from vaekit.distributions import (
    AutoregressiveLogistic,
    Bernoulli,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    Laplace,
    Normal,
)
from vaekit.registry import Registry

LIKELIHOODS: Registry[type[Likelihood]] = Registry("likelihood")

SIGMA_MODES = ("learned", "per-dim", "fixed", "calibrated")
CALIBRATION_MOMENTUM = 0.1  # of the running scale a calibrated likelihood evaluates with
MIN_LOG_SIGMA = math.log(1e-3)  # a floor, so constant pixels cannot drive the density to infinity


def check_levels(likelihood: str, info) -> None:
    """A discrete likelihood (logistic: 256 levels) only for data with exactly those levels
    (``info`` is a DataInfo)."""
    levels = LIKELIHOODS.get(likelihood).levels
    if levels and info.levels != levels:
        from vaekit.errors import VaekitError

        raise VaekitError(f"the {likelihood} likelihood models 8-bit data ({levels} levels k/255), but {info.source} "
                          "is not 8-bit (uint8 images or arrays served in [0, 1], not binarised); use --likelihood "
                          "bernoulli or gaussian")


class Likelihood(nn.Module):
    """Base class: ``forward(decoder_output)`` returns a distribution with ``log_prob`` and ``mean``."""

    unit_interval: ClassVar[bool] = False  # whether the data must lie in [0, 1]
    params_per_element: ClassVar[int] = 1  # decoder outputs per data element
    levels: ClassVar[int] = 0  # > 0: a discrete likelihood for data with this many levels (256: 8-bit)
    # whether log p(x|z) barely moves when the decoder's outputs carry bf16 rounding (about three digits), so
    # that --precision auto may estimate likelihoods with a bf16 network (VAE.likelihood_precision)
    rounding_tolerant: ClassVar[bool] = False

    def __init__(self, data_shape: tuple[int, ...], sigma_mode: str = "learned", sigma: float = 1.0) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The decoder's output for one example: the parameters stacked along the first data dimension."""
        first, *rest = self.data_shape
        return (first * self.params_per_element, *rest)

    def forward(self, out: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    unit_interval = True
    # d log p / d logit = x - sigmoid(logit) is bounded by 1, and near 0 where the model is confidently
    # right: where |logit| is large and bf16 rounds it most coarsely (a location-scale family's slope,
    # (x - loc) / scale^2, is unbounded)
    rounding_tolerant = True

    def forward(self, out: torch.Tensor) -> Bernoulli:
        return Bernoulli(out, event_ndim=len(self.data_shape))


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(Likelihood):
    def __init__(self, data_shape: tuple[int, ...], sigma_mode: str = "learned", sigma: float = 1.0) -> None:
        super().__init__(data_shape, sigma_mode, sigma)
        log_sigma = torch.tensor(math.log(sigma), dtype=torch.float32)
        self.sigma_mode = sigma_mode
        if sigma_mode == "learned":
            self.log_sigma = nn.Parameter(log_sigma)
        elif sigma_mode == "per-dim":
            self.log_sigma = nn.Parameter(log_sigma.expand(self.data_shape).clone())
        elif sigma_mode == "calibrated":  # fitted, not learned: a buffer saved with the weights
            self.register_buffer("log_sigma", log_sigma)
            self.register_buffer("calibrations", torch.zeros((), dtype=torch.long))
        else:  # fixed: set by the config, so it is not part of the weights
            self.register_buffer("log_sigma", log_sigma, persistent=False)

    distribution: ClassVar[type] = Normal

    def forward(self, out: torch.Tensor):
        if self.sigma_mode == "calibrated" and self.training:
            return CalibratedScale(self.distribution, out, len(self.data_shape), self._calibrate)
        log_sigma = self.log_sigma.clamp(min=MIN_LOG_SIGMA) if self.sigma_mode != "fixed" else self.log_sigma
        return self.distribution(out, log_sigma, event_ndim=len(self.data_shape))

    def running_buffers(self) -> list[Tensor]:
        """What a step changes besides the weights: not averaged by an EMA; under torchrun every rank
        fits the same scale, and the float buffer is rank 0's, broadcast after each step."""
        return [self.log_sigma, self.calibrations] if self.sigma_mode == "calibrated" else []

    @torch.no_grad()
    def _calibrate(self, log_scale: Tensor) -> None:
        """Fold one batch's optimal scale into the running one (in the variance: sigma^2 averages)."""
        if int(self.calibrations) == 0:
            self.log_sigma.copy_(log_scale)
        else:
            var = torch.lerp(torch.exp(2 * self.log_sigma), torch.exp(2 * log_scale), CALIBRATION_MOMENTUM)
            self.log_sigma.copy_(0.5 * torch.log(var))
        self.calibrations += 1


@LIKELIHOODS.register("laplace")
class LaplaceLikelihood(GaussianLikelihood):
    """The Gaussian's sigma modes, for the Laplace scale b (calibrated: b = the mean absolute error)."""

    distribution = Laplace


class CalibratedScale:
    """A location-scale observation model whose one scale is fitted to the data it scores: in
    ``log_prob(x)``, the maximum-likelihood scale of the residuals (Gaussian: their root mean square;
    Laplace: their mean absolute value, over every element and sample of the batch), held constant
    for the gradient. At that optimum d(-log p)/d scale = 0, so the decoder's gradient is the one of
    the undetached sigma-VAE. ``on_fit`` receives the fitted log-scale (the running estimate)."""

    def __init__(self, family: type, loc: Tensor, event_ndim: int, on_fit) -> None:
        self.family, self.loc, self.event_ndim, self.on_fit = family, loc, event_ndim, on_fit

    @property
    def mean(self) -> Tensor:
        return self.loc

    def mode(self) -> Tensor:
        return self.loc

    def unflatten_batch(self, k: int) -> CalibratedScale:
        return CalibratedScale(self.family, self.loc.unflatten(0, (k, -1)), self.event_ndim, self.on_fit)

    def log_prob(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            r = x.float() - self.loc.float()  # x [B, ...] against loc [B, ...] or [K, B, ...]
            moment = r.abs() if self.family is Laplace else r.square()
            total = sharding.batch_sum(torch.stack([moment.sum(), torch.tensor(float(moment.numel()),
                                                                               device=moment.device)]))
            mean = total[0] / total[1]  # the global batch's, on every rank
            mle = torch.log(mean) if self.family is Laplace else 0.5 * torch.log(mean)
            log_scale = mle.clamp(min=MIN_LOG_SIGMA)
        if torch.isfinite(log_scale):  # a non-finite batch (its step is skipped) leaves the running scale alone
            self.on_fit(log_scale)
        return self.family(self.loc, log_scale, self.event_ndim).log_prob(x)  # fp32 scale under autocast too



@LIKELIHOODS.register("mse")
class MSELikelihood(GaussianLikelihood):
    def __init__(self, data_shape: tuple[int, ...], sigma_mode: str = "fixed", sigma: float = 1.0) -> None:
        super().__init__(data_shape, "fixed", 1.0 / math.sqrt(2.0))


@LIKELIHOODS.register("logistic")
class LogisticLikelihood(Likelihood):
    """Discretised logistic over the 256 levels of 8-bit data; location and log-scale per element
    from the decoder (the scale floored at 1e-3, a quarter of a level)."""

    unit_interval = True
    params_per_element = 2
    levels = 256

    def forward(self, out: Tensor) -> DiscretizedLogistic:
        loc, log_scale = out.chunk(2, dim=-len(self.data_shape))
        return DiscretizedLogistic(loc, log_scale.clamp(min=MIN_LOG_SIGMA), event_ndim=len(self.data_shape))


@LIKELIHOODS.register("logistic-mix")
class LogisticMixtureLikelihood(Likelihood):
    """A mixture of 5 discretised logistics per element over the 256 levels of 8-bit data (PixelCNN++'s
    output distribution, one per pixel, no autoregression): the decoder gives 3 x 5 numbers per
    element, the mixture logits, locations and log-scales (the scales floored as for ``logistic``)."""

    unit_interval = True
    components = 5
    params_per_element = 3 * components
    levels = 256

    def forward(self, out: Tensor) -> DiscretizedLogisticMixture:
        n = len(self.data_shape)
        # [B, 3*M*C, ...] -> [B, 3, M, C, ...] -> three [B, C, ..., M]
        parts = out.unflatten(-n, (3, self.components, -1)).unbind(-n - 2)
        logits, loc, log_scale = (t.movedim(-n - 1, -1) for t in parts)
        return DiscretizedLogisticMixture(logits, loc, log_scale.clamp(min=MIN_LOG_SIGMA), event_ndim=n)


@LIKELIHOODS.register("logistic-ar")
class AutoregressiveLogisticLikelihood(Likelihood):
    """The discretised logistic over 256 levels with each pixel's location also a linear function of
    its six causal neighbours (``AutoregressiveLogistic``), images only: the decoder gives 8 numbers per
    pixel, the location, the log-scale and the six coefficients."""

    unit_interval = True
    params_per_element = 2 + len(AutoregressiveLogistic.OFFSETS)
    levels = 256

    def __init__(self, data_shape: tuple[int, ...], sigma_mode: str = "learned", sigma: float = 1.0) -> None:
        super().__init__(data_shape, sigma_mode, sigma)
        if len(self.data_shape) != 3:
            from vaekit.errors import VaekitError

            raise VaekitError(f"the logistic-ar likelihood is for images [C, H, W]; this data has shape "
                              f"{list(self.data_shape)} (use logistic)")

    def forward(self, out: Tensor) -> AutoregressiveLogistic:
        parts = out.unflatten(-3, (self.params_per_element, -1))  # [B, 8, C, H, W]
        loc, log_scale, coefs = parts[:, 0], parts[:, 1], parts[:, 2:].movedim(1, -1)
        return AutoregressiveLogistic(loc, log_scale.clamp(min=MIN_LOG_SIGMA), coefs)
