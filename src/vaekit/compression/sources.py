"""What ``vaekit compress`` reads and ``vaekit decompress`` writes, untouched by any scaling: arrays
(.npy, .npz's ``x``, a named dataset's split) exactly as stored, and folders of images as their 8-bit
pixels with their relative file names and Pillow modes (1, L or RGB)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaekit.errors import VaekitError

IMAGE_MODES = {"1": 1, "L": 1, "RGB": 3}  # modes coded losslessly, with their channel counts


@dataclass
class Source:
    x: np.ndarray
    names: list[str] | None = None  # image folders: relative paths, written back as PNG
    modes: list[str] | None = None


def read_for_coding(spec: str, split: str = "test") -> Source:
    """A folder of images, a .npy, an .npz (array ``x``) or a named dataset's ``split`` (test or train)."""
    from vaekit.data.sources import DATASETS, ReadOptions

    name, _, arg = spec.partition(":")
    if name in DATASETS:
        raw = DATASETS.get(name)(arg or None, ReadOptions())
        if raw.x is None:
            raise VaekitError(f"{spec}: a streamed or procedural dataset; compress reads arrays, files or folders")
        x = raw.x_test if split == "test" else raw.x
        if x is None:
            raise VaekitError(f"{spec}: has no test split of its own; pass --split train or a file")
        return Source(x)
    path = Path(spec).expanduser()
    if not path.exists():
        raise VaekitError(f"data: no such file or directory: {spec}")
    if path.is_dir():
        return _read_images(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise VaekitError(f"{path}: compress reads .npy, .npz (array 'x'), a folder of images or a named dataset")
    try:
        loaded = np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with loaded as z:
                if "x" not in z:
                    raise VaekitError(f"{path}: expected an array named 'x' (found: {', '.join(z.keys())})")
                x = z["x"]
        else:
            x = loaded
    except ValueError as e:
        raise VaekitError(f"{path}: not a plain numeric numpy file ({str(e).splitlines()[0]})") from None
    except (OSError, EOFError) as e:
        raise VaekitError(f"{path}: not a readable numpy file ({e})") from None
    return Source(np.asarray(x))


def _read_images(root: Path) -> Source:
    from vaekit.data.images import list_images, open_image

    files = list_images(root)
    if not files:
        raise VaekitError(f"{root}: no image files")
    arrays, names, modes, written = [], [], [], {}
    for path in files:
        im = open_image(path)
        if im.mode not in IMAGE_MODES:
            raise VaekitError(f"{path}: image mode {im.mode} cannot be coded losslessly (compress codes 8-bit "
                              f"{', '.join(IMAGE_MODES)} images)")
        a = np.asarray(im.convert("L") if im.mode == "1" else im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        rel = path.relative_to(root).with_suffix(".png").as_posix()
        if rel in written:
            raise VaekitError(f"{path}: decompresses to {rel}, as {written[rel]} does; rename one of them")
        written[rel] = path.name
        names.append(rel)
        modes.append(im.mode)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        other = next(i for i, a in enumerate(arrays) if a.shape != first)
        raise VaekitError(f"{root}: images differ in size or channels ({files[0].name} is {first}, "
                          f"{files[other].name} is {arrays[other].shape}); compress does not resize")
    return Source(np.stack(arrays), names, modes)


def check_output(out: Path, overwrite: bool, images: bool) -> None:
    """Before decoding: the output is a .npy (arrays) or a folder (images), and may be written."""
    if not images and out.suffix.lower() != ".npy":
        raise VaekitError(f"{out}: the file holds an array; --out must be a .npy file")
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise VaekitError(f"{out}: already exists; pass --overwrite to replace it")
    if out.exists() and out.suffix.lower() == ".npy" and out.is_dir():
        raise VaekitError(f"{out}: is a directory")


def write_array(out: Path, x: np.ndarray) -> None:
    from vaekit.io import atomic_path

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, x, allow_pickle=False)


def check_image_names(names, modes, count: int, where: str) -> None:
    """The file names and modes a .vkz header gives for an image folder must stay inside the output
    folder: relative POSIX paths without '..', ending in .png, one per image, each mode one that is
    coded losslessly. The header's checksum is not a signature, so a crafted file must not be able to
    write anywhere else."""
    from pathlib import PurePosixPath

    if not isinstance(names, list) or not isinstance(modes, list) or len(names) != count or len(modes) != count:
        raise VaekitError(f"{where}: damaged header (expected {count} file names and modes)")
    for name, mode in zip(names, modes):
        rel = PurePosixPath(name) if isinstance(name, str) else None
        if (rel is None or rel.is_absolute() or not rel.parts or ".." in rel.parts or "\\" in name
                or rel.suffix != ".png"):
            raise VaekitError(f"{where}: refusing the file name {name!r} in its header (it must be a relative "
                              "path inside the output folder, ending in .png)")
        if mode not in IMAGE_MODES:
            raise VaekitError(f"{where}: refusing the image mode {mode!r} in its header")
    if len(set(names)) != len(names):
        raise VaekitError(f"{where}: damaged header (a file name appears twice)")


def write_images(out: Path, x: np.ndarray, names: list[str], modes: list[str]) -> None:
    """Every image as a PNG under its relative name, staged in a temporary folder first and moved
    into ``out`` only when all are written."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".vaekit-decompress-", dir=out))
    try:
        for a, rel, mode in zip(x, names, modes):
            pixels = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
            im = Image.fromarray(np.ascontiguousarray(pixels), "L" if pixels.ndim == 2 else "RGB")
            if mode == "1":
                im = im.convert("1", dither=Image.Dither.NONE)
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            im.save(target, format="PNG")
        root = out.resolve()
        for rel in names:
            final = out / rel
            if root not in final.resolve().parents:  # a symlinked subfolder pointing elsewhere
                raise VaekitError(f"{out}: {rel} would be written outside the output folder")
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
