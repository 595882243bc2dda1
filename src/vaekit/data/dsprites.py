"""dSprites (Matthey et al. 2017), generated procedurally: no download.

737,280 binary 64x64 images, one for every combination of five ground-truth factors, enumerated
with the last factor varying fastest (the published order):

    shape 3 (square, ellipse, heart), scale 6 (0.5 to 1), orientation 40 (0 to 2 pi, endpoint
    excluded), position x 32 and position y 32 (0 to 1 across the free area of the canvas).

Shapes are drawn by rasterising their implicit (inside/outside) functions at 4x supersampling and
thresholding coverage at one half. At scale 1 the square's side, the ellipse's major axis and the
heart's width are 20 px, as in the published images; positions place the shape's centre between 14
and 49 px so that every shape, rotated or not, stays inside the canvas. Images are rendered per batch (the whole
set would be 3 GB as bytes), from 720 pre-rendered (shape, scale, orientation) sprites shifted into
place.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
SIZE = 64
SPRITE = 32  # sprites are rendered in a 32x32 box, then placed
BASE = 20.0  # size in pixels at scale 1
POS_LO, POS_HI = 14.0, 49.0  # range of the centre's pixel coordinate: a rotated square stays inside
SUPERSAMPLE = 4


def factor_values() -> dict[str, np.ndarray]:
    return {
        "shape": np.arange(3, dtype=np.float64),
        "scale": np.linspace(0.5, 1.0, 6),
        "orientation": np.linspace(0.0, 2 * math.pi, 40, endpoint=False),
        "pos_x": np.linspace(0.0, 1.0, 32),
        "pos_y": np.linspace(0.0, 1.0, 32),
    }


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Unit shapes (size 1 across) in coordinates u (right), v (up)."""
    if shape == "square":
        return (np.abs(u) <= 0.5) & (np.abs(v) <= 0.5)
    if shape == "ellipse":
        return (u / 0.5) ** 2 + (v / 0.25) ** 2 <= 1.0
    # heart: the classic implicit curve (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled to width 1
    x, y = u * 2.3, v * 2.3 + 0.15
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


def render_sprite(shape: int, scale: float, angle: float) -> np.ndarray:
    """[SPRITE, SPRITE] bool: the shape centred in its box."""
    n = SPRITE * SUPERSAMPLE
    c = (np.arange(n) + 0.5) / SUPERSAMPLE - SPRITE / 2  # pixel-centre coordinates
    xx, yy = np.meshgrid(c, -c)
    size = BASE * scale
    cos, sin = math.cos(angle), math.sin(angle)
    u = (cos * xx + sin * yy) / size  # rotate the sampling grid by -angle: the shape turns by +angle
    v = (-sin * xx + cos * yy) / size
    cover = _inside(SHAPES[shape], u, v).reshape(SPRITE, SUPERSAMPLE, SPRITE, SUPERSAMPLE).mean(axis=(1, 3))
    return cover >= 0.5


class DSprites:
    """The dataset: ``len`` 737,280; ``batch(index)`` renders [B, 1, 64, 64] images in {0, 1} and
    returns the factor indices [B, 5] as labels; ``images_for(factors)`` renders given factors."""

    kind = "image"
    shape = (1, SIZE, SIZE)
    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES

    def __init__(self) -> None:
        values = factor_values()
        sprites = np.zeros((3, 6, 40, SPRITE, SPRITE), dtype=np.uint8)
        for s in range(3):
            for k, scale in enumerate(values["scale"]):
                for o, angle in enumerate(values["orientation"]):
                    sprites[s, k, o] = render_sprite(s, scale, angle)
        self.sprites = torch.from_numpy(sprites)
        self.centres = torch.from_numpy(np.round(POS_LO + values["pos_x"] * (POS_HI - POS_LO)).astype(np.int64))
        self.strides = torch.tensor(np.cumprod((1, *FACTOR_SIZES[::-1]))[:-1][::-1].copy())

    def __len__(self) -> int:
        return math.prod(FACTOR_SIZES)

    def factors(self, index: Tensor) -> Tensor:
        """Factor indices [B, 5] of examples ``index`` (the last factor varies fastest)."""
        index = index.long()
        return torch.stack([(index // s) % n for s, n in zip(self.strides, FACTOR_SIZES)], dim=1)

    def index_of(self, factors: Tensor) -> Tensor:
        return (factors.long() * self.strides).sum(1)

    def images_for(self, factors: Tensor) -> Tensor:
        """[B, 1, 64, 64] float images in {0, 1} for factor indices [B, 5]."""
        factors = factors.long()
        sprites = self.sprites[factors[:, 0], factors[:, 1], factors[:, 2]]  # [B, 32, 32]
        out = torch.zeros(len(factors), SIZE + SPRITE, SIZE + SPRITE, dtype=torch.uint8)
        cx = self.centres[factors[:, 3]]  # column of the centre (x grows rightwards)
        cy = self.centres[factors[:, 4]]  # row of the centre (y grows downwards, as image rows)
        half = SPRITE // 2
        # the canvas is padded by `half` on each side, so a sprite centred at image pixel c starts at c
        rows = cy[:, None] + torch.arange(SPRITE)
        cols = cx[:, None] + torch.arange(SPRITE)
        b = torch.arange(len(factors))[:, None, None]
        out[b, rows[:, :, None], cols[:, None, :]] = sprites
        return out[:, None, half : half + SIZE, half : half + SIZE].float()

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        factors = self.factors(index)
        return self.images_for(factors), factors

    def take(self, n: int):
        from vaekit.data.arrays import ArrayData

        x, y = self.batch(torch.arange(n))
        return ArrayData(x, y)

    def sample_factors(self, n: int, rng: np.random.Generator) -> Tensor:
        return torch.from_numpy(np.stack([rng.integers(0, k, n) for k in FACTOR_SIZES], axis=1))
