"""What ``--data`` asks for (``DataConfig``, saved with a run) and what the loader found
(``DataInfo``, saved beside it so that later commands rebuild the same data)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaekit.config import check

COLORS = ("auto", "grey", "rgb")
BINARIZE = ("none", "static", "dynamic")
EVAL_BINARIZE_SEED = 20_140_101  # held-out data is binarised once, with this fixed seed
STREAM_HELD_OUT = 0.2  # streamed sources: an 80/20 seeded split of the images


@dataclass(frozen=True)
class DataConfig:
    spec: str = "digits"
    test_spec: str | None = None  # --test-data / --val-data
    val_fraction: float = 0.1  # of the training data, held out for per-epoch validation
    test_fraction: float = 0.1  # used only when the source has no test split and no --test-data
    split_seed: int = 0
    resolution: int | None = None
    color: str = "auto"  # auto | grey | rgb
    binarize: str = "none"  # none | static (once, seeded) | dynamic (resampled every batch)
    perturb: float = 0.0  # training batches: each value replaced by uniform noise with this probability
    skip_bad: bool = False
    label_column: str | None = None  # CSV: the column that holds class labels
    limit: int | None = None  # keep only the first N training examples
    pad_to: int | None = None  # zero-pad images to N x N (e.g. Fashion-MNIST to 32 for an f8 model)
    augment: bool = False  # image folders: stream them with random crops and flips for training
    resize: bool = True  # streams: resize the shorter side to --resolution before cropping
    samples_per_epoch: int | None = None  # streams: training examples per epoch (crops per image > 1)
    eval_samples: int | None = None  # streams: held-out examples (crops fixed by the seed)

    def __post_init__(self) -> None:
        check(0 <= self.val_fraction < 1, f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        check(0 < self.test_fraction < 1, f"test fraction must be in (0, 1), got {self.test_fraction}")
        check(self.resolution is None or self.resolution >= 1, f"--resolution must be >= 1, got {self.resolution}")
        check(self.color in COLORS, f"unknown color mode '{self.color}' (choose from: {', '.join(COLORS)})")
        check(self.binarize in BINARIZE, f"unknown --binarize '{self.binarize}' (choose from: {', '.join(BINARIZE)})")
        check(0 <= self.perturb < 1, f"--perturb must be in [0, 1), got {self.perturb}")
        for name in ("limit", "pad_to", "samples_per_epoch", "eval_samples"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"--{name.replace('_', '-')} must be >= 1, got {value}")


@dataclass(frozen=True)
class DataInfo:
    """What the loader found; saved with the run so that later commands rebuild the same data."""

    kind: str = "image"  # image | vector
    shape: tuple[int, ...] = ()
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()
    value_range: tuple[float, float] = (0.0, 1.0)  # of the training data as served
    input_range: tuple[float, float] = (0.0, 1.0)  # what 8-bit images are mapped to
    levels: int = 0  # 256: every split is 8-bit data served as k/255 (what a discrete likelihood needs); 0: other
    standardize_mean: tuple[float, ...] = ()  # vector data from CSV: per-column statistics of the
    standardize_std: tuple[float, ...] = ()  # training split, applied to every split
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    test_source: str = "split"  # split | own | file
    streamed: bool = False
    skipped_files: int = 0
    source: str = ""

    @property
    def dims(self) -> int:
        return int(np.prod(self.shape))
