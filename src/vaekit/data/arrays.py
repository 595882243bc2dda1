"""Data held in memory and served by index: ``ArrayData`` (one tensor, the hot path), ``IndexedView``
(a split of a procedural dataset) and ``RawData`` (arrays as a reader returns them)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


@dataclass
class RawData:
    """Arrays as read: x is [N, D] (vector) or [N, C, H, W] (image), uint8 or float."""

    x: np.ndarray | None  # None for a source read lazily (``items``)
    y: np.ndarray | None = None
    x_test: np.ndarray | None = None  # the source's own test split, if it has one
    y_test: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()
    source: str = ""
    skipped: int = 0  # unreadable files skipped with --skip-bad
    origin: dict = field(default_factory=dict)  # where rows came from, for error messages
    items: list | None = None  # images to stream instead of x: Paths or [H, W, C] uint8 arrays
    grey: bool = False  # for items: whether they are grey
    dataset: object = None  # a procedural dataset served by index (``batch``), e.g. dSprites

    @property
    def kind(self) -> str:
        if self.dataset is not None:
            return self.dataset.kind
        return "image" if self.items is not None or self.x.ndim == 4 else "vector"


@dataclass
class ArrayData:
    """Examples as one tensor x [N, *shape] (float32) and optional labels y [N] (int64)."""

    x: Tensor
    y: Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.x.index_select(0, index), None if self.y is None else self.y.index_select(0, index)

    def take(self, n: int) -> ArrayData:
        return ArrayData(self.x[:n], None if self.y is None else self.y[:n])


@dataclass
class IndexedView:
    """A split of a procedural dataset: examples ``indices`` of ``dataset``, served by index; the
    labels are the first factor (for pictures), the dataset keeps all factors."""

    dataset: object
    indices: Tensor
    input_range: tuple[float, float] = (0.0, 1.0)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dataset.shape)

    @property
    def y(self) -> Tensor:
        return self.dataset.factors(self.indices)[:, 0]

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        x, factors = self.dataset.batch(self.indices[index])
        lo, hi = self.input_range
        return x * (hi - lo) + lo, factors[:, 0]

    def take(self, n: int) -> ArrayData:
        x, y = self.batch(torch.arange(min(n, len(self))))
        return ArrayData(x, y)
