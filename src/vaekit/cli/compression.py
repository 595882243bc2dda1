"""``vaekit compress`` and ``vaekit decompress``: lossless coding of binary or 8-bit data with a
trained VAE (bits-back ANS; Bit-Swap for hvae runs)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vaekit.cli.base import Command, command
from vaekit.cli.common import add_run, positive_int

KEYS = "count, dims, method, order, lanes, bytes, payload_bits, initial_bits, information_bits, bits_per_dim, " \
       "bits_per_dim_without_initial, file_bits_per_dim, seconds, images_per_second"


def _report(values: dict, what: str) -> None:
    n, rate = values["count"], values["images_per_second"]
    print(f"{what} {n} examples ({values['method']}, {values['lanes']} chains): {values['bytes']} bytes, "
          f"{values['bits_per_dim']:.4f} bits/dim coded ({values['initial_bits']} initial bits; "
          f"{values['bits_per_dim_without_initial']:.4f} without), {values['file_bits_per_dim']:.4f} with the header"
          + (f", {rate:.0f} images/s" if rate else ""))


@command("compress")
class CompressCommand(Command):
    help = "code binary or 8-bit data losslessly with a trained VAE (bits-back ANS; Bit-Swap for hvae runs)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        p.add_argument("--data", required=True, metavar="SPEC",
                       help="a folder of images, a .npy, an .npz (array 'x') or a named dataset (fashion-mnist)")
        p.add_argument("--split", choices=("test", "train"), default="test", help="named datasets: which split")
        p.add_argument("--out", type=Path, required=True, metavar="FILE.vkz")
        p.add_argument("--lanes", type=positive_int, default=32, metavar="N",
                       help="chains coded side by side, one network batch per step (default 32); each pays its "
                            "initial bits once")
        p.add_argument("--order", choices=("bit-swap", "bb-ans"), default="bit-swap",
                       help="hvae runs: Bit-Swap (default; initial bits do not grow with depth) or plain BB-ANS")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
        p.add_argument("--json", action="store_true", help="print one JSON object: " + KEYS)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.compression.files import compress_file

        values = compress_file(args.run, args.data, args.out, split=args.split, lanes=args.lanes, order=args.order,
                               overwrite=args.overwrite, progress=not args.json and sys.stderr.isatty())
        if args.json:
            print(json.dumps(values))
        else:
            _report(values, f"{args.out}:")
        return 0


@command("decompress")
class DecompressCommand(Command):
    help = "decode a .vkz file back to the exact data (a .npy, or a folder of PNGs for images)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("file", type=Path, metavar="FILE.vkz")
        p.add_argument("--out", type=Path, required=True, metavar="DIR|x.npy",
                       help="a .npy for arrays; a folder (or a .npy of the pixels) for images")
        p.add_argument("--run", type=Path, default=None, help="the run that compressed it (default: the run named "
                       "in the file)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")
        p.add_argument("--json", action="store_true", help="print one JSON object: " + KEYS + ", out")

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.compression.files import decompress_file

        values = decompress_file(args.file, args.out, run=args.run, overwrite=args.overwrite,
                                 progress=not args.json and sys.stderr.isatty())
        if args.json:
            print(json.dumps(values))
        else:
            _report(values, f"{args.out}: decoded")
        return 0
