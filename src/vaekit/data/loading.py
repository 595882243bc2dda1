"""Read, check, split and scale the data a ``DataConfig`` describes, into ``DataSplits``.

Data that fits in memory is held as one tensor (``ArrayData``), so the hot path does no
per-example Python work. Image folders trained with ``augment`` (random crops and flips, as the
KL autoencoder wants) and sources of differently sized photos are streamed (``ImageStream``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaekit.data.arrays import ArrayData, IndexedView, RawData
from vaekit.data.config import EVAL_BINARIZE_SEED, STREAM_HELD_OUT, DataConfig, DataInfo
from vaekit.data.sources import ReadOptions, read_source
from vaekit.data.stream import ImageStream
from vaekit.errors import VaekitError


@dataclass
class DataSplits:
    train: ArrayData | ImageStream
    val: ArrayData | ImageStream | None
    test: ArrayData | ImageStream
    info: DataInfo
    binarize: str = "none"
    notes: list[str] = field(default_factory=list)
    perturb: float = 0.0  # training batches only (vaekit.data.perturb)

    def split(self, name: str):
        data = {"train": self.train, "val": self.val, "test": self.test}[name]
        if data is None or len(data) == 0:
            raise VaekitError(f"this run has no '{name}' split (it was trained with --val-fraction 0)")
        return data


def load_data(cfg: DataConfig, saved: DataInfo | None = None,
              input_range: tuple[float, float] = (0.0, 1.0)) -> DataSplits:
    """Read, check, split and scale the data described by ``cfg``.

    8-bit images are mapped to ``input_range`` ([0, 1], or [-1, 1] for the KL autoencoder).
    ``saved`` is the DataInfo of an existing run: its scaling and standardisation are reused and
    the data must still have the shape the run was trained on.
    """
    if not cfg.spec:
        raise VaekitError("this run records no data (its weights were imported); pass --data")
    if saved is not None:
        input_range = tuple(saved.input_range)
    opts = ReadOptions(cfg.resolution, cfg.color, cfg.skip_bad, cfg.label_column, lazy=cfg.augment)
    raw = read_source(cfg.spec, opts)
    if raw.dataset is not None:
        return _load_procedural(cfg, raw, input_range, saved)
    if raw.items is not None:
        return _load_stream(cfg, raw, opts, input_range, saved)
    return _load_arrays(cfg, raw, opts, input_range, saved)


def _load_arrays(cfg: DataConfig, raw: RawData, opts: ReadOptions, input_range, saved: DataInfo | None) -> DataSplits:
    x, y = raw.x, raw.y
    check_finite(x, raw.source)
    if cfg.test_spec is not None:
        test_raw = read_source(cfg.test_spec, ReadOptions(cfg.resolution, cfg.color, cfg.skip_bad, cfg.label_column))
        if test_raw.x is None:
            raise VaekitError(f"{cfg.test_spec}: cannot serve as test data for in-memory training data")
        x_test, y_test, test_source = test_raw.x, test_raw.y, "file"
        test_dtype = test_raw.x.dtype
        check_finite(x_test, test_raw.source)
        if x_test.shape[1:] != x.shape[1:]:
            raise VaekitError(f"train data ({cfg.spec}) has examples of shape {tuple(x.shape[1:])} but test data "
                              f"({cfg.test_spec}) has {tuple(x_test.shape[1:])}")
    elif raw.x_test is not None:
        x_test, y_test, test_source = raw.x_test, raw.y_test, "own"
        check_finite(x_test, raw.source + " (test)")
        if x_test.shape[1:] != x.shape[1:]:
            raise VaekitError(f"{raw.source}: test examples have shape {tuple(x_test.shape[1:])}, "
                              f"train examples {tuple(x.shape[1:])}")
    else:
        x_test = y_test = None
        test_source = "split"
    if test_source != "file":
        test_dtype = x.dtype

    rng = np.random.default_rng(cfg.split_seed)
    if x_test is None:
        perm = rng.permutation(len(x))
        n_test = max(1, round(cfg.test_fraction * len(x)))
        if len(x) - n_test < 2:
            raise VaekitError(f"{raw.source}: {len(x)} examples are too few to split into train and test")
        test_idx, perm = perm[:n_test], perm[n_test:]
        x_test, y_test = x[test_idx], None if y is None else y[test_idx]
        x, y = x[perm], None if y is None else y[perm]
    n_val = round(cfg.val_fraction * len(x))
    if n_val:
        perm = rng.permutation(len(x))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        x_val, y_val = x[val_idx], None if y is None else y[val_idx]
        x, y = x[train_idx], None if y is None else y[train_idx]
    else:
        x_val = y_val = None
    if cfg.limit is not None:
        x, y = x[: cfg.limit], None if y is None else y[: cfg.limit]

    scale = _scaler(raw, x, saved, input_range, cfg.pad_to)
    labels = [a for a in (y, y_val, y_test) if a is not None]
    num_classes = int(max(a.max() for a in labels)) + 1 if labels and y is not None else 0
    if saved is not None:
        num_classes = saved.num_classes
    class_names = raw.class_names or tuple(str(i) for i in range(num_classes))

    train = ArrayData(scale(x), _tensor_labels(y if num_classes else None))
    val = ArrayData(scale(x_val), _tensor_labels(y_val if num_classes else None)) if x_val is not None else None
    test = ArrayData(scale(x_test), _tensor_labels(y_test if num_classes and y_test is not None else None))
    _check_saved_shape(cfg, train.shape, saved)
    lo, hi = float(train.x.min()), float(train.x.max())

    if cfg.binarize != "none":
        if lo < 0 or hi > 1:
            raise VaekitError(f"--binarize needs data in [0, 1]; {raw.source} has values in [{lo:.3g}, {hi:.3g}]")
        g = torch.Generator().manual_seed(EVAL_BINARIZE_SEED)
        for held_out in (val, test):
            if held_out is not None:
                held_out.x = torch.bernoulli(held_out.x, generator=g)
        if cfg.binarize == "static":
            train.x = torch.bernoulli(train.x, generator=torch.Generator().manual_seed(cfg.split_seed))

    eight_bit = x.dtype == np.uint8 and test_dtype == np.uint8 and tuple(input_range) == (0.0, 1.0)
    info = DataInfo(
        kind=raw.kind,
        shape=train.shape,
        levels=256 if eight_bit and cfg.binarize == "none" else 0,
        num_classes=num_classes,
        class_names=tuple(class_names[:num_classes]) if num_classes else (),
        feature_names=raw.feature_names,
        value_range=(lo, hi),
        input_range=tuple(input_range),
        standardize_mean=scale.mean,
        standardize_std=scale.std,
        n_train=len(train),
        n_val=0 if val is None else len(val),
        n_test=len(test),
        test_source=test_source,
        skipped_files=raw.skipped,
        source=raw.source,
    )
    return DataSplits(train, val, test, info, cfg.binarize, _notes(raw), cfg.perturb)


def _load_stream(cfg: DataConfig, raw: RawData, opts: ReadOptions, input_range, saved: DataInfo | None) -> DataSplits:
    """Streamed images: an 80/20 seeded split of the images (or --val-data); the held-out part
    serves as both validation and test split."""
    if cfg.resolution is None:
        raise VaekitError(f"{raw.source}: streamed images need --resolution N (the crop size)")
    if cfg.binarize != "none":
        raise VaekitError("--binarize applies to in-memory data, not to streamed images")
    items, labels = list(raw.items), raw.y
    grey = cfg.color == "grey" or (cfg.color == "auto" and raw.grey)
    if cfg.test_spec is not None:
        held_raw = read_source(cfg.test_spec, ReadOptions(cfg.resolution, cfg.color, cfg.skip_bad, lazy=True))
        if held_raw.items is None:
            raise VaekitError(f"{cfg.test_spec}: --val-data for streamed images must be a folder of images")
        held, held_labels, test_source = list(held_raw.items), held_raw.y, "file"
    else:
        if len(items) < 2:
            raise VaekitError(f"{raw.source}: {len(items)} image(s) are too few to hold some out")
        perm = np.random.default_rng(cfg.split_seed).permutation(len(items))
        n_held = max(1, round(STREAM_HELD_OUT * len(items)))
        held = [items[i] for i in perm[:n_held]]
        held_labels = None if labels is None else labels[perm[:n_held]]
        items = [items[i] for i in perm[n_held:]]
        labels = None if labels is None else labels[perm[n_held:]]
        test_source = "split"
    if cfg.limit is not None:
        items, labels = items[: cfg.limit], None if labels is None else labels[: cfg.limit]
    common = {"resolution": cfg.resolution, "grey": grey, "resize": cfg.resize, "input_range": tuple(input_range),
              "seed": cfg.split_seed}
    train = ImageStream(items, labels, augment=cfg.augment, length=cfg.samples_per_epoch, **common)
    held_out = ImageStream(held, held_labels, augment=False, length=cfg.eval_samples, **common)
    _check_saved_shape(cfg, train.shape, saved)
    num_classes = 0 if labels is None else int(labels.max()) + 1
    info = DataInfo(
        kind="image", shape=train.shape, num_classes=num_classes, class_names=raw.class_names[:num_classes],
        value_range=tuple(input_range), input_range=tuple(input_range),
        levels=256 if tuple(input_range) == (0.0, 1.0) else 0, n_train=len(train), n_val=len(held_out),
        n_test=len(held_out), test_source=test_source, streamed=True, skipped_files=raw.skipped, source=raw.source,
    )
    return DataSplits(train, held_out, held_out, info, "none", _notes(raw), cfg.perturb)


def _load_procedural(cfg: DataConfig, raw: RawData, input_range, saved: DataInfo | None) -> DataSplits:
    """A seeded split of the indices: test_fraction for test, val_fraction of the rest for validation."""
    ds = raw.dataset
    n = len(ds)
    perm = torch.from_numpy(np.random.default_rng(cfg.split_seed).permutation(n))
    n_test = max(1, round(cfg.test_fraction * n))
    n_val = round(cfg.val_fraction * (n - n_test))
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    if cfg.limit is not None:
        train = train[: cfg.limit]
    views = [IndexedView(ds, idx, tuple(input_range)) for idx in (train, val, test)]
    _check_saved_shape(cfg, views[0].shape, saved)
    info = DataInfo(kind=ds.kind, shape=views[0].shape, num_classes=len(raw.class_names),
                    class_names=raw.class_names, value_range=tuple(input_range), input_range=tuple(input_range),
                    n_train=len(train), n_val=len(val), n_test=len(test), source=raw.source)
    return DataSplits(views[0], views[1] if len(val) else None, views[2], info, cfg.binarize, [], cfg.perturb)


def _notes(raw: RawData) -> list[str]:
    return [f"skipped {raw.skipped} unreadable image file(s)"] if raw.skipped else []


def _check_saved_shape(cfg: DataConfig, shape: tuple[int, ...], saved: DataInfo | None) -> None:
    if saved is not None and saved.shape and tuple(shape) != tuple(saved.shape):
        raise VaekitError(f"{cfg.spec}: examples now have shape {tuple(shape)}, but the run was trained on "
                          f"{tuple(saved.shape)}")


def check_finite(x: np.ndarray, source: str) -> None:
    if np.issubdtype(x.dtype, np.floating):
        flat = x.reshape(len(x), -1)
        bad = ~np.isfinite(flat).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            kind = "NaN" if np.isnan(flat[row]).any() else "Inf"
            raise VaekitError(f"{source}: row {row} contains {kind}")


class _Scaler:
    """uint8 -> ``input_range``; CSV columns -> standardised; other floats unchanged; optional
    zero padding of images (padding is 0 in the 8-bit scale: black)."""

    def __init__(self, mean: tuple[float, ...] = (), std: tuple[float, ...] = (), divide: float = 1.0,
                 offset: float = 0.0, pad_to: int | None = None):
        self.mean, self.std, self.divide, self.offset, self.pad_to = mean, std, divide, offset, pad_to

    def __call__(self, a: np.ndarray) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a)).float()
        if self.pad_to is not None:
            t = _pad(t, self.pad_to)
        if self.divide != 1.0 or self.offset:
            t = t / self.divide + self.offset
        if self.mean:
            t = (t - torch.tensor(self.mean)) / torch.tensor(self.std)
        return t.contiguous()


def _pad(t: Tensor, size: int) -> Tensor:
    if t.dim() != 4:
        raise VaekitError("--pad-to applies to images only")
    h, w = t.shape[-2:]
    if h > size or w > size:
        raise VaekitError(f"--pad-to {size} is smaller than the images ({h}x{w})")
    top, left = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(t, (left, size - w - left, top, size - h - top))


def _scaler(raw: RawData, x_train: np.ndarray, saved: DataInfo | None, input_range, pad_to: int | None) -> _Scaler:
    lo, hi = input_range
    if raw.x.dtype == np.uint8:
        return _Scaler(divide=255.0 / (hi - lo), offset=lo, pad_to=pad_to)
    if raw.feature_names:  # CSV
        if saved is not None and saved.standardize_mean:
            return _Scaler(saved.standardize_mean, saved.standardize_std)
        mean = x_train.astype(np.float64).mean(0)
        std = x_train.astype(np.float64).std(0)
        std[std == 0] = 1.0  # a constant column stays constant (zero) instead of dividing by zero
        return _Scaler(tuple(float(v) for v in mean), tuple(float(v) for v in std))
    if (lo, hi) != (0.0, 1.0) and raw.kind == "image":  # float images are taken to be in [0, 1]
        return _Scaler(divide=1.0 / (hi - lo), offset=lo, pad_to=pad_to)
    return _Scaler(pad_to=pad_to)


def _tensor_labels(y: np.ndarray | None) -> Tensor | None:
    return None if y is None else torch.from_numpy(np.asarray(y, dtype=np.int64))


# -- every example of a source, prepared as a run prepares its data ----------------------------------


@dataclass
class Examples:
    """Examples to encode or score, in a fixed order, with the file of each (folders) for a sidecar."""

    data: ArrayData | ImageStream | IndexedView
    paths: list[str] | None
    source: str
    split: str  # all | train | val | test


def load_examples(cfg: DataConfig, saved: DataInfo, split: str = "all") -> Examples:
    """The examples of ``cfg.spec`` as the run ``saved`` describes them (its scaling, standardisation,
    resolution and held-out binarisation), checked against the run's shape.

    ``split="all"``: every example of the source in its own order (files: rows; folders: sorted paths,
    streamed, so memory stays bounded; sources with their own test set: training examples first).
    ``train``/``val``/``test``: that split as the run made it (same seed); streamed splits are served
    without augmentation (centre crops), so they are deterministic.
    """
    if not cfg.spec:
        raise VaekitError("this run records no data (its weights were imported); pass --data")
    if split != "all":
        data = load_data(cfg, saved).split(split)
        if isinstance(data, ImageStream):
            data = dataclasses.replace(data, augment=False, _pool=None)
        return Examples(data, _stream_paths(data), cfg.spec, split)
    input_range = tuple(saved.input_range)
    raw = read_source(cfg.spec, ReadOptions(cfg.resolution, cfg.color, cfg.skip_bad, cfg.label_column, lazy=True))
    if raw.dataset is not None:
        view = IndexedView(raw.dataset, torch.arange(len(raw.dataset)), input_range)
        _check_saved_shape(cfg, view.shape, saved)
        return Examples(view, None, raw.source, split)
    if raw.items is not None:
        shape = tuple(saved.shape)
        if len(shape) == 3 and shape[1] == shape[2]:
            stream = ImageStream(list(raw.items), raw.y, resolution=shape[-1], grey=shape[0] == 1, resize=cfg.resize,
                                 input_range=input_range, seed=cfg.split_seed)
            return Examples(stream, _stream_paths(stream), raw.source, split)
        # a run on same-size, non-square images: read them all (no crop can make them)
        raw = read_source(cfg.spec, ReadOptions(cfg.resolution, cfg.color, cfg.skip_bad, cfg.label_column))
    x, y = raw.x, raw.y
    if raw.x_test is not None and raw.x_test.shape[1:] == x.shape[1:]:
        x = np.concatenate([x, raw.x_test])
        y = np.concatenate([y, raw.y_test]) if y is not None and raw.y_test is not None else None
    check_finite(x, raw.source)
    data = ArrayData(_scaler(raw, x, saved, input_range, cfg.pad_to)(x), _tensor_labels(y))
    _check_saved_shape(cfg, data.shape, saved)
    if cfg.binarize != "none":  # as the run's held-out data: binarised once, with the fixed seed
        lo, hi = float(data.x.min()), float(data.x.max())
        if lo < 0 or hi > 1:
            raise VaekitError(f"{raw.source}: this run binarises its data, which needs values in [0, 1]; found "
                              f"[{lo:.3g}, {hi:.3g}]")
        data.x = torch.bernoulli(data.x, generator=torch.Generator().manual_seed(EVAL_BINARIZE_SEED))
    return Examples(data, None, raw.source, split)


def _stream_paths(data) -> list[str] | None:
    if not isinstance(data, ImageStream) or not all(isinstance(p, Path) for p in data.items):
        return None
    return [str(data.items[i % len(data.items)]) for i in range(len(data))]


def scale_like_run(x, info: DataInfo) -> Tensor:
    """Raw examples (a numpy array or tensor: 8-bit or float images, or table rows in their own units)
    prepared as the run prepares its data: 8-bit images to its input range, CSV columns standardised
    with its training statistics, float images (taken to be in [0, 1]) to its input range."""
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    lo, hi = info.input_range
    if a.dtype == np.uint8:
        scale = _Scaler(divide=255.0 / (hi - lo), offset=lo)
    elif info.standardize_mean:
        scale = _Scaler(info.standardize_mean, info.standardize_std)
    elif (lo, hi) != (0.0, 1.0) and info.kind == "image":
        scale = _Scaler(divide=1.0 / (hi - lo), offset=lo)
    else:
        scale = _Scaler()
    return scale(a)
