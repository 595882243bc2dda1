"""Model families. Importing this package registers them all in ``MODELS``."""

from __future__ import annotations

from vaekit.errors import VaekitError
from vaekit.models import autoencoder_kl, conv, diffusion, hvae, ladder, mlp  # noqa: F401  (registration)
from vaekit.models.base import VAE, ModelConfig, VAEOutput
from vaekit.models.registry import MODELS, PRESETS

__all__ = ["MODELS", "PRESETS", "VAE", "ModelConfig", "VAEOutput", "model_class"]


def model_class(class_name: str) -> type[VAE]:
    """The model class recorded as ``_class_name`` in a run's config.json."""
    for name in MODELS:
        cls = MODELS.get(name)
        if cls.__name__ == class_name:
            return cls
    known = ", ".join(MODELS.get(n).__name__ for n in MODELS)
    raise VaekitError(f"unknown model class '{class_name}' (known: {known})")
