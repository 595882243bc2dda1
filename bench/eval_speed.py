"""Evaluation speed: ``vaekit evaluate --iw K`` against pythae's ``VAE.get_nll`` (pythae 0.1.2,
installed by this script into bench/.venv-pythae), side by side on the same weights and images.

The model is the pytorch-example preset trained by train_speed.py (or briefly here if absent);
its weights are copied into pythae's module names, so both estimate -log p(x) of one model on the
first N Fashion-MNIST test images with K importance samples. Reports images per second and the
NLL estimates, for vaekit in fp32, in ``--precision auto`` (the default; on an AMX CPU the estimator of
this Bernoulli model runs its network in bf16, see VAE.likelihood_precision) and in ``--precision bf16``
forced (the network's matrix products in bf16, the densities and the logsumexp in fp32), with each NLL's
distance from fp32's.
The issue's targets for an AMX CPU: auto at least 6x pythae with its NLL within 0.05 nats of fp32.

Run: python bench/eval_speed.py [--n 1000] [--k 1000]
     python bench/eval_speed.py --quick      (n 50, k 100, one round; prints, saves nothing)
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
    p.add_argument("--quick", action="store_true", help="n 50, k 100, one round, to check the script; saves nothing")
    args = p.parse_args()
    if args.quick:
        args.n, args.k, args.rounds = 50, 100, 1
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

    mine = {precision: json_lines(run([sys.executable, HERE / "vaekit_nll.py", run_dir, work / "images.npy",
                                       args.k, args.rounds, precision]))[-1] for precision in ("fp32", "auto", "bf16")}

    rows = [
        {"implementation": "pythae 0.1.2 VAE.get_nll (reference)", "images/s (best)": anchor["images_per_s"],
         "images/s (median)": anchor["images_per_s_median"], "speed-up": 1.0, "NLL (nats)": anchor["nll"]},
    ]
    for precision, m in mine.items():
        label = f"--precision {precision}" + (f" (estimator in {m['precision']})" if precision == "auto" else "")
        rows.append({"implementation": f"vaekit evaluate {label}", "images/s (best)": m["images_per_s"],
                     "images/s (median)": m["images_per_s_median"],
                     "speed-up": m["images_per_s"] / anchor["images_per_s"], "NLL (nats)": m["nll"],
                     "NLL - vaekit fp32": m["nll"] - mine["fp32"]["nll"]})
    header = (f"Importance-weighted NLL, K={args.k}, first {args.n} Fashion-MNIST test images, same weights, "
              f"best of {args.rounds} rounds ({machine()})\n\n")
    table = markdown_table(rows, ["implementation", "images/s (best)", "images/s (median)", "speed-up", "NLL (nats)",
                                  "NLL - vaekit fp32"])
    print(header + table)
    if args.quick:
        return
    save("eval_speed", {"anchor": anchor, "vaekit": mine["fp32"], "vaekit_auto": mine["auto"],
                        "vaekit_bf16": mine["bf16"], "rows": rows},
         header + table, precision=f"per row (fp32; auto = {mine['auto']['precision']}; bf16)")


if __name__ == "__main__":
    main()
