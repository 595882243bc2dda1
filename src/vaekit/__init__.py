"""vaekit: variational autoencoders that train on real data, report honest likelihoods, show what
they learned and ship into latent-diffusion pipelines.

``import vaekit`` is light; torch loads on first use of ``load``, ``train`` or ``resume``.
"""

from __future__ import annotations

from vaekit.version import __version__

__all__ = ["__version__", "load", "resume", "train"]


def __getattr__(name: str):
    if name == "load":
        from vaekit.run import load

        return load
    if name in ("train", "resume"):
        from vaekit.training import api

        return getattr(api, name)
    raise AttributeError(f"module 'vaekit' has no attribute {name!r}")
