"""Evaluation speed: ``vaekit evaluate --iw K`` against pythae's ``VAE.get_nll`` (pythae 0.1.2,
installed by this script into bench/.venv-pythae), side by side on the same weights and images.

The model is the pytorch-example preset trained by train_speed.py (or briefly here if absent);
its weights are copied into pythae's module names, so both estimate -log p(x) of one model on the
first N Fashion-MNIST test images with K importance samples. Reports images per second and the
two NLL estimates (they agree to Monte Carlo error).

Run: python bench/eval_speed.py [--n 1000] [--k 1000]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from common import (
    HERE,
    RESULTS,
    VAEKIT,
    json_lines,
    machine,
    markdown_table,
    require_fashion_mnist,
    run,
    save,
    side_venv,
)

# vaekit key -> pythae key for the 784-400-20 network
PYTHAE_KEYS = {
    "encoder.layers.0": "encoder.fc1", "encoder.mean": "encoder.mu", "encoder.logvar": "encoder.lv",
    "decoder.layers.0": "decoder.fc3", "decoder.out": "decoder.fc4",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1000, help="test images")
    p.add_argument("--k", type=int, default=1000, help="importance samples")
    p.add_argument("--rounds", type=int, default=3, help="timed repetitions per side (best is reported)")
    args = p.parse_args()
    require_fashion_mnist()
    from safetensors.torch import save_file

    import vaekit
    from vaekit.cli.common import run_data
    from vaekit.run import read_run_config

    run_dir = RESULTS / "runs" / "train-fp32"
    if not (run_dir / "model.safetensors").is_file():
        run([*VAEKIT, "train", "--data", "fashion-mnist", "--preset", "pytorch-example", "--val-fraction", "0",
             "--epochs", "3", "--seed", "1", "--out", run_dir, "--quiet", "--overwrite"])
    model = vaekit.load(run_dir)
    test = run_data(read_run_config(run_dir)).test.take(args.n)

    work = RESULTS / "eval_speed"
    work.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        state[f"{PYTHAE_KEYS[prefix]}.{leaf}"] = tensor.contiguous()
    save_file(state, work / "weights.safetensors")
    np.save(work / "images.npy", test.x.numpy())

    python = side_venv("pythae", ["pythae==0.1.2", "safetensors"])
    print(f"eval_speed: n={args.n}, k={args.k} on {machine()}", file=sys.stderr, flush=True)
    anchor = json_lines(run([python, HERE / "pythae_nll.py", work / "weights.safetensors", work / "images.npy",
                             args.k, args.rounds]))[-1]

    mine = json_lines(run([sys.executable, HERE / "vaekit_nll.py", run_dir, work / "images.npy", args.k,
                           args.rounds]))[-1]

    rows = [
        {"implementation": "pythae 0.1.2 VAE.get_nll (reference)", "images/s (best)": anchor["images_per_s"],
         "images/s (median)": anchor["images_per_s_median"], "speed-up": 1.0, "NLL (nats)": anchor["nll"]},
        {"implementation": "vaekit evaluate", "images/s (best)": mine["images_per_s"],
         "images/s (median)": mine["images_per_s_median"],
         "speed-up": mine["images_per_s"] / anchor["images_per_s"], "NLL (nats)": mine["nll"]},
    ]
    header = (f"Importance-weighted NLL, K={args.k}, first {args.n} Fashion-MNIST test images, same weights, "
              f"best of {args.rounds} rounds ({machine()})\n\n")
    table = markdown_table(rows, ["implementation", "images/s (best)", "images/s (median)", "speed-up", "NLL (nats)"])
    print(header + table)
    save("eval_speed", {"anchor": anchor, "vaekit": mine, "rows": rows}, header + table)


if __name__ == "__main__":
    main()
