"""``vaekit serve RUN [RUN ...]``: the latent-space explorer in the browser (vaekit.serve)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaekit.cli.base import Command, command
from vaekit.cli.common import add_device


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {value}")
    return value


def megabytes(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in MB, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive size in MB, got {text}")
    return int(value * 1024 * 1024)


@command("serve")
class ServeCommand(Command):
    help = "explore runs in the browser: samples, latent sliders, interpolation, uploads, the latent map"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run directories written by 'vaekit train'")
        p.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
        p.add_argument("--port", type=port_number, default=8000, help="port (default 8000; 0 picks a free one)")
        p.add_argument("--max-upload-mb", type=megabytes, default=8 * 1024 * 1024, metavar="MB",
                       help="largest uploaded file accepted (default 8)")
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.cli.common import check_device

        try:
            from vaekit.serve.server import serve
        except ImportError as e:
            from vaekit.errors import VaekitError

            raise VaekitError(f"vaekit serve needs the serve extra: pip install 'vaekit[serve]' ({e})") from None

        def announce(url: str) -> None:
            names = ", ".join(str(r) for r in args.runs)
            print(f"vaekit: serving {names} at {url} (Ctrl-C to stop)", flush=True)

        serve(args.runs, args.host, args.port, check_device(args.device), args.max_upload_mb, announce=announce,
              precision=args.precision)
        return 0
