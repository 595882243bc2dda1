"""diffusers folders: ``config.json`` (``_class_name: AutoencoderKL``) +
``diffusion_pytorch_model.safetensors``. vaekit's AutoencoderKL has diffusers' module tree, so
weights pass through unrenamed; only older files' attention names (query/key/value/proj_attn) are
translated on import."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from torch import Tensor

from vaekit.config import from_dict, to_dict
from vaekit.errors import VaekitError
from vaekit.io import load_tensors, read_json, save_tensors, write_json

WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLED_WEIGHTS = "diffusion_pytorch_model.bin"
DIFFUSERS_VERSION = "0.42.1"  # the version the exported config was checked against
BLOCK_TYPES = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}
IGNORED = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"}
OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def diffusers_config(cfg) -> dict:
    """The AutoencoderKL config.json diffusers expects for a vaekit AutoencoderKLConfig."""
    fields = to_dict(cfg)
    for vaekit_only in ("likelihood", "sigma_mode", "sigma"):
        fields.pop(vaekit_only)
    n = len(cfg.block_out_channels)
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        **fields,
        "down_block_types": [BLOCK_TYPES["down_block_types"]] * n,
        "up_block_types": [BLOCK_TYPES["up_block_types"]] * n,
    }


def config_from_diffusers(doc: dict, where: str):
    """An AutoencoderKLConfig from a diffusers config.json (unknown fields fail, naming them)."""
    from vaekit.models.autoencoder_kl import AutoencoderKLConfig

    if doc.get("_class_name") != "AutoencoderKL":
        raise VaekitError(f"{where}: _class_name is {doc.get('_class_name')!r}, expected 'AutoencoderKL'")
    fields = {}
    for key, value in doc.items():
        if key in IGNORED or key.startswith("_"):
            continue
        if key in BLOCK_TYPES:
            bad = [v for v in value if v != BLOCK_TYPES[key]]
            if bad:
                raise VaekitError(f"{where}: {key} has {bad[0]!r}; vaekit supports {BLOCK_TYPES[key]} only")
            continue
        fields[key] = value
    return from_dict(AutoencoderKLConfig, fields, where)


def write_diffusers_folder(model, out: str | Path, overwrite: bool = False, **config_changes) -> Path:
    """Write ``out/config.json`` and ``out/diffusion_pytorch_model.safetensors`` (a folder that is
    never seen half-written: see ``write_folder``)."""
    return write_folder(out, overwrite, "config.json", lambda tmp: write_autoencoder(model, tmp, **config_changes))


def write_autoencoder(model, folder: Path, **config_changes) -> None:
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("likelihood.")}
    save_tensors(folder / WEIGHTS, state, metadata={"format": "pt"})
    write_json(folder / "config.json", {**diffusers_config(model.config), **config_changes})


def write_folder(out: str | Path, overwrite: bool, marker: str, build) -> Path:
    """Build a folder with ``build(tmp)`` in a temp folder beside ``out`` and rename it into place, so
    a partial folder never appears; an existing ``out`` is replaced only with ``overwrite`` and only if
    it holds ``marker`` (it is a folder of this kind)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise VaekitError(f"{out}: already exists; pass --overwrite to replace it")
        if not (out / marker).is_file():
            raise VaekitError(f"{out}: is not empty and not a diffusers folder; refusing to delete it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        build(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def read_diffusers_folder(folder: str | Path):
    """(AutoencoderKLConfig, state dict with diffusers names) from a diffusers VAE folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VaekitError(f"{folder}: no such directory")
    if (folder / "vae" / "config.json").is_file() and not (folder / "config.json").is_file():
        folder = folder / "vae"  # a whole pipeline folder: take its VAE
    if not (folder / "config.json").is_file():
        raise VaekitError(f"{folder}: not a diffusers model folder (no config.json)")
    cfg = config_from_diffusers(read_json(folder / "config.json"), str(folder / "config.json"))
    weights = folder / WEIGHTS
    if not weights.is_file():
        if (folder / PICKLED_WEIGHTS).is_file():
            raise VaekitError(f"{folder / PICKLED_WEIGHTS}: pickled weights are refused; save the model with "
                              "safe_serialization=True (safetensors)")
        raise VaekitError(f"{folder}: no {WEIGHTS}")
    state, _ = load_tensors(weights)
    return cfg, rename_old_attention(state)


def rename_old_attention(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Older diffusers files name the attention projections query/key/value/proj_attn."""
    out = {}
    for key, value in state.items():
        m = re.match(r"^(.*\.attentions\.0)\.(query|key|value|proj_attn)\.(weight|bias)$", key)
        out[f"{m.group(1)}.{OLD_ATTENTION[m.group(2)]}.{m.group(3)}" if m else key] = value
    return out


def config_with(cfg, **changes):
    return from_dict(type(cfg), {**to_dict(cfg), **changes}, "config")
