"""Lossless compression of the Fashion-MNIST test set (10,000 images) with trained VAEs, against
generic codecs re-measured in the same run (issue 20).

Data: the test images as stored (8-bit), and binarised once (Bernoulli of the grey level / 255 with
numpy's RandomState(0)). Generic codecs: gzip, bz2 and lzma (level 9 / preset 9) on the whole set in
one buffer (8-bit: one byte per pixel; binarised: eight pixels per byte, np.packbits, which all three
compress better than one byte per pixel: lzma 0.604 against 0.668 bits/dim); PNG (Pillow,
optimize=True) and WebP (lossless, method 6) per image, headers included (binarised PNGs in mode "1",
WebP from 0/255 grey).

vaekit: six models trained under the same budget (--minutes each, 2 CPU cores): an MLP VAE
(784-512-256-50), a conv VAE (channels 32,64, 32 latents) and a 2-layer hvae (z 64, 32) with a
Bernoulli likelihood on dynamically binarised training images, and the same three on the 8-bit
images with ``logistic-ar``: the discretised logistic with each pixel's location also linear in its six
causal neighbours (the factorised ``logistic`` reached 3.41 bits/dim with the conv VAE in 10 epochs,
``logistic-ar`` 3.45 after one; the 20% target needs 3.10). For each: the model's test -ELBO and K-sample NLL on
exactly the coded images (what the coder should reach), then ``vaekit compress`` / ``vaekit
decompress`` on all test images (BB-ANS for the one-layer VAEs, MLP and conv; Bit-Swap and the plain
BB-ANS order for the hvae), the decoded array compared with the original, images/s
each way (coding only, as the commands report it), the initial bits and the file's whole size.

Targets: the coded rate (initial bits included) beats the best generic codec by >= 20% and is within
1% of the model's -ELBO on both data sets; round trip exact on all images; >= 100 images/s each way.

Run: python bench/compression.py [--minutes 20] [--iw 1000] [--reuse] [--families vae,conv,hvae]
                                 [--datasets binarised,8-bit]
     python bench/compression.py --quick     (a 1-2 minute check of the whole pipeline: tiny budgets,
                                              600 test images; its numbers mean nothing)
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import lzma
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from common import RESULTS, VAEKIT, json_lines, markdown_table, require_fashion_mnist, run, save

MLP = ["--model", "mlp", "--hidden", "512,256", "--latent-dim", "50", "--activation", "silu"]
CONV = ["--model", "conv", "--channels", "32,64", "--latent-dim", "32"]
HVAE = ["--model", "hvae", "--latent-dims", "64,32", "--hidden", "512,256", "--activation", "silu"]
QUICK_MLP = ["--model", "mlp", "--hidden", "128", "--latent-dim", "16"]
QUICK_CONV = ["--model", "conv", "--channels", "8,16", "--latent-dim", "8"]
QUICK_HVAE = ["--model", "hvae", "--latent-dims", "16,8", "--hidden", "128,64", "--depth", "1"]
FAMILIES = (("vae", "one-layer VAE"), ("conv", "conv VAE"), ("hvae", "hvae"))
DATASETS = ("binarised", "8-bit")


def test_sets(n: int) -> dict[str, np.ndarray]:
    from vaekit.data.sources import read_idx

    fashion = require_fashion_mnist()
    x = read_idx(fashion / "t10k-images-idx3-ubyte.gz")[:n, None]  # [n, 1, 28, 28] uint8
    binary = (np.random.RandomState(0).random_sample(x.shape) < x / 255.0).astype(np.uint8)
    return {"binarised": binary, "8-bit": x}


def generic(x: np.ndarray, binary: bool) -> list[dict]:
    from PIL import Image

    dims = x.size
    # binary data packed eight pixels to a byte: the stronger baseline for every generic codec
    raw = np.packbits(x).tobytes() if binary else np.ascontiguousarray(x).tobytes()
    rows = []
    for name, fn in (("gzip", lambda b: gzip.compress(b, 9)), ("bz2", lambda b: bz2.compress(b, 9)),
                     ("lzma", lambda b: lzma.compress(b, preset=9))):
        t = time.perf_counter()
        size = len(fn(raw))
        rows.append({"codec": name, "bits": 8 * size, "seconds": time.perf_counter() - t})
    for name, fmt, options in (("PNG", "PNG", {"optimize": True}), ("WebP", "WEBP", {"lossless": True, "method": 6})):
        t = time.perf_counter()
        size = 0
        for a in x[:, 0]:
            im = Image.fromarray(a * 255 if binary else a, "L")
            if binary and fmt == "PNG":
                im = im.convert("1", dither=Image.Dither.NONE)
            buf = io.BytesIO()
            im.save(buf, format=fmt, **options)
            size += buf.tell()
        rows.append({"codec": name, "bits": 8 * size, "seconds": time.perf_counter() - t})
    for r in rows:
        r["bits_per_dim"] = r["bits"] / dims
    return rows


def train(out: Path, args: list, budget: list, reuse: bool) -> None:
    stamp = out / "bench-args.json"
    full = [str(a) for a in [*args, *budget, "--seed", "0", "--val-fraction", "0"]]
    if reuse and (out / "model.safetensors").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == full:
        return
    shutil.rmtree(out, ignore_errors=True)
    print(f"compression: training {out.name} ({' '.join(full)})", file=sys.stderr, flush=True)
    run([*VAEKIT, "train", *full, "--quiet", "--out", out])
    stamp.write_text(json.dumps(full) + "\n")


def model_rates(run_dir: Path, x: np.ndarray, binary: bool, k: int) -> dict:
    """The model's -ELBO and K-sample NLL (bits/dim) on exactly the coded images."""
    import torch

    from vaekit.data import ArrayData
    from vaekit.evaluation.likelihood import evaluate
    from vaekit.run import load

    model = load(run_dir)
    data = ArrayData(torch.from_numpy(x.astype(np.float32) / (1.0 if binary else 255.0)))
    dims = x[0].size * math.log(2)
    elbo = evaluate(model, data, k=1).elbo
    nll = evaluate(model, data, k=k, batch_size=4096).nll if k > 1 else -elbo
    return {"elbo_bpd": -elbo / dims, "nll_bpd": nll / dims}


def code(run_dir: Path, data: Path, work: Path, order: str, x: np.ndarray) -> dict:
    vkz = work / f"{run_dir.name}-{order}.vkz"
    back = work / f"{run_dir.name}-{order}.npy"
    c = json_lines(run([*VAEKIT, "compress", run_dir, "--data", data, "--out", vkz, "--order", order,
                        "--overwrite", "--json"]))[-1]
    d = json_lines(run([*VAEKIT, "decompress", vkz, "--out", back, "--overwrite", "--json"]))[-1]
    exact = bool(np.array_equal(np.load(back), x))
    return {"bits_per_dim": c["bits_per_dim"], "file_bits_per_dim": c["file_bits_per_dim"],
            "initial_bits": c["initial_bits"], "compress_ips": c["images_per_second"],
            "decompress_ips": d["images_per_second"], "round_trip": exact, "lanes": c["lanes"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per model (default 20)")
    p.add_argument("--iw", type=int, default=1000, help="importance samples for the NLL row (default 1000)")
    p.add_argument("--test-images", type=int, default=10000)
    p.add_argument("--reuse", action="store_true", help="keep runs trained with exactly these arguments")
    p.add_argument("--families", default=",".join(f for f, _ in FAMILIES), help="the vaekit models to train and "
                   "code (default vae,conv,hvae)")
    p.add_argument("--datasets", default=",".join(DATASETS), help="binarised, 8-bit or both (default both)")
    p.add_argument("--quick", action="store_true", help="check the pipeline in a minute or two (numbers mean nothing)")
    args = p.parse_args()
    families = [(f, label) for f, label in FAMILIES if f in args.families.split(",")]
    datasets = [d for d in DATASETS if d in args.datasets.split(",")]
    if not families or not datasets:
        p.error(f"--families names none of {', '.join(f for f, _ in FAMILIES)} or --datasets none of "
                f"{', '.join(DATASETS)}")
    n, k = (600, 5) if args.quick else (args.test_images, args.iw)
    budget = ["--epochs", "1", "--limit", "3000", "--batch-size", "128"] if args.quick else \
        ["--max-minutes", args.minutes, "--epochs", "1000", "--batch-size", "128", "--lr", "1e-3"]
    nets = dict(zip([f for f, _ in FAMILIES], (QUICK_MLP, QUICK_CONV, QUICK_HVAE) if args.quick else (MLP, CONV, HVAE)))
    nets = {f: nets[f] for f, _ in families}
    name = "compression-quick" if args.quick else "compression"
    work = RESULTS / "runs" / name
    work.mkdir(parents=True, exist_ok=True)
    sets = {ds: x for ds, x in test_sets(n).items() if ds in datasets}
    results: dict[str, dict] = {}
    for ds, x in sets.items():
        binary = ds == "binarised"
        data = work / f"test-{ds}.npy"
        np.save(data, x)
        results[ds] = {"generic": generic(x, binary)}
        source = ["--data", "fashion-mnist", "--binarize", "dynamic"] if binary else \
            ["--data", "fashion-mnist", "--likelihood", "logistic-ar"]
        for family, model_args in nets.items():
            run_dir = work / f"{family}-{'bin' if binary else '8bit'}"
            train(run_dir, [*source, *model_args], budget, args.reuse)
            entry = model_rates(run_dir, x, binary, k)
            for order in ("bit-swap", "bb-ans") if family == "hvae" else ("bb-ans",):
                print(f"compression: coding {n} {ds} images with {run_dir.name} ({order})", file=sys.stderr, flush=True)
                entry[order] = code(run_dir, data, work, order, x)
            results[ds][family] = entry

    def both(fn) -> dict:
        return {ds: fn(results[ds]) for ds in datasets}

    def column(cells: dict, key: str | None = None) -> dict:
        """{"binarised bits/dim": ..., "8-bit bits/dim": ...}, blank for a data set not run."""
        return {f"{ds} bits/dim": (cells[ds][key] if key else cells[ds]) if ds in cells else "" for ds in DATASETS}

    def each(cells: dict, fmt) -> str:
        return " / ".join(fmt(cells[ds]) if ds in cells else "-" for ds in DATASETS)

    rows = []
    for i, g in enumerate(results[datasets[0]]["generic"]):
        cells = both(lambda r, i=i: r["generic"][i])
        rows.append({"codec": g["codec"], **column(cells, "bits_per_dim"),
                     "compress images/s (bin / 8-bit)": each(cells, lambda c: f"{n / c['seconds']:,.0f}"),
                     "decompress images/s (bin / 8-bit)": "", "initial bits (bin / 8-bit)": "", "round trip": ""})
    for family, label in families:
        for key, what in (("elbo_bpd", "-ELBO"), ("nll_bpd", f"NLL (K={k})")):
            cells = both(lambda r, f=family, key=key: r[f][key])
            rows.append({"codec": f"{label}: model's test {what}", **column(cells)})
        for order in ("bit-swap", "bb-ans") if family == "hvae" else ("bb-ans",):
            c = both(lambda r, f=family, o=order: r[f][o])
            method = {"bit-swap": "Bit-Swap", "bb-ans": "BB-ANS"}[order]
            rows.append({
                "codec": f"vaekit {method}, {label} ({next(iter(c.values()))['lanes']} chains)",
                **column(c, "bits_per_dim"),
                "compress images/s (bin / 8-bit)": each(c, lambda v: f"{v['compress_ips']:,.0f}"),
                "decompress images/s (bin / 8-bit)": each(c, lambda v: f"{v['decompress_ips']:,.0f}"),
                "initial bits (bin / 8-bit)": each(c, lambda v: str(v["initial_bits"])),
                "round trip": "exact" if all(v["round_trip"] for v in c.values()) else "FAILED"})
    columns = ["codec", "binarised bits/dim", "8-bit bits/dim", "compress images/s (bin / 8-bit)",
               "decompress images/s (bin / 8-bit)", "initial bits (bin / 8-bit)", "round trip"]
    table = markdown_table(rows, columns)
    checks = []
    for ds in datasets:
        best = min(g["bits_per_dim"] for g in results[ds]["generic"])
        for family, _ in families:
            entry = results[ds][family]
            order = "bit-swap" if family == "hvae" else "bb-ans"
            c = entry[order]
            checks.append(f"{ds} {family} ({order}): {c['bits_per_dim']:.4f} bits/dim, "
                          f"{100 * (1 - c['bits_per_dim'] / best):.1f}% below the best generic codec ({best:.4f}; "
                          f"target >= 20%), {100 * (c['bits_per_dim'] / entry['elbo_bpd'] - 1):+.2f}% from the -ELBO "
                          f"(target within 1%), round trip {'exact' if c['round_trip'] else 'FAILED'}, "
                          f"{min(c['compress_ips'], c['decompress_ips']):.0f} images/s the slower way (target >= 100)")
    text = table + "\n\n" + f"{n} test images; whole-file rates with the .vkz header: " + "; ".join(
        f"{ds} {f}: {results[ds][f]['bit-swap' if f == 'hvae' else 'bb-ans']['file_bits_per_dim']:.4f}"
        for ds in datasets for f, _ in families) + "\n\n" + "\n".join(f"- {c}" for c in checks)
    print(text)
    save(name, {"test_images": n, "iw": k, "budget": [str(b) for b in budget], "results": results}, text,
         precision="fp32 training; coding in float64")


if __name__ == "__main__":
    main()
