"""Anomaly scores of a trained VAE, one number per example, higher = more anomalous.

- ``nll``: -log p(x), the importance-weighted estimate with K draws (Burda et al. 2015), nats;
- ``elbo``: -ELBO(x) (K draws of the reconstruction term; the KL in closed form under N(0, I)), nats;
- ``recon``: -E_q[log p(x|z)] over the same K draws (the reconstruction probability of An & Cho 2015), nats;
- ``latent``: -log q_GMM(E_q[z|x]): the posterior mean's density under a Gaussian mixture fitted to the
  training codes (the aggregate posterior), nats; with ``codes="mean+logvar"`` the mixture is fitted to,
  and scores, each posterior's mean and log-variance side by side: how typical the whole posterior is,
  the encoder's uncertainty included;
- ``complexity``: the NLL in bits minus the bits of a lossless compression of the 8-bit input (Serrà et
  al. 2020, "Input complexity and out-of-distribution detection with likelihood-based generative
  models"), bits per image on both sides; a discrete likelihood (logistic: 256 levels) is already the
  probability of the 8-bit image; for continuous ones the density is turned into the probability of the
  input's 8-bit bin first (+ D log2(255 / (hi - lo)) bits), so both sides count bits of the same image;
  a Bernoulli likelihood counts only for binary images (on grey levels it is a cross-entropy, not a
  probability of the image, and the score is refused);
- ``regret``: likelihood regret (Xiao et al. 2020, "Likelihood Regret: An Out-of-Distribution
  Detection Score for Variational Auto-encoder"): ELBO(x; q*) - ELBO(x; q_encoder), where q* is the
  posterior's mean and log-variance optimised for this one input by Adam (``steps``, ``lr``) from the
  encoder's values, nats. We optimise the posterior parameters, not a copy of the encoder's weights:
  the per-example parameters are independent, so a whole batch is optimised at once;
- ``ratio``: the likelihood ratio (Ren et al. 2019, "Likelihood Ratios for Out-of-Distribution
  Detection"): this model's ``nll`` minus the ``nll`` of a background model, a run trained on the same
  data with ``--perturb`` (its inputs partly replaced by noise, so that it learns the low-level
  statistics that dominate the likelihood and less of the semantics), both with the same K and seed,
  nats. Ren et al. tune the perturbation rate on held-out data; vaekit leaves it to the training run.
- combined, ``A+B`` (e.g. ``latent+complexity``): the sum of the named scores, each standardised to zero
  mean and unit variance on held-out normal data (the run's validation split for `vaekit anomaly`), in
  units of that data's standard deviation. Equal weights, none tuned: each part counts as much as the others
  on normal data, so an input that is unusual on any of them stands out (in the spirit of DoSE, Morningstar
  et al. 2021, "Density of States Estimation for Out-of-Distribution Detection", with a sum instead of a
  fitted density). The means and standard deviations are saved with the calibration
  (``ScoreSettings.standardise``), so later scores use the same ones.

Determinism: every example's noise comes from its own generator, seeded by (seed, a stream name, a
hash of the example's values; nll, elbo, recon and complexity share one stream, regret has its own),
so a score is the same in any batch, at any position, alone or in a dataset, on every call.
Flat-latent models draw all K samples up front; hierarchical models (hvae, ladder) draw theirs inside
the model, one example at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from vaekit.config import check
from vaekit.errors import VaekitError

SCORES = ("nll", "elbo", "recon", "latent", "complexity", "regret", "ratio")
CODECS = ("png", "best")
ROWS = 4096  # (example, draw) pairs decoded at once: bounds memory whatever K is
CHUNK = 2048  # examples read from a dataset and scored at a time
DRAWS = "draws"  # nll, elbo, recon and complexity share one stream of draws: -ELBO = recon + KL exactly
JOIN = "+"  # "latent+complexity": a combined score, the sum of its standardised parts


@dataclass(frozen=True)
class ScoreSettings:
    """How the scores are computed; saved with a calibration so that later scores match it."""

    k: int = 100  # draws of q(z|x) per example (nll, elbo, recon, complexity, and regret's two ELBOs)
    seed: int = 0
    steps: int = 100  # regret: Adam steps on the posterior parameters (Xiao et al.'s code: 100)
    lr: float = 0.05  # regret: Adam's step size
    codec: str = "png"  # complexity: png (Pillow, optimize) | best (the shortest of png, zlib, bz2, lzma)
    components: int | None = None  # latent: mixture components fitted to the training codes (None: chosen
    # by held-out likelihood, vaekit.evaluation.aggregate.choose_components)
    codes: str = "mean"  # latent: what the mixture scores, the posterior "mean" or its "mean+logvar"
    # combined scores: each part's (mean, std) on held-out normal data, set by calibration (fit_standardisation)
    standardise: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.k >= 1, f"the number of draws (--k) must be >= 1, got {self.k}")
        check(self.steps >= 1, f"--steps must be >= 1, got {self.steps}")
        check(self.lr > 0, f"--lr must be positive, got {self.lr}")
        check(self.codec in CODECS, f"unknown codec '{self.codec}' (choose from: {', '.join(CODECS)})")
        check(self.components is None or self.components >= 1, f"--components must be >= 1, got {self.components}")
        from vaekit.evaluation.likelihood import FEATURES

        check(self.codes in FEATURES, f"unknown latent codes '{self.codes}' (choose from: {', '.join(FEATURES)})")
        for name, pair in self.standardise.items():
            check(name in SCORES, f"standardise: unknown score '{name}'")
            check(len(pair) == 2, f"standardise: {name} needs [mean, std], got {list(pair)}")
            check(math.isfinite(pair[0]) and math.isfinite(pair[1]) and pair[1] > 0,
                  f"standardise: {name} needs a finite mean and a positive std, got {list(pair)}")


def parse_scores(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'nll,regret' or ['nll', 'latent+complexity'] or 'all' -> the names, checked (the first is the primary)."""
    names = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t).strip() for t in text]
    names = [n for n in names if n]
    if names == ["all"]:
        return SCORES
    if not names:
        raise VaekitError(f"no score given (choose from: {', '.join(SCORES)}, a sum such as latent+complexity, or all)")
    out = []
    for n in names:
        parts = [p.strip() for p in n.split(JOIN)]
        for p in parts:
            if p not in SCORES:
                inside = f" in '{n}'" if len(parts) > 1 else ""
                raise VaekitError(f"unknown score '{p}'{inside} (choose from: {', '.join(SCORES)}, a sum such as "
                                  f"latent+complexity, or all)")
        twice = sorted({p for p in parts if parts.count(p) > 1})
        if twice:
            raise VaekitError(f"the combined score '{n}' names a score twice: {', '.join(twice)}")
        out.append(JOIN.join(parts))
    return tuple(dict.fromkeys(out))


def parts_of(name: str) -> tuple[str, ...]:
    """The scores a (combined) score sums: 'latent+complexity' -> ('latent', 'complexity'); 'nll' -> ('nll',)."""
    return tuple(name.split(JOIN))


def components(names) -> tuple[str, ...]:
    """Every single score that ``names`` need, once each, in order."""
    return tuple(dict.fromkeys(p for n in names for p in parts_of(n)))


def standardisation(scores: dict[str, Tensor], names) -> dict[str, tuple[float, float]]:
    """(mean, std) on these normal examples of each part of the combined scores among ``names``."""
    out = {}
    for part in components(n for n in names if JOIN in n):
        s = scores[part].double()
        if len(s) < 2:
            raise VaekitError(f"a combined score standardises its parts on held-out normal data: it needs at least 2 "
                              f"normal examples, got {len(s)}")
        if not torch.isfinite(s).all():
            raise VaekitError(f"{int((~torch.isfinite(s)).sum())} normal example(s) have a {part} score that is not "
                              f"finite; it cannot be standardised")
        mean, std = float(s.mean()), float(s.std())
        if not std > 0:
            raise VaekitError(f"the {part} score is the same on every normal example: it cannot be standardised for "
                              f"a combined score")
        out[part] = (mean, std)
    return out


def check_standardised(names, settings: ScoreSettings) -> None:
    """A one-line error when a combined score among ``names`` lacks its parts' standardisation."""
    for n in names:
        missing = [p for p in parts_of(n) if JOIN in n and p not in settings.standardise]
        if missing:
            raise VaekitError(f"the combined score {n} standardises its parts on held-out normal data, and "
                              f"{', '.join(missing)} has no mean and std yet: calibrate with `vaekit anomaly`, pass "
                              f"normal= examples, or settings from vaekit.anomaly.fit_standardisation")


def combine(scores: dict[str, Tensor], names, settings: ScoreSettings) -> dict[str, Tensor]:
    """{name: score} for ``names`` from the single scores in ``scores``: a combined one is the sum of its
    parts, each minus its normal-data mean, over its normal-data standard deviation."""
    check_standardised(names, settings)
    out = {}
    for n in names:
        if JOIN not in n:
            out[n] = scores[n]
            continue
        total = torch.zeros_like(scores[parts_of(n)[0]], dtype=torch.float64)
        for p in parts_of(n):
            mean, std = settings.standardise[p]
            total = total + (scores[p].double() - mean) / std
        out[n] = total
    return out


def applicable_scores(model, x: Tensor | None = None, background=None) -> tuple[str, ...]:
    """The scores this model can give (``--score all``); ``x``, a few examples, decides whether a Bernoulli
    model's data are binary (complexity); ``ratio`` needs a ``background`` model."""
    names = [n for n in SCORES if n != "regret" or not getattr(model, "hierarchical", False)]
    if background is None:
        names.remove("ratio")
    shape = tuple(model.config.data_shape)
    binary = x is not None and bool(((x == 0) | (x == 1)).all())
    if len(shape) != 3 or shape[0] not in (1, 3) or (model.config.likelihood == "bernoulli" and not binary):
        names.remove("complexity")
    return tuple(names)


def check_scores(model, names: tuple[str, ...], background=None) -> None:
    """One-line errors for scores this model cannot give (the parts of a combined score included)."""
    names = components(names)
    if "ratio" in names:
        check_background(model, background)
    if "regret" in names and getattr(model, "hierarchical", False):
        raise VaekitError(f"the regret score optimises the parameters of one Gaussian posterior q(z|x); the "
                          f"{model.name} model has a hierarchy of posteriors, not one encoder output to optimise")
    if "complexity" in names and len(model.config.data_shape) != 3:
        raise VaekitError("the complexity score compresses 8-bit images; this run's data are table rows")
    if "complexity" in names and model.config.data_shape[0] not in (1, 3):
        raise VaekitError(f"the complexity score compresses grey or RGB images; these have "
                          f"{model.config.data_shape[0]} channels")


def check_background(model, background) -> None:
    """The ratio score's background model must score the same examples as the model."""
    if background is None:
        raise VaekitError("the ratio score needs a background model (--background RUN, or background= in Python): "
                          "a run trained on the same data with --perturb")
    if tuple(background.config.data_shape) != tuple(model.config.data_shape):
        raise VaekitError(f"the background model takes examples of shape {tuple(background.config.data_shape)}; "
                          f"this run's are {tuple(model.config.data_shape)}")
    if background.config.conditional and not model.config.conditional:
        raise VaekitError("the background model is conditional on class labels and this run is not: train the "
                          "background model as the run was trained, with --perturb")
    if background.config.likelihood != model.config.likelihood:
        raise VaekitError(f"the background model's likelihood is {background.config.likelihood}, this run's is "
                          f"{model.config.likelihood}: a ratio of a density and a probability, or of two "
                          "different supports, is not a likelihood ratio")


# -- noise: one generator per example ---------------------------------------------------------------


def example_seeds(x: Tensor, seed: int, name: str) -> list[int]:
    """A 64-bit seed per example from (seed, score name, the example's float32 values)."""
    rows = x.detach().float().cpu().contiguous().numpy().reshape(len(x), -1)
    salt = f"{seed}:{name}:".encode()
    return [int.from_bytes(hashlib.blake2b(salt + r.tobytes(), digest_size=8).digest(), "little") >> 1 for r in rows]


def _generators(x: Tensor, seed: int, name: str) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in example_seeds(x, seed, name)]


def _noise(gens: list[torch.Generator], shape: tuple[int, ...], like: Tensor) -> Tensor:
    """[B, *shape]: each example's draws from its own generator."""
    return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(like)


# -- the K-draw terms -------------------------------------------------------------------------------


def _draws(model, x: Tensor, y: Tensor | None, k: int, seed: int, name: str, posterior=None):
    """log p(x|z_j) [k, B] and log p(z_j) - log q(z_j|x) [k, B] for k draws per example, and the posterior."""
    if posterior is None:
        posterior = model.encode(x, y)
    gens = _generators(x, seed, name)
    if getattr(model, "hierarchical", False):
        return (*_draws_one_by_one(model, x, y, posterior, k, gens), posterior)
    shape = tuple(posterior.mean.shape[1:])
    eps = _noise(gens, (k, *shape), posterior.mean).transpose(0, 1)  # [k, B, *latent]
    chunk = max(1, ROWS // len(x))
    log_px, ratio = [], []
    for start in range(0, k, chunk):
        z = posterior.mean + posterior.std * eps[start : start + chunk]
        lp, r = model.importance_terms_at(x, y, posterior, z)
        log_px.append(lp)
        ratio.append(r.sum(-1))
    return torch.cat(log_px).double(), torch.cat(ratio).double(), posterior


def _draws_one_by_one(model, x, y, posterior, k, gens):
    log_px, ratio = [], []
    for i, g in enumerate(gens):
        lp_i, r_i = [], []
        for start in range(0, k, ROWS):
            kc = min(ROWS, k - start)
            lp, r = model.importance_terms(x[i : i + 1], None if y is None else y[i : i + 1], posterior[i : i + 1],
                                           kc, generator=g)
            lp_i.append(lp)
            r_i.append(r.sum(-1))
        log_px.append(torch.cat(lp_i))
        ratio.append(torch.cat(r_i))
    return torch.cat(log_px, 1).double(), torch.cat(ratio, 1).double()


def _elbo(model, log_px: Tensor, ratio: Tensor, posterior) -> Tensor:
    """The ELBO per example [B] from k draws: the KL in closed form when the prior is N(0, I)."""
    if not getattr(model, "hierarchical", False) and model.factorized_prior:
        return log_px.mean(0) - posterior.kl().double()
    return (log_px + ratio).mean(0)


def _shared_draws(model, x, y, s: ScoreSettings, ctx: dict):
    """The K draws of this group of examples, computed once for nll, elbo, recon and complexity."""
    cache = ctx.setdefault("draws", {})
    key = ctx.get("group")
    if key not in cache:
        cache.clear()  # one group at a time
        cache[key] = _draws(model, x, y, s.k, s.seed, DRAWS)
    return cache[key]


# -- the scores -------------------------------------------------------------------------------------


@torch.no_grad()
def _nll(model, x, y, s: ScoreSettings, ctx) -> Tensor:
    log_px, ratio, _ = _shared_draws(model, x, y, s, ctx)
    return -(torch.logsumexp(log_px + ratio, 0) - math.log(s.k))


@torch.no_grad()
def _neg_elbo(model, x, y, s: ScoreSettings, ctx) -> Tensor:
    log_px, ratio, q = _shared_draws(model, x, y, s, ctx)
    return -_elbo(model, log_px, ratio, q)


@torch.no_grad()
def _recon(model, x, y, s: ScoreSettings, ctx) -> Tensor:
    return -_shared_draws(model, x, y, s, ctx)[0].mean(0)


@torch.no_grad()
def _latent(model, x, y, s: ScoreSettings, ctx) -> Tensor:
    prior = ctx.get("prior")
    if prior is None:
        raise VaekitError("the latent score needs the aggregate posterior: pass prior= (a mixture from "
                          "vaekit.evaluation.aggregate.fit_gmm or load_gmm_prior) or reference= (training examples)")
    from vaekit.evaluation.likelihood import posterior_features

    codes = posterior_features(model.encode(x, y), s.codes).float().cpu()
    size = int(torch.Size(prior.event_shape).numel())
    if size != codes.shape[1]:
        raise VaekitError(f"the latent score's mixture is over {size} dimensions, but the {s.codes} codes of this "
                          f"model have {codes.shape[1]}")
    return -prior.log_prob(codes).double()


@torch.no_grad()
def _complexity(model, x, y, s: ScoreSettings, ctx) -> Tensor:
    lo, hi = model.input_range
    nll_bits = _nll(model, x, y, s, ctx) / math.log(2.0)
    discrete = model.config.likelihood == "bernoulli" or getattr(model.likelihood, "levels", 0)
    if not discrete:  # a density: the probability of the 8-bit bin
        nll_bits = nll_bits + math.prod(x.shape[1:]) * math.log2(255.0 / (hi - lo))
    return nll_bits - torch.from_numpy(compressed_bits(x, (lo, hi), s.codec))


def _regret(model, x, y, s: ScoreSettings, ctx) -> Tensor:
    """ELBO after optimising q(z|x)'s mean and log-variance for each input, minus the ELBO before; the
    same K draws of noise evaluate both (common random numbers), the steps each draw one more."""
    with torch.no_grad():
        q0 = model.encode(x, y)
    gens = _generators(x, s.seed, "regret")
    shape = tuple(q0.mean.shape[1:])
    eval_eps = _noise(gens, (s.k, *shape), q0.mean).transpose(0, 1)  # [k, B, *latent]
    step_eps = _noise(gens, (s.steps, *shape), q0.mean).transpose(0, 1)  # [steps, B, *latent]
    mean = q0.mean.detach().clone().requires_grad_(True)
    logvar = q0.logvar.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([mean, logvar], lr=s.lr)
    from vaekit.distributions import DiagonalGaussian
    from vaekit.models.base import LOGVAR_RANGE

    for t in range(s.steps):
        with torch.enable_grad():
            q = DiagonalGaussian(mean, logvar.clamp(*LOGVAR_RANGE))
            log_px, ratio = model.importance_terms_at(x, y, q, q.mean + q.std * step_eps[t : t + 1])
            loss = -_elbo(model, log_px, ratio.sum(-1), q).sum()  # a sum: each example's gradient is its own
            grads = torch.autograd.grad(loss, [mean, logvar])
        mean.grad, logvar.grad = grads
        opt.step()
    with torch.no_grad():
        q1 = DiagonalGaussian(mean.detach(), logvar.detach().clamp(*LOGVAR_RANGE))
        before, after = (_elbo_at(model, x, y, q, eval_eps) for q in (q0, q1))
    return after - before


def _elbo_at(model, x, y, q, eps: Tensor) -> Tensor:
    chunk = max(1, ROWS // len(x))
    log_px, ratio = [], []
    for start in range(0, len(eps), chunk):
        lp, r = model.importance_terms_at(x, y, q, q.mean + q.std * eps[start : start + chunk])
        log_px.append(lp)
        ratio.append(r.sum(-1))
    return _elbo(model, torch.cat(log_px).double(), torch.cat(ratio).double(), q)


@torch.no_grad()
def _ratio(model, x, y, s: ScoreSettings, ctx) -> Tensor:
    background = ctx["background"]
    log_px, ratio, _ = _draws(background, x, y if background.config.conditional else None, s.k, s.seed, DRAWS)
    return _nll(model, x, y, s, ctx) + (torch.logsumexp(log_px + ratio, 0) - math.log(s.k))


SCORE_FUNCTIONS: dict[str, Callable] = {"nll": _nll, "elbo": _neg_elbo, "recon": _recon, "latent": _latent,
                                        "complexity": _complexity, "regret": _regret, "ratio": _ratio}
# examples per call: K draws each for the K-draw scores; regret's steps run on the whole group
GROUP = {"regret": 256, "latent": 1024}


# -- lossless codecs --------------------------------------------------------------------------------


def compressed_bits(x: Tensor, value_range: tuple[float, float], codec: str = "png") -> np.ndarray:
    """Length in bits of each image of ``x`` [B, C, H, W] (in ``value_range``), quantised to 8 bits
    and losslessly compressed: ``png`` (Pillow, optimize=True; the whole file, headers included) or
    ``best`` (the shortest of that PNG and the zlib, bz2 and raw-LZMA streams of the pixel bytes)."""
    from vaekit.encoding import to_uint8

    if codec not in CODECS:
        raise VaekitError(f"unknown codec '{codec}' (choose from: {', '.join(CODECS)})")
    return np.array([8.0 * _compressed_len(a, codec) for a in to_uint8(x.cpu(), value_range)])


def _compressed_len(a: np.ndarray, codec: str) -> int:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=True)
    n = buf.tell()
    if codec == "best":
        import bz2
        import lzma
        import zlib

        raw = a.tobytes()
        n = min(n, len(zlib.compress(raw, 9)), len(bz2.compress(raw, 9)),
                len(lzma.compress(raw, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 9}])))
    return n


# -- the public function ----------------------------------------------------------------------------


def _as_model(model_or_run):
    if isinstance(model_or_run, (str, bytes)) or hasattr(model_or_run, "__fspath__"):
        from vaekit.run import load

        return load(model_or_run)
    return model_or_run


def score(model, x: Tensor, score: str = "nll", *, y: Tensor | None = None, k: int = 100, seed: int = 0,
          steps: int = 100, lr: float = 0.05, codec: str = "png", prior=None, reference=None, background=None,
          normal=None, settings: ScoreSettings | None = None) -> Tensor:
    """Anomaly score of each row of ``x`` (as the model takes it: images in its input range, table rows
    standardised), higher = more anomalous: a float64 tensor [N] on the CPU.

    ``model`` is a vaekit model or a run directory. ``latent`` needs the aggregate posterior: ``prior``
    (a fitted mixture) or ``reference`` (training examples, [M, ...], to fit one on; deterministic); from
    a run directory it uses RUN/prior_gmm.safetensors when present, else fits one on the run's training
    split. ``ratio`` needs ``background``: a model (or run directory) trained with ``--perturb``.
    A combined score (``"latent+complexity"``) standardises its parts on held-out normal examples:
    ``normal`` (a tensor, or an ArrayData with labels for a conditional model), else, unless ``settings``
    already holds the standardisation (a calibration's settings do), a run directory's validation split.
    A standardisation belongs to the settings it was fitted with: after changing k, codec, codes or
    components, clear it (``dataclasses.replace(settings, standardise={})``).
    ``settings`` (a ScoreSettings) replaces ``k``, ``seed``, ``steps``, ``lr`` and ``codec``.
    """
    run = model if not isinstance(model, torch.nn.Module) else None
    model = _as_model(model)
    names = parse_scores(score)
    if len(names) != 1:
        raise VaekitError(f"score() gives one score; got {', '.join(names)} (use score_all for several)")
    settings = settings or ScoreSettings(k=k, seed=seed, steps=steps, lr=lr, codec=codec)
    if "latent" in parts_of(names[0]) and prior is None:
        prior = latent_prior(model, reference=reference, run=run, components=settings.components, seed=settings.seed,
                             codes=settings.codes)
    background = None if background is None else _as_model(background)
    if JOIN in names[0] and (normal is not None or not all(p in settings.standardise for p in parts_of(names[0]))):
        if normal is None and run is None:
            check_standardised(names, settings)
        normal = held_out_normal(run)[1] if normal is None else normal
        settings = fit_standardisation(model, normal, names, settings, prior=prior, background=background)
    return score_all(model, x, names, settings, y=y, prior=prior, background=background)[names[0]]


def fit_standardisation(model, normal, names, settings: ScoreSettings, *, prior=None, background=None,
                        progress: bool = False) -> ScoreSettings:
    """``settings`` with the standardisation of the combined scores among ``names`` ('latent+complexity' or
    a list of names): each part's mean and standard deviation on ``normal`` (held-out normal examples: a
    tensor, or data with ``len`` and ``batch``, with labels for a conditional model). Use examples the model
    (and the latent score's mixture) did not train on: in-sample scores are lower and tighter than those of
    new normal data."""
    names = parse_scores(names)
    parts = score_data(model, _as_data(normal), components(n for n in names if JOIN in n), settings, prior,
                       progress, "standardise", background)
    return replace(settings, standardise=standardisation(parts, names))


def held_out_normal(run) -> tuple[str, object]:
    """(split, data) of a run on which thresholds and standardisations are fitted: its validation split, or
    its test split when it has none."""
    from vaekit.data import load_data
    from vaekit.run import read_run_config

    cfg = read_run_config(run)
    if not cfg.data.spec:
        raise VaekitError(f"{run}: this run records no data to calibrate on (its weights were imported)")
    return held_out_split(load_data(cfg.data, saved=cfg.data_info))


def held_out_split(splits) -> tuple[str, object]:
    """(split, data): the validation split of these splits, or the test split when it is empty."""
    name = "val" if splits.val is not None and len(splits.val) else "test"
    return name, splits.split(name)


def _as_data(data):
    """Examples as data with ``len`` and ``batch``: a tensor becomes an ArrayData; data passes through."""
    if isinstance(data, Tensor):
        from vaekit.data import ArrayData

        return ArrayData(data.float())
    return data


def score_data(model, data, names, settings: ScoreSettings, prior=None, progress: bool = False,
               desc: str = "score", background=None) -> dict[str, Tensor]:
    """Scores of every example of ``data`` (``len`` and ``batch(index)``), read in chunks of CHUNK."""
    import sys

    from tqdm import tqdm

    out = {n: [] for n in names}
    device = next(model.parameters()).device
    with tqdm(total=len(data), desc=desc, unit="ex", leave=False, file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(data), CHUNK):
            x, y = data.batch(torch.arange(start, min(start + CHUNK, len(data))))
            y = y if model.config.conditional else None
            for n, s in score_all(model, x.to(device), names, settings, y=y, prior=prior,
                                  background=background).items():
                out[n].append(s)
            bar.update(len(x))
    return {n: torch.cat(v) if v else torch.zeros(0, dtype=torch.float64) for n, v in out.items()}


def score_all(model, x: Tensor, names: tuple[str, ...], settings: ScoreSettings, *, y: Tensor | None = None,
              prior=None, background=None) -> dict[str, Tensor]:
    """Several scores of the rows of ``x`` at once: {name: float64 tensor [N]}; combined ones from
    ``settings.standardise``."""
    check_scores(model, names, background)
    check_standardised(names, settings)
    if not isinstance(x, Tensor):
        raise VaekitError(f"x must be a tensor, got {type(x).__name__}")
    data_shape = tuple(model.config.data_shape)
    if tuple(x.shape[1:]) != data_shape:
        raise VaekitError(f"examples of shape {tuple(x.shape[1:])} do not match the model's data shape {data_shape}")
    if model.config.conditional and y is None:
        raise VaekitError(f"this model is conditional on {model.config.num_classes} classes: labels are required")
    if "complexity" in components(names) and model.config.likelihood == "bernoulli" and not ((x == 0) | (x == 1)).all():
        raise VaekitError("the complexity score compares -log2 p(x) with a lossless code of the 8-bit image; a "
                          "bernoulli likelihood of grey levels is a cross-entropy, not that probability: use a run "
                          "trained with --binarize or a gaussian or laplace likelihood")
    model.eval()
    if background is not None:
        background.eval()
    with density_precision(model), (density_precision(background) if background is not None
                                    else contextlib.nullcontext()):
        return combine(_score_all(model, x, components(names), settings, y, prior, background), names, settings)


def density_precision(model):
    """Scores are densities compared with a saved threshold: under --precision auto they run in fp32 whatever
    the machine (``VAE.likelihood_precision(exact=True)``), so a calibration holds on any CPU; an explicit
    bf16 is honoured."""
    return (model.likelihood_precision(exact=True) if hasattr(model, "likelihood_precision")
            else contextlib.nullcontext())


def _score_all(model, x: Tensor, names: tuple[str, ...], settings: ScoreSettings, y: Tensor | None,
               prior, background=None) -> dict[str, Tensor]:
    device = next(model.parameters()).device
    x = x.to(device, torch.float32)
    y = None if y is None else y.to(device)
    ctx = {"prior": prior, "background": background}
    parts: dict[str, list[Tensor]] = {name: [] for name in names}
    draw_group = max(1, ROWS // settings.k)
    for start in range(0, len(x), draw_group):  # the K-draw scores, group by group, sharing the draws
        ctx["group"] = start
        stop = start + draw_group
        for name in names:
            if name not in GROUP:
                parts[name].append(SCORE_FUNCTIONS[name](model, x[start:stop], None if y is None else y[start:stop],
                                                         settings, ctx).cpu())
    ctx.pop("draws", None)
    for name in names:
        if name in GROUP:
            group = GROUP[name]
            parts[name] = [SCORE_FUNCTIONS[name](model, x[i : i + group], None if y is None else y[i : i + group],
                                                 settings, ctx).cpu() for i in range(0, len(x), group)]
    return {name: torch.cat(p).double() if p else torch.zeros(0, dtype=torch.float64) for name, p in parts.items()}


def latent_prior(model, *, reference=None, run=None, components: int | None = None, seed: int = 0,
                 codes: str = "mean"):
    """The aggregate posterior for the ``latent`` score: RUN/prior_gmm.safetensors when ``run`` has one
    (for ``codes="mean"``: that file is a mixture over the means), else a mixture fitted (in memory,
    deterministically) to the ``codes`` of ``reference`` (a tensor of training examples or an ArrayData),
    or of the run's training split."""
    from pathlib import Path

    from vaekit.evaluation.aggregate import GMM_FILE, fit_gmm, load_gmm_prior

    if codes == "mean" and run is not None and (Path(run) / GMM_FILE).is_file():
        return load_gmm_prior(run)
    if reference is None and run is not None:
        from vaekit.data import load_examples
        from vaekit.run import read_run_config

        cfg = read_run_config(run)
        reference = load_examples(cfg.data, cfg.data_info, "train").data  # streams without augmentation
    if reference is None:
        raise VaekitError("the latent score needs the aggregate posterior: pass prior= or reference= (training "
                          "examples)")
    return fit_gmm(model, _as_data(reference), components=components, seed=seed, features=codes)
