"""The vaekit side of eval_speed.py, in its own process like the CLI: the importance-weighted NLL
of a run on given images, timed over several rounds. Prints one JSON line.

Run (from eval_speed.py): python vaekit_nll.py RUN IMAGES.npy K ROUNDS [PRECISION]
"""

from __future__ import annotations

import json
import sys
import time

from vaekit.runtime import tune_cpu

tune_cpu()  # as the CLI does, before torch starts its worker threads

import numpy as np  # noqa: E402
import torch  # noqa: E402

import vaekit  # noqa: E402
from vaekit.data import ArrayData  # noqa: E402
from vaekit.evaluation import evaluate  # noqa: E402
from vaekit.evaluation.likelihood import estimator_precision  # noqa: E402


def main() -> None:
    run, images, k, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    precision = sys.argv[5] if len(sys.argv) > 5 else "auto"
    model = vaekit.load(run, precision=precision)
    with estimator_precision(model) as used:  # what the estimator runs in (auto: fp32)
        pass
    data = ArrayData(torch.from_numpy(np.load(images)).float())
    times, nll = [], None
    for r in range(rounds):
        started = time.perf_counter()
        nll = evaluate(model, data, k=k, seed=r).nll
        times.append(time.perf_counter() - started)
    best = min(times)
    print(json.dumps({"n": len(data), "k": k, "precision": used, "seconds": times,
                      "images_per_s": len(data) / best,
                      "images_per_s_median": len(data) / sorted(times)[len(times) // 2], "nll": nll}))


if __name__ == "__main__":
    main()
