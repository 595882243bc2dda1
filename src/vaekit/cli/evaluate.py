"""``vaekit evaluate``: ELBO parts, importance-weighted NLL, bits/dim and active units."""

from __future__ import annotations

import argparse
import json

from vaekit.cli.common import add_device, add_run, open_run, positive_int, run_data
from vaekit.cli.main import Command, command

KEYS = ("elbo", "recon", "kl", "nll", "bits_per_dim", "active_units", "k", "n")


@command("evaluate")
class EvaluateCommand(Command):
    help = "measure a run on held-out data (nats per example; importance-weighted NLL)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        p.add_argument("--split", choices=("test", "val"), default="test", help="held-out split (default: test)")
        p.add_argument("--iw", type=int, default=1, metavar="K",
                       help="importance samples for the NLL (Burda et al. 2015); 5000 for published numbers")
        p.add_argument("--batch-size", type=positive_int, default=4096, metavar="B",
                       help="most (example, sample) pairs decoded at once; bounds memory (default 4096)")
        p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
        p.add_argument("--json", action="store_true", help="print one JSON object with exactly: " + ", ".join(KEYS))
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.errors import VaekitError
        from vaekit.evaluation import evaluate

        if args.iw < 1:
            raise VaekitError(f"--iw must be >= 1, got {args.iw}")
        cfg, model = open_run(args.run, args.device)
        data = run_data(cfg).split(args.split)
        result = evaluate(model, data, k=args.iw, batch_size=args.batch_size, seed=args.seed, device=args.device)
        values = result.as_dict()
        if args.json:
            print(json.dumps({k: values[k] for k in KEYS}))
            return 0
        print(f"{args.run} on {args.split} ({values['n']} examples), nats per example:")
        for key in KEYS:
            v = values[key]
            print(f"  {key:<13} {v:>12.4f}" if isinstance(v, float) else f"  {key:<13} {v:>12d}")
        return 0
