"""Image grids through Pillow (no torchvision), and saving any picture atomically."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaekit.io import write_bytes

MIN_TILE = 56  # small images (8x8 digits) are enlarged with nearest-neighbour to at least this


def to_display(x: Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """Map images to [0, 1] for display: [0, 1] data as is, [-1, 1] data shifted, else min-max."""
    lo, hi = value_range
    if lo >= 0 and hi <= 1:
        pass
    elif lo >= -1 and hi <= 1:
        x = (x + 1) / 2
    else:
        x = (x - lo) / max(hi - lo, 1e-8)
    return x.clamp(0, 1)


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 2, scale: int | None = None,
               value_range: tuple[float, float] = (0.0, 1.0), background: int = 255):
    """Tile images [N, C, H, W] into one PIL image, ``nrow`` per row."""
    from PIL import Image

    images = to_display(images.detach().float().cpu(), value_range)
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    if scale is None:
        scale = max(1, math.ceil(MIN_TILE / max(h, w)))
    th, tw = h * scale, w * scale
    canvas = np.full((rows * (th + pad) + pad, nrow * (tw + pad) + pad, 3), background, dtype=np.uint8)
    arr = (images * 255).round().to(torch.uint8).numpy()
    for i in range(n):
        r, col = divmod(i, nrow)
        tile = arr[i].transpose(1, 2, 0)
        tile = np.repeat(tile, 3, axis=2) if c == 1 else tile[:, :, :3]
        tile = tile.repeat(scale, axis=0).repeat(scale, axis=1)
        y0, x0 = pad + r * (th + pad), pad + col * (tw + pad)
        canvas[y0 : y0 + th, x0 : x0 + tw] = tile
    return Image.fromarray(canvas)


def label_rows(grid, labels: list[str], rows: int, width: int = 90):
    """Add a left margin with one text label per row."""
    from PIL import Image, ImageDraw

    out = Image.new("RGB", (grid.width + width, grid.height), "white")
    out.paste(grid, (width, 0))
    draw = ImageDraw.Draw(out)
    row_h = grid.height / rows
    for i, text in enumerate(labels):
        draw.text((4, i * row_h + row_h / 2 - 5), text, fill="black")
    return out


def side_by_side(images: list, captions: list[str], height: int | None = None, gap: int = 16):
    """Pictures in one row, each scaled to the same height, with a caption above each (for a figure
    that shows several pictures at a glance)."""
    from PIL import Image, ImageDraw

    height = height or max(im.height for im in images)
    scaled = [im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height),
                                       Image.Resampling.NEAREST) for im in images]
    caption_h = 22
    width = sum(im.width for im in scaled) + gap * (len(scaled) + 1)
    out = Image.new("RGB", (width, height + caption_h + gap), "white")
    draw = ImageDraw.Draw(out)
    x = gap
    for im, caption in zip(scaled, captions):
        draw.text((x, 4), caption, fill="black")
        out.paste(im, (x, caption_h))
        x += im.width + gap
    return out


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def figure_to_image(fig):
    """Render a matplotlib figure to a PIL image and close it."""
    import matplotlib.pyplot as plt
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_png(image, path: str | Path) -> Path:
    """Save a PIL image as PNG without ever leaving a partial file."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        from vaekit.errors import VaekitError

        raise VaekitError(f"{path}: pictures are written as PNG; use a .png file name")
    write_bytes(path, png_bytes(image))
    return path
