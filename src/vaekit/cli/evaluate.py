"""``vaekit evaluate``: likelihood models get ELBO parts, the importance-weighted NLL, bits/dim and
active units; image autoencoders (autoencoder-kl) get PSNR, SSIM, LPIPS, KL per latent element, the
latents' statistics and a side-by-side grid."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vaekit.cli.base import Command, command
from vaekit.cli.common import add_device, add_run, open_run, positive_int
from vaekit.evaluation.runs import LIKELIHOOD_KEYS as KEYS


@command("evaluate")
class EvaluateCommand(Command):
    help = "measure a run on held-out data (nats per example and the importance-weighted NLL; PSNR/SSIM/LPIPS " \
           "for image autoencoders; several processes: torchrun -m vaekit evaluate ...)"
    distributed = True

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        p.add_argument("--split", choices=("test", "val"), default="test", help="held-out split (default: test)")
        p.add_argument("--data", default=None, metavar="SPEC",
                       help="evaluate on other data (image autoencoders: a folder of images, centre-cropped)")
        p.add_argument("--iw", type=int, default=None, metavar="K",
                       help="importance samples for the NLL (Burda et al. 2015; default 1); 5000 for published numbers")
        p.add_argument("--batch-size", type=positive_int, default=None, metavar="B",
                       help="likelihood: most (example, sample) pairs decoded at once, bounding memory (default "
                            "4096); images: images per batch (default 8)")
        p.add_argument("--lpips-net", choices=("vgg", "alex", "none"), default="vgg", help="image autoencoders")
        p.add_argument("--tiled", action="store_true", help="image autoencoders: encode and decode in tiles")
        p.add_argument("--grid", type=Path, default=None, help="image autoencoders: PNG of inputs above "
                       "reconstructions (default RUN/eval_grid.png)")
        p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
        p.add_argument("--json", action="store_true", help="print one JSON object with exactly: " + ", ".join(KEYS)
                       + " (image autoencoders: psnr, ssim, lpips, kl_per_element, latent_mean, latent_std, "
                         "scaling_factor, n)")
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.evaluation.runs import EvaluationRequest, evaluate_run
        from vaekit.training import distributed

        world = distributed.setup()  # under torchrun the ranks share the held-out examples
        with distributed.agreement(world):
            device = distributed.rank_device(args.device, world)
            cfg, model = open_run(args.run, device, args.precision)
        request = EvaluationRequest(split=args.split, data=args.data, iw=args.iw, batch_size=args.batch_size,
                                    lpips_net=None if args.lpips_net == "none" else args.lpips_net,
                                    tiled=args.tiled, grid=args.grid, seed=args.seed, device=device)
        values, keys = evaluate_run(args.run, cfg, model, request)
        if not world.writer:  # rank 0 reports for the job
            return 0
        if args.json:
            print(json.dumps({k: values[k] for k in keys}))
            return 0
        where = args.data or args.split
        print(f"{args.run} on {where} ({values['n']} examples):")
        for key in keys:
            v = values[key]
            if isinstance(v, list):
                v = "[" + ", ".join(f"{e:.3f}" if isinstance(e, float) else str(e) for e in v) + "]"
            print(f"  {key:<15} {v:>12.4f}" if isinstance(v, float) else f"  {key:<15} {v!s:>12}")
        return 0
