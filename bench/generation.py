"""Sample quality on Fashion-MNIST: VAE priors against latent diffusion against pixel-space DDPM.

Every row is measured by `vaekit sample-quality` in the feature space of a classifier vaekit trains
on Fashion-MNIST itself (FCD, k = 3 precision/recall; FID's Inception weights are not available
offline), on the same 10,000 test images, with 10,000 samples per row (batch 256; samples/s is the
whole draw, decoding included):

- conv VAE (channels 32,64, 32 latents, Bernoulli on grey levels, KL weight --vae-beta, default 0.1),
  N(0, I) prior. A weak KL is the latent-diffusion setting (the LDM autoencoders use 1e-6): the decoder gets
  sharper codes, the aggregate posterior drifts from N(0, I), and a prior that learns it (GMM, diffusion)
  is needed. At beta 1 (--vae-beta 1) the decoder, not the prior, bounds FCD: on Zen 3 with 4 epochs the
  aggregate posterior itself scored 124 against N(0, I)'s 215, so no prior could reach half of N(0, I);
  at beta 0.1 it scored 58.7 against 182.8 (docs/benchmarks.md);
- the same VAE, a 10-component full-covariance GMM fitted to its aggregate posterior (fit-prior);
- the same VAE, its aggregate posterior itself (codes of the training images, --prior aggregate): what a
  perfect prior on this decoder would reach, so the gap between a prior's row and this one is the prior's
  error, and the gap between this row and the floor is the decoder's;
- a VampPrior conv VAE (500 pseudo-inputs), same network, beta 1 (the prior-side cure, at the full KL);
- the same conv VAE + latent diffusion with the residual-MLP denoiser, DDIM 50 and 10 steps;
- autoencoder-kl tiny-f4 on images padded to 32x32 (LDM objective, L1 + KL 1e-6, no LPIPS or GAN
  to fit the CPU budget) + latent diffusion with diffusers' UNet2DModel on its 8x8x3 latents
  (--latent-scaling std, since tiny-f4's scaling factor is 1), DDIM 50 steps;
- a pixel-space DDPM (UNet2DModel on 32x32 padded images), DDIM 50 steps;
- real training images against test images: the floor.

Budgets: each VAE trains --vae-minutes, each denoiser --denoiser-minutes, and the pixel DDPM their
sum, so a latent-diffusion row and the pixel DDPM cost the same training time. Seed 0 everywhere.
Targets: latent diffusion's FCD at most half that of the same VAE's N(0, I) prior and below its GMM
prior's; at the same training budget latent diffusion matches or beats the pixel DDPM's FCD while
sampling at least 10x faster.

Run: python bench/generation.py [--vae-minutes 20] [--denoiser-minutes 10] [--vae-beta 0.1] [-n 10000] [--reuse]
                                [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common import RESULTS, VAEKIT, markdown_table, require_fashion_mnist, run, save

CONV = ["--model", "conv", "--channels", "32,64", "--latent-dim", "32", "--batch-size", "128"]
AE = ["--preset", "tiny-f4", "--pad-to", "32", "--objective", "ldm", "--perceptual-weight", "0", "--batch-size", "64",
      "--lr", "2e-4"]
LD_MLP = ["--model", "latent-diffusion", "--width", "512", "--depth", "4", "--batch-size", "256", "--lr", "1e-3"]
LD_UNET = ["--model", "latent-diffusion", "--unet-channels", "64,128", "--layers-per-block", "2", "--latent-scaling",
           "std", "--batch-size", "128", "--lr", "2e-4"]
PIXEL = ["--model", "pixel-diffusion", "--pad-to", "32", "--unet-channels", "32,64,64", "--layers-per-block", "1",
         "--batch-size", "128", "--lr", "2e-4"]


def train(out: Path, args: list, minutes: float, reuse: bool, data: list) -> float:
    """Train into OUT (unless --reuse finds it trained with the same arguments); returns the minutes spent."""
    full = [str(a) for a in [*data, *args, "--epochs", "100000", "--max-minutes", minutes, "--seed", "0"]]
    stamp = out / "bench-args.json"
    if not (reuse and stamp.is_file() and json.loads(stamp.read_text()) == full):
        shutil.rmtree(out, ignore_errors=True)
        print(f"generation: training {out.name} for {minutes} min", file=sys.stderr, flush=True)
        run([*VAEKIT, "train", *full, "--out", out, "--quiet"])
        stamp.write_text(json.dumps(full))
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return sum(r["seconds"] for r in history) / 60


def quality(run_dir: Path, n: int, *extra) -> dict:
    print(f"generation: sample quality of {run_dir.name} {' '.join(map(str, extra))}", file=sys.stderr, flush=True)
    return json.loads(run([*VAEKIT, "sample-quality", run_dir, "-n", n, "--json", *extra]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae-minutes", type=float, default=20)
    p.add_argument("--denoiser-minutes", type=float, default=10)
    p.add_argument("--vae-beta", type=float, default=0.1, help="KL weight of the conv VAE (default 0.1)")
    p.add_argument("-n", type=int, default=10000)
    p.add_argument("--reuse", action="store_true", help="keep runs trained with the same arguments")
    p.add_argument("--quick", action="store_true", help="a check that the bench runs (seconds of training, "
                   "1,000 training images, 500 samples); its numbers mean nothing")
    args = p.parse_args()
    require_fashion_mnist()
    data = ["--data", "fashion-mnist", "--val-fraction", "0.05"]
    if args.quick:
        args.vae_minutes, args.denoiser_minutes, args.n = 0.2, 0.2, 500
        data += ["--limit", "1000"]
    root = RESULTS / "runs" / ("generation-quick" if args.quick else "generation")
    v, d = args.vae_minutes, args.denoiser_minutes

    minutes = {
        "conv": train(root / "conv", [*CONV, "--beta", args.vae_beta], v, args.reuse, data),
        "vamp": train(root / "vamp", [*CONV, "--prior", "vamp", "--components", "500"], v, args.reuse, data),
        "ae": train(root / "ae", AE, v, args.reuse, data),
        "pixel": train(root / "pixel", PIXEL, v + d, args.reuse, data),
    }
    minutes["ld-mlp"] = train(root / "ld-mlp", [*LD_MLP, "--vae", root / "conv"], d, args.reuse, [])
    minutes["ld-unet"] = train(root / "ld-unet", [*LD_UNET, "--vae", root / "ae"], d, args.reuse, [])
    run([*VAEKIT, "fit-prior", root / "conv", "--components", "10", "--json"])

    n = args.n
    conv = f"conv VAE (beta {args.vae_beta:g}), N(0, I) prior"
    measured = [
        (conv, minutes["conv"], quality(root / "conv", n, "--prior", "standard")),
        ("same VAE, GMM prior fitted on the aggregate posterior", minutes["conv"],
         quality(root / "conv", n, "--prior", "gmm")),
        ("same VAE, its aggregate posterior (training codes: the best any prior can do)", minutes["conv"],
         quality(root / "conv", n, "--prior", "aggregate")),
        ("VampPrior VAE", minutes["vamp"], quality(root / "vamp", n, "--prior", "vamp")),
        ("same conv VAE + latent diffusion (MLP denoiser), 50 steps", minutes["conv"] + minutes["ld-mlp"],
         quality(root / "ld-mlp", n, "--steps", "50")),
        ("same conv VAE + latent diffusion (MLP denoiser), 10 steps", minutes["conv"] + minutes["ld-mlp"],
         quality(root / "ld-mlp", n, "--steps", "10")),
        ("autoencoder-kl tiny-f4 + latent diffusion (UNet), 50 steps", minutes["ae"] + minutes["ld-unet"],
         quality(root / "ld-unet", n, "--steps", "50")),
        ("pixel-space DDPM, 50 steps", minutes["pixel"], quality(root / "pixel", n, "--steps", "50")),
    ]
    floor = measured[0][2]
    rows = [{"sampler": name, "train minutes": m, "FCD": q["fcd"], "precision": q["precision"],
             "recall": q["recall"], "samples/s (batch 256)": q["samples_per_second"]} for name, m, q in measured]
    rows.append({"sampler": "real training images vs test (floor)", "train minutes": "", "FCD": floor["floor_fcd"],
                 "precision": floor["floor_precision"], "recall": floor["floor_recall"], "samples/s (batch 256)": ""})
    by = {name: q for name, _, q in measured}
    ld = by["same conv VAE + latent diffusion (MLP denoiser), 50 steps"]
    # the pixel comparison is met when one latent-diffusion row both matches its FCD and samples 10x faster
    lds = {name: q for name, q in by.items() if "latent diffusion" in name and "50 steps" in name}
    best_ld = min(lds.values(), key=lambda q: q["fcd"])
    pixel = by["pixel-space DDPM, 50 steps"]
    targets = [
        ("latent diffusion FCD <= half the same VAE's N(0, I) FCD",
         f"{ld['fcd']:.2f} vs {by[conv]['fcd']:.2f} / 2",
         ld["fcd"] <= by[conv]["fcd"] / 2),
        ("latent diffusion FCD below the GMM prior's",
         f"{ld['fcd']:.2f} vs {by['same VAE, GMM prior fitted on the aggregate posterior']['fcd']:.2f}",
         ld["fcd"] < by["same VAE, GMM prior fitted on the aggregate posterior"]["fcd"]),
        ("latent diffusion FCD <= pixel DDPM's at the same budget", f"{best_ld['fcd']:.2f} vs {pixel['fcd']:.2f}",
         best_ld["fcd"] <= pixel["fcd"]),
        ("... while sampling >= 10x faster than the pixel DDPM",
         "; ".join(f"{name.split('(')[1].split(')')[0]} {q['samples_per_second'] / pixel['samples_per_second']:.1f}x"
                   for name, q in lds.items()),
         any(q["fcd"] <= pixel["fcd"] and q["samples_per_second"] >= 10 * pixel["samples_per_second"]
             for q in lds.values())),
    ]
    target_rows = [{"target": t, "measured": m, "met": "yes" if ok else "no"} for t, m, ok in targets]
    text = (f"Sample quality on Fashion-MNIST, {n} samples per row against {n} test images, in the feature space "
            f"of vaekit's own Fashion-MNIST classifier (test accuracy {floor['classifier_accuracy']:.3f}); budgets: "
            f"VAEs {v} min, denoisers {d} min, pixel DDPM {v + d} min; seed 0\n\n"
            + markdown_table(rows, ["sampler", "train minutes", "FCD", "precision", "recall",
                                    "samples/s (batch 256)"])
            + "\n\n" + markdown_table(target_rows, ["target", "measured", "met"]) + "\n")
    print(text)
    save("generation-quick" if args.quick else "generation", {"rows": rows, "targets": target_rows,
         "quality": {name: q for name, _, q in measured}}, text)


if __name__ == "__main__":
    main()
