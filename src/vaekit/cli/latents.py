"""``vaekit encode`` and ``vaekit decode``: the latents of a whole dataset out to a file, and back."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vaekit.cli.base import Command, command
from vaekit.cli.common import add_device, add_run, open_run, positive_int


@command("encode")
class EncodeCommand(Command):
    help = "write the latents of a whole dataset (posterior means and log-variances, or samples) with its labels"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        p.add_argument("--data", default=None, metavar="SPEC", help="data to encode, any --data form (default: the "
                       "run's own data), prepared as the run prepares its data")
        p.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                       help="all: every example in the source's own order (default); train/val/test: that split as "
                            "the run made it")
        p.add_argument("--out", type=Path, required=True, help="latents.safetensors (every tensor), .npz, or .npy "
                       "(the latent alone); folder paths go to OUT.paths.csv beside it")
        p.add_argument("--sample", action="store_true", help="write one draw z ~ q(z|x) per example (seeded by "
                       "--seed and the example's index) instead of the means and log-variances")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--batch-size", type=positive_int, default=256, metavar="B", help="examples per chunk")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--json", action="store_true", help="print one JSON object: path, n, tensors (name -> shape), "
                       "paths (the sidecar or null)")
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.config import replace
        from vaekit.data import load_examples
        from vaekit.encoding import encode_dataset, sidecar_path
        from vaekit.run import check_output

        cfg, model = open_run(args.run, args.device, args.precision)
        check_output(args.run, args.out)
        check_output(args.run, sidecar_path(args.out))
        data_cfg = cfg.data if args.data is None else replace(cfg.data, spec=args.data, test_spec=None)
        ex = load_examples(data_cfg, cfg.data_info, args.split)
        meta = {"run": str(args.run), "data": ex.source, "split": args.split, "model": type(model).__name__}
        result = encode_dataset(model, ex.data, args.out, sample=args.sample, seed=args.seed,
                                batch_size=args.batch_size, paths=ex.paths, metadata=meta,
                                progress=not args.quiet and not args.json)
        if args.json:
            print(json.dumps({"path": str(result.path), "n": result.n, "tensors": result.tensors,
                              "paths": None if result.paths_file is None else str(result.paths_file)}))
            return 0
        shapes = ", ".join(f"{k} {tuple(v)}" for k, v in result.tensors.items())
        print(f"{result.path}: {result.n} examples ({shapes})")
        if result.paths_file is not None:
            print(f"paths: {result.paths_file}")
        return 0


@command("decode")
class DecodeCommand(Command):
    help = "turn a latents file back into data: a folder of PNGs, a grid.png, or x.npy / x.npz (tables: x.csv)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        p.add_argument("latents", type=Path, metavar="LATENTS", help="a file written by 'vaekit encode' "
                       "(.safetensors, .npz) or a .npy of latents [N, *latent]")
        p.add_argument("--out", type=Path, required=True, help="DIR (one PNG per example), grid.png, x.npy, x.npz, "
                       "or x.csv for table rows (in the data's own units)")
        p.add_argument("--key", default=None, help="the tensor to decode (default: z, else mean, else scaled)")
        p.add_argument("-n", type=positive_int, default=64, help="grid.png: how many examples (default 64)")
        p.add_argument("--batch-size", type=positive_int, default=256, metavar="B", help="latents per chunk")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--json", action="store_true", help="print one JSON object: path, n, key")
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.encoding import decode_latents, open_latents
        from vaekit.run import check_output

        cfg, model = open_run(args.run, args.device, args.precision)
        check_output(args.run, args.out)
        latents = open_latents(args.latents, args.key)
        result = decode_latents(model, latents, args.out, cfg.data_info, batch_size=args.batch_size, grid=args.n,
                                progress=not args.quiet and not args.json)
        if args.json:
            print(json.dumps({"path": str(result.path), "n": result.n, "key": latents.key}))
            return 0
        print(f"{result.path}: {result.n} examples decoded from '{latents.key}'")
        return 0
