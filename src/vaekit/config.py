"""Frozen dataclass configs that round-trip through JSON, strictly.

Every config is a frozen dataclass. ``to_dict`` writes its fields (tuples as lists) and
``from_dict`` reads them back, refusing unknown keys and values of the wrong type with a message
that names the key, so a typo in a hand-written ``config.json`` never passes silently.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from vaekit.errors import VaekitError
from vaekit.registry import suggest

C = TypeVar("C")

FORMAT_VERSION = 1


def to_dict(cfg: Any) -> dict[str, Any]:
    """Fields of a config dataclass as JSON-ready values."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        out[f.name] = _jsonable(getattr(cfg, f.name))
    return out


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def from_dict(cls: type[C], data: Mapping[str, Any], where: str = "config") -> C:
    """Build ``cls`` from a mapping; keys starting with '_' are metadata and ignored."""
    if not isinstance(data, Mapping):
        raise VaekitError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key.startswith("_"):
            continue
        if key not in fields:
            raise VaekitError(f"{where}: unknown key '{key}'{suggest(key, fields)}")
        kwargs[key] = coerce(value, hints[key], f"{where}: '{key}'")
    return cls(**kwargs)


def replace(cfg: C, where: str = "config", **changes: Any) -> C:
    """``dataclasses.replace`` with the same key and type checks as ``from_dict``."""
    merged = to_dict(cfg)
    merged.update(changes)
    return from_dict(type(cfg), merged, where)


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and lightly convert) a JSON value against a type annotation."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, where)
            except VaekitError as e:
                errors.append(str(e))
        raise VaekitError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise VaekitError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise VaekitError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise VaekitError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(coerce(v, a, where) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise VaekitError(f"{where}: expected an object, got {value!r}")
        _, vt = get_args(tp)
        return {str(k): coerce(v, vt, where) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise VaekitError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise VaekitError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise VaekitError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise VaekitError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r}")  # a bug in vaekit, not user input


def check(condition: bool, message: str) -> None:
    """Validation helper for ``__post_init__``: raise a user-facing error when ``condition`` fails."""
    if not condition:
        raise VaekitError(message)
