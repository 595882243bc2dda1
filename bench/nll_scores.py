"""Per-image importance-weighted NLL of a run on its first N test images (as `vaekit evaluate --iw K`
computes it, but keeping each image's value for paired comparisons). Prints one JSON line.

Run (from likelihood.py): python nll_scores.py RUN K N [ROWS]

ROWS bounds the decoded (image, sample) rows held at once; conv models are faster with a few
hundred (large activations thrash memory), MLPs with a few thousand.
"""

from __future__ import annotations

import json
import sys
import time

from vaekit.runtime import tune_cpu

tune_cpu()

import torch  # noqa: E402

import vaekit  # noqa: E402
from vaekit.cli.common import run_data  # noqa: E402
from vaekit.evaluation import evaluate, log_likelihood  # noqa: E402
from vaekit.run import read_run_config  # noqa: E402


def main() -> None:
    run, k, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rows = int(sys.argv[4]) if len(sys.argv) > 4 else 4096
    model = vaekit.load(run)
    test = run_data(read_run_config(run)).test.take(n)
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    per_image = []
    with torch.no_grad():
        step = max(1, rows // k)
        for i in range(0, len(test), step):
            x = test.x[i : i + step]
            per_image += (-log_likelihood(model, x, None, k, rows, gen)).tolist()
    seconds = time.perf_counter() - started
    summary = evaluate(model, test, k=1, seed=0)
    print(json.dumps({"nll": sum(per_image) / len(per_image), "nll_per_image": per_image, "elbo": summary.elbo,
                      "active_units": summary.active_units, "seconds": seconds, "k": k, "n": len(per_image)}))


if __name__ == "__main__":
    main()
