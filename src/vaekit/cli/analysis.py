"""Analysis commands: fit-prior (a Gaussian mixture on the aggregate posterior, for sampling) and
disentanglement (disentanglement_lib's metrics on ground-truth-factor data)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vaekit.cli.base import Command, command
from vaekit.cli.common import add_device, add_run, open_run, positive_int, run_data

GMM_FILE = "prior_gmm.safetensors"


@command("fit-prior")
class FitPriorCommand(Command):
    help = "fit a Gaussian mixture to the aggregate posterior (the training codes) and save it for sampling"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        p.add_argument("--components", type=positive_int, default=10, help="mixture components (default 10)")
        p.add_argument("--covariance", choices=("full", "diag"), default="full")
        p.add_argument("--max-examples", type=positive_int, default=20000, help="training codes used (default 20000)")
        p.add_argument("--seed", type=int, default=0)
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        import numpy as np
        import torch
        from sklearn.mixture import GaussianMixture

        from vaekit.evaluation import posterior_means
        from vaekit.io import save_tensors

        cfg, model = open_run(args.run, args.device)
        train = run_data(cfg).train
        codes = posterior_means(model, train.take(min(len(train), args.max_examples))).double().numpy()
        gmm = GaussianMixture(args.components, covariance_type=args.covariance, random_state=args.seed,
                              reg_covar=1e-5).fit(codes)
        cov = gmm.covariances_ if args.covariance == "full" else np.stack([np.diag(c) for c in gmm.covariances_])
        tensors = {"weights": torch.tensor(gmm.weights_), "means": torch.tensor(gmm.means_),
                   "scale_tril": torch.linalg.cholesky(torch.tensor(cov))}
        save_tensors(args.run / GMM_FILE, {k: v.float() for k, v in tensors.items()},
                     metadata={"fitted_on": f"{len(codes)} training posterior means"})
        print(args.run / GMM_FILE)
        print(f"average log-likelihood of the codes under the mixture: {gmm.score(codes):.3f} "
              f"(under N(0, I): {float(-0.5 * (codes**2 + np.log(2 * np.pi)).sum(1).mean()):.3f})")
        return 0


def load_gmm(run: Path, model):
    from vaekit.errors import VaekitError
    from vaekit.io import load_tensors
    from vaekit.models.priors import FullCovarianceMixture

    path = run / GMM_FILE
    if not path.is_file():
        raise VaekitError(f"{path}: no fitted prior; run 'vaekit fit-prior {run}' first")
    t, _ = load_tensors(path)
    return FullCovarianceMixture(t["weights"], t["means"], t["scale_tril"])


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
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.disentanglement import evaluate_disentanglement
        from vaekit.errors import VaekitError
        from vaekit.viz.grid import save_png
        from vaekit.viz.pictures import traversals

        cfg, model = open_run(args.run, args.device)
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
        print(json.dumps({m: _headline(m, r) for m, r in results.items()}))
        print(out)
        print(picture)
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
