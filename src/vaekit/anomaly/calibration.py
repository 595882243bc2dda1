"""The decision threshold: the (1 - fpr) quantile of a score on held-out normal data, saved with the run
as RUN/anomaly.json so that any tool can score a new input against it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaekit.anomaly.scores import ScoreSettings, latent_prior, parts_of, score_all
from vaekit.config import check, from_dict, to_dict
from vaekit.errors import VaekitError
from vaekit.io import read_json, write_json

CALIBRATION_FILE = "anomaly.json"
FORMAT = "vaekit-anomaly-calibration"


def threshold_at(scores, fpr: float) -> float:
    """The threshold t such that ``score > t`` flags floor(fpr * n) of these n scores (fewer on ties):
    the false-positive rate on them is within 1/n below ``fpr``, never above it."""
    check(0 < fpr < 1, f"--fpr must be in (0, 1), got {fpr}")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if len(s) == 0:
        raise VaekitError("no scores to calibrate a threshold on")
    if not np.isfinite(s).all():
        raise VaekitError(f"{int((~np.isfinite(s)).sum())} calibration score(s) are not finite")
    flagged = math.floor(fpr * len(s) + 1e-9)
    return float(s[len(s) - flagged - 1])


@dataclass(frozen=True)
class Calibration:
    """What `vaekit anomaly` calibrated: the primary score's threshold at ``fpr`` on ``n`` held-out
    normal examples (``split`` of ``data``), every computed score's threshold, and the settings
    (K, seed, steps, ...) the scores were computed with."""

    score: str
    threshold: float
    fpr: float
    settings: ScoreSettings = field(default_factory=ScoreSettings)
    thresholds: dict[str, float] = field(default_factory=dict)
    data: str = ""
    split: str = "val"
    n: int = 0
    flagged: int = 0
    background: str = ""  # the ratio score's background run (absolute path), when one was used
    format: str = FORMAT

    def __post_init__(self) -> None:
        check(self.format == FORMAT, f"not a vaekit anomaly calibration (format '{self.format}')")
        check(0 < self.fpr < 1, f"fpr must be in (0, 1), got {self.fpr}")


def save_calibration(run: str | Path, calibration: Calibration) -> Path:
    path = Path(run) / CALIBRATION_FILE
    write_json(path, to_dict(calibration))
    return path


def load_calibration(run: str | Path) -> Calibration:
    """RUN/anomaly.json, as written by `vaekit anomaly` (or a detector given a ``run_dir``)."""
    path = Path(run) / CALIBRATION_FILE
    if not path.is_file():
        raise VaekitError(f"{path}: no anomaly calibration; run 'vaekit anomaly {run}' first")
    return from_dict(Calibration, read_json(path), str(path))


def calibrate(scores: dict[str, Tensor], primary: str, fpr: float, settings: ScoreSettings, data: str,
              split: str, background: str = "") -> Calibration:
    thresholds = {name: threshold_at(s.numpy(), fpr) for name, s in scores.items()}
    flagged = int((scores[primary] > thresholds[primary]).sum())
    return Calibration(primary, thresholds[primary], fpr, settings, thresholds, data, split,
                       len(scores[primary]), flagged, background)


def score_against_threshold(run_or_model, x: Tensor, *, calibration: Calibration | None = None,
                            y: Tensor | None = None, prior=None, background=None) -> tuple[Tensor, float, Tensor]:
    """(score [N], threshold, flagged [N] bool) of new examples ``x`` (as the model takes them) under a
    saved calibration: RUN/anomaly.json for a run directory, or ``calibration`` for a model. The score
    is computed with the calibration's own settings, so it is comparable with its threshold. A ``ratio``
    calibration reopens its background run unless ``background`` (a model) is given."""
    model, run = run_or_model, None
    if not isinstance(run_or_model, torch.nn.Module):
        from vaekit.run import load

        run = Path(run_or_model)
        model = load(run)
        calibration = calibration or load_calibration(run)
    if calibration is None:
        raise VaekitError("score_against_threshold needs a calibration for a model: pass calibration= "
                          "(vaekit.anomaly.load_calibration(run)) or a run directory")
    name = calibration.score
    if ("latent" in parts_of(name) and prior is None) or ("ratio" in parts_of(name) and background is None):
        needs = calibrated_inputs(model, run, calibration)
        prior = needs["prior"] if prior is None else prior
        background = needs["background"] if background is None else background
    s = score_all(model, x, (name,), calibration.settings, y=y, prior=prior, background=background)[name]
    return s, calibration.threshold, s > calibration.threshold


def calibrated_inputs(model, run: str | Path | None, calibration: Calibration) -> dict:
    """What the calibration's score needs besides the model, loaded once for any number of calls:
    ``prior`` (latent: the aggregate posterior's mixture of ``run``) and ``background`` (ratio: the
    background run the calibration names, on the model's device)."""
    out = {"prior": None, "background": None}
    if "latent" in parts_of(calibration.score):
        if run is None:
            raise VaekitError("the latent score of a model needs prior= (the aggregate posterior's mixture)")
        out["prior"] = latent_prior(model, run=run, components=calibration.settings.components,
                                    seed=calibration.settings.seed, codes=calibration.settings.codes)
    if "ratio" in parts_of(calibration.score):
        if not calibration.background:
            raise VaekitError("this ratio calibration names no background run: pass background=")
        from vaekit.run import load

        out["background"] = load(calibration.background, device=str(next(model.parameters()).device),
                                 precision="fp32")
    return out
