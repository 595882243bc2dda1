"""``vaekit sample-quality``: FCD, precision and recall of a run's samples in the feature space of a
classifier trained on the dataset itself, with the real-vs-real floor."""

from __future__ import annotations

import argparse
import json
import sys

from vaekit.cli.base import Command, command
from vaekit.cli.common import add_device, add_run, positive_int

ROWS = (("fcd", "FCD"), ("precision", "precision"), ("recall", "recall"))


@command("sample-quality")
class SampleQualityCommand(Command):
    help = "measure sample quality (FCD, precision, recall) against the test images, with the real-vs-real floor"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        p.add_argument("--prior", choices=("model", "standard", "gmm", "vamp", "aggregate", "diffusion"),
                       default="model",
                       help="what generates: the run's own prior (default; a diffusion run's denoiser), N(0, I), "
                            "the mixture of 'vaekit fit-prior', the VampPrior, the aggregate posterior itself "
                            "(every training code: the best a prior on this decoder can do), or diffusion")
        p.add_argument("-n", type=positive_int, default=10000, help="samples (and real images) compared (default "
                       "10000)")
        p.add_argument("--steps", type=positive_int, default=None, help="diffusion runs: sampling steps")
        p.add_argument("--sampler", choices=("ddim", "dpm", "ddpm"), default=None, help="diffusion runs: sampler")
        p.add_argument("--guidance", type=float, default=None, help="conditional diffusion runs: guidance weight")
        p.add_argument("--batch-size", type=positive_int, default=256, help="samples drawn at once (default 256)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", action="store_true", help="print one JSON object: run, prior, n, fcd, precision, "
                       "recall, accuracy, samples_per_second, floor_fcd, floor_precision, floor_recall, "
                       "classifier_accuracy, steps, sampler")
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.evaluation.sample_quality import sample_quality

        result = sample_quality(args.run, args.prior, args.n, args.steps, args.sampler, args.guidance, args.seed,
                                args.batch_size, args.device, args.precision,
                                log=lambda m: print(m, file=sys.stderr, flush=True))
        if args.json:
            print(json.dumps(result.as_dict()))
            return 0
        steps = f", {result.sampler} {result.steps} steps" if result.steps else ""
        print(f"{args.run}, prior {result.prior}{steps}, {result.n} samples against the test images "
              f"(classifier test accuracy {result.classifier_accuracy:.3f}):")
        print(f"  {'':<10} {'samples':>10} {'floor':>10}")
        for key, label in ROWS:
            print(f"  {label:<10} {getattr(result, key):>10.4f} {getattr(result, 'floor_' + key):>10.4f}")
        if result.accuracy is not None:
            print(f"  {'accuracy':<10} {result.accuracy:>10.4f}   (classifier on class-conditional samples)")
        print(f"  {result.samples_per_second:.1f} samples/s (batch {args.batch_size})")
        print("  floor: real training images against real test images")
        return 0
