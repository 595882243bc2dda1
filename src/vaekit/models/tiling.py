"""Tiled encoding and decoding with overlap blending, and sliced batches, so that images of any
size (2048x2048 and beyond) go through the KL autoencoder in bounded memory.

Tiles overlap by ``overlap`` of their side; inside an overlap each tile's weight ramps linearly
from 0 at its edge to 1, and the result is the weight-normalised sum, so seams fade out. The last
tile of a row or column is aligned to the image edge, so any size that divides by the
downsampling factor works. GroupNorm statistics are still computed per tile, which can leave faint
tone differences between far-apart tiles (the price of bounded memory; larger tiles reduce it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaekit.distributions import DiagonalGaussian
from vaekit.models.base import LOGVAR_RANGE


def tile_starts(size: int, tile: int, overlap: float, align: int = 1) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``size`` with about ``overlap`` of overlap."""
    if size <= tile:
        return [0]
    stride = max(align, round(tile * (1 - overlap) / align) * align)
    starts = list(range(0, size - tile, stride))
    last = size - tile
    if not starts or starts[-1] != last:
        starts.append(last)
    return starts


def ramp(starts: list[int], i: int, tile: int, size: int) -> Tensor:
    """1-D blending weights for tile ``i`` (length min(tile, size))."""
    n = min(tile, size)
    w = torch.ones(n)
    pos = torch.arange(n, dtype=torch.float32) + 0.5
    if i > 0:
        lead = starts[i - 1] + tile - starts[i]
        w = torch.minimum(w, pos / max(lead, 1))
    if i < len(starts) - 1:
        trail = starts[i] + tile - starts[i + 1]
        w = torch.minimum(w, (n - pos) / max(trail, 1))
    return w.clamp(min=1e-3)


def _blend(tiles, shape, tile: int, size_hw: tuple[int, int], starts_hw) -> Tensor:
    """Sum weighted tiles into a [B, C, H, W] canvas and normalise by the summed weights."""
    out = torch.zeros(shape)
    weight = torch.zeros(shape[-2:])
    ys, xs = starts_hw
    for (i, j), t in tiles:
        wy = ramp(ys, i, tile, size_hw[0])
        wx = ramp(xs, j, tile, size_hw[1])
        w = wy[:, None] * wx[None, :]
        y0, x0 = ys[i], xs[j]
        out[..., y0 : y0 + t.shape[-2], x0 : x0 + t.shape[-1]] += t.float().cpu() * w
        weight[y0 : y0 + t.shape[-2], x0 : x0 + t.shape[-1]] += w
    return out / weight


def tile_apply(fn, t: Tensor, tile: int, overlap: float, align: int, scale: float, slice_size: int = 1) -> Tensor:
    """Apply ``fn`` to overlapping ``tile``-sized windows of ``t`` [B, C, H, W] and blend the results.

    ``fn`` maps a window of side s to one of side s * scale (1/8 for an f8 encoder, 8 for its
    decoder); window starts are multiples of ``align`` so they map to whole output pixels.
    """
    b, _, h, w = t.shape
    ys, xs = tile_starts(h, tile, overlap, align), tile_starts(w, tile, overlap, align)
    out_starts = ([round(y * scale) for y in ys], [round(x * scale) for x in xs])
    out_hw = (round(h * scale), round(w * scale))
    chunks = []
    for start in range(0, b, slice_size):
        part = t[start : start + slice_size]
        tiles = [((i, j), fn(part[..., y : y + tile, x : x + tile]))
                 for i, y in enumerate(ys) for j, x in enumerate(xs)]
        shape = (len(part), tiles[0][1].shape[1], *out_hw)
        chunks.append(_blend(tiles, shape, round(tile * scale), out_hw, out_starts))
    return torch.cat(chunks).to(t.device)


@torch.no_grad()
def tiled_encode(model, x: Tensor, tile: int, overlap: float = 0.25, slice_size: int = 1) -> DiagonalGaussian:
    """q(z|x) for images of any size: encoder moments blended across overlapping pixel tiles."""
    f = model.config.downsample_factor
    model._check_input(x)
    tile = max(f, tile - tile % f)
    moments = tile_apply(model.moments, x, tile, overlap, align=f, scale=1 / f, slice_size=slice_size)
    mean, logvar = moments.chunk(2, dim=1)
    return DiagonalGaussian(mean, logvar.clamp(*LOGVAR_RANGE))


@torch.no_grad()
def tiled_decode(model, z: Tensor, latent_tile: int, overlap: float = 0.25, slice_size: int = 1) -> Tensor:
    """Images for latents of any size: decoded overlapping latent tiles blended in pixel space."""
    f = model.config.downsample_factor
    return tile_apply(model.decode, z, latent_tile, overlap, align=1, scale=f, slice_size=slice_size)
