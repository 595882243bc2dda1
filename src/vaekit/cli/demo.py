"""``vaekit demo``: train a VAE and a conditional VAE on scikit-learn's digits, evaluate them, and
write report.html with every picture and the metrics table (and overview.png, the samples and
reconstructions of both models in one figure). About a minute on 2 CPU cores."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vaekit.cli.base import Command, command
from vaekit.cli.common import positive_int

DEMO_RUNS = (
    # (directory, title, model overrides, conditional)
    ("vae", "VAE (MLP 64-256-128-8, Bernoulli likelihood)", {"hidden": [256, 128], "latent_dim": 8}, False),
    ("cvae", "Conditional VAE (label into encoder and decoder)", {"hidden": [256, 128], "latent_dim": 8}, True),
)


OVERVIEW_CAPTIONS = {1: "samples from the prior", 2: "test inputs (odd rows), reconstructions"}


@command("demo")
class DemoCommand(Command):
    help = "train on digits, evaluate, and write report.html with all pictures (about a minute on a CPU)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default runs/demo)")
        p.add_argument("--epochs", type=positive_int, default=150, help="epochs per model (default 150)")
        p.add_argument("--iw", type=positive_int, default=1000, help="importance samples for the NLL (default 1000)")

    def run(self, args: argparse.Namespace) -> int:
        report = run_demo(args.out, epochs=args.epochs, iw=args.iw,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
        print(report)
        return 0


def run_demo(out: Path, epochs: int = 150, iw: int = 1000, log=print) -> Path:
    from vaekit.data import DataConfig
    from vaekit.training.api import train
    from vaekit.training.config import TrainConfig
    from vaekit.viz.grid import save_png, side_by_side
    from vaekit.viz.report import Report

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    report = Report("vaekit demo: scikit-learn digits",
                    intro="Two models trained from scratch on the 8x8 digits bundled with scikit-learn (seeded "
                          "80/10/10 split). All numbers are nats per example on the test split; the NLL is the "
                          f"importance-weighted estimate with K={iw} (Burda et al. 2015) and includes every "
                          "normalising constant. The digits are grey levels in [0, 1] scored by a Bernoulli "
                          "likelihood (the cross-entropy of pytorch/examples), so the NLL is that of a pseudo-"
                          "likelihood; binarise (--binarize) for a true one.")
    rows, sections, overview = [], [], []
    for name, title, overrides, conditional in DEMO_RUNS:
        run = out / name
        log(f"training {name} ({epochs} epochs) -> {run}")
        t0 = time.perf_counter()
        train(run, model="mlp", model_overrides=overrides, conditional=conditional,
              data=DataConfig(spec="digits"), training=TrainConfig(epochs=epochs, batch_size=64, lr=2e-3, seed=0),
              overwrite=True, progress=False)
        seconds = time.perf_counter() - t0
        row, blocks = describe_run(run, title, iw)
        rows.append({"model": name, **row, "train seconds": round(seconds, 1)})
        sections.append((title, blocks))
        picks = (1,) if conditional else (1, 2)  # samples (one column per class for the CVAE), reconstructions
        overview += [(blocks[i][0], f"{name}: {OVERVIEW_CAPTIONS[i]}") for i in picks]
    report.heading("Metrics (test split)")
    report.table(rows)
    for title, blocks in sections:
        report.heading(title)
        for image, caption in blocks:
            report.image(image, caption)
    report.heading("Try it yourself")
    report.paragraph("vaekit train --data fashion-mnist --preset pytorch-example --out runs/fm; "
                     "vaekit evaluate runs/fm --iw 1000; vaekit sample runs/fm -n 64 --out samples.png; "
                     "vaekit traverse runs/fm; vaekit plot runs/fm")
    path = report.save(out / "report.html")
    # one figure with the samples and reconstructions of both models (the README shows it)
    save_png(side_by_side([im for im, _ in overview], [c for _, c in overview], height=300), out / "overview.png")
    log(f"demo finished in {time.perf_counter() - started:.0f} s")
    return path


def describe_run(run: Path, title: str, iw: int):
    """Evaluate a run and draw all its pictures: (metrics row, [(image, caption), ...])."""
    from vaekit.cli.common import run_data
    from vaekit.evaluation import evaluate
    from vaekit.run import load, read_metrics, read_run_config
    from vaekit.viz import pictures

    cfg = read_run_config(run)
    model = load(run)
    data = run_data(cfg)
    result = evaluate(model, data.test, k=iw, seed=0).as_dict()
    history = read_metrics(run)
    info = data.info
    blocks = [(pictures.loss_curves(history), "loss curves (train solid, validation dashed)")]
    if model.config.conditional:
        blocks.append((pictures.samples(model, info, n=10 * info.num_classes),
                       "samples from the prior, one column per class (0-9)"))
    else:
        blocks.append((pictures.samples(model, info, n=64), "64 samples from the prior (decoder means)"))
    blocks += [
        (pictures.reconstructions(model, data.test, info, n=16), "test inputs (odd rows) and reconstructions"),
        (pictures.interpolations(model, data.test, info, 0, 1, steps=10), "between two test digits: linear and "
         "spherical paths in latent space"),
        (pictures.traversals(model, data.test, info, dims=8, steps=9), "each latent unit swept over [-3, 3], "
         "most active first"),
        (pictures.latent_scatter(model, data.test, info), "test posterior means, PCA to 2-D, coloured by digit"),
    ]
    row = {k: result[k] for k in ("elbo", "recon", "kl", "nll", "bits_per_dim", "active_units", "k", "n")}
    return row, blocks
