"""Shared by the explorer's API and browser tests: tiny runs, PNG bytes, data URLs, a stub for the
anomaly scorer of issue 19 (``vaekit.anomaly``)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import sys
import types
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import tiny_train


def make_runs(root: Path, tabular: bool = False) -> dict[str, Path]:
    """mlp: conditional on digits, with a fitted GMM prior; conv: unconditional on digits; ld: latent
    diffusion on conv's codes; akl: a
    small autoencoder-kl on digits padded to 32x32; tab (with ``tabular``): an MLP on a small CSV table."""
    from vaekit.data import DataConfig
    from vaekit.evaluation.aggregate import fit_gmm_prior
    from vaekit.training.api import train
    from vaekit.training.config import TrainConfig

    runs = {"mlp": root / "mlp", "conv": root / "conv"}
    model, _ = tiny_train(runs["mlp"], limit=300, conditional=True)
    from vaekit.cli.common import run_data
    from vaekit.run import read_run_config

    fit_gmm_prior(runs["mlp"], model, run_data(read_run_config(runs["mlp"])).train, components=3)
    tiny_train(runs["conv"], model="conv", limit=300)
    runs["ld"] = root / "ld"  # latent diffusion on the conv run's codes (a tiny residual-MLP denoiser)
    train(runs["ld"], model="latent-diffusion", model_overrides={"vae": str(runs["conv"]), "width": 32, "depth": 1,
                                                                   "steps": 8},
          training={"epochs": 1, "batch_size": 64}, progress=False)
    runs["akl"] = root / "akl"
    # digits padded to 32x32 (--pad-to), the size LPIPS needs
    train(runs["akl"], model="autoencoder-kl", data=DataConfig(spec="digits", limit=16, pad_to=32, val_fraction=0.0),
          model_overrides={"block_out_channels": [8, 16, 16], "norm_num_groups": 8, "latent_channels": 3},
          training=TrainConfig(epochs=1, batch_size=16), overwrite=True, progress=False)
    if tabular:
        rng = np.random.default_rng(1)
        rows = rng.standard_normal((120, 2)) @ rng.standard_normal((2, 4)) * 3 + 10
        table = root / "table.csv"
        table.write_text("a,b,c,d,label\n" + "".join(",".join(f"{v:.4f}" for v in r) + f",{i % 2}\n"
                                                      for i, r in enumerate(rows)))
        runs["tab"] = root / "tab"
        train(runs["tab"], model="mlp", data=DataConfig(spec=str(table), label_column="label"),
              model_overrides={"hidden": [16], "latent_dim": 2}, training=TrainConfig(epochs=1, batch_size=64),
              overwrite=True, progress=False)
    return runs


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def noise_png(w: int, h: int, seed: int = 0, rgb: bool = True) -> bytes:
    shape = (h, w, 3) if rgb else (h, w)
    return png(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def pixels(data_url: str) -> np.ndarray:
    """A PNG data URL as an array [H, W, 3] uint8."""
    head, _, b64 = data_url.partition(",")
    assert head == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return np.asarray(im.convert("RGB"))


def as_pixels(x) -> np.ndarray:
    """A decoded grey image [1, H, W] in [0, 1] as 8-bit levels [H, W]."""
    return (x.clamp(0, 1) * 255).round().byte().numpy()[0]


class AnomalyStub:
    """Stands in for ``vaekit.anomaly`` (issue 19): records its calls, answers fixed numbers."""

    def __init__(self, score=5.0, threshold=4.0, flagged=True, fail: Exception | None = None) -> None:
        self.calls: list[tuple] = []
        self.answer = (score, threshold, flagged)
        self.fail = fail

    def module(self) -> types.ModuleType:
        mod = types.ModuleType("vaekit.anomaly")

        def score_against_threshold(run_or_model, x, *, calibration=None, y=None, prior=None, background=None):
            self.calls.append((run_or_model, tuple(x.shape), calibration, y))
            if self.fail is not None:
                raise self.fail
            return self.answer

        def load_calibration(run):
            return types.SimpleNamespace(score="nll", threshold=self.answer[1], run=run)

        mod.score_against_threshold = score_against_threshold
        mod.load_calibration = load_calibration
        mod.calibrated_inputs = lambda model, run, calibration: {"prior": None, "background": None}
        return mod


@contextlib.contextmanager
def calibrated(run: Path, stub: AnomalyStub):
    """``stub`` as vaekit.anomaly, and RUN/anomaly.json present, for the duration."""
    path = run / "anomaly.json"
    saved = sys.modules.get("vaekit.anomaly")
    sys.modules["vaekit.anomaly"] = stub.module()
    path.write_text(json.dumps({"score": "nll", "threshold": stub.answer[1], "fpr": 0.05}))
    try:
        yield stub
    finally:
        path.unlink(missing_ok=True)
        if saved is None:
            sys.modules.pop("vaekit.anomaly", None)
        else:
            sys.modules["vaekit.anomaly"] = saved


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"]
