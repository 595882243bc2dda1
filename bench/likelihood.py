"""Likelihood beyond the vanilla ELBO, on dynamically binarised Fashion-MNIST (training batches
resampled every time; the test set binarised once with a fixed seed), each model trained under the
same CPU budget (--minutes of training on this machine's 2 cores) and scored by the importance-
weighted NLL with K = 5000 on the same test images:

- vanilla: MLP VAE, 784-512-256-50, ELBO
- iwae: the same network trained with the IWAE bound, k = 50
- iwae-warm: the same, its first 3 epochs per budget minute (about a fifth of the budget) trained with the
  ELBO, then k = 50: a VAE continued with the IWAE bound (Burda et al. 2016, sec. 5.2)
- vamp: the same network with a VampPrior (500 pseudo-inputs)
- vanilla-epochs: vanilla again, trained for as many whole epochs as iwae reached in its budget, so
  the objective's effect shows apart from its cost (k = 50 decoder passes per example)
- hvae: a 2-layer Markovian hierarchical VAE (z 64 and 32, MLP)
- ladder: the top-down hierarchical conv VAE on 2x2-folded pixels (--patch 2), topology 14x2,7x2,1x1,
  width 64

Targets: IWAE at least 1.5 nats better than vanilla; the best hierarchical model at least 6 better.
Each difference is paired (the same images, the first n of the test set) with its standard error.
The conv ladder costs several seconds per image at K = 5000 on 2 cores, so it is scored on the first
--ladder-images test images only, and its difference is taken on those.

Each budget keeps its own runs (results/runs/nll-15min/NAME) and table (results/likelihood-15min.md).
--reuse keeps a run, and its cached scores, only if it was trained with exactly the arguments this
call would use, so a long budget can be built up a few models per call.

Run: python bench/likelihood.py [--reuse] [--minutes 15] [--test-images 1000] [--ladder-images 64] [--k 5000]
     [--models ...]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

from common import HERE, RESULTS, VAEKIT, json_lines, machine, markdown_table, require_fashion_mnist, run, save

MLP = ["--model", "mlp", "--hidden", "512,256", "--latent-dim", "50", "--batch-size", "128", "--lr", "1e-3"]
ELBO_EPOCHS_PER_MINUTE = 3  # iwae-warm: ~4 s per ELBO epoch here, so about a fifth of the budget
MODELS = {
    "vanilla": MLP,
    "iwae": [*MLP, "--objective", "iwae", "--k", "50"],
    "iwae-warm": [*MLP, "--objective", "iwae", "--k", "50"],  # plus --elbo-epochs, set by the budget
    "vanilla-epochs": MLP,
    "vamp": [*MLP, "--prior", "vamp", "--components", "500"],
    "hvae": ["--model", "hvae", "--latent-dims", "64,32", "--hidden", "512,256", "--activation", "silu",
             "--batch-size", "128", "--lr", "1e-3"],
    "ladder": ["--model", "ladder", "--topology", "14x2,7x2,1x1", "--patch", "2", "--width", "64", "--zdim", "8",
               "--batch-size", "64", "--lr", "1e-3"],
}


def paired(base: list[float], other: list[float]) -> str:
    """Mean and standard error of base - other over the images both were scored on (the first n)."""
    d = [b - m for b, m in zip(base, other)]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((v - mean) ** 2 for v in d) / (len(d) - 1) / len(d))
    return f"{mean:.2f} +- {se:.2f} (n={len(d)})"


def trained_epochs(run: Path) -> tuple[float, list[dict], dict]:
    """(Epochs of optimizer steps taken, the history, the training config); a budget-stopped epoch counts
    for the part it ran, also when a resumed run went on past it."""
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    training = json.loads((run / "config.json").read_text())["training"]
    per_epoch = math.ceil(60000 / training["batch_size"])
    return sum(r["step"] - (r["epoch"] - 1) * per_epoch for r in history) / per_epoch, history, training


def train(out: Path, name: str, budget: list, reuse: bool) -> None:
    """Train model NAME into OUT, unless --reuse and OUT was trained with exactly these arguments."""
    train_args = [str(a) for a in ["--data", "fashion-mnist", "--binarize", "dynamic", "--val-fraction", "0",
                                   *MODELS[name], *budget, "--seed", "0"]]
    stamp = out / "bench-args.json"  # the arguments (and so the budget) the run was trained with
    trained = (out / "model.safetensors").is_file() and stamp.is_file()
    if reuse and trained and json.loads(stamp.read_text()) == train_args:
        return
    shutil.rmtree(out, ignore_errors=True)
    print(f"likelihood: training {name} ({' '.join(map(str, budget))})", file=sys.stderr, flush=True)
    run([*VAEKIT, "train", *train_args, "--quiet", "--out", out])
    stamp.write_text(json.dumps(train_args) + "\n")


def score(out: Path, name: str, k: int, n: int, reuse: bool) -> dict:
    """Per-image K-sample NLL of the run's first n test images, cached in the run (reused with --reuse)."""
    print(f"likelihood: scoring {name} (K={k}, {n} images)", file=sys.stderr, flush=True)
    cached = out / f"nll-scores-k{k}-n{n}.json"  # a retrained run's directory starts empty
    # a run extended with --resume has newer weights than its cached scores
    if reuse and cached.is_file() and cached.stat().st_mtime >= (out / "model.safetensors").stat().st_mtime:
        return json.loads(cached.read_text())
    conv = json.loads((out / "config.json").read_text())["_class_name"] == "LadderVAE"
    rows_at_once = 256 if conv else 4096  # conv activations are large: fewer (image, sample) rows at once
    scored = json_lines(run([sys.executable, HERE / "nll_scores.py", out, k, n, rows_at_once]))[-1]
    cached.write_text(json.dumps(scored) + "\n")
    return scored


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per model")
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--ladder-images", type=int, default=64)
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--reuse", action="store_true", help="reuse runs (and their scores) from an earlier call")
    args = p.parse_args()
    require_fashion_mnist()
    names = [m for m in args.models.split(",") if m]
    rows = []
    per_image = {}
    iwae_epochs = None
    for name in names:
        out = RESULTS / "runs" / f"nll-{args.minutes:g}min" / name  # one directory per budget, kept apart
        if name == "vanilla-epochs":
            if iwae_epochs is None:
                sys.exit("bench: vanilla-epochs needs the iwae run first (--models ...,iwae,vanilla-epochs)")
            budget = ["--epochs", max(1, round(iwae_epochs))]
        else:
            budget = ["--epochs", "100000", "--max-minutes", args.minutes]
        if name == "iwae-warm":
            budget += ["--elbo-epochs", round(ELBO_EPOCHS_PER_MINUTE * args.minutes)]
        train(out, name, budget, args.reuse)
        epochs, history, _ = trained_epochs(out)
        if name == "iwae":
            iwae_epochs = epochs
        n = min(args.test_images, args.ladder_images) if name == "ladder" else args.test_images
        scored = score(out, name, args.k, n, args.reuse)
        per_image[name] = scored["nll_per_image"]
        rows.append({"model": name, "epochs": round(epochs, 2),
                     "train minutes": sum(r["seconds"] for r in history) / 60, "test NLL": scored["nll"],
                     "test images": n, "test -ELBO": -scored["elbo"], "active units": scored["active_units"],
                     "eval seconds": scored["seconds"]})
    base = per_image.get("vanilla")
    for row in rows:
        if base is not None and row["model"] != "vanilla":
            row["better than vanilla"] = paired(base, per_image[row["model"]])
        if row["model"] == "iwae" and "vanilla-epochs" in per_image:
            row["better than vanilla at equal epochs"] = paired(per_image["vanilla-epochs"], per_image["iwae"])
    cols = ["model", "epochs", "train minutes", "test images", "test NLL", "test -ELBO", "better than vanilla",
            "better than vanilla at equal epochs", "active units", "eval seconds"]
    text = (f"Dynamically binarised Fashion-MNIST, NLL (nats) with K={args.k} on the first {args.test_images} test "
            f"images (ladder: first {args.ladder_images}; binarised once, seed fixed); {args.minutes} min of training "
            f"per model ({machine()})\n\n")
    text += markdown_table(rows, cols) + "\n"
    print(text)
    payload = {"rows": rows, "minutes": args.minutes, "k": args.k, "test_images": args.test_images}
    save(f"likelihood-{args.minutes:g}min", payload, text)


if __name__ == "__main__":
    main()
