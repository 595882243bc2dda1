"""``compress(model, x) -> bytes`` and ``decompress(model, data) -> x``: lossless coding of a set of
binary or 8-bit examples with a trained VAE, at (close to) the model's negative ELBO."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import platform

import numpy as np
import torch

from vaekit.compression.coder import ORDERS, PRECISION, Chains, seed_size, seed_words, steps, strip_seed
from vaekit.compression.container import FORMAT_VERSION, pack, unpack
from vaekit.compression.layers import Layers
from vaekit.compression.tables import BUCKETS, GRID, BucketGrid, codec_for
from vaekit.errors import VaekitError

DEFAULT_LANES = 32


def require_constriction() -> str:
    try:
        import constriction
    except ImportError:
        raise VaekitError("compression needs the constriction package (pip install 'vaekit[compression]')") from None
    return getattr(constriction, "__version__", "0.5")


def model_hash(model) -> str:
    """SHA-256 of the model's class, config and weights (as float32 for floating tensors, by sorted name)."""
    from vaekit.config import to_dict

    h = hashlib.sha256()
    h.update(type(model).__name__.encode())
    h.update(json.dumps(to_dict(model.config), sort_keys=True).encode())
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().cpu()
        t = t.float() if t.is_floating_point() else t
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def _pinned():
    """One thread and no autocast while coding: the same kernels on both sides, run after run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.autocast("cpu", enabled=False), torch.no_grad():
            yield
    finally:
        torch.set_num_threads(threads)


def _restore(symbols: np.ndarray, one: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return (symbols.astype(np.int64) * one).astype(np.dtype(dtype)).reshape(shape)


def _data_hash(x: np.ndarray) -> str:
    return hashlib.sha256(f"{x.dtype.str}:{x.shape}".encode() + np.ascontiguousarray(x).tobytes()).hexdigest()


def _progress(total: int, enabled: bool, what: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="img", desc=what, leave=False)


def compress(model, x, *, lanes: int = DEFAULT_LANES, order: str = "bit-swap", names: list[str] | None = None,
             modes: list[str] | None = None, run: str | None = None, progress: bool = False) -> bytes:
    """Code the examples ``x`` ([N, ...] integers: 0/1 for a Bernoulli run, 0..255 for a logistic one)
    with bits-back ANS; returns the .vkz bytes (header, payload, checksum).

    ``lanes`` chains are coded side by side (each pays its initial bits once); ``order`` is the
    hierarchy's order for hvae runs (``bit-swap`` or ``bb-ans``; one layer: the same). ``names`` and
    ``modes`` (image files) and ``run`` (the run's path) are stored in the header for the CLI.
    """
    version = require_constriction()
    layers = Layers(model)
    codec = codec_for(model.config.likelihood)
    if order not in ORDERS:
        raise VaekitError(f"unknown order '{order}' (choose from: {', '.join(ORDERS)})")
    if lanes < 1:
        raise VaekitError(f"lanes must be >= 1, got {lanes}")
    x = np.asarray(x)
    dims = math.prod(layers.shape)
    if x.ndim < 1 or len(x) == 0:
        raise VaekitError("compress: no examples to code")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.issubdtype(x.dtype, np.complexfloating):
        raise VaekitError(f"compress: the data has dtype {x.dtype}; expected numbers")
    if math.prod(x.shape[1:]) != dims:
        raise VaekitError(f"compress: examples of shape {tuple(x.shape[1:])} do not fit this run's data shape "
                          f"{layers.shape}")
    for what, items in (("names", names), ("modes", modes)):
        if items is not None and len(items) != len(x):
            raise VaekitError(f"compress: {len(items)} {what} for {len(x)} examples")
    one = 1
    if codec.likelihood == "bernoulli" and x.dtype == np.uint8 and x.max() == 255 and np.isin(x, (0, 255)).all():
        one = 255  # black-and-white 8-bit images: 255 is the bit 1
    symbols = codec.check(x // one if one > 1 else x, "compress")
    restored = _restore(symbols, one, x.dtype.str, x.shape)
    if not np.array_equal(restored, x):
        raise VaekitError("compress: the data does not survive the round trip through integers (NaN or -0.0?)")
    n, lanes = len(x), min(lanes, len(x))
    grids = [BucketGrid(d) for d in layers.dims]
    with _pinned():
        if layers.depth > 1:
            stats = layers.layer_statistics(codec.model_input(symbols))
            grids = [BucketGrid(d, m, s) for d, (m, s) in zip(layers.dims[:-1], stats)] + grids[-1:]
        chains = Chains(layers, codec, grids, lanes, tally=True)
        with _progress(n, progress, "compress") as bar:
            for start, stop in steps(n, lanes):
                chains.encode_step(symbols[start:stop], order)
                bar.update(stop - start)
        words = chains.words()
    seed = chains.seed
    stripped = [strip_seed(w, seed_words(i, seed)) for i, w in enumerate(words)]
    payload = b"".join(w[k:].astype("<u4").tobytes() for w, k in zip(words, stripped))
    initial = 32 * sum(seed - k for k in stripped)
    payload_bits = 8 * len(payload)
    header = {
        "format": FORMAT_VERSION,
        "model": {"hash": model_hash(model), "class": type(model).__name__, "likelihood": codec.likelihood,
                  "run": None if run is None else str(run)},
        "data": {"count": n, "shape": list(x.shape), "dtype": x.dtype.str, "one": one, "dims": dims,
                 "sha256": _data_hash(restored),
                 "source": "array" if names is None else "images", "names": names, "modes": modes},
        "coder": {"method": "bit-swap" if order == "bit-swap" and layers.depth > 1 else "bb-ans", "order": order,
                  "layers": layers.dims, "buckets": BUCKETS, "grid": GRID, "precision": PRECISION,
                  "model_dtype": "float64", "lanes": lanes, "seed_words": seed,
                  "latent_grids": [g.to_json() for g in grids],
                  "chains": [{"words": int(len(w) - k), "seed_kept": int(k)} for w, k in zip(words, stripped)],
                  "torch": torch.__version__, "constriction": version, "machine": platform.machine()},
        "rate": {"payload_bits": payload_bits, "initial_bits": initial,
                 "information_bits": chains.tally.net,
                 "bits_per_dim": payload_bits / (n * dims),
                 "bits_per_dim_without_initial": (payload_bits - initial) / (n * dims)},
    }
    return pack(header, payload)


def read_info(data: bytes, name: str = "compressed data") -> dict:
    """The header of a .vkz file (checked: magic, version and checksum)."""
    return unpack(data, name)[0]


def decompress(model, data: bytes, *, progress: bool = False, name: str = "compressed data") -> np.ndarray:
    """The exact array given to ``compress`` (values, dtype, shape and order), or a one-line error:
    another model, a damaged or truncated file, a newer format. Nothing is returned until every
    chain has decoded back to its seed and the decoded data matched its checksum."""
    require_constriction()
    header, payload = unpack(data, name)
    try:
        info, coder_info, shape = header["data"], header["coder"], tuple(header["data"]["shape"])
        expected = header["model"]["hash"]
    except (KeyError, TypeError):
        raise VaekitError(f"{name}: damaged header") from None
    if model_hash(model) != expected:
        raise VaekitError(f"{name}: was compressed with another model (weights/config hash {expected[:12]}..., this "
                          f"run's is {model_hash(model)[:12]}...); pass the run that compressed it")
    layers = Layers(model)
    codec = codec_for(model.config.likelihood)
    n, lanes, order = info["count"], coder_info["lanes"], coder_info["order"]
    grids = [BucketGrid.from_json(d, g, coder_info["buckets"]) for d, g in zip(layers.dims,
                                                                                coder_info["latent_grids"])]
    seed = seed_size(layers.dims)
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    chains_words, at = [], 0
    for i, chain in enumerate(coder_info["chains"]):
        own = words[at : at + chain["words"]]
        at += chain["words"]
        chains_words.append(np.concatenate([seed_words(i, seed)[: chain["seed_kept"]], own]))
    if at != len(words) or any(len(w) < 2 for w in chains_words):
        raise VaekitError(f"{name}: damaged (chain lengths do not match the payload)")
    symbols = np.empty((n, info["dims"]), dtype=np.int32)
    with _pinned():
        chains = Chains(layers, codec, grids, lanes, words=chains_words)
        with _progress(n, progress, "decompress") as bar:
            for start, stop in reversed(steps(n, lanes)):
                symbols[start:stop] = chains.decode_step(stop - start, order)
                bar.update(stop - start)
        back = chains.words()
    if any(len(w) != seed or not np.array_equal(w, seed_words(i, seed)) for i, w in enumerate(back)):
        raise VaekitError(f"{name}: damaged (the chains did not decode back to their seeds)")
    x = _restore(symbols, info["one"], info["dtype"], shape)
    if _data_hash(x) != info["sha256"]:
        raise VaekitError(f"{name}: the decoded data does not match its checksum (a different machine's arithmetic "
                          "or a damaged file)")
    return x
