"""Anomaly detection with a trained VAE: scores that survive the likelihood's known failure on
out-of-distribution data (Nalisnick et al. 2019), a threshold calibrated on held-out normal data, and a
scikit-learn-style detector.

- ``score(model, x, score="nll")``: one score per example (nll, elbo, recon, latent, complexity,
  regret, ratio, or a standardised sum such as latent+complexity; higher = more anomalous), deterministic;
  ``fit_standardisation`` fits a sum's parts on held-out normal data;
- ``load_calibration(run)`` / ``score_against_threshold(run_or_model, x)``: RUN/anomaly.json, as
  `vaekit anomaly` saves it, and new inputs scored against its threshold;
- ``VAEDetector``: ``fit(X)``, ``decision_function(X)``, ``predict(X)``, ``threshold_`` (PyOD's conventions).

Importing the package is light; torch loads with the first use of one of these.
"""

from __future__ import annotations

__all__ = ["SCORES", "Calibration", "ScoreSettings", "VAEDetector", "calibrated_inputs", "fit_standardisation",
           "load_calibration", "score", "score_against_threshold", "score_all", "threshold_at"]

_WHERE = {"SCORES": "scores", "ScoreSettings": "scores", "score": "scores", "score_all": "scores",
          "fit_standardisation": "scores",
          "Calibration": "calibration", "load_calibration": "calibration", "score_against_threshold": "calibration",
          "threshold_at": "calibration", "calibrated_inputs": "calibration", "VAEDetector": "detector"}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"vaekit.anomaly.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'vaekit.anomaly' has no attribute {name!r}")
