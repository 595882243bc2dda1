"""Helpers for tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

from vaekit.run import read_metrics  # noqa: F401  (re-exported for the tests)


def tiny_train(out: Path, data: str = "digits", epochs: int = 2, model: str = "mlp", conditional: bool = False,
               limit: int | None = None, overrides: dict | None = None, data_options: dict | None = None,
               **training):
    """Train a small seeded run quickly; returns (model, history)."""
    from vaekit.data import DataConfig
    from vaekit.training.api import train
    from vaekit.training.config import TrainConfig

    default = {"hidden": [32], "latent_dim": 4} if model == "mlp" else {"channels": [8, 16], "latent_dim": 4}
    training.setdefault("batch_size", 64)
    return train(out, model=model, model_overrides={**default, **(overrides or {})}, conditional=conditional,
                 data=DataConfig(spec=str(data), limit=limit, **(data_options or {})),
                 training=TrainConfig(epochs=epochs, **training), overwrite=True, progress=False)


def without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]
