"""Evaluation: likelihood estimates (``likelihood``), image-reconstruction metrics (``images``), the
aggregate posterior's fitted mixture (``aggregate``) and what ``vaekit evaluate`` runs (``runs``).

Importing the package is light (the CLI reads its key lists while building ``--help``); torch loads
with the first of ``evaluate``, ``log_likelihood`` or ``posterior_means``.
"""

from __future__ import annotations

__all__ = ["Evaluation", "evaluate", "log_likelihood", "posterior_means"]


def __getattr__(name: str):
    if name in __all__:
        from vaekit.evaluation import likelihood

        return getattr(likelihood, name)
    raise AttributeError(f"module 'vaekit.evaluation' has no attribute {name!r}")
