"""Disentanglement on dSprites (generated procedurally): beta-VAE with beta 1, 4 and 8, beta-TCVAE
(beta 6) and FactorVAE (gamma 10), the same convolutional VAE (channels 32-32-64-64, 10 latents,
Bernoulli likelihood, batch 64, Adam 1e-3), each trained under the same CPU budget, then scored
with MIG (disentanglement_lib settings: 10,000 points, 20 bins) and the FactorVAE score (batch 64;
--factor-train votes, --factor-eval votes, 10,000 points for the variances, std < 0.05 pruned).
Seeds: training seed 0, metric seeds 0 and 1.

Run: python bench/disentanglement.py [--minutes 10] [--factor-train 800] [--factor-eval 400]
(disentanglement_lib uses 10,000 / 5,000 votes; on 2 cores that costs ~10 minutes per model, so
the default is smaller and the score noisier: about +-2.5 points of accuracy.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from common import RESULTS, VAEKIT, machine, markdown_table, run, save

CONV = ["--data", "dsprites", "--model", "conv", "--channels", "32,32,64,64", "--latent-dim", "10",
        "--likelihood", "bernoulli", "--batch-size", "64", "--lr", "1e-3", "--val-fraction", "0.001"]
MODELS = {
    "beta-VAE b=1": ["--beta", "1"],
    "beta-VAE b=4": ["--beta", "4"],
    "beta-VAE b=8": ["--beta", "8"],
    "beta-TCVAE b=6": ["--objective", "beta-tcvae", "--beta", "6"],
    "FactorVAE g=10": ["--objective", "factorvae", "--factor-gamma", "10"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--factor-train", type=int, default=800)
    p.add_argument("--factor-eval", type=int, default=400)
    p.add_argument("--models", default=",".join(MODELS))
    args = p.parse_args()
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        slug = name.replace(" ", "-").replace("=", "")
        out = RESULTS / "runs" / f"dis-{slug}"
        shutil.rmtree(out, ignore_errors=True)
        print(f"disentanglement: training {name} for {args.minutes} min", file=sys.stderr, flush=True)
        run([*VAEKIT, "train", *CONV, *MODELS[name], "--epochs", "1000", "--max-minutes", args.minutes,
             "--seed", "0", "--quiet", "--out", out])
        history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        run([*VAEKIT, "disentanglement", out, "--metrics", "mig", "--seed", "0", "--out", out / "mig.json"])
        run([*VAEKIT, "disentanglement", out, "--metrics", "factor_vae", "--seed", "1", "--num-train",
             args.factor_train, "--num-eval", args.factor_eval, "--out", out / "factor_vae.json"])
        mig = json.loads((out / "mig.json").read_text())["results"]["mig"]
        fv = json.loads((out / "factor_vae.json").read_text())["results"]["factor_vae"]
        steps = history[-1]["step"]
        rows.append({"model": name, "steps": steps, "images seen": steps * 64,
                     "train minutes": sum(r["seconds"] for r in history) / 60, "MIG": mig["mig"],
                     "FactorVAE score": fv["eval_accuracy"], "active dims": fv["num_active_dims"],
                     "val ELBO": history[-1].get("val_elbo")})
    cols = ["model", "steps", "images seen", "train minutes", "MIG", "FactorVAE score", "active dims", "val ELBO"]
    text = (f"dSprites (procedural), {args.minutes} min of training per model, conv VAE with 10 latents; MIG on "
            f"10,000 points; FactorVAE score with {args.factor_train}/{args.factor_eval} votes ({machine()})\n\n")
    text += markdown_table(rows, cols) + "\n"
    print(text)
    save("disentanglement", {"rows": rows, "minutes": args.minutes}, text)


if __name__ == "__main__":
    main()
