"""Original CompVis / Stability first-stage checkpoints <-> diffusers (= vaekit) key names.

LDM names a resnet ``down.i.block.j`` (diffusers: ``down_blocks.i.resnets.j``), its 1x1 shortcut
``nin_shortcut``, the attention ``mid.attn_1.{norm,q,k,v,proj_out}`` with 1x1-conv weights, and
numbers the decoder's ``up.i`` from the highest resolution (diffusers' ``up_blocks.0`` is the
deepest). In full Stable Diffusion checkpoints the autoencoder sits under ``first_stage_model.``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from vaekit.errors import VaekitError
from vaekit.interop.safe_load import load_state_file

PREFIX = "first_stage_model."
OWN = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")

# (LDM pattern, diffusers replacement) applied in order; {up} marks the decoder level to reverse.
_RULES = [
    (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
    (r"^(encoder)\.down\.(\d+)\.block\.(\d+)\.", r"\1.down_blocks.\2.resnets.\3."),
    (r"^(encoder)\.down\.(\d+)\.downsample\.conv\.", r"\1.down_blocks.\2.downsamplers.0.conv."),
    (r"^(decoder)\.up\.(\d+)\.block\.(\d+)\.", r"\1.up_blocks.{up:\2}.resnets.\3."),
    (r"^(decoder)\.up\.(\d+)\.upsample\.conv\.", r"\1.up_blocks.{up:\2}.upsamplers.0.conv."),
    (r"^(encoder|decoder)\.mid\.block_1\.", r"\1.mid_block.resnets.0."),
    (r"^(encoder|decoder)\.mid\.block_2\.", r"\1.mid_block.resnets.1."),
    (r"^(encoder|decoder)\.mid\.attn_1\.norm\.", r"\1.mid_block.attentions.0.group_norm."),
    (r"^(encoder|decoder)\.mid\.attn_1\.q\.", r"\1.mid_block.attentions.0.to_q."),
    (r"^(encoder|decoder)\.mid\.attn_1\.k\.", r"\1.mid_block.attentions.0.to_k."),
    (r"^(encoder|decoder)\.mid\.attn_1\.v\.", r"\1.mid_block.attentions.0.to_v."),
    (r"^(encoder|decoder)\.mid\.attn_1\.proj_out\.", r"\1.mid_block.attentions.0.to_out.0."),
    (r"\.nin_shortcut\.", r".conv_shortcut."),
]
_ATTN_LINEAR = re.compile(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def num_levels(ldm: dict[str, Tensor]) -> int:
    levels = {int(m.group(1)) for k in ldm if (m := re.match(r"^encoder\.down\.(\d+)\.", k))}
    if not levels:
        raise VaekitError("no encoder.down.* keys: not an LDM autoencoder state dict")
    return max(levels) + 1


def ldm_to_diffusers(ldm: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an LDM first-stage state dict to diffusers names (1x1 attention convs -> Linear)."""
    n = num_levels(ldm)
    out: dict[str, Tensor] = {}
    for key, value in ldm.items():
        new = key
        for pattern, repl in _RULES:
            new = re.sub(pattern, repl, new)
        new = re.sub(r"\{up:(\d+)\}", lambda m: str(n - 1 - int(m.group(1))), new)
        if _ATTN_LINEAR.search(new) and value.dim() == 4:
            value = value[:, :, 0, 0]
        out[new] = value
    return out


def diffusers_to_ldm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of ``ldm_to_diffusers`` (diffusers Linear attention weights -> 1x1 convs)."""
    levels = {int(m.group(1)) for k in state if (m := re.match(r"^decoder\.up_blocks\.(\d+)\.", k))}
    n = max(levels) + 1 if levels else 0
    inverse = [
        (r"\.conv_shortcut\.", ".nin_shortcut."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_out\.0\.", r"\1.mid.attn_1.proj_out."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_v\.", r"\1.mid.attn_1.v."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_k\.", r"\1.mid.attn_1.k."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_q\.", r"\1.mid.attn_1.q."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.group_norm\.", r"\1.mid.attn_1.norm."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.mid.block_2."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.mid.block_1."),
        (r"^(decoder)\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.", r"\1.up.{up:\2}.upsample.conv."),
        (r"^(decoder)\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"\1.up.{up:\2}.block.\3."),
        (r"^(encoder)\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", r"\1.down.\2.downsample.conv."),
        (r"^(encoder)\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"\1.down.\2.block.\3."),
        (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
    ]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = key
        attention = _ATTN_LINEAR.search(key) is not None
        for pattern, repl in inverse:
            new = re.sub(pattern, repl, new)
        new = re.sub(r"\{up:(\d+)\}", lambda m: str(n - 1 - int(m.group(1))), new)
        out[new] = value[:, :, None, None] if attention and value.dim() == 2 else value
    return out


def read_ldm_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The autoencoder's tensors (LDM names, prefix stripped) from an LDM/SD checkpoint."""
    obj = load_state_file(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VaekitError(f"{path}: expected a state dict of tensors")
    if any(k.startswith(PREFIX) for k in obj):
        obj = {k[len(PREFIX):]: v for k, v in obj.items() if k.startswith(PREFIX)}
    state = {k: v for k, v in obj.items() if k.startswith(OWN)}
    if not any(k.startswith("encoder.down.") for k in state):
        if any(k.startswith("encoder.down_blocks.") for k in state):
            raise VaekitError(f"{path}: has diffusers key names; use 'vaekit import-diffusers' on its folder")
        raise VaekitError(f"{path}: no first-stage autoencoder keys (first_stage_model.encoder.down.* or "
                          "encoder.down.*)")
    return state


def _max_index(state: dict, pattern: str) -> int:
    found = [int(m.group(1)) for k in state if (m := re.match(pattern, k))]
    if not found:
        raise KeyError(pattern.replace("\\", "").replace("^", "").replace("(d+)", "N"))
    return max(found)


def infer_config(state: dict[str, Tensor]) -> dict:
    """AutoencoderKL config fields that follow from diffusers-named weights."""
    n = 1 + _max_index(state, r"^encoder\.down_blocks\.(\d+)\.")
    channels = [int(state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in range(n)]
    layers = 1 + _max_index(state, r"^encoder\.down_blocks\.0\.resnets\.(\d+)\.")
    return {
        "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "latent_channels": int(state["decoder.conv_in.weight"].shape[1]),
        "use_quant_conv": "quant_conv.weight" in state,
        "use_post_quant_conv": "post_quant_conv.weight" in state,
        "mid_block_add_attention": "encoder.mid_block.attentions.0.to_q.weight" in state,
    }
