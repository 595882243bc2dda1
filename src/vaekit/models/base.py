"""The VAE base class every model family extends (Kingma & Welling 2014, "Auto-Encoding
Variational Bayes"; the conditional form follows Sohn et al. 2015).

A model supplies two networks: ``encoder_params(x, c) -> (mean, logvar)`` and
``decoder_output(z, c) -> raw parameters of p(x|z)``; the base class turns those into
distributions and provides the user API (encode, decode, sample) and the pieces objectives and
the likelihood estimator need (KL terms, importance weights). ``c`` is the one-hot label of a
conditional model, or None.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.config import check
from vaekit.distributions import DiagonalGaussian, StandardNormal
from vaekit.errors import VaekitError
from vaekit.likelihoods import LIKELIHOODS, SIGMA_MODES

LOGVAR_RANGE = (-30.0, 20.0)  # as diffusers does: keeps exp(logvar) finite in any precision
# Deep hierarchies' defaults: clip, and skip updates whose gradient norm exceeds 10x the running mean
# (VDVAE's skip, scale-free). A one-sample KL against a learned conditional prior can be finite but
# astronomical when that prior's variance has shrunk.
SKIP_EXPLODING: Mapping = MappingProxyType({"grad_clip": 200.0, "grad_skip": 10.0})  # shared: read-only
# the methods inference runs through; in eval mode they take the model's inference precision (set_precision)
INFERENCE_METHODS = ("forward", "encode", "decode", "observation", "sample", "importance_terms",
                     "log_importance_weights", "layer_means", "encode_tiled", "decode_tiled")


def _to_fp32(out):
    """bf16/fp16 tensors (or tuples of them) that leave an inference method become float32."""
    if isinstance(out, Tensor):
        return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out
    if isinstance(out, tuple):
        return tuple(_to_fp32(o) for o in out)
    return out


def in_inference_precision(fn):
    """Run ``fn`` under the model's inference autocast (``VAE.set_precision``) when the model is in
    eval mode and no autocast is active yet (training steps and validation bring their own)."""
    if getattr(fn, "_inference_precision", False):
        return fn

    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        dtype = self.__dict__.get("_autocast_dtype")
        if dtype is None or self.training or self.__dict__.get("_exact", False):
            return fn(self, *args, **kwargs)
        device = self._device().type
        if torch.is_autocast_enabled(device):
            return fn(self, *args, **kwargs)
        with torch.autocast(device, dtype=dtype):
            return _to_fp32(fn(self, *args, **kwargs))

    run._inference_precision = True
    return run


@dataclass(frozen=True)
class LikelihoodConfig:
    """The observation model's settings, which every model config carries. A model config also
    provides ``data_shape`` (one example's shape) and ``num_classes`` (0 unless conditional)."""

    likelihood: str = "bernoulli"
    sigma_mode: str = "learned"  # gaussian/laplace likelihood: learned | per-dim | fixed | calibrated
    sigma: float = 1.0  # gaussian likelihood: the fixed value, or the initial one

    def __post_init__(self) -> None:
        LIKELIHOODS.get(self.likelihood)  # names the unknown likelihood
        check(self.sigma_mode in SIGMA_MODES,
              f"sigma mode must be one of {', '.join(SIGMA_MODES)}, got '{self.sigma_mode}'")
        check(self.sigma > 0, f"sigma (--sigma) must be positive, got {self.sigma}")
        check(self.sigma_mode != "calibrated" or self.likelihood in ("gaussian", "laplace"),
              f"--sigma calibrated fits the scale of a gaussian or laplace likelihood, and the {self.likelihood} "
              "likelihood has none; add --likelihood gaussian")

    @property
    def conditional(self) -> bool:
        return getattr(self, "num_classes", 0) > 0


@dataclass(frozen=True)
class ModelConfig(LikelihoodConfig):
    """Fields every flat-latent VAE shares. ``data_shape`` is one example's shape: (D,) or (C, H, W)."""

    data_shape: tuple[int, ...] = (784,)
    latent_dim: int = 16
    num_classes: int = 0  # > 0 makes the model conditional (a CVAE)
    prior: str = "standard"  # standard | vamp (Tomczak & Welling 2018)
    prior_components: int = 500  # vamp: pseudo-inputs

    def __post_init__(self) -> None:
        super().__post_init__()
        from vaekit.models.priors import PRIORS

        PRIORS.get(self.prior)
        check(self.prior_components >= 1, f"--components must be >= 1, got {self.prior_components}")
        check(len(self.data_shape) > 0 and all(d > 0 for d in self.data_shape),
              f"data_shape must be positive sizes, got {self.data_shape}")
        check(self.latent_dim > 0, f"latent size (--latent-dim) must be a positive integer, got {self.latent_dim}")
        check(self.num_classes >= 0, f"num_classes must be >= 0, got {self.num_classes}")


@dataclass
class VAEOutput:
    posterior: DiagonalGaussian
    z: Tensor
    px: object  # the observation distribution p(x|z)
    aux: dict = field(default_factory=dict)  # model-specific terms (per-layer log densities, ...)


class VAE(nn.Module):
    """Base class of all vaekit VAEs; subclasses register with ``@MODELS.register(name)``."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[LikelihoodConfig]] = ModelConfig
    input_range: ClassVar[tuple[float, float]] = (0.0, 1.0)  # how images are scaled for this model
    evaluator: ClassVar[str] = "likelihood"  # what `vaekit evaluate` measures: likelihood | images
    data_defaults: ClassVar[dict] = {}  # data settings this model changes from DataConfig's defaults
    training_defaults: ClassVar[Mapping] = {}  # likewise for TrainConfig
    hierarchical: ClassVar[bool] = False  # several stochastic layers: KL and active units per layer

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for name in INFERENCE_METHODS:  # overrides run in the inference precision too
            if callable(cls.__dict__.get(name)):
                setattr(cls, name, in_inference_precision(cls.__dict__[name]))

    def __init__(self, config: LikelihoodConfig) -> None:
        super().__init__()
        self.config = config
        self.inference_precision = "fp32"  # what encode/decode/... run in, in eval mode (set_precision)
        self.likelihood = LIKELIHOODS.get(config.likelihood)(config.data_shape, config.sigma_mode, config.sigma)
        if getattr(config, "prior", "standard") != "standard":
            from vaekit.models.priors import PRIORS

            self.prior_model = PRIORS.get(config.prior)(self, config.prior_components)

    @classmethod
    def require(cls, info, conditional: bool, image: bool = True) -> None:
        """For families without labels (and, with ``image``, only for image data): one-line errors."""
        if conditional:
            raise VaekitError(f"the {cls.name} model is not conditional; drop --conditional")
        if image and info.kind != "image":
            raise VaekitError(f"the {cls.name} model needs image data; {info.source} is tabular")

    @classmethod
    def config_for_data(cls, fields: dict, info, conditional: bool) -> dict:
        """Fill in the config fields that follow from the data (``info`` is a DataInfo)."""
        fields = dict(fields)
        fields["data_shape"] = list(info.shape)
        if conditional:
            if info.num_classes < 2:
                raise VaekitError(f"--conditional needs labelled data with at least 2 classes; {info.source} has "
                                  f"{'no labels' if info.num_classes == 0 else 'one class'}")
            fields["num_classes"] = info.num_classes
        return fields

    @classmethod
    def data_settings(cls, data: dict, model: Mapping) -> dict:
        """The data settings, given the model's (a family whose data follows from its config sets them)."""
        return data

    @classmethod
    def prepare_data(cls, data_cfg, model_fields: Mapping, saved=None, open_run=None):
        """The training data as DataSplits; ``saved`` is an existing run's DataInfo, ``open_run(path) ->
        (RunConfig, model)`` opens other runs for families that need them."""
        from vaekit.data import load_data

        return load_data(data_cfg, saved=saved, input_range=cls.input_range)

    def attach(self, open_run) -> None:
        """Called once the model is built from its config, for families that use other runs."""

    # -- what a model family implements -------------------------------------------------------
    def encoder_params(self, x: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def decoder_output(self, z: Tensor, c: Tensor | None) -> Tensor:
        raise NotImplementedError

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.config.latent_dim,)

    # -- user API -------------------------------------------------------------------------------
    def condition(self, y: Tensor | None) -> Tensor | None:
        """One-hot code of labels ``y`` for a conditional model (None otherwise)."""
        if not self.config.conditional:
            return None
        if y is None:
            raise VaekitError(
                f"this model is conditional on {self.config.num_classes} classes: labels are required"
            )
        return F.one_hot(y.long(), self.config.num_classes).to(self._dtype())

    def encode(self, x: Tensor, y: Tensor | None = None) -> DiagonalGaussian:
        """q(z|x) as a diagonal Gaussian (``.mean``, ``.mode()``, ``.sample()``)."""
        mean, logvar = self.encoder_params(x, self.condition(y))
        return DiagonalGaussian(mean, logvar.clamp(*LOGVAR_RANGE))

    def observation(self, z: Tensor, y: Tensor | None = None):
        """p(x|z): the likelihood's distribution over data."""
        return self.likelihood(self.decoder_output(z, self.condition(y)))

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """The mean of p(x|z), in data space (probabilities for a Bernoulli likelihood)."""
        return self.observation(z, y).mean

    def prior(self):
        """p(z): N(0, I), or the configured prior (VampPrior), with ``log_prob`` and ``sample``."""
        if hasattr(self, "prior_model"):
            return self.prior_model.distribution(self)
        return StandardNormal(self.latent_shape, device=self._device(), dtype=self._dtype())

    @property
    def factorized_prior(self) -> bool:
        return not hasattr(self, "prior_model")

    @torch.no_grad()
    def sample(
        self,
        n: int,
        y: Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``n`` draws of the decoder mean at z ~ N(0, temperature^2 I)."""
        z = self.prior().sample(n, generator=generator, temperature=temperature)
        return self.decode(z, y)

    def forward(self, x: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None) -> VAEOutput:
        posterior = self.encode(x, y)
        z = posterior.sample(generator=generator)
        return VAEOutput(posterior, z, self.observation(z, y))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parts for partial training: all, decoder (with the likelihood's parameters), encoder."""
        decoder = list(self.decoder.parameters()) + list(self.likelihood.parameters())
        return {"all": list(self.parameters()), "decoder": decoder, "encoder": list(self.encoder.parameters())}

    def set_precision(self, precision: str = "auto") -> VAE:
        """Run inference (the model in eval mode: encode, decode, sample, the estimator's importance
        weights, tiling) in ``precision``: auto (bf16 where the device runs it faster, see
        ``vaekit.precision``), fp32, bf16, or fp16 (CUDA). Weights stay float32 (bf16 autocast) and
        outputs come back in float32; densities are computed in float32. Returns the model."""
        from vaekit.precision import resolve_precision

        chosen = resolve_precision(precision, self._device())
        self.inference_precision = chosen.name
        self.__dict__["_autocast_dtype"] = chosen.dtype
        self.__dict__["_precision_request"] = precision
        return self

    @contextlib.contextmanager
    def likelihood_precision(self, exact: bool = False) -> Iterator[str]:
        """The precision the importance-weighted likelihood runs in. Under ``auto`` with bf16 chosen it
        is bf16 only for a flat-latent model with the N(0, I) prior and a likelihood whose density
        tolerates bf16 rounding of the decoder's outputs (Bernoulli logits: on 500 Fashion-MNIST test
        images at K = 1000 the estimate moved by 0.003 nats on average and 0.17 at most, and ran 1.8x
        faster on an AMX CPU); otherwise fp32: a discretised logistic's estimate moved by 0.43 nats on
        average and up to 5.4 (its density's slope in the location grows as 1 / scale^2), and a
        hierarchy's or a learned prior's densities take network outputs as parameters. The densities
        themselves are fp32 either way. ``exact=True`` keeps fp32 under auto whatever the likelihood
        (anomaly scores: a threshold calibrated on one machine must hold on another, where auto may have
        resolved to fp32). An explicit bf16 or fp16 is honoured. Yields the precision in use."""
        auto = self.__dict__.get("_precision_request") == "auto" and self.inference_precision != "fp32"
        tolerant = (not exact and getattr(self.likelihood, "rounding_tolerant", False) and self.factorized_prior
                    and not self.hierarchical)
        if not auto or tolerant:
            yield self.inference_precision
            return
        self.__dict__["_exact"] = True
        try:
            yield "fp32"
        finally:
            self.__dict__["_exact"] = False

    # -- what objectives and the estimator use --------------------------------------------------
    def kl_terms(self, out: VAEOutput) -> Tensor:
        """KL(q(z|x) || p(z)) in groups, [B, G]; the sum over G is the KL of the ELBO. Analytic per
        latent unit for N(0, I); a one-sample estimate log q(z|x) - log p(z) for other priors."""
        if self.factorized_prior:
            return out.posterior.kl_elementwise().flatten(1)
        return (out.posterior.log_prob(out.z) - self.prior().log_prob(out.z)).unsqueeze(1)

    def importance_terms(
        self, x: Tensor, y: Tensor | None, posterior: DiagonalGaussian, k: int,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """For k draws z_j ~ q(z|x): log p(x|z_j) [k, B] and log p(z_j) - log q(z_j|x) in groups
        [k, B, G] (per latent unit under N(0, I), one group otherwise). Differentiable.

        ``posterior`` is q(z|x) for this batch, computed once by the caller and reused across
        chunks of samples; the k decodes run as one batch of k*B rows.
        """
        return self.importance_terms_at(x, y, posterior, posterior.sample(k, generator=generator))

    def importance_terms_at(self, x: Tensor, y: Tensor | None, posterior: DiagonalGaussian, z: Tensor
                            ) -> tuple[Tensor, Tensor]:
        """``importance_terms`` at given draws z [k, B, *latent] of q(z|x) (flat-latent models: the
        anomaly scores draw each example's noise from its own seed, so a score never depends on the
        batch it was computed in)."""
        k = z.shape[0]
        yk = None if y is None else y.repeat(k)
        px = self.observation(z.flatten(0, 1), yk).unflatten_batch(k)  # parameters viewed as [k, B, ...]
        if self.factorized_prior:
            ratio = -0.5 * z**2 + 0.5 * (posterior.logvar + (z - posterior.mean) ** 2 * torch.exp(-posterior.logvar))
            ratio = ratio.flatten(2)  # the 2 pi constants cancel
        else:
            ratio = (self.prior().log_prob(z) - posterior.log_prob(z)).unsqueeze(-1)
        return px.log_prob(x), ratio

    def log_importance_weights(
        self, x: Tensor, y: Tensor | None, posterior: DiagonalGaussian, k: int,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """log p(x, z_j) - log q(z_j|x) for k draws z_j ~ q(z|x): [k, B] (Burda et al. 2015)."""
        log_px, ratio = self.importance_terms(x, y, posterior, k, generator)
        return log_px + ratio.sum(-1)

    # -- helpers ---------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype



for _name in INFERENCE_METHODS:  # the base class's own methods
    if callable(VAE.__dict__.get(_name)):
        setattr(VAE, _name, in_inference_precision(VAE.__dict__[_name]))
