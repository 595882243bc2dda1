"""Settings resolution, once, for the CLI and Python alike.

A run's settings come in layers, later ones winning:

    TrainConfig/DataConfig defaults < the model family's and the objective's defaults
        < a preset < a config file < explicit values (flags, or arguments to ``vaekit.train``)

The model's and objective's defaults (``data_defaults``, ``training_defaults``,
``Objective.default_settings``: the ladder's grad-skip, the LDM loss's learning rate and Adam
betas) sit under every layer the user wrote, so anything the user says wins, and a run started from
Python gets exactly what the same run started from the command line gets.

``resolve_settings`` returns ``RunSettings``: the model family, its config overrides (the data fills
in shapes and classes later), whether it is conditional, and the finished ``DataConfig`` and
``TrainConfig``. It also keeps what the user's layers said (``given``), which is what ``--resume``
compares with a run's saved settings (``restated_conflicts``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vaekit.config import from_dict, to_dict
from vaekit.data.config import DataConfig
from vaekit.errors import VaekitError
from vaekit.io import read_json
from vaekit.registry import suggest
from vaekit.training.config import TrainConfig

SECTIONS = ("model", "data", "training")
CONFIG_META = ("_class_name", "_format_version", "vaekit_version", "data_info")
# what a resumed run may change: how long to go on, at what learning rate (a step decay), and whether
# to average the weights from here on; not what it trains
RESUMABLE = ("epochs", "max_minutes", "lr", "ema_decay")
DEFAULT_MODEL = "mlp"


@dataclass(frozen=True)
class RunSettings:
    model: str
    model_overrides: Mapping[str, Any]
    conditional: bool
    data: DataConfig
    training: TrainConfig
    # what the user's layers (preset, config file, explicit values) said, by section; and where each came from
    given: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False)
    origin: Mapping[tuple[str, str], str] = field(default_factory=dict, compare=False)


def read_config_file(path: str | Path) -> tuple[str | None, dict[str, dict]]:
    """A config JSON: optional '_class_name' (or 'model_name'), and 'model', 'data', 'training'
    sections whose keys must be real fields. A run's config.json is one."""
    from vaekit.models import MODELS, model_class

    path = Path(path)
    if not path.is_file():
        raise VaekitError(f"{path}: no such file")
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise VaekitError(f"{path}: expected a JSON object")
    for key in doc:
        if key not in SECTIONS and key not in CONFIG_META and key != "model_name":
            raise VaekitError(f"{path}: unknown key '{key}'{suggest(key, (*SECTIONS, 'model_name'))}")
    model = None
    if "model_name" in doc:
        model = doc["model_name"]
        cls = MODELS.get(model)
    elif "_class_name" in doc:
        cls = model_class(doc["_class_name"])
        model = cls.name
    else:
        cls = MODELS.get(DEFAULT_MODEL)
    known = {"model": cls.config_class, "data": DataConfig, "training": TrainConfig}
    sections: dict[str, dict] = {}
    for name, dc in known.items():
        section = doc.get(name, {})
        if not isinstance(section, dict):
            raise VaekitError(f"{path}: '{name}' must be an object")
        names = {f.name for f in fields(dc)}
        for key in section:
            if key not in names:
                raise VaekitError(f"{path}: {name}: unknown key '{key}'{suggest(key, names)}")
        sections[name] = dict(section)
    return model, sections


def given_fields(value: Any, cls: type, what: str) -> dict[str, Any]:
    """The fields a user gave: all keys of a mapping (checked against ``cls``), or those fields of a
    ``cls`` instance that differ from its defaults."""
    if value is None:
        return {}
    if isinstance(value, cls):
        default = cls()
        return {f.name: v for f in fields(cls) if (v := getattr(value, f.name)) != getattr(default, f.name)}
    if isinstance(value, Mapping):
        names = {f.name for f in fields(cls)}
        for key in value:
            if key not in names:
                raise VaekitError(f"{what}: unknown setting '{key}'{suggest(key, names)}")
        return dict(value)
    raise VaekitError(f"{what}: expected a {cls.__name__} or a mapping of its fields, got {type(value).__name__}")


def resolve_settings(
    *,
    model: str | None = None,
    preset: str | None = None,
    config: str | Path | Mapping | None = None,
    conditional: bool | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    data: str | DataConfig | Mapping | None = None,
    training: TrainConfig | Mapping | None = None,
) -> RunSettings:
    """Merge the layers (see the module docstring) into finished configs; every key is checked.

    ``data`` may be a spec string ("digits", a folder, a file), a DataConfig or a mapping of its
    fields; ``training`` a TrainConfig or a mapping. For dataclass instances the fields that differ
    from the defaults count as given; pass a mapping to give a field its default value on purpose
    (``{"grad_clip": 0.0}`` turns off the ladder's default clipping).
    """
    from vaekit.models import MODELS, PRESETS
    from vaekit.objectives import OBJECTIVES

    given: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    origin: dict[tuple[str, str], str] = {}
    name, is_conditional = DEFAULT_MODEL, False

    def layer(sections: Mapping[str, Mapping[str, Any]], source: str) -> None:
        for section, values in sections.items():
            for key, value in values.items():
                given[section][key] = value
                origin[(section, key)] = source

    if preset is not None:
        p = PRESETS.get(preset)
        name = p["model"]
        origin[("model", "model")] = f"--preset {preset}"
        layer({"model": p["model_config"], "training": p.get("training", {})}, f"--preset {preset}")
    if config is not None:
        if isinstance(config, Mapping):
            file_model, sections = config.get("model_name"), {s: dict(config.get(s, {})) for s in SECTIONS}
            source = "config"
        else:
            file_model, sections = read_config_file(config)
            source = f"--config {config}"
        if file_model:
            name = file_model
            origin[("model", "model")] = source
        if sections["model"].pop("num_classes", 0) > 0:
            is_conditional = True
        sections["model"].pop("data_shape", None)  # follows from the data
        layer(sections, source)
    if model is not None:
        name = model
        origin[("model", "model")] = "--model"
    if conditional is not None:
        is_conditional = bool(conditional)
    layer({"model": dict(model_overrides or {}),
           "data": {"spec": data} if isinstance(data, str) else given_fields(data, DataConfig, "data"),
           "training": given_fields(training, TrainConfig, "training")}, "explicit")

    cls = MODELS.get(name)
    data_fields = cls.data_settings({**cls.data_defaults, **given["data"]}, given["model"])
    if "spec" in data_fields and ("data", "spec") not in origin:
        origin[("data", "spec")] = f"the {name} model"
    training_fields = {**cls.training_defaults, **given["training"]}
    objective = OBJECTIVES.get(training_fields.get("objective", TrainConfig.objective))
    training_fields = {**objective.default_settings(training_fields), **training_fields}
    return RunSettings(
        model=name,
        model_overrides=dict(given["model"]),
        conditional=is_conditional,
        data=from_dict(DataConfig, data_fields, "data settings"),
        training=from_dict(TrainConfig, training_fields, "training settings"),
        given={s: dict(v) for s, v in given.items()},
        origin=dict(origin),
    )


@dataclass(frozen=True)
class Conflict:
    """A re-stated setting that differs from the run's saved one."""

    section: str
    key: str
    saved: Any
    new: Any
    origin: str


def restated_conflicts(saved, request: RunSettings) -> list[Conflict]:
    """The user's re-stated settings (``request.given``, plus the model family and conditioning)
    that differ from the run's saved ``RunConfig``. Settings a resume may change (RESUMABLE) are
    not compared."""
    out = []
    if ("model", "model") in request.origin and request.model != saved.model_class.name:
        source = request.origin[("model", "model")]
        out.append(Conflict("model", "model", saved.model_class.name, request.model, source))
    if request.conditional and getattr(saved.model, "num_classes", 0) == 0:
        out.append(Conflict("model", "conditional", False, True, "--conditional"))
    sections = {"model": saved.model, "data": saved.data, "training": saved.training}
    for section, values in request.given.items():
        saved_values = to_dict(sections[section])
        for key, value in values.items():
            if section == "training" and key in RESUMABLE:
                continue
            old = saved_values.get(key)
            if not same_value(section, key, old, value):
                out.append(Conflict(section, key, old, _plain(value), request.origin.get((section, key), "explicit")))
    return out


def same_value(section: str, key: str, saved: Any, new: Any) -> bool:
    """Equal as JSON values (tuples and lists alike, 1 and 1.0 alike); paths that name the same file
    or folder count as equal."""
    a, b = _plain(saved), _plain(new)
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and a and b:  # data paths, a latent-diffusion run's --vae
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    return False


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
