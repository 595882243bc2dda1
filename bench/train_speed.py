"""Training speed: vaekit's pytorch-example preset against pytorch/examples' VAE, side by side.

Same machine, same data (Fashion-MNIST 60k train / 10k test), same model (784-400-20, ReLU,
Bernoulli/BCE on grey levels), batch 128, Adam 1e-3, E epochs. Reports seconds per epoch (mean of
all epochs) and the test ELBO after E epochs (one posterior sample per example, as the example's
test loss), for vaekit in fp32 and in ``--precision auto`` (the default: bf16 autocast on a CPU with
AMX, fp32 elsewhere; the row says which it chose). Target: auto not slower than fp32.

Run: python bench/train_speed.py [--epochs 10]
     python bench/train_speed.py --quick     (1 epoch of 6,000 images each; prints, saves nothing)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys

from common import HERE, RESULTS, VAEKIT, json_lines, machine, markdown_table, require_fashion_mnist, run, save


def vaekit_run(name: str, epochs: int, precision: str, limit: list) -> dict:
    out = RESULTS / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    run([*VAEKIT, "train", "--data", "fashion-mnist", "--preset", "pytorch-example", "--val-fraction", "0",
         "--epochs", epochs, "--precision", precision, "--seed", "1", "--out", out, "--quiet", *limit])
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ev = json.loads(run([*VAEKIT, "evaluate", out, "--iw", "1", "--json", "--precision", precision]))
    return {"seconds": [r["seconds"] for r in history], "test_elbo": ev["elbo"], "run": str(out),
            "precision": history[-1]["precision"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="1 epoch of 6,000 images each, to check the script; prints, "
                   "saves nothing")
    args = p.parse_args()
    limit = ["--limit", "6000"] if args.quick else []
    if args.quick:
        args.epochs = 1
    fashion = require_fashion_mnist()
    print(f"train_speed: {args.epochs} epochs each on {machine()}", file=sys.stderr, flush=True)

    ref_lines = json_lines(run([sys.executable, HERE / "reference_examples_vae.py", "--epochs", args.epochs,
                                "--fashion-dir", fashion, *limit]))
    ref = {"seconds": [r["seconds"] for r in ref_lines], "test_elbo": -ref_lines[-1]["test_loss"]}
    fp32 = vaekit_run("train-fp32-quick" if args.quick else "train-fp32", args.epochs, "fp32", limit)
    auto = vaekit_run("train-auto-quick" if args.quick else "train-auto", args.epochs, "auto", limit)

    ref_s = statistics.mean(ref["seconds"])
    rows = []
    for name, r in (("pytorch/examples VAE (reference)", ref), ("vaekit --preset pytorch-example --precision fp32",
                    fp32), (f"vaekit --preset pytorch-example (--precision auto: {auto['precision']})", auto)):
        s = statistics.mean(r["seconds"])
        rows.append({"implementation": name, "s/epoch": s, "speed-up": ref_s / s, "test ELBO (nats)": r["test_elbo"],
                     "ELBO - reference": r["test_elbo"] - ref["test_elbo"]})
    table = markdown_table(rows, ["implementation", "s/epoch", "speed-up", "test ELBO (nats)", "ELBO - reference"])
    size = "6k (--quick)" if args.quick else "60k"
    header = (f"Training, Fashion-MNIST {size}/10k, 784-400-20, batch 128, Adam 1e-3, {args.epochs} epochs "
              f"({machine()})\n\n")
    auto_vs_fp32 = statistics.mean(fp32["seconds"]) / statistics.mean(auto["seconds"])
    table += f"\n\nauto ({auto['precision']}) against fp32: {auto_vs_fp32:.2f}x (target: >= 1.0x)\n"
    print(header + table)
    if args.quick:
        return
    save("train_speed", {"epochs": args.epochs, "reference": ref, "fp32": fp32, "auto": auto, "rows": rows,
                         "auto_vs_fp32": auto_vs_fp32},
         header + table, precision=f"per row (fp32; auto = {auto['precision']})")


if __name__ == "__main__":
    main()
