"""Training from Python: ``train(...)`` and ``resume(...)`` resolve the settings, build everything from
configs and run the one Trainer. The CLI calls these."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from vaekit.config import from_dict, to_dict
from vaekit.data import DataConfig, DataInfo, recorded_spec
from vaekit.errors import VaekitError
from vaekit.objectives import OBJECTIVES
from vaekit.registry import suggest
from vaekit.run import (
    CHECKPOINT,
    RunConfig,
    check_run_dir,
    open_run,
    prepare_run_dir,
    read_run_config,
    write_run_config,
)
from vaekit.runtime import tune_cpu
from vaekit.settings import RunSettings, resolve_settings
from vaekit.training import distributed
from vaekit.training.checkpoint import load_checkpoint
from vaekit.training.config import TrainConfig
from vaekit.training.trainer import Trainer


def model_config_for(model: str, overrides: dict[str, Any], info: DataInfo, conditional: bool = False):
    """The model family's config for this data: shapes, classes and likelihood filled in.

    ``likelihood: "auto"`` picks bernoulli for data in [0, 1] and gaussian otherwise.
    """
    from vaekit.models import MODELS

    cls = MODELS.get(model)
    names = {f.name for f in dataclasses.fields(cls.config_class)}
    for key in overrides:
        if key not in names:
            raise VaekitError(f"the {model} model has no setting '{key}'{suggest(key, names)}")
    fields = cls.config_for_data(overrides, info, conditional)
    if "likelihood" in names and fields.get("likelihood", "auto") == "auto":
        lo, hi = info.value_range
        fields["likelihood"] = "bernoulli" if lo >= 0 and hi <= 1 else "gaussian"
    config = from_dict(cls.config_class, fields, f"{model} model")
    return cls, config


def check_compatible(model_cls, model_cfg, info: DataInfo) -> None:
    from vaekit.likelihoods import LIKELIHOODS, check_levels

    lo, hi = info.value_range
    likelihood = getattr(model_cfg, "likelihood", None)
    if likelihood is None:  # a diffusion model: no observation model
        return
    check_levels(likelihood, info)
    if LIKELIHOODS.get(likelihood).unit_interval and (lo < 0 or hi > 1):
        raise VaekitError(f"the {model_cfg.likelihood} likelihood needs data in [0, 1], but {info.source} has values "
                          f"in [{lo:.3g}, {hi:.3g}]; use --likelihood gaussian")


def train(
    out: str | Path,
    *,
    model: str | None = None,
    preset: str | None = None,
    config: str | Path | Mapping | None = None,
    conditional: bool | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    data: str | DataConfig | Mapping | None = None,
    training: TrainConfig | Mapping | None = None,
    settings: RunSettings | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
):
    """Train a new run in ``out``; returns (model, metrics history).

    Settings are resolved by ``vaekit.settings.resolve_settings`` exactly as ``vaekit train`` resolves
    its flags (defaults < the model's and objective's defaults < ``preset`` < ``config`` < the rest),
    so the same settings write the same config.json from Python and from the command line. Pass
    ``settings`` (an already resolved ``RunSettings``) instead of the individual layers to skip that.

    Under torchrun (``torchrun --nproc-per-node N ...``) every process calls this with the same
    arguments; they train together and rank 0 writes the run.
    """
    tune_cpu()  # before any parallel torch op, so that worker threads inherit it
    world = distributed.setup()
    with distributed.agreement(world):  # a user error on any rank stops every rank, before anything is written
        if settings is None:
            settings = resolve_settings(model=model, preset=preset, config=config, conditional=conditional,
                                        model_overrides=model_overrides, data=data, training=training)
        from vaekit.models import MODELS

        data_cfg, train_cfg = settings.data, settings.training
        # relative paths are recorded absolute: later commands read the run's data from any directory
        data_cfg = dataclasses.replace(data_cfg, spec=recorded_spec(data_cfg.spec),
                                       test_spec=recorded_spec(data_cfg.test_spec))
        splits = MODELS.get(settings.model).prepare_data(data_cfg, settings.model_overrides, None, open_run)
        model_cls, model_cfg = model_config_for(settings.model, settings.model_overrides, splits.info,
                                                settings.conditional)
        check_compatible(model_cls, model_cfg, splits.info)
        run_cfg = RunConfig(model_cls, model_cfg, data_cfg, splits.info, train_cfg)
        torch.manual_seed(train_cfg.seed)
        net = model_cls(model_cfg)
        net.attach(open_run)
        objective = OBJECTIVES.get(train_cfg.objective)(net, train_cfg)
        trainer = Trainer(out, net, objective, splits, train_cfg, progress=progress, log=log)
        check_run_dir(out, overwrite=overwrite)
    # everything is validated: only now may an existing run be replaced (by rank 0 alone)
    if world.writer:
        for note in splits.notes:
            (log or print)(note)
        prepare_run_dir(out, overwrite=overwrite)
        write_run_config(out, run_cfg)
    history = trainer.fit()
    return net.eval(), history


def resume(
    out: str | Path,
    *,
    epochs: int | None = None,
    max_minutes: float | None = None,
    lr: float | None = None,
    ema_decay: float | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
):
    """Continue the run in ``out`` from its checkpoint, optionally to a new number of epochs or a new
    time budget (``max_minutes`` counts all training time, the earlier sessions' included; 0: none),
    so a run stopped by its budget can be extended, optionally at a new learning rate ``lr`` (a
    step decay; metrics.jsonl records the rate of every epoch), and optionally keeping a moving
    average of the weights from here on (``ema_decay``; 0 stops keeping one)."""
    tune_cpu()  # before any parallel torch op, so that worker threads inherit it
    world = distributed.setup()
    out = Path(out)
    with distributed.agreement(world):  # every rank validates; nothing is written before all agree
        cfg = read_run_config(out)
        if not (out / CHECKPOINT).is_file():
            raise VaekitError(f"{out}: no {CHECKPOINT} to resume from")
        train_cfg = cfg.training
        asked = (("epochs", epochs), ("max_minutes", max_minutes), ("lr", lr), ("ema_decay", ema_decay))
        changes = {k: v for k, v in asked if v is not None}
        changed = any(getattr(train_cfg, k) != v for k, v in changes.items())
        if changed:
            flags = ", ".join({"ema_decay": "--ema"}.get(k, "--" + k.replace("_", "-")) for k in changes)
            train_cfg = from_dict(TrainConfig, {**to_dict(train_cfg), **changes}, flags)
            cfg = RunConfig(cfg.model_class, cfg.model, cfg.data, cfg.data_info, train_cfg)
        splits = cfg.model_class.prepare_data(cfg.data, to_dict(cfg.model), cfg.data_info, open_run)
        torch.manual_seed(train_cfg.seed)
        net = cfg.model_class(cfg.model)
        net.attach(open_run)
        objective = OBJECTIVES.get(train_cfg.objective)(net, train_cfg)
        trainer = Trainer(out, net, objective, splits, train_cfg, progress=progress, log=log)
        # the checkpoint must fit the run's model config (a config.json edited, or copied from another run)
        trainer.restore(load_checkpoint(out / CHECKPOINT))
    if changed and world.writer:
        write_run_config(out, cfg)
    history = trainer.fit()
    return net.eval(), history
