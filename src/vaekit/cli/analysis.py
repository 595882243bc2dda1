"""Analysis commands: fit-prior (a Gaussian mixture on the aggregate posterior, for sampling) and
disentanglement (disentanglement_lib's metrics on ground-truth-factor data)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vaekit.cli.base import Command, command
from vaekit.cli.common import add_device, add_run, open_run, positive_int, run_data


@command("fit-prior")
class FitPriorCommand(Command):
    help = "fit a Gaussian mixture to the aggregate posterior (the training codes) and save it for sampling"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        p.add_argument("--components", type=positive_int, default=10, help="mixture components (default 10)")
        p.add_argument("--covariance", choices=("full", "diag"), default="full")
        p.add_argument("--max-examples", type=positive_int, default=20000, help="training codes used (default 20000)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", action="store_true", help="print one JSON object: path, codes, mean_log_likelihood, "
                       "standard_normal_log_likelihood")
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.evaluation.aggregate import fit_gmm_prior

        cfg, model = open_run(args.run, args.device, args.precision)
        fitted = fit_gmm_prior(args.run, model, run_data(cfg).train, args.components, args.covariance,
                               args.max_examples, args.seed)
        if args.json:
            print(json.dumps({"path": str(fitted.path), "codes": fitted.n_codes,
                              "mean_log_likelihood": fitted.mean_log_likelihood,
                              "standard_normal_log_likelihood": fitted.standard_log_likelihood}))
            return 0
        print(fitted.path)
        print(f"average log-likelihood of the codes under the mixture: {fitted.mean_log_likelihood:.3f} "
              f"(under N(0, I): {fitted.standard_log_likelihood:.3f})")
        return 0


@command("disentanglement")
class DisentanglementCommand(Command):
    help = "disentanglement_lib's metrics (BetaVAE, FactorVAE, MIG, SAP, DCI) for a run on data with known factors"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        p.add_argument("--metrics", default="beta_vae,factor_vae,mig,sap,dci",
                       help="comma-separated subset (default: all five)")
        p.add_argument("--num-train", type=positive_int, default=None,
                       help="training points per metric (default: disentanglement_lib's 10000)")
        p.add_argument("--num-eval", type=positive_int, default=None, help="evaluation points (default 5000)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", type=Path, default=None, help="JSON file (default RUN/disentanglement.json)")
        p.add_argument("--json", action="store_true", help="print one JSON object: each metric's headline score "
                       "(beta_vae, factor_vae: eval accuracy; mig; sap; dci: disentanglement)")
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.disentanglement import evaluate_disentanglement
        from vaekit.errors import VaekitError
        from vaekit.viz.grid import save_png
        from vaekit.viz.pictures import traversals

        cfg, model = open_run(args.run, args.device, args.precision)
        data = run_data(cfg)
        dataset = getattr(data.train, "dataset", None)
        if dataset is None or not hasattr(dataset, "images_for"):
            raise VaekitError(f"{args.run} was trained on {cfg.data.spec}, which has no ground-truth factors; "
                              "disentanglement metrics need --data dsprites")
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        settings = {m: _settings(m, args) for m in metrics}
        results = evaluate_disentanglement(model, dataset, metrics, args.seed, settings,
                                           log=lambda msg: print(msg, file=sys.stderr, flush=True))
        from vaekit.io import write_json

        out = args.out or args.run / "disentanglement.json"
        write_json(out, {"run": str(args.run), "seed": args.seed, "settings": settings, "results": results})
        picture = save_png(traversals(model, data.test, data.info, dims=10, steps=9), args.run /
                           "disentanglement_traversal.png")
        headline = {m: _headline(m, r) for m, r in results.items()}
        if args.json:
            print(json.dumps(headline))
            return 0
        print(f"{args.run} on {cfg.data.spec} (seed {args.seed}):")
        for metric, value in headline.items():
            print(f"  {metric:<15} {value:>12.4f}")
        print(f"details: {out}")
        print(f"traversal: {picture}")
        return 0


def _settings(metric: str, args) -> dict:
    s = {}
    if args.num_train is not None:
        s["num_train"] = args.num_train
    if args.num_eval is not None and metric in ("beta_vae", "factor_vae", "sap", "dci"):
        s["num_eval"] = args.num_eval
    return s


def _headline(metric: str, result: dict) -> float:
    key = {"beta_vae": "eval_accuracy", "factor_vae": "eval_accuracy", "mig": "mig", "sap": "sap",
           "dci": "disentanglement"}[metric]
    return result[key]
