"""A run directory: ``config.json`` + ``model.safetensors`` (+ ``checkpoint.safetensors``,
``metrics.jsonl`` and pictures). ``load(RUN)`` rebuilds the model from these two files alone.

config.json::

    {"_class_name": "MLPVAE", "_format_version": 1, "vaekit_version": "...",
     "model": {...}, "data": {...}, "data_info": {...}, "training": {...}}
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaekit.config import FORMAT_VERSION, from_dict, to_dict
from vaekit.data import DataConfig, DataInfo
from vaekit.errors import VaekitError
from vaekit.io import load_tensors, read_json, save_tensors, write_json
from vaekit.training.config import TrainConfig
from vaekit.version import __version__

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
# what other commands keep in a run and an output path must never replace
RUN_FILES = (CONFIG, WEIGHTS, CHECKPOINT, METRICS, "prior_gmm.safetensors", "anomaly.json")


@dataclass(frozen=True)
class RunConfig:
    model_class: type
    model: Any  # the model family's config dataclass
    data: DataConfig
    data_info: DataInfo
    training: TrainConfig

    def to_json(self) -> dict[str, Any]:
        return {
            "_class_name": self.model_class.__name__,
            "_format_version": FORMAT_VERSION,
            "vaekit_version": __version__,
            "model": to_dict(self.model),
            "data": to_dict(self.data),
            "data_info": to_dict(self.data_info),
            "training": to_dict(self.training),
        }


def is_run(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def read_run_config(run: str | Path) -> RunConfig:
    """Parse RUN/config.json strictly: unknown keys and bad values fail, naming the key."""
    from vaekit.models import model_class

    run = Path(run)
    if not run.exists():
        raise VaekitError(f"{run}: no such run directory")
    if not run.is_dir() or not (run / CONFIG).is_file():
        raise VaekitError(f"{run}: not a vaekit run (no {CONFIG})")
    path = run / CONFIG
    doc = read_json(path)
    if not isinstance(doc, dict) or "_class_name" not in doc:
        raise VaekitError(f"{path}: not a vaekit run config (no '_class_name')")
    version = doc.get("_format_version")
    if version != FORMAT_VERSION:
        raise VaekitError(f"{path}: format version {version!r} is not supported (expected {FORMAT_VERSION})")
    known = {"_class_name", "_format_version", "vaekit_version", "model", "data", "data_info", "training"}
    for key in doc:
        if key not in known:
            raise VaekitError(f"{path}: unknown key '{key}'")
    cls = model_class(doc["_class_name"])
    return RunConfig(
        model_class=cls,
        model=from_dict(cls.config_class, doc.get("model", {}), f"{path}: model"),
        data=from_dict(DataConfig, doc.get("data", {}), f"{path}: data"),
        data_info=from_dict(DataInfo, doc.get("data_info", {}), f"{path}: data_info"),
        training=from_dict(TrainConfig, doc.get("training", {}), f"{path}: training"),
    )


def check_output(run: str | Path, path: str | Path, what: str = "--out") -> Path:
    """Refuse an output path that is the run directory or one of the files a run keeps."""
    run, path = Path(run).resolve(), Path(path).resolve()
    if path == run or (path.parent == run and path.name in RUN_FILES):
        raise VaekitError(f"{what} {path} would overwrite {'the run directory' if path == run else 'a file of the run'}"
                          f" {run}; choose another path")
    return path


def write_run_config(run: str | Path, cfg: RunConfig) -> None:
    write_json(Path(run) / CONFIG, cfg.to_json())


def check_run_dir(run: str | Path, *, overwrite: bool) -> None:
    """Whether RUN may receive a new run: an existing non-empty directory needs ``overwrite``, and is
    only ever cleared if it is a vaekit run. Changes nothing."""
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise VaekitError(f"{run}: exists and is not a directory")
    if run.exists() and any(run.iterdir()):
        if not overwrite:
            raise VaekitError(f"{run}: already exists; pass --overwrite to replace it or --resume to continue it")
        if not is_run(run):
            raise VaekitError(f"{run}: is not empty and not a vaekit run; refusing to delete it")


def prepare_run_dir(run: str | Path, *, overwrite: bool) -> Path:
    """Make RUN ready for a new run (see ``check_run_dir``)."""
    run = Path(run)
    check_run_dir(run, overwrite=overwrite)
    if run.exists() and any(run.iterdir()):
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    return run


def save_weights(run: str | Path, model) -> None:
    save_tensors(Path(run) / WEIGHTS, model.state_dict(), metadata={"format": "pt"})


def load_state_strict(model, tensors: dict, where: str) -> None:
    """Load weights, naming missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    shapes = [f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in tensors and tensors[k].shape != v.shape]
    problems = []
    if missing:
        problems.append("missing " + _few(missing))
    if unexpected:
        problems.append("unexpected " + _few(unexpected))
    if shapes:
        problems.append("shape mismatch (file vs config) " + _few(shapes))
    if problems:
        raise VaekitError(f"{where}: does not match its config: {'; '.join(problems)}")
    model.load_state_dict({k: tensors[k].to(v.dtype) for k, v in expected.items()})


def _few(items: list[str], n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def read_metrics(run: str | Path) -> list[dict]:
    """The per-epoch records of RUN/metrics.jsonl (empty before the first epoch ends)."""
    path = Path(run) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_model(cfg: RunConfig):
    """The model of a run config, with any runs it depends on attached (``attach(open_run)``)."""
    model = cfg.model_class(cfg.model)
    model.attach(open_run)
    return model


def load(run: str | Path, device: str | None = None, precision: str = "auto"):
    """The trained model of RUN, in eval mode: ``encode(x)``, ``decode(z)``, ``sample(n)``.

    ``precision`` is what inference runs in (``VAE.set_precision``): auto (the default: bf16 where
    the device runs it faster, else fp32), fp32, bf16, or fp16 on CUDA. Never needs a process group.
    """
    return open_run(run, device, precision)[1]


def open_run(run: str | Path, device: str | None = None, precision: str = "fp32"):
    """(RunConfig, the trained model in eval mode) of RUN. A model that belongs to another run (a
    latent-diffusion model and its VAE) opens that run through this function too (in fp32: the
    latents a diffusion model trains on must not depend on the machine). ``precision`` applies to
    models with an inference precision (``set_precision``: the VAEs)."""
    from vaekit.precision import check_precision

    check_precision(precision)
    run = Path(run)
    cfg = read_run_config(run)
    model = build_model(cfg)
    tensors, _ = load_tensors(run / WEIGHTS)
    load_state_strict(model, tensors, str(run / WEIGHTS))
    if device is not None:
        model.to(device)
    if hasattr(model, "set_precision"):
        model.set_precision(precision)
    return cfg, model.eval()
