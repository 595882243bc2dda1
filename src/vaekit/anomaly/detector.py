"""A scikit-learn-style detector: ``VAEDetector().fit(X)`` trains a small vaekit VAE on X and scores
with one of vaekit's anomaly scores.

It follows PyOD's conventions, so it drops into code that uses PyOD's detectors: ``decision_function``
is the anomaly score (higher = more anomalous), ``predict`` gives 0 (inlier) or 1 (outlier),
``threshold_`` is the contamination quantile of the training scores, and ``decision_scores_`` and
``labels_`` are the training data's scores and labels. ``score_samples`` is scikit-learn's sign (higher
= more normal: minus the score), for code written against scikit-learn's outlier detectors.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted, validate_data

from vaekit.anomaly.calibration import Calibration, save_calibration, threshold_at
from vaekit.anomaly.scores import JOIN, ScoreSettings, combine, components, parse_scores, score_all, standardisation


class VAEDetector(BaseEstimator):
    """Unsupervised anomaly detection with a VAE trained on X (through ``vaekit.train``, seeded).

    X is table rows [N, D] (standardised as a vaekit run standardises CSV columns: the training
    statistics), or images: [N, C, H, W] / [N, H, W] arrays, or rows of ``image_shape`` = (C, H, W)
    flattened (8-bit images are scaled to [0, 1]; float images are taken to be in [0, 1]).

    ``model`` is ``mlp`` (any data) or ``conv`` (images). The VAE's run is kept in ``run_dir`` when
    given (with its calibration, anomaly.json, so that `vaekit anomaly` and ``load_calibration`` see
    it), else trained in a temporary folder that is removed after ``fit``. ``anomaly_score="ratio"``
    trains a second, background VAE on X with a share ``perturb`` of its values replaced by noise (Ren
    et al. 2019), kept beside ``run_dir`` as ``<run_dir>-background``. ``latent_codes`` is what the
    latent score's mixture is fitted to: ``"mean"`` or ``"mean+logvar"`` (``vaekit anomaly --latent-codes``).
    ``anomaly_score`` may be a sum such as ``"latent+complexity"``: its parts are standardised on X.
    """

    def __init__(self, anomaly_score: str = "nll", contamination: float = 0.1, model: str = "mlp",
                 hidden: tuple[int, ...] = (128, 64), latent_dim: int = 8, channels: tuple[int, ...] = (16, 32),
                 likelihood: str = "auto", epochs: int = 30, batch_size: int = 64, lr: float = 1e-3, k: int = 16,
                 steps: int = 100, perturb: float = 0.2, image_shape: tuple[int, ...] | None = None,
                 run_dir: str | None = None, random_state: int = 0, device: str = "cpu", latent_codes: str = "mean"):
        self.anomaly_score = anomaly_score
        self.contamination = contamination
        self.model = model
        self.hidden = hidden
        self.latent_dim = latent_dim
        self.channels = channels
        self.likelihood = likelihood
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.k = k
        self.steps = steps
        self.perturb = perturb
        self.image_shape = image_shape
        self.run_dir = run_dir
        self.random_state = random_state
        self.latent_codes = latent_codes
        self.device = device

    # -- scikit-learn's API -------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Train the VAE on X (y is ignored) and set ``threshold_`` at the contamination quantile."""
        from vaekit.data import DataConfig
        from vaekit.training.api import train
        from vaekit.training.config import TrainConfig

        if not 0 < self.contamination < 0.5:
            raise ValueError(f"contamination must be in (0, 0.5), got {self.contamination}")
        name = parse_scores(self.anomaly_score)
        if len(name) != 1:
            raise ValueError(f"score must be one score name, got {self.anomaly_score!r}")
        from vaekit.evaluation.likelihood import FEATURES

        if self.latent_codes not in FEATURES:
            raise ValueError(f"latent_codes must be one of {FEATURES}, got {self.latent_codes!r}")
        X = self._validate(X, reset=True)
        with contextlib.ExitStack() as stack:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vaekit-detector-")))
            data_file = self._write_data(X, folder)
            run = Path(self.run_dir) if self.run_dir is not None else folder / "run"
            overrides = {"latent_dim": int(self.latent_dim), "likelihood": self.likelihood}
            if self.model == "conv":
                overrides["channels"] = [int(c) for c in self.channels]
            else:
                overrides["hidden"] = [int(h) for h in self.hidden]
            # all of X trains the model: no validation split, and the file itself as the "test" split
            data = DataConfig(spec=str(data_file), test_spec=str(data_file), val_fraction=0.0)
            training = TrainConfig(epochs=int(self.epochs), batch_size=int(self.batch_size), lr=float(self.lr),
                                   seed=int(self.random_state), device=self.device)
            model, _ = train(run, model=self.model, model_overrides=overrides, data=data, training=training,
                             overwrite=self.run_dir is not None, progress=False, log=lambda _msg: None)
            self.background_, background_run = None, ""
            if "ratio" in components(name):
                if not 0 < self.perturb < 1:
                    raise ValueError(f"perturb must be in (0, 1), got {self.perturb}")
                bg = run.with_name(f"{run.name}-background")
                self.background_, _ = train(bg, model=self.model, model_overrides=overrides,
                                            data=replace(data, perturb=float(self.perturb)), training=training,
                                            overwrite=self.run_dir is not None, progress=False, log=lambda _msg: None)
                self.background_.eval()
                background_run = str(bg.resolve()) if self.run_dir is not None else ""
            from vaekit.run import read_run_config

            self.data_info_ = read_run_config(run).data_info
            self.model_ = model.eval()
            self.settings_ = ScoreSettings(k=int(self.k), seed=int(self.random_state), steps=int(self.steps),
                                           codes=str(self.latent_codes))
            self.prior_ = None
            x = self._prepare(X)
            if "latent" in components(name):
                from vaekit.anomaly.scores import latent_prior

                self.prior_ = latent_prior(self.model_, reference=x, seed=int(self.random_state),
                                           codes=self.settings_.codes)
            parts = score_all(self.model_, x, components(name), self.settings_, prior=self.prior_,
                              background=self.background_)
            if JOIN in name[0]:  # a sum: its parts standardised on X, where the threshold is set too (PyOD's way)
                self.settings_ = replace(self.settings_, standardise=standardisation(parts, name))
            self.decision_scores_ = combine(parts, name, self.settings_)[name[0]].numpy().astype(np.float64)
            self.threshold_ = threshold_at(self.decision_scores_, self.contamination)
            self.labels_ = (self.decision_scores_ > self.threshold_).astype(int)
            if self.run_dir is not None:
                save_calibration(run, Calibration(name[0], self.threshold_, self.contamination, self.settings_,
                                                  {name[0]: self.threshold_}, "the X given to VAEDetector.fit",
                                                  "train", len(X), int(self.labels_.sum()), background_run))
        return self

    def decision_function(self, X) -> np.ndarray:
        """The anomaly score of each row of X (higher = more anomalous)."""
        check_is_fitted(self, "threshold_")
        return self._scores(self._prepare(self._validate(X, reset=False)))

    def predict(self, X) -> np.ndarray:
        """1 for outliers (score above ``threshold_``), 0 for inliers, as PyOD."""
        return (self.decision_function(X) > self.threshold_).astype(int)

    def score_samples(self, X) -> np.ndarray:
        """scikit-learn's sign: higher = more normal (minus ``decision_function``)."""
        return -self.decision_function(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags

    # -- helpers ------------------------------------------------------------------------------------
    def _validate(self, X, reset: bool) -> np.ndarray:
        X = validate_data(self, X, reset=reset, allow_nd=True, dtype=None, ensure_min_samples=1)
        if X.dtype != np.uint8:
            X = X.astype(np.float32)
        if X.ndim == 3:
            X = X[:, None]
        if X.ndim == 2 and self.image_shape is not None:
            shape = tuple(int(s) for s in self.image_shape)
            if int(np.prod(shape)) != X.shape[1]:
                raise ValueError(f"image_shape {shape} needs {int(np.prod(shape))} features, X has {X.shape[1]}")
            X = X.reshape(len(X), *shape)
        if X.ndim not in (2, 4):
            raise ValueError(f"X must be [N, D], [N, H, W] or [N, C, H, W], got shape {X.shape}")
        if not reset and hasattr(self, "data_info_") and tuple(X.shape[1:]) != tuple(self.data_info_.shape):
            raise ValueError(f"X has examples of shape {X.shape[1:]}, the detector was fitted on "
                             f"{tuple(self.data_info_.shape)}")
        if self.model == "conv" and X.ndim != 4:
            raise ValueError("model='conv' needs images: pass image_shape=(C, H, W) or [N, C, H, W] arrays")
        return X

    def _write_data(self, X: np.ndarray, folder: Path) -> Path:
        if X.ndim == 4:  # images: a .npy (8-bit ones are scaled to [0, 1] by the loader)
            path = folder / "x.npy"
            np.save(path, X)
            return path
        path = folder / "x.csv"  # table rows: a CSV, so the run standardises them as vaekit does
        header = ",".join(f"x{i}" for i in range(X.shape[1]))
        np.savetxt(path, X.astype(np.float64), delimiter=",", header=header, comments="", fmt="%.9g")
        return path

    def _prepare(self, X: np.ndarray):
        from vaekit.data import scale_like_run

        return scale_like_run(X, self.data_info_)

    def _scores(self, x) -> np.ndarray:
        name = parse_scores(self.anomaly_score)[0]
        s = score_all(self.model_, x, (name,), self.settings_, prior=self.prior_,
                      background=self.background_)[name]
        return s.numpy().astype(np.float64)
