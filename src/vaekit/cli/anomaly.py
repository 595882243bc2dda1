"""``vaekit anomaly``: score data for anomalies with a run, the threshold calibrated on the run's own
held-out normal data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vaekit.cli.base import Command, command
from vaekit.cli.common import add_device, add_run, int_list, open_run, positive_int

# vaekit.anomaly.SCORES (the CLI imports no torch before it runs)
SCORE_NAMES = ("nll", "elbo", "recon", "latent", "complexity", "regret", "ratio")


@command("anomaly")
class AnomalyCommand(Command):
    help = "score every example for anomalies (nll, elbo, recon, latent, complexity, regret, ratio), flag those " \
           "above a threshold calibrated at --fpr on the run's held-out data, and measure ROC-AUC/PR-AUC when " \
           "labels are known"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        p.add_argument("--data", default=None, metavar="SPEC", help="data to score, any --data form, prepared as the "
                       "run prepares its data (default: the run's test split)")
        p.add_argument("--score", default="nll", metavar="S[,S...]", help=f"one or more of {', '.join(SCORE_NAMES)}, "
                       "or a sum of them such as latent+complexity (each part standardised on the calibration data), "
                       "or all (those the run can give); the first sets the threshold and the flags (default: nll)")
        p.add_argument("--fpr", type=float, default=0.05, help="false-positive rate the threshold is calibrated at, "
                       "on the run's validation split (its test split if it has none) (default 0.05)")
        p.add_argument("--anomaly-classes", type=int_list, default=None, metavar="C[,C...]",
                       help="labels of --data that are anomalies (the rest are normal): adds ROC-AUC, PR-AUC, "
                            "figures")
        p.add_argument("--ood-data", default=None, metavar="SPEC", help="anomalous data, scored together with the "
                       "run's test split as the normal data: adds ROC-AUC, PR-AUC and figures")
        p.add_argument("--out", type=Path, default=None, help="CSV of index (path), the scores and the flag (default "
                       "RUN/anomaly_scores.csv); figures go beside it as OUT_roc.png and OUT_hist.png")
        p.add_argument("-k", "--k", dest="k", type=positive_int, default=100,
                       help="draws of q(z|x) per example: the importance samples of nll (default 100)")
        p.add_argument("--steps", type=positive_int, default=100, help="regret: Adam steps on the posterior "
                       "parameters (default 100, as Xiao et al.)")
        p.add_argument("--lr", type=float, default=0.05, help="regret: Adam's step size (default 0.05)")
        p.add_argument("--codec", choices=("png", "best"), default="png", help="complexity: png (optimised PNG) or "
                       "best (the shortest of PNG, zlib, bz2, LZMA) (default png)")
        p.add_argument("--components", type=positive_int, default=None, help="latent: mixture components when the "
                       "run has no prior_gmm.safetensors (default: chosen among 5, 10, 20, 50, 100 by the likelihood "
                       "of held-out training codes)")
        p.add_argument("--latent-codes", choices=("mean", "mean+logvar"), default="mean", help="latent: what the "
                       "mixture is fitted to and scores: the posterior means, or means and log-variances side by "
                       "side (default mean)")
        p.add_argument("--background", type=Path, default=None, metavar="RUN", help="ratio: the background model, a "
                       "run trained on the same data with --perturb (Ren et al. 2019)")
        p.add_argument("--seed", type=int, default=0, help="seed of every example's noise (default 0)")
        p.add_argument("--no-figures", action="store_true", help="skip the ROC and histogram PNGs")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--json", action="store_true", help="print one JSON object: score, threshold, fpr, n, flagged, "
                       "calibration, thresholds, csv (and roc_auc, pr_auc, per_score when labels are known)")
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.anomaly.runs import AnomalyRequest, anomaly_run
        from vaekit.anomaly.scores import ScoreSettings, parse_scores

        parse_scores(args.score)  # before loading anything: an unknown score is a user error
        scores = ("all",) if args.score.strip() == "all" else parse_scores(args.score)
        settings = ScoreSettings(k=args.k, seed=args.seed, steps=args.steps, lr=args.lr, codec=args.codec,
                                 components=args.components, codes=args.latent_codes)
        if not 0 < args.fpr < 1:
            from vaekit.errors import VaekitError

            raise VaekitError(f"--fpr must be in (0, 1), got {args.fpr}")
        cfg, model = open_run(args.run, args.device, args.precision)
        req = AnomalyRequest(data=args.data, scores=scores, fpr=args.fpr, settings=settings,
                             anomaly_classes=None if args.anomaly_classes is None else tuple(args.anomaly_classes),
                             ood_data=args.ood_data, background=args.background, out=args.out,
                             figures=not args.no_figures, device=args.device,
                             progress=not args.quiet and not args.json)
        report = anomaly_run(args.run, cfg, model, req)
        if args.json:
            print(json.dumps(report.summary()))
            return 0
        cal = report.calibration
        print(f"{args.run}: {report.n} examples scored, {report.flagged} flagged by {cal.score} > {cal.threshold:.4f}")
        print(f"  threshold: FPR {cal.fpr:g} on the {cal.split} split ({cal.n} examples, {cal.flagged} above it)")
        for name, m in report.metrics.items():
            print(f"  {name:<11} ROC-AUC {m['roc_auc']:.4f}   PR-AUC {m['pr_auc']:.4f}")
        print(f"scores: {report.csv}")
        for path in report.figures:
            print(f"figure: {path}")
        print(f"calibration: {report.calibration_path}")
        return 0
