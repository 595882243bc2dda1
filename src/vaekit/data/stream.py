"""Images decoded on demand, for data that should not (or cannot) sit in memory as one tensor:
folders of large photos for the KL autoencoder, random crops of a few big images.

Training streams take a random crop (after resizing the shorter side to the resolution, unless
``resize`` is off) and a random horizontal flip for every example, drawing the offsets from torch's
global generator in the main thread, so runs are reproducible and resume exactly (and, on N ranks,
are the draws one process makes). Held-out streams
take the centre crop, or, when they serve more examples than they have images, a crop fixed by
(seed, index). Files are decoded by a small thread pool (Pillow releases the GIL).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaekit import sharding
from vaekit.data.images import open_image, to_mode


@dataclass
class ImageStream:
    items: list  # Path (decoded per batch) or np.ndarray [H, W, C] uint8 (in memory)
    labels: np.ndarray | None
    resolution: int
    grey: bool
    resize: bool = True  # shorter side -> resolution before cropping (the LDM convention)
    augment: bool = False  # random crop + flip; otherwise deterministic crops
    input_range: tuple[float, float] = (0.0, 1.0)
    length: int | None = None  # examples per pass; more than len(items) means several crops per image
    seed: int = 0
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return self.length or len(self.items)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1 if self.grey else 3, self.resolution, self.resolution)

    @property
    def y(self) -> Tensor | None:
        if self.labels is None:
            return None
        return torch.from_numpy(self.labels[np.arange(len(self)) % len(self.items)])

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        idx = index.tolist()
        # per example: vertical and horizontal crop position in [0, 1), and a flip flag
        # (a sharded step draws the global batch's offsets and keeps its rows: vaekit.sharding)
        draws = sharding.draw(torch.rand, (len(idx), 3), 0).tolist() if self.augment \
            else [self._fixed_draw(i) for i in idx]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
        arrays = list(self._pool.map(self._example, idx, draws))
        x = torch.from_numpy(np.stack(arrays)).float()
        lo, hi = self.input_range
        x = x * ((hi - lo) / 255.0) + lo
        y = None if self.labels is None else torch.from_numpy(self.labels[[i % len(self.items) for i in idx]])
        return x, y

    def take(self, n: int):
        from vaekit.data.arrays import ArrayData

        x, y = self.batch(torch.arange(min(n, len(self))))
        return ArrayData(x, y)

    def _fixed_draw(self, i: int) -> list[float]:
        if self.length is None or self.length <= len(self.items):
            return [0.5, 0.5, 0.0]  # the centre crop, no flip
        r = np.random.default_rng((self.seed, i)).random(2)
        return [float(r[0]), float(r[1]), 0.0]

    def _example(self, i: int, draw: list[float]) -> np.ndarray:
        """[C, R, R] uint8 for example ``i``."""
        from PIL import Image

        item = self.items[i % len(self.items)]
        im = to_mode(open_image(item) if isinstance(item, Path) else Image.fromarray(item), self.grey)
        r = self.resolution
        w, h = im.size
        if self.resize and min(w, h) != r:
            s = r / min(w, h)
            im = im.resize((max(r, round(w * s)), max(r, round(h * s))), Image.Resampling.BICUBIC)
            w, h = im.size
        if min(w, h) < r:
            im = im.resize((max(r, w), max(r, h)), Image.Resampling.BICUBIC)
            w, h = im.size
        top = int(draw[0] * (h - r + 1)) if draw[0] != 0.5 else (h - r) // 2
        left = int(draw[1] * (w - r + 1)) if draw[1] != 0.5 else (w - r) // 2
        im = im.crop((left, top, left + r, top + r))
        if draw[2] >= 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        a = np.asarray(im, dtype=np.uint8)
        return a[None].copy() if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))

    def __getstate__(self):  # pragma: no cover - the pool is not picklable (and vaekit never pickles)
        raise TypeError("ImageStream is not picklable")
