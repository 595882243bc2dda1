"""Evaluation: likelihood estimates and the metrics ``vaekit evaluate`` prints."""

from vaekit.evaluation.likelihood import Evaluation, evaluate, log_likelihood, posterior_means

__all__ = ["Evaluation", "evaluate", "log_likelihood", "posterior_means"]
