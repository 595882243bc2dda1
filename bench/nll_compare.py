"""Paired NLL comparison of finished runs, the first one the baseline: each run's K-sample NLL on the
first N test images (scored as likelihood.py scores them, and cached in the run), the epochs it
trained, and its difference from the baseline, image by image, with a standard error.

For runs made outside likelihood.py's budget loop: a budget-stopped run extended with
`vaekit train --out RUN --resume --epochs E --max-minutes 0`, or runs compared at equal epochs of a
measured pace rather than equal wall-clock minutes on a VM whose pace drifts between hours.

Run: python bench/nll_compare.py RUN [RUN ...] [--name NAME] [--k 5000] [--test-images 1000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import machine, markdown_table, require_fashion_mnist, save
from likelihood import paired, score, trained_epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--name", default="likelihood-compare", help="results/NAME.md and NAME.json")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--test-images", type=int, default=1000)
    args = p.parse_args()
    require_fashion_mnist()
    rows, per_image = [], []
    for run in args.runs:
        epochs, history, training = trained_epochs(run)
        scored = score(run, str(run), args.k, args.test_images, reuse=True)
        per_image.append(scored["nll_per_image"])
        rows.append({"run": str(run), "objective": training["objective"],
                     "ELBO epochs": training.get("elbo_epochs") or "",
                     "epochs": round(epochs, 2), "train minutes": sum(r["seconds"] for r in history) / 60,
                     "test NLL": scored["nll"], "test -ELBO": -scored["elbo"],
                     "active units": scored["active_units"]})
    for row, scores in zip(rows[1:], per_image[1:]):
        row["better than the first"] = paired(per_image[0], scores)
    cols = ["run", "objective", "ELBO epochs", "epochs", "train minutes", "test NLL", "test -ELBO",
            "better than the first", "active units"]
    text = (f"Dynamically binarised Fashion-MNIST, NLL (nats) with K={args.k} on the first {args.test_images} test "
            f"images, paired against the first run ({machine()})\n\n" + markdown_table(rows, cols) + "\n")
    print(text)
    save(args.name, {"rows": rows, "k": args.k, "test_images": args.test_images}, text)


if __name__ == "__main__":
    main()
