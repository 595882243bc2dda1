"""Registries of model families and presets (filled by the model modules on import)."""

from __future__ import annotations

from typing import Any

from vaekit.registry import Registry

MODELS: Registry[type] = Registry("model")

# A preset names a model family and the config fields (and training defaults) it fixes.
PRESETS: Registry[dict[str, Any]] = Registry("preset")

PRESETS.register("pytorch-example")({
    "model": "mlp",
    "model_config": {"hidden": [400], "latent_dim": 20, "activation": "relu", "likelihood": "bernoulli"},
    "training": {"batch_size": 128, "lr": 1e-3, "epochs": 10},
    "about": "pytorch/examples' vae: 784-400-20, ReLU, Bernoulli (BCE) likelihood, Adam 1e-3, batch 128",
})
