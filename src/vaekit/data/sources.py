"""Readers for every form ``--data`` accepts. Each returns a ``RawData`` of numpy arrays.

Named datasets register with ``@DATASETS.register(name)`` and take an optional directory
(``name:/path``); files are read by suffix; a directory is a folder of images.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaekit.data.arrays import RawData
from vaekit.data.images import read_image_folder
from vaekit.errors import VaekitError
from vaekit.registry import Registry


@dataclass(frozen=True)
class ReadOptions:
    resolution: int | None = None
    color: str = "auto"
    skip_bad: bool = False
    label_column: str | None = None
    lazy: bool = False  # image folders: list the files for streaming instead of decoding them all


DATASETS: Registry[Callable[[str | None, ReadOptions], RawData]] = Registry("dataset")
FILE_READERS: dict[str, Callable[[Path, ReadOptions], RawData]] = {}


def file_reader(*suffixes: str):
    def decorate(fn):
        for s in suffixes:
            FILE_READERS[s] = fn
        return fn

    return decorate


def recorded_spec(spec: str | None) -> str | None:
    """The spec as a run records it: a relative path to an existing file or folder made absolute, so
    that the run finds its data again from any working directory; dataset names unchanged."""
    if not spec or spec.partition(":")[0] in DATASETS:
        return spec
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() and not path.is_absolute() else spec


def read_source(spec: str, opts: ReadOptions) -> RawData:
    """Resolve a ``--data`` spec: a dataset name, ``name:/dir``, a file, or an image directory."""
    name, _, arg = spec.partition(":")
    if name in DATASETS:
        return DATASETS.get(name)(arg or None, opts)
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join(DATASETS.names())
        raise VaekitError(f"data: no such file or directory: {spec} (named datasets: {known})")
    if path.is_dir():
        return read_image_folder(path, opts.resolution, opts.color, opts.skip_bad, lazy=opts.lazy)
    reader = FILE_READERS.get(path.suffix.lower())
    if reader is None:
        raise VaekitError(
            f"{path}: unsupported data file type '{path.suffix}' "
            f"(expected {', '.join(sorted(FILE_READERS))}, or a directory of images)"
        )
    return reader(path, opts)


# -- named datasets ---------------------------------------------------------------------------------


@DATASETS.register("digits")
def _digits(arg: str | None, opts: ReadOptions) -> RawData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, grey levels 0-16)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8] in [0, 1]
    return RawData(x, d.target.astype(np.int64), class_names=tuple(str(i) for i in range(10)),
                   source="scikit-learn digits (8x8)")


SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
                  "stereo_motorcycle")


@DATASETS.register("skimage-photos")
def _skimage_photos(arg: str | None, opts: ReadOptions) -> RawData:
    """The colour photographs bundled with scikit-image (9 images, 300-1411 px), streamed as random
    crops: train with --resolution 64 --no-resize --samples-per-epoch N."""
    try:
        import skimage.data
    except ImportError:
        raise VaekitError("the skimage-photos dataset needs scikit-image (pip install 'vaekit[images]')") from None
    items = []
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        for part in (image if isinstance(image, tuple) else (image,))[:2]:
            if isinstance(part, np.ndarray) and part.ndim == 3 and part.shape[2] == 3:
                items.append(np.ascontiguousarray(part.astype(np.uint8)))
    return RawData(None, None, source="scikit-image sample photos", items=items, grey=False)


@DATASETS.register("dsprites")
def _dsprites(arg: str | None, opts: ReadOptions) -> RawData:
    """dSprites, generated procedurally (737,280 binary 64x64 images with their five factors); the
    labels are the shape (square, ellipse, heart), the factors are kept for disentanglement metrics."""
    from vaekit.data.dsprites import SHAPES, DSprites

    return RawData(None, None, class_names=tuple(SHAPES), source="dSprites (procedural)", dataset=DSprites())


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot")
SYSTEM_DIRS = {"fashion-mnist": ["/usr/share/datasets/fashion-mnist"], "mnist": ["/usr/share/datasets/mnist"]}


def idx_search_dirs(name: str) -> list[Path]:
    dirs: list[Path] = []
    for root in filter(None, os.environ.get("VAEKIT_DATA", "").split(os.pathsep)):
        dirs += [Path(root) / name, Path(root)]
    return dirs + [Path(d) for d in SYSTEM_DIRS.get(name, [])]


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (stem, stem + ".gz"):
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def _read_idx_dataset(name: str, arg: str | None, class_names: tuple[str, ...]) -> RawData:
    dirs = [Path(arg).expanduser()] if arg else idx_search_dirs(name)
    if arg and not dirs[0].is_dir():
        raise VaekitError(f"{name}: no such directory: {arg}")
    for d in dirs:
        train = _find_idx(d, "train-images-idx3-ubyte")
        if train is None:
            continue
        parts = {}
        for key, stem in (("x", "train-images-idx3-ubyte"), ("y", "train-labels-idx1-ubyte"),
                          ("x_test", "t10k-images-idx3-ubyte"), ("y_test", "t10k-labels-idx1-ubyte")):
            f = _find_idx(d, stem)
            if f is None:
                raise VaekitError(f"{name}: {d} has training images but no {stem}[.gz]")
            parts[key] = read_idx(f)
        return RawData(parts["x"][:, None], parts["y"].astype(np.int64), parts["x_test"][:, None],
                       parts["y_test"].astype(np.int64), class_names=class_names, source=f"{name} ({d})")
    hint = " (on Debian: apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
    searched = ", ".join(str(d) for d in dirs)
    raise VaekitError(f"{name}: IDX files not found in {searched}; set VAEKIT_DATA or use {name}:/dir{hint}")


@DATASETS.register("fashion-mnist")
def _fashion(arg: str | None, opts: ReadOptions) -> RawData:
    """Fashion-MNIST from IDX files (60k train / 10k test, 28x28 grey)."""
    return _read_idx_dataset("fashion-mnist", arg, FASHION_CLASSES)


@DATASETS.register("mnist")
def _mnist(arg: str | None, opts: ReadOptions) -> RawData:
    """MNIST from IDX files (60k train / 10k test, 28x28 grey)."""
    return _read_idx_dataset("mnist", arg, tuple(str(i) for i in range(10)))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX (MNIST-format) file, gzip-compressed or not, as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4:
            raise ValueError("bad magic number")
        shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
        expected = 4 + 4 * ndim + math.prod(shape)
        if len(data) != expected:
            raise ValueError(f"{len(data)} bytes, expected {expected}")
    except (OSError, EOFError, struct.error, ValueError) as e:
        raise VaekitError(f"{path}: not a valid IDX file ({e})") from None
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()  # writable


# -- files ------------------------------------------------------------------------------------------


def _as_examples(x: np.ndarray, path: Path, what: str = "array") -> np.ndarray:
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise VaekitError(f"{path}: {what} has dtype {x.dtype}; expected numbers")
    if x.ndim == 3:  # [N, H, W] grey images
        x = x[:, None]
    if x.ndim not in (2, 4):
        raise VaekitError(f"{path}: {what} has shape {x.shape}; expected N x D or N x C x H x W")
    if len(x) == 0:
        raise VaekitError(f"{path}: {what} is empty")
    return x


def _load_numpy(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise VaekitError(f"{path}: holds Python objects (pickled); vaekit only reads plain numeric arrays") \
                from None
        raise VaekitError(f"{path}: not a readable numpy file ({e})") from None
    except (OSError, EOFError) as e:
        raise VaekitError(f"{path}: not a readable numpy file ({e})") from None


@file_reader(".npy")
def _read_npy(path: Path, opts: ReadOptions) -> RawData:
    return RawData(_as_examples(np.asarray(_load_numpy(path)), path), source=str(path))


@file_reader(".npz")
def _read_npz(path: Path, opts: ReadOptions) -> RawData:
    """An .npz with ``x`` (or a single array), optional labels ``y``, optional ``x_test``/``y_test``."""
    with _load_numpy(path) as z:
        keys = list(z.keys())
        if "x" in keys:
            xkey = "x"
        elif len([k for k in keys if k != "y"]) == 1:
            xkey = next(k for k in keys if k != "y")
        else:
            raise VaekitError(f"{path}: expected an array named 'x' (found: {', '.join(keys)})")
        x = _as_examples(z[xkey], path, f"array '{xkey}'")
        y = _labels(z["y"], len(x), path, "y") if "y" in keys else None
        x_test = _as_examples(z["x_test"], path, "array 'x_test'") if "x_test" in keys else None
        y_test = _labels(z["y_test"], len(x_test), path, "y_test") if "y_test" in keys and x_test is not None \
            else None
    return RawData(x, y, x_test, y_test, source=str(path))


def _labels(y: np.ndarray, n: int, path: Path, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise VaekitError(f"{path}: labels '{name}' have shape {y.shape}; expected ({n},)")
    whole = np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))
    if not (np.issubdtype(y.dtype, np.integer) or whole):
        raise VaekitError(f"{path}: labels '{name}' must be integers")
    if y.min() < 0:
        raise VaekitError(f"{path}: labels '{name}' must be >= 0 (row {int(np.argmin(y))} is {y.min()})")
    return y.astype(np.int64)


@file_reader(".csv")
def _read_csv(path: Path, opts: ReadOptions) -> RawData:
    """Numeric columns; a first row that is not numeric is the header. ``label_column`` (by name)
    becomes the labels."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise VaekitError(f"{path}: cannot read ({e})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise VaekitError(f"{path}: no rows")
    header: list[str] | None = None
    if not all(_is_number(c) for c in rows[0]):
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    if not rows:
        raise VaekitError(f"{path}: no data rows")
    width = len(header) if header else len(rows[0])
    names = header or [f"x{i}" for i in range(width)]
    first_line = 2 if header else 1
    values = np.empty((len(rows), width), dtype=np.float64)
    for i, row in enumerate(rows):
        line = i + first_line
        if len(row) != width:
            raise VaekitError(f"{path}: line {line} has {len(row)} columns, expected {width}")
        for j, cell in enumerate(row):
            try:
                values[i, j] = float(cell)
            except ValueError:
                raise VaekitError(f"{path}: line {line}, column '{names[j]}': {cell.strip()!r} is not a number") \
                    from None
    y = None
    if opts.label_column is not None:
        if opts.label_column not in names:
            raise VaekitError(f"{path}: no column named '{opts.label_column}' (columns: {', '.join(names)})")
        j = names.index(opts.label_column)
        y = _labels(values[:, j], len(values), path, opts.label_column)
        values = np.delete(values, j, axis=1)
        names = [n for k, n in enumerate(names) if k != j]
    bad = ~np.isfinite(values)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise VaekitError(f"{path}: line {i + first_line}, column '{names[j]}' is {values[i, j]} (NaN or Inf)")
    return RawData(values.astype(np.float32), y, feature_names=tuple(names), source=str(path),
                   origin={"csv_first_line": first_line})


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
