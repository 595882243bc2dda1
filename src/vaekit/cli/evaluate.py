"""``vaekit evaluate``: likelihood models get ELBO parts, the importance-weighted NLL, bits/dim and
active units; image autoencoders (autoencoder-kl) get PSNR, SSIM, LPIPS, KL per latent element, the
latents' statistics and a side-by-side grid."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vaekit.cli.base import Command, command
from vaekit.cli.common import add_device, add_run, open_run, positive_int, run_data
from vaekit.errors import VaekitError

KEYS = ("elbo", "recon", "kl", "nll", "bits_per_dim", "active_units", "k", "n")
HIERARCHICAL_KEYS = ("kl_per_layer", "active_units_per_layer")  # added for hvae and ladder runs


@command("evaluate")
class EvaluateCommand(Command):
    help = "measure a run on held-out data (nats per example and the importance-weighted NLL; PSNR/SSIM/LPIPS " \
           "for image autoencoders)"

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
        cfg, model = open_run(args.run, args.device)
        evaluator = EVALUATORS[getattr(model, "evaluator", "likelihood")]
        values, keys = evaluator(model, cfg, args)
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


def _likelihood(model, cfg, args) -> tuple[dict, tuple[str, ...]]:
    from vaekit.evaluation import evaluate

    k = 1 if args.iw is None else args.iw
    if k < 1:
        raise VaekitError(f"--iw must be >= 1, got {k}")
    if args.data is not None:
        from vaekit.config import replace
        from vaekit.data import load_data

        data = load_data(replace(cfg.data, spec=args.data, test_spec=None), saved=cfg.data_info).test
    else:
        data = run_data(cfg).split(args.split)
    result = evaluate(model, data, k=k, batch_size=args.batch_size or 4096, seed=args.seed, device=args.device)
    values = result.as_dict()
    return values, KEYS + tuple(k for k in HIERARCHICAL_KEYS if k in values)


def _images(model, cfg, args) -> tuple[dict, tuple[str, ...]]:
    import torch

    from vaekit.evaluation.images import IMAGE_KEYS, evaluate_images
    from vaekit.viz.grid import image_grid, save_png

    if args.iw is not None:
        raise VaekitError("--iw applies to likelihood models; image autoencoders report PSNR, SSIM and LPIPS")
    data = folder_data(args.data, cfg, model) if args.data is not None else run_data(cfg).split(args.split)
    net = None if args.lpips_net == "none" else args.lpips_net
    result, shown, recon = evaluate_images(model, data, batch_size=args.batch_size or 8, lpips_net=net,
                                           tiled=args.tiled, device=args.device, seed=args.seed)
    grid = image_grid(torch.cat([shown, recon]), nrow=len(shown), value_range=model.input_range)
    save_png(grid, args.grid or args.run / "eval_grid.png")
    return result.as_dict(), IMAGE_KEYS


def folder_data(spec: str, cfg, model):
    """Every image of ``spec`` (centre-cropped to the run's resolution) as a stream, or the test split
    of an in-memory source."""
    from vaekit.config import replace
    from vaekit.data import ImageStream, load_data
    from vaekit.data.sources import ReadOptions, read_source

    info = cfg.data_info
    resolution = cfg.data.resolution or info.shape[-1]
    raw = read_source(spec, ReadOptions(resolution, cfg.data.color, cfg.data.skip_bad, lazy=True))
    if raw.items is not None:
        grey = info.shape[0] == 1
        return ImageStream(raw.items, None, resolution, grey, resize=cfg.data.resize, augment=False,
                           input_range=tuple(info.input_range), seed=cfg.data.split_seed)
    return load_data(replace(cfg.data, spec=spec, test_spec=None, augment=False), saved=info).test


EVALUATORS = {"likelihood": _likelihood, "images": _images}
