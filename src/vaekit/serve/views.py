"""The model work behind the explorer, one ``RunView`` per run: samples, decoding a latent, encoding
a test example or an uploaded image (with its ELBO and NLL, or PSNR and LPIPS), interpolation and
the 2-D latent map. Everything here is synchronous and returns JSON-ready dicts; ``vaekit.serve.app``
runs it in worker threads, one call at a time per run (``RunView.lock``).

Images travel as PNG data URLs at the model's own resolution (the page enlarges them), so a slider
move costs one decode and one tiny PNG.
"""

from __future__ import annotations

import base64
import io
import math
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaekit.errors import VaekitError
from vaekit.run import load, read_run_config

MAX_EXAMPLES = 2000  # test examples behind the latent map and the units' activity (as `vaekit plot`, fewer)
MAX_IMAGE_EXAMPLES = 256  # the same for image autoencoders, whose encoder is much larger
NLL_SAMPLES = 100  # importance samples for an example's NLL (Burda et al. 2015)
MAX_SAMPLES = 100  # largest sample grid
MAX_STEPS = 32  # most points on an interpolation path
SLIDER_SPAN = 3.0  # flat latents: sliders run over [-3, 3], as `vaekit traverse` does
MAX_PIXELS = 4096 * 4096  # uploads: larger images are refused before they are decoded
ANOMALY_FILE = "anomaly.json"  # written by `vaekit anomaly` (issue 19)
LPIPS_NET = "vgg"  # as `vaekit evaluate`
LPIPS_MIN_SIZE = 32  # VGG16's pooling leaves nothing of smaller images at its deepest tap


class ServeError(Exception):
    """A request the explorer refuses: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RunView:
    """One run, loaded once: the model in eval mode, its config, up to ``MAX_EXAMPLES`` test
    examples (read on first use) and what is derived from them (codes, units' activity, the 2-D
    plane of the latent map). Callers hold ``lock`` around every method that runs the model."""

    def __init__(self, name: str, path: str | Path, device: str = "cpu", precision: str = "auto") -> None:
        self.name = name
        self.path = Path(path)
        self.cfg = read_run_config(self.path)
        self.model = load(self.path, device=device, precision=precision)
        self.device = torch.device(device)
        self.info = self.cfg.data_info
        self.lock = threading.Lock()
        self._cache: dict[str, Any] = {}
        self._cache_lock = threading.RLock()
        self.channels_mode = getattr(self.model, "evaluator", "likelihood") == "images"  # autoencoder-kl
        self.diffusion: list[tuple[Path, Any]] = []  # latent-diffusion runs on this run's codes (samplers.py)

    # -- what is derived once -------------------------------------------------------------------------
    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        with self._cache_lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.model.latent_shape)

    @property
    def latent_size(self) -> int:
        return math.prod(self.latent_shape)

    @property
    def conditional(self) -> bool:
        return bool(getattr(self.model.config, "conditional", False))

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model.config, "num_classes", 0)) if self.conditional else self.info.num_classes

    def examples(self):
        """The first test examples (ArrayData), or None when the run's data cannot be read."""
        return self.cached("examples", self._read_examples)[0]

    def data_note(self) -> str | None:
        return self.cached("examples", self._read_examples)[1]

    def _read_examples(self):
        from vaekit.data import load_data

        try:
            test = load_data(self.cfg.data, saved=self.info).test
        except VaekitError as e:
            return None, f"no test examples: {e}"
        n = min(len(test), MAX_IMAGE_EXAMPLES if self.channels_mode else MAX_EXAMPLES)
        return (test.take(n), None) if n else (None, "no test examples: the test split is empty")

    @torch.no_grad()
    def codes(self) -> Tensor | None:
        """Posterior means of the examples, [N, latent_size]."""
        def make():
            from vaekit.evaluation import posterior_means

            data = self.examples()
            return None if data is None else posterior_means(self.model, data, batch_size=64)

        return self.cached("codes", make)

    def plane(self):
        def make():
            from vaekit.viz.pictures import LatentPlane

            codes = self.codes()
            return None if codes is None or len(codes) < 3 else LatentPlane.fit(codes.double().numpy())

        return self.cached("plane", make)

    def anomaly_scorer(self) -> Callable | None:
        """A function of (x, label) scoring an input against the run's calibrated threshold
        (``vaekit.anomaly.score_against_threshold`` with RUN/anomaly.json), when the run has been
        calibrated. The calibration and what its score needs (the aggregate posterior's mixture for
        ``latent``, the background model for ``ratio``) are read once and kept with the view; the loaded
        model is scored, never reloaded."""
        if not (self.path / ANOMALY_FILE).is_file():
            return None
        try:
            from vaekit.anomaly import calibrated_inputs, load_calibration, score_against_threshold
        except ImportError:
            return None

        def setup():
            calibration = load_calibration(self.path)
            return calibration, calibrated_inputs(self.model, self.path, calibration)

        def score(x: Tensor, label: int | None):
            # read once per calibration: a run re-calibrated while it is served is read again
            calibration, needs = self.cached(f"anomaly:{(self.path / ANOMALY_FILE).stat().st_mtime_ns}", setup)
            y = self._labels(label, len(x)) if self.conditional else None
            return score_against_threshold(self.model, x, calibration=calibration, y=y, **needs)

        return score

    # -- the run as the page sees it ------------------------------------------------------------------
    def describe(self) -> dict:
        """Everything the page needs to lay itself out for this run."""
        from vaekit.serve.samplers import SAMPLERS, available_samplers

        examples = self.examples()
        c = self.info
        return {
            "name": self.name,
            "path": str(self.path),
            "model": self.model.name,
            "model_class": type(self.model).__name__,
            "data": {"kind": c.kind, "shape": list(c.shape), "source": c.source, "n_test": c.n_test,
                     "binarize": self.cfg.data.binarize},
            "conditional": self.conditional,
            "class_names": list(c.class_names[: self.num_classes]) if self.num_classes else [],
            "latent_shape": list(self.latent_shape),
            "priors": [{"name": n, "label": SAMPLERS.get(n).label(self)} for n in available_samplers(self)],
            "metrics": ["psnr", "lpips"] if self.channels_mode else ["elbo", "nll"],
            "anomaly": self.anomaly_scorer() is not None,
            "examples": 0 if examples is None else len(examples),
            "data_note": self.data_note(),
            "sliders": self.sliders(),
            "upload": {"accepts": "image" if c.kind == "image" else None,
                       "size": list(c.shape[-2:][::-1]) if c.kind == "image" else None},
        }

    def sliders(self) -> dict:
        """Flat latents: every unit, most active first (variance of the posterior mean across the
        examples, as ``vaekit traverse`` orders them), each over [-3, 3]. Autoencoder-kl latents: one
        slider per channel at a chosen spatial position, each over the channel's mean +- 3 standard
        deviations across the examples' codes. ``base`` is the first example's code (zeros without data)."""
        codes = self.codes()
        base = torch.zeros(self.latent_size) if codes is None else codes[0]
        out: dict[str, Any] = {"base": _floats(base), "base_index": None if codes is None else 0}
        if self.channels_mode:
            ch, h, w = self.latent_shape
            if codes is None:
                lo, hi = [-SLIDER_SPAN] * ch, [SLIDER_SPAN] * ch
            else:
                per = codes.view(len(codes), ch, h * w).transpose(0, 1).reshape(ch, -1)
                mean, std = per.mean(1), per.std(1, unbiased=False).clamp(min=1e-3)
                lo, hi = _floats(mean - 3 * std), _floats(mean + 3 * std)
            out.update(mode="channels", channels=ch, height=h, width=w, min=lo, max=hi)
            return out
        if codes is None or len(codes) < 2:
            order, activity = list(range(self.latent_size)), [None] * self.latent_size
        else:
            act = codes.var(0, unbiased=False)
            order = torch.argsort(act, descending=True).tolist()
            activity = [round(float(act[d]), 4) for d in order]
        out.update(mode="units", units=[{"unit": d, "activity": a} for d, a in zip(order, activity)],
                   min=-SLIDER_SPAN, max=SLIDER_SPAN)
        return out

    # -- model work (call with ``lock`` held) -----------------------------------------------------------
    @torch.no_grad()
    def samples(self, prior: str, n: int, temperature: float, seed: int, label: int | None) -> dict:
        from vaekit.serve.samplers import SAMPLERS, available_samplers

        if prior not in available_samplers(self):
            known = ", ".join(available_samplers(self))
            raise ServeError(400, f"prior '{prior}' is not available for run '{self.name}' (available: {known})")
        label = self.check_label(label, required=False)
        start = time.perf_counter()
        x = SAMPLERS.get(prior).draw(self, n, label, temperature, seed)
        ms = _ms(start)
        nrow = self.num_classes if self.conditional and label is None and n >= self.num_classes else None
        return {"image": self.render(x, nrow=nrow), "n": n, "prior": prior, "sample_ms": ms}

    @torch.no_grad()
    def decode(self, z: Tensor, label: int | None) -> dict:
        y = self._labels(self.check_label(label, required=True), 1)
        start = time.perf_counter()
        x = self.model.decode(self.to_latent(z), y).cpu()
        return {"image": self.render(x), "decode_ms": _ms(start)}

    @torch.no_grad()
    def example(self, index: int) -> dict:
        data = self.examples()
        if data is None:
            raise ServeError(404, f"run '{self.name}' has {self.data_note()}")
        if not 0 <= index < len(data):
            raise ServeError(404, f"example {index} is out of range (run '{self.name}' serves test examples "
                                  f"0..{len(data) - 1})")
        x, y = data.batch(torch.tensor([index]))
        label = None if y is None else int(y[0])
        result = self.analyse(x, label if self.conditional else None)
        return {"index": index, "label": label, "class_name": self._class_name(label), **result}

    @torch.no_grad()
    def upload(self, data: bytes, label: int | None) -> dict:
        if self.info.kind != "image":
            raise ServeError(400, f"run '{self.name}' was trained on tabular data; uploads take images")
        label = self.check_label(label, required=True)
        x, original = self.image_tensor(data)
        result = self.analyse(x, label)
        scorer = self.anomaly_scorer()
        if scorer is not None:
            result["anomaly"] = _anomaly(scorer, x, label)
        h, w = self.info.shape[-2:]
        result["resized"] = {"from": list(original), "to": [w, h]} if tuple(original) != (w, h) else None
        return result

    @torch.no_grad()
    def interpolate(self, a: dict, b: dict, steps: int, label: int | None) -> dict:
        from vaekit.viz.pictures import lerp, slerp

        (za, la), (zb, _) = self._endpoint(a, "a"), self._endpoint(b, "b")
        # a conditional model keeps one label along the path: the one asked for, else the first example's
        if label is None and self.conditional:
            label = la
        label = self.check_label(label, required=True)
        t = torch.linspace(0, 1, steps, device=self.device)
        y = self._labels(label, steps)
        start = time.perf_counter()
        za, zb = self.to_latent(za)[0], self.to_latent(zb)[0]
        rows = {name: self.model.decode(path(za, zb, t), y).cpu() for name, path in
                (("linear", lerp), ("spherical", slerp))}
        ms = _ms(start)
        return {**{name: self.render(x, nrow=steps) for name, x in rows.items()}, "steps": steps, "decode_ms": ms}

    def latent_map(self) -> dict:
        codes, plane = self.codes(), self.plane()
        if codes is None or plane is None:
            raise ServeError(404, f"run '{self.name}' has no latent map ({self.data_note() or 'too few examples'})")
        points = plane.project(codes.double().numpy())
        y = self.examples().y
        return {"points": np.round(points, 4).tolist(), "axes": list(plane.axes),
                "labels": None if y is None else y.tolist(), "class_names": list(self.info.class_names),
                "n": len(points)}

    # -- pieces -------------------------------------------------------------------------------------------
    def analyse(self, x: Tensor, label: int | None) -> dict:
        """Input, reconstruction (the decoder's mean at the posterior mean), the code, its place on
        the latent map and the metrics: ELBO, its parts and the importance-weighted NLL (nats), or
        PSNR and LPIPS for an image autoencoder."""
        x = x.to(self.device)
        y = self._labels(label, 1)
        start = time.perf_counter()
        q = self.model.encode(x, y)
        recon = self.model.decode(q.mean, y)
        if self.channels_mode:
            lo, hi = self.model.input_range
            recon = recon.clamp(lo, hi)
            metrics = self._image_metrics(x, recon)
        else:
            metrics = self._likelihood_metrics(x, y)
        z = q.mean.flatten(1).cpu()
        plane = self.plane()
        return {"image": self.render(x.cpu()), "reconstruction": self.render(recon.cpu()), "z": _floats(z[0]),
                "point": None if plane is None else _floats(torch.from_numpy(plane.project(z.double().numpy())[0])),
                "metrics": metrics, "ms": _ms(start)}

    def _likelihood_metrics(self, x: Tensor, y: Tensor | None) -> dict:
        from vaekit.elbo import bits_per_dim, elbo_parts
        from vaekit.evaluation.likelihood import log_likelihood

        gen = torch.Generator(device=self.device).manual_seed(0)  # the same numbers for the same input
        parts = elbo_parts(self.model, self.model(x, y, generator=gen), x)
        nll = -float(log_likelihood(self.model, x, y, NLL_SAMPLES, generator=gen)[0])
        return {"elbo": float(parts["elbo"][0]), "recon": float(parts["recon"][0]), "kl": float(parts["kl"][0]),
                "nll": nll, "k": NLL_SAMPLES, "bits_per_dim": bits_per_dim(nll, math.prod(self.info.shape))}

    def _image_metrics(self, x: Tensor, recon: Tensor) -> dict:
        from vaekit.evaluation.images import psnr
        from vaekit.perceptual.weights import lpips_path

        lo, hi = self.model.input_range
        ux, ur = (x - lo) / (hi - lo), (recon - lo) / (hi - lo)
        out: dict[str, Any] = {"psnr": float(psnr(ux, ur)[0]), "lpips": None}
        if min(x.shape[-2:]) < LPIPS_MIN_SIZE:
            out["lpips_note"] = f"LPIPS needs images of at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} px"
        elif not lpips_path(LPIPS_NET).is_file():  # the server never fetches anything
            out["lpips_note"] = "LPIPS weights are not cached; run 'vaekit weights fetch lpips' once to see LPIPS"
        else:
            from vaekit.perceptual import load_lpips

            out["lpips"] = float(load_lpips(LPIPS_NET, self.device, fetch=False)(ux * 2 - 1, ur * 2 - 1)[0])
        return out

    def image_tensor(self, data: bytes) -> tuple[Tensor, tuple[int, int]]:
        """An uploaded file as the run's data sees it: decoded by Pillow with its decompression-bomb
        check made an error and a pixel limit checked before decoding, converted to the run's
        channels, resized to cover the run's size and centre-cropped (as ``--resolution`` does),
        padded like ``--pad-to``, scaled to the input range and binarised like held-out data.
        Returns ([1, C, H, W], (original width, height))."""
        from PIL import Image, UnidentifiedImageError

        from vaekit.data.images import fit_size, to_array

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:
                    size = im.size
                    if size[0] * size[1] > MAX_PIXELS:
                        raise ServeError(413, f"the image is {size[0]}x{size[1]} px; the explorer takes at most "
                                              f"{MAX_PIXELS:,} pixels")
                    im.load()
                    im = im.copy()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ServeError(413, f"refused as a decompression bomb ({e})") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ServeError(415, f"the upload is not an image Pillow can read ({reason})") from None
        c, h, w = self.info.shape
        pad = self._padding()
        a = to_array(fit_size(im, w - pad[1], h - pad[0]), grey=c == 1)  # [C, H, W] uint8
        t = torch.from_numpy(a.copy()).float()[None] / 255.0
        if any(pad):
            top, left = pad[0] // 2, pad[1] // 2
            t = torch.nn.functional.pad(t, (left, pad[1] - left, top, pad[0] - top))
        lo, hi = self.info.input_range
        t = t * (hi - lo) + lo
        if self.cfg.data.binarize != "none":
            from vaekit.data.config import EVAL_BINARIZE_SEED

            t = torch.bernoulli(t, generator=torch.Generator().manual_seed(EVAL_BINARIZE_SEED))
        return t, size

    def _padding(self) -> tuple[int, int]:
        """(rows, columns) of --pad-to padding around the run's images: the padded size minus the
        source's own (read once from the data source when the run was padded)."""
        if self.cfg.data.pad_to is None:
            return (0, 0)

        def make():
            h, w = self.info.shape[-2:]
            if self.cfg.data.resolution is not None:
                return (h - self.cfg.data.resolution, w - self.cfg.data.resolution)
            from vaekit.data.sources import ReadOptions, read_source

            try:
                raw = read_source(self.cfg.data.spec, ReadOptions(None, self.cfg.data.color))
            except VaekitError:
                return (0, 0)  # the source is gone: resize to the padded size instead
            sh, sw = raw.x.shape[-2:] if raw.x is not None else (h, w)
            return (h - sh, w - sw)

        return self.cached("padding", make)

    def check_label(self, label: int | None, required: bool) -> int | None:
        if not self.conditional:
            if label is not None:
                raise ServeError(400, f"run '{self.name}' is not conditional; drop 'label'")
            return None
        if label is None:
            if required:
                raise ServeError(400, f"run '{self.name}' is conditional on {self.num_classes} classes: give "
                                      f"'label' (0..{self.num_classes - 1})")
            return None
        if not 0 <= label < self.num_classes:
            raise ServeError(400, f"'label' must be in 0..{self.num_classes - 1}, got {label}")
        return label

    def to_latent(self, z: Tensor) -> Tensor:
        """A flat code (a list of latent_size numbers) as a batch of one latent."""
        if z.numel() != self.latent_size:
            raise ServeError(400, f"'z' must have {self.latent_size} numbers (latent shape "
                                  f"{list(self.latent_shape)}), got {z.numel()}")
        return z.float().view(1, *self.latent_shape).to(self.device)

    def _endpoint(self, spec: Any, field: str) -> tuple[Tensor, int | None]:
        """{"index": i} (a test example's code and label) or {"z": [...]}."""
        if not isinstance(spec, dict) or len(spec) != 1 or not ({"index", "z"} & set(spec)):
            raise ServeError(400, f"'{field}' must be {{\"index\": i}} (a test example) or {{\"z\": [...]}} "
                                  "(a code, e.g. an upload's)")
        if "z" in spec:
            return parse_floats(spec["z"], f"{field}.z"), None
        index = spec["index"]
        if not isinstance(index, int) or isinstance(index, bool):
            raise ServeError(400, f"'{field}.index' must be an integer")
        codes = self.codes()
        if codes is None or not 0 <= index < len(codes):
            n = 0 if codes is None else len(codes)
            raise ServeError(404, f"'{field}.index' {index} is out of range (run '{self.name}' serves {n} test "
                                  "examples)")
        y = self.examples().y
        return codes[index], None if y is None else int(y[index])

    def _labels(self, label: int | None, n: int) -> Tensor | None:
        return None if label is None else torch.full((n,), label, dtype=torch.long, device=self.device)

    def _class_name(self, label: int | None) -> str | None:
        names = self.info.class_names
        return None if label is None else (names[label] if label < len(names) else str(label))

    def render(self, x: Tensor, nrow: int | None = None) -> str:
        """Examples [N, ...] as one PNG data URL at native resolution: a grid of ``nrow`` per row
        for images, bar charts of the features for tabular data."""
        from vaekit.viz.grid import image_grid, png_bytes

        if self.info.kind == "image":
            im = image_grid(x, nrow=nrow or (1 if len(x) == 1 else None), pad=0 if len(x) == 1 else 1, scale=1,
                            value_range=tuple(self.info.value_range))
        else:
            im = feature_bars(x.flatten(1), tuple(self.info.value_range), nrow=nrow)
        return "data:image/png;base64," + base64.b64encode(png_bytes(im)).decode("ascii")


def feature_bars(x: Tensor, value_range: tuple[float, float], nrow: int | None = None, height: int = 48):
    """Tabular examples [N, D] as small bar charts (one bar per feature, zero line in grey), tiled
    ``nrow`` per row: cheap enough to redraw on every slider move."""
    from PIL import Image

    lo, hi = min(float(value_range[0]), 0.0), max(float(value_range[1]), 0.0)
    hi = hi if hi > lo else lo + 1.0
    n, d = x.shape
    bar, gap = 5, 1
    level = hi - (np.arange(height) + 0.5) * (hi - lo) / height  # the value each pixel row stands for
    v = np.clip(x.double().numpy(), lo, hi)[:, None, :]  # [N, 1, D]
    filled = (level[None, :, None] <= np.maximum(v, 0)) & (level[None, :, None] >= np.minimum(v, 0))  # [N, H, D]
    width = d * (bar + gap) + gap
    k = np.arange(width) - gap
    feature = k // (bar + gap)  # which feature each pixel column draws, where it draws one
    drawn = (k >= 0) & (k % (bar + gap) < bar) & (feature < d)
    tiles = np.full((n, height, width, 3), 255, dtype=np.uint8)
    tiles[:, int(np.argmin(np.abs(level))), :] = 180  # the zero line
    mask = np.zeros((n, height, width), dtype=bool)
    mask[:, :, drawn] = filled[:, :, feature[drawn]]
    tiles[mask] = (60, 100, 190)
    nrow = nrow or 1
    rows = math.ceil(n / nrow)
    th, tw = height + 2, width + 2
    canvas = np.full((rows * th, nrow * tw, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[r * th + 1 : r * th + 1 + height, c * tw + 1 : c * tw + 1 + width] = tiles[i]
    return Image.fromarray(canvas)


def parse_floats(value: Any, field: str) -> Tensor:
    """A JSON list of finite numbers as a float tensor; anything else names the field."""
    if not isinstance(value, list) or not value:
        raise ServeError(400, f"'{field}' must be a non-empty list of numbers")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ServeError(400, f"'{field}' must hold numbers only")
    t = torch.tensor(value, dtype=torch.float64)
    if not torch.isfinite(t).all():
        raise ServeError(400, f"'{field}' must hold finite numbers")
    return t.float()


def _anomaly(scorer: Callable, x: Tensor, label: int | None) -> dict:
    """The upload's anomaly score against the run's calibrated threshold; a failure of that
    (optional) scorer is reported beside the other results instead of failing the upload."""
    try:
        score, threshold, flagged = scorer(x, label)
    except VaekitError as e:
        return {"error": str(e)}
    except Exception as e:  # a plug-in from another module: keep the upload's own results
        return {"error": f"anomaly scoring failed ({type(e).__name__}: {e})"}
    return {"score": _scalar(score), "threshold": _scalar(threshold), "flagged": bool(_scalar(flagged))}


def _scalar(v) -> float:
    return float(v.reshape(-1)[0]) if isinstance(v, (Tensor, np.ndarray)) else float(v)


def _floats(t: Tensor, digits: int = 5) -> list[float]:
    return [round(float(v), digits) for v in t.flatten().tolist()]


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
