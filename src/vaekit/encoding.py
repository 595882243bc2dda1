"""Latents of whole datasets, out and back: ``encode_dataset`` writes q(z|x)'s means and log-variances
(or one sample per example) with the labels, and for autoencoder-kl the scaled latents a diffusion
model trains on; ``decode_latents`` turns a latents file back into data.

Both stream in chunks with a progress bar, so memory stays bounded whatever the dataset's size: the
output file is laid out in full once the first chunk gives the shapes (a safetensors header written
up front, or ``.npy`` files through ``numpy.lib.format.open_memmap``) and filled chunk by chunk
through a memory map. Every file is written to a temp file and renamed, so a failed or interrupted
command leaves nothing half-written. Folder paths go in a sidecar CSV (``index,path``) beside the
output, for the user to join on.

Formats, by suffix: ``.safetensors`` (every tensor and the metadata), ``.npz`` (every tensor), ``.npy``
(the main latent only: the sample, or the mean).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaekit.errors import VaekitError
from vaekit.io import atomic_path, write_text

LATENT_SUFFIXES = (".safetensors", ".npz", ".npy")
_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}
_NP_DTYPES = {v: k for k, v in _ST_DTYPES.items()}


# -- chunked writers ------------------------------------------------------------------------------


class _SafetensorsWriter:
    """A safetensors file laid out in full up front (8-byte header length, JSON header padded to 8
    bytes, then each tensor's little-endian bytes), filled through memory maps."""

    def __init__(self, path: Path, specs: dict[str, tuple[np.dtype, tuple[int, ...]]], metadata: dict[str, str]):
        header: dict = {"__metadata__": metadata}
        offset = 0
        for name, (dtype, shape) in specs.items():
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            header[name] = {"dtype": _ST_DTYPES[np.dtype(dtype)], "shape": list(shape),
                            "data_offsets": [offset, offset + size]}
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        start = 8 + len(blob)
        with open(path, "wb") as f:
            f.write(len(blob).to_bytes(8, "little") + blob)
            f.truncate(start + offset)
        self.arrays = {}
        for name, (dtype, shape) in specs.items():
            begin = header[name]["data_offsets"][0]
            if int(np.prod(shape)) == 0:
                self.arrays[name] = np.zeros(shape, dtype)
            else:
                self.arrays[name] = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r+",
                                              offset=start + begin, shape=shape)

    def close(self) -> None:
        for a in self.arrays.values():
            if isinstance(a, np.memmap):
                a.flush()
        self.arrays.clear()


class _NpzWriter:
    """Each tensor as a ``.npy`` memory map in a temp folder, zipped (uncompressed, as ``np.savez``)."""

    def __init__(self, path: Path, specs: dict[str, tuple[np.dtype, tuple[int, ...]]]):
        self.path = path
        self.folder = Path(tempfile.mkdtemp(prefix=".npz-", dir=path.parent))
        self.arrays = {name: np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=dtype,
                                                       shape=shape) for name, (dtype, shape) in specs.items()}

    def close(self) -> None:
        for a in self.arrays.values():
            a.flush()
        names = list(self.arrays)
        self.arrays.clear()
        with zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for name in names:
                z.write(self.folder / f"{name}.npy", arcname=f"{name}.npy")
        shutil.rmtree(self.folder, ignore_errors=True)


class _NpyWriter:
    def __init__(self, path: Path, specs: dict[str, tuple[np.dtype, tuple[int, ...]]], keep: str):
        dtype, shape = specs[keep]
        self.keep = keep
        self.arrays = {keep: np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)}

    def close(self) -> None:
        self.arrays[self.keep].flush()
        self.arrays.clear()


@contextlib.contextmanager
def chunked_output(path: Path, specs: dict[str, tuple[np.dtype, tuple[int, ...]]], metadata: dict[str, str],
                   npy_key: str) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{name: writable array}`` backed by a temp file renamed to ``path`` on success."""
    suffix = path.suffix.lower()
    if suffix not in LATENT_SUFFIXES:
        raise VaekitError(f"{path}: unsupported output type '{path.suffix}' (expected {', '.join(LATENT_SUFFIXES)})")
    with atomic_path(path) as tmp:
        if suffix == ".safetensors":
            writer = _SafetensorsWriter(tmp, specs, metadata)
        elif suffix == ".npz":
            writer = _NpzWriter(tmp, specs)
        else:
            writer = _NpyWriter(tmp, specs, npy_key)
        try:
            yield writer.arrays
        except BaseException:
            writer.arrays.clear()
            if isinstance(writer, _NpzWriter):
                shutil.rmtree(writer.folder, ignore_errors=True)
            raise
        writer.close()


def sidecar_path(out: str | Path) -> Path:
    """``latents.safetensors`` -> ``latents.paths.csv``."""
    out = Path(out)
    return out.with_name(out.name[: -len(out.suffix)] + ".paths.csv" if out.suffix else out.name + ".paths.csv")


def write_paths(path: Path, paths: list[str]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "path"])
    w.writerows([i, p] for i, p in enumerate(paths))
    write_text(path, buf.getvalue())
    return path


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ex", leave=False, file=sys.stderr, disable=not enabled)


def _chunks(n: int, size: int) -> Iterator[Tensor]:
    for start in range(0, n, size):
        yield torch.arange(start, min(start + size, n))


# -- encode ---------------------------------------------------------------------------------------


@dataclass
class EncodeResult:
    path: Path
    n: int
    tensors: dict[str, list[int]]  # name -> shape
    paths_file: Path | None


def sample_noise(shape: tuple[int, ...], index: Tensor, seed: int) -> Tensor:
    """One standard normal draw of ``shape`` per example, each from a generator seeded by (seed,
    example index): [B, *shape], the same whatever the chunk size."""
    base = (seed & 0xFFFFFFFF) << 32
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(base + int(i))) for i in index])


@torch.no_grad()
def encode_dataset(model, data, out: str | Path, *, sample: bool = False, seed: int = 0, batch_size: int = 256,
                   paths: list[str] | None = None, metadata: dict[str, str] | None = None,
                   progress: bool = False) -> EncodeResult:
    """Encode every example of ``data`` (``len`` and ``batch(index) -> (x, y)``) into ``out``.

    Tensors: ``mean`` and ``logvar`` [N, *latent] (or ``z``, one draw of q(z|x) per example seeded by
    (seed, index), with ``sample``), ``y`` [N] int64 when the data has labels, and for models with
    ``scale_latents`` (autoencoder-kl) ``scaled``: what a diffusion model trains on, (z - shift) *
    scaling_factor of the written latent. ``paths`` go to the sidecar ``OUT.paths.csv``.
    """
    out = Path(out)
    if out.suffix.lower() not in LATENT_SUFFIXES:
        raise VaekitError(f"--out {out}: unsupported latents file type '{out.suffix}' "
                          f"(expected {', '.join(LATENT_SUFFIXES)})")
    if batch_size < 1:
        raise VaekitError(f"--batch-size must be >= 1, got {batch_size}")
    n = len(data)
    if n == 0:
        raise VaekitError("no examples to encode")
    model.eval()
    device = next(model.parameters()).device
    scaled = hasattr(model, "scale_latents")
    main = "z" if sample else "mean"
    chunks = _chunks(n, batch_size)

    def encode(index: Tensor) -> dict[str, np.ndarray]:
        x, y = data.batch(index)
        q = model.encode(x.to(device), None if y is None else y.to(device))
        parts = {}
        if sample:
            parts["z"] = q.mean + q.std * sample_noise(tuple(q.mean.shape[1:]), index, seed).to(q.mean)
        else:
            parts["mean"], parts["logvar"] = q.mean, q.logvar
        if scaled:
            parts["scaled"] = model.scale_latents(parts[main])
        out = {k: v.float().cpu().numpy() for k, v in parts.items()}
        if y is not None:
            out["y"] = y.long().cpu().numpy()
        return out

    first_index = next(chunks)
    first = encode(first_index)
    specs = {k: (v.dtype, (n, *v.shape[1:])) for k, v in first.items()}
    meta = {"format": "vaekit-latents", "latent": main, "seed": str(seed), "n": str(n),
            **({"scaling_factor": str(model.config.scaling_factor),
                "shift_factor": str(model.config.shift_factor or 0.0)} if scaled else {}),
            **(metadata or {})}
    paths_file = None
    if paths is not None and len(paths) != n:
        raise VaekitError(f"{len(paths)} paths for {n} examples")
    bar = _progress(n, "encode", progress)
    with chunked_output(out, specs, meta, main) as arrays:
        _put(arrays, first_index, first)
        bar.update(len(first_index))
        for index in chunks:
            _put(arrays, index, encode(index))
            bar.update(len(index))
    bar.close()
    if paths is not None:  # only once the latents are in place: a failed encode leaves no sidecar behind
        paths_file = write_paths(sidecar_path(out), paths)
    written = [main] if out.suffix.lower() == ".npy" else list(specs)
    return EncodeResult(out, n, {k: list(specs[k][1]) for k in written}, paths_file)


def _put(arrays: dict[str, np.ndarray], index: Tensor, part: dict[str, np.ndarray]) -> None:
    start, stop = int(index[0]), int(index[-1]) + 1
    for name, a in arrays.items():
        a[start:stop] = part[name]


# -- read latents back ----------------------------------------------------------------------------


@dataclass
class Latents:
    """A latents file opened for reading in chunks: ``chunk(start, stop)`` -> (z, y or None)."""

    path: Path
    key: str
    n: int
    shape: tuple[int, ...]  # one latent's
    scaled: bool  # the latents are (z - shift) * scaling_factor and must be unscaled
    _read: object
    _labels: object

    def chunk(self, start: int, stop: int) -> tuple[Tensor, Tensor | None]:
        stop = min(stop, self.n)
        z = torch.from_numpy(np.array(self._read(start, stop), dtype=np.float32))  # a copy: maps are read-only
        y = None if self._labels is None else torch.from_numpy(np.array(self._labels(start, stop), dtype=np.int64))
        return z, y


def open_latents(path: str | Path, key: str | None = None) -> Latents:
    """Open ``path`` (.safetensors, .npz or .npy). The latent is ``key``, else ``z``, else ``mean``, else
    ``scaled`` (unscaled before decoding); a ``.npy`` holds one array; labels are ``y`` when present."""
    path = Path(path)
    if not path.is_file():
        raise VaekitError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in LATENT_SUFFIXES:
        raise VaekitError(f"{path}: unsupported latents file type '{path.suffix}' (expected "
                          f"{', '.join(LATENT_SUFFIXES)})")
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            f = safe_open(str(path), framework="np")
            names = list(f.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise VaekitError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None

        def reader(name):
            sl = f.get_slice(name)
            return sl.get_shape(), lambda a, b: sl[a:b]
    else:
        try:
            if suffix == ".npy":
                arrays = {"latent": np.load(path, mmap_mode="r", allow_pickle=False)}
            else:
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise VaekitError(f"{path}: not a readable numpy file ({str(e).splitlines()[0]})") from None
        names = list(arrays)

        def reader(name):
            a = arrays[name]
            return list(a.shape), lambda s, t: a[s:t]
    if key is None:
        key = next((k for k in ("z", "mean", "scaled", "latent") if k in names), None)
        if key is None:
            raise VaekitError(f"{path}: no latents (expected a tensor named z, mean or scaled; found "
                              f"{', '.join(names) or 'none'}); pass --key")
    elif key not in names:
        raise VaekitError(f"{path}: no tensor named '{key}' (found {', '.join(names)})")
    shape, read = reader(key)
    if len(shape) < 2:
        raise VaekitError(f"{path}: '{key}' has shape {tuple(shape)}; expected [N, *latent]")
    labels = None
    if "y" in names and key != "y":
        yshape, labels = reader("y")
        if list(yshape) != [shape[0]]:
            raise VaekitError(f"{path}: labels 'y' have shape {tuple(yshape)}; expected ({shape[0]},)")
    return Latents(path, key, int(shape[0]), tuple(int(s) for s in shape[1:]), key == "scaled", read, labels)


# -- decode ---------------------------------------------------------------------------------------


DECODE_SUFFIXES = (".npy", ".npz", ".png", ".csv")


@dataclass
class DecodeResult:
    path: Path
    n: int  # examples decoded (a grid shows at most ``grid`` of them)


@torch.no_grad()
def decode_latents(model, latents: Latents, out: str | Path, info, *, batch_size: int = 256, grid: int = 64,
                   progress: bool = False) -> DecodeResult:
    """Decode every latent of ``latents`` (the decoder's mean of p(x|z)) into ``out``:

    - ``x.npy`` / ``x.npz``: the data as the run serves it (images in its input range; table rows
      standardised), ``x`` [N, *data] (and ``y`` in the .npz);
    - ``x.csv`` (tables): rows in the data's own units (the run's standardisation undone), headed by
      the feature names;
    - ``grid.png`` (images): the first ``grid`` examples in one picture;
    - ``DIR`` (images): one 8-bit PNG per example, ``000000.png``, ... (written to a temp folder,
      renamed when complete; DIR must not exist or be empty).
    """
    out = Path(out)
    model.eval()
    device = next(model.parameters()).device
    latent_shape = tuple(model.latent_shape)
    if latents.shape != latent_shape:
        raise VaekitError(f"{latents.path}: latents of shape {latents.shape} do not fit this run's model, whose "
                          f"latents have shape {latent_shape}")
    if latents.scaled and not hasattr(model, "unscale_latents"):
        raise VaekitError(f"{latents.path}: scaled latents need an autoencoder-kl run")
    if model.config.conditional and latents._labels is None:
        raise VaekitError(f"{latents.path}: this model is conditional; the latents file needs labels 'y'")
    if batch_size < 1:
        raise VaekitError(f"--batch-size must be >= 1, got {batch_size}")
    suffix = out.suffix.lower()
    image = info.kind == "image"
    if suffix and suffix not in DECODE_SUFFIXES:
        raise VaekitError(f"--out {out}: unsupported output type '{out.suffix}' (expected a folder, "
                          f"{', '.join(DECODE_SUFFIXES)})")
    if suffix in ("", ".png") and not image:
        raise VaekitError(f"--out {out}: this run's data are table rows; decode them to .csv, .npy or .npz")
    if suffix == ".csv" and image:
        raise VaekitError(f"--out {out}: this run's data are images; decode them to a folder, grid.png, .npy or .npz")
    if suffix == "" and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VaekitError(f"--out {out}: exists and is not an empty folder")
    if grid < 1:
        raise VaekitError(f"-n must be >= 1, got {grid}")

    n = latents.n if suffix != ".png" else min(grid, latents.n)
    data_shape = tuple(model.config.data_shape)

    def decoded() -> Iterator[tuple[int, Tensor, Tensor | None]]:
        bar = _progress(n, "decode", progress)
        for start in range(0, n, batch_size):
            z, y = latents.chunk(start, min(start + batch_size, n))
            z = z.to(device)
            if latents.scaled:
                z = model.unscale_latents(z)
            yd = None if y is None else y.to(device)
            x = model.decode(z, yd if model.config.conditional else None).float().cpu()
            bar.update(len(z))
            yield start, x, y
        bar.close()

    if suffix in (".npy", ".npz"):
        specs = {"x": (np.dtype(np.float32), (n, *data_shape))}
        if suffix == ".npz" and latents._labels is not None:
            specs["y"] = (np.dtype(np.int64), (n,))
        with chunked_output(out, specs, {}, "x") as arrays:
            for start, x, y in decoded():
                arrays["x"][start : start + len(x)] = x.numpy()
                if "y" in arrays:
                    arrays["y"][start : start + len(x)] = y.numpy()
    elif suffix == ".csv":
        mean = torch.tensor(info.standardize_mean) if info.standardize_mean else None
        std = torch.tensor(info.standardize_std) if info.standardize_std else None
        names = list(info.feature_names) or [f"x{i}" for i in range(data_shape[0])]
        with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(names)
            for _, x, _ in decoded():
                rows = x if mean is None else x * std + mean
                w.writerows([[f"{v:.9g}" for v in row] for row in rows.double().tolist()])
    elif suffix == ".png":
        from vaekit.viz.grid import image_grid, save_png

        shown = torch.cat([x for _, x, _ in decoded()])
        save_png(image_grid(shown, value_range=tuple(info.input_range)), out)
    else:
        _write_folder(out, decoded(), tuple(info.input_range))
    return DecodeResult(out, n)


def to_uint8(x: Tensor, value_range: tuple[float, float]) -> np.ndarray:
    """Images in ``value_range`` -> [B, H, W] or [B, H, W, 3] uint8 (Pillow's layout)."""
    lo, hi = value_range
    q = ((x.float() - lo) / (hi - lo) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return (q[:, 0] if q.shape[1] == 1 else q.permute(0, 2, 3, 1)).numpy()


def _write_folder(out: Path, batches, value_range) -> None:
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for start, x, _ in batches:
            for i, a in enumerate(to_uint8(x, value_range)):
                Image.fromarray(a).save(tmp / f"{start + i:06d}.png")
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
