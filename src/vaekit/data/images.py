"""Folders of images through Pillow: recursive, optional class subfolders, centre crop, grey or RGB."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vaekit.errors import VaekitError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def list_images(root: Path) -> list[Path]:
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def class_of(root: Path, files: list[Path]) -> tuple[np.ndarray | None, tuple[str, ...]]:
    """Labels from the first-level subfolder, when every image sits in one."""
    rel = [p.relative_to(root).parts for p in files]
    if not rel or any(len(parts) < 2 for parts in rel):
        return None, ()
    names = tuple(sorted({parts[0] for parts in rel}))
    if len(names) < 2:
        return None, ()
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[parts[0]] for parts in rel], dtype=np.int64), names


def open_image(path: Path):
    """Decode an image fully; any failure names the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise VaekitError(f"{path}: cannot read image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None


def fit_resolution(im, resolution: int):
    """Resize the shorter side to ``resolution`` (antialiased) and centre-crop a square."""
    return fit_size(im, resolution, resolution)


def fit_size(im, width: int, height: int):
    """Resize (bicubic) so that the image covers ``width`` x ``height``, then centre-crop to it."""
    from PIL import Image

    w, h = im.size
    scale = max(width / w, height / h)
    if scale != 1:
        im = im.resize((max(width, round(w * scale)), max(height, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = im.size
    left, top = (w - width) // 2, (h - height) // 2
    return im.crop((left, top, left + width, top + height))


def to_mode(im, grey: bool):
    """Any Pillow image as 8-bit grey ("L") or RGB: 16-bit and float images are rescaled rather
    than clipped, and transparent pixels are composited on white."""
    from PIL import Image

    target = "L" if grey else "RGB"
    if im.mode == target:
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        im = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert(target)


def to_array(im, grey: bool) -> np.ndarray:
    """[C, H, W] uint8."""
    a = np.asarray(to_mode(im, grey), dtype=np.uint8)
    return np.ascontiguousarray(a[None] if grey else a.transpose(2, 0, 1))


def check_images(files: list[Path], skip_bad: bool) -> tuple[list[Path], int]:
    """Open every file's header and verify it (cheap: no full decode); name the first bad file,
    or drop bad files with ``skip_bad``."""
    from PIL import Image, UnidentifiedImageError

    good = []
    for path in files:
        try:
            with Image.open(path) as im:
                im.verify()
            good.append(path)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            if not skip_bad:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise VaekitError(f"{path}: cannot read image ({reason})") from None
    return good, len(files) - len(good)


def read_image_folder(root: Path, resolution: int | None, color: str, skip_bad: bool, lazy: bool = False):
    """All images of a folder: decoded into one uint8 array, or (``lazy``) checked and listed for
    an ImageStream."""
    from vaekit.data.arrays import RawData

    files = list_images(root)
    if not files:
        raise VaekitError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if lazy:
        files, skipped = check_images(files, skip_bad)
        if not files:
            raise VaekitError(f"{root}: none of the image files could be read")
        y, names = class_of(root, files)
        grey = color == "grey" or (color == "auto" and _all_grey(files))
        return RawData(None, y, class_names=names, source=str(root), skipped=skipped, items=files, grey=grey)

    def load(path: Path):
        try:
            return open_image(path)
        except VaekitError:
            if skip_bad:
                return None
            raise

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        images = list(pool.map(load, files))
    kept = [(f, im) for f, im in zip(files, images) if im is not None]
    skipped = len(files) - len(kept)
    if not kept:
        raise VaekitError(f"{root}: none of the {len(files)} image files could be read")
    files = [f for f, _ in kept]
    images = [im for _, im in kept]
    grey = color == "grey" or (color == "auto" and all(im.mode in GREY_MODES for im in images))
    if resolution is not None:
        images = [fit_resolution(im, resolution) for im in images]
    else:
        sizes = {im.size for im in images}
        if len(sizes) > 1:
            (a, sa), (b, sb) = _two_sizes(files, images)
            raise VaekitError(f"{root}: images differ in size ({a.name} is {sa[0]}x{sa[1]}, {b.name} is "
                              f"{sb[0]}x{sb[1]}); pass --resolution N to resize and centre-crop")
    x = np.stack([to_array(im, grey) for im in images])
    y, names = class_of(root, files)
    return RawData(x, y, class_names=names, source=str(root), skipped=skipped)


def _all_grey(files: list[Path]) -> bool:
    from PIL import Image

    for path in files:
        with Image.open(path) as im:
            if im.mode not in GREY_MODES:
                return False
    return True


def _two_sizes(files, images):
    first = (files[0], images[0].size)
    for f, im in zip(files, images):
        if im.size != first[1]:
            return first, (f, im.size)
    return first, first
