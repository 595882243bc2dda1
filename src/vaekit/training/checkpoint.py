"""Training state in one safetensors file, no pickle.

Nested state (module and optimizer state dicts, RNG states, counters, the metrics history) is
split into its tensors, stored as safetensors entries, and a JSON skeleton in the file's metadata
that points at them. Tuples are marked so that they come back as tuples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vaekit.errors import VaekitError
from vaekit.io import load_tensors, save_tensors

CHECKPOINT_FORMAT = 1
META_KEY = "vaekit_checkpoint"


def pack(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split ``state`` into (tensors by key, a JSON-able skeleton with references to them)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            # safetensors refuses entries that share memory: copy the rare aliased tensor
            ptr = obj.untyped_storage().data_ptr() if obj.numel() else -len(tensors) - 1
            tensors[path] = obj.clone() if ptr in seen else obj
            seen.add(ptr)
            return {"__tensor__": path}
        if isinstance(obj, dict):
            if not all(isinstance(k, (str, int)) for k in obj):
                raise TypeError(f"checkpoint keys must be str or int at {path}")
            items = [[k, walk(v, f"{path}/{k}")] for k, v in obj.items()]
            return {"__dict__": items}
        if isinstance(obj, tuple):
            return {"__tuple__": [walk(v, f"{path}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(obj)]
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"cannot store {type(obj).__name__} at {path} in a checkpoint")

    return tensors, walk(state, "")


def unpack(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            if "__tensor__" in obj:
                return tensors[obj["__tensor__"]]
            if "__tuple__" in obj:
                return tuple(walk(v) for v in obj["__tuple__"])
            return {k: walk(v) for k, v in obj["__dict__"]}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    return walk(skeleton)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (temp file, fsync, rename)."""
    tensors, skeleton = pack(state)
    meta = {META_KEY: json.dumps({"format": CHECKPOINT_FORMAT, "state": skeleton})}
    save_tensors(path, tensors, metadata=meta)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    tensors, meta = load_tensors(path)
    if META_KEY not in meta:
        raise VaekitError(f"{path}: not a vaekit training checkpoint")
    doc = json.loads(meta[META_KEY])
    if doc.get("format") != CHECKPOINT_FORMAT:
        raise VaekitError(f"{path}: checkpoint format {doc.get('format')} is not supported "
                          f"(expected {CHECKPOINT_FORMAT})")
    return unpack(doc["state"], tensors)
