"""Interop commands: export-diffusers, import-diffusers, import-ldm."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaekit.cli.base import Command, command
from vaekit.cli.common import positive_int


@command("export-diffusers")
class ExportDiffusersCommand(Command):
    help = "write an autoencoder-kl run as a diffusers AutoencoderKL folder, or a latent-diffusion run on one as " \
           "an LDMPipeline folder"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("run", type=Path, metavar="RUN")
        p.add_argument("dir", type=Path, metavar="DIR", help="folder to write (config.json + safetensors)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing folder")

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.interop import export_diffusers

        print(export_diffusers(args.run, args.dir, overwrite=args.overwrite))
        return 0


@command("import-diffusers")
class ImportDiffusersCommand(Command):
    help = "make a vaekit run from a diffusers AutoencoderKL folder (or a pipeline folder's vae/)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("dir", type=Path, metavar="DIR")
        p.add_argument("--out", type=Path, required=True, metavar="RUN")
        p.add_argument("--overwrite", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.interop import import_diffusers

        print(import_diffusers(args.dir, args.out, overwrite=args.overwrite))
        return 0


@command("import-ldm")
class ImportLDMCommand(Command):
    help = "convert an original CompVis/Stability first-stage checkpoint (.safetensors or .ckpt) into a run"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("file", type=Path, metavar="FILE", help=".safetensors, or .ckpt (read with weights_only=True; "
                       "files that need arbitrary unpickling are refused)")
        p.add_argument("--out", type=Path, required=True, metavar="RUN")
        p.add_argument("--scaling-factor", type=float, default=None, help="latent scaling (default 0.18215, SD 1.x)")
        p.add_argument("--shift-factor", type=float, default=None)
        p.add_argument("--norm-num-groups", type=positive_int, default=None, help="GroupNorm groups (default 32)")
        p.add_argument("--sample-size", type=positive_int, default=None, help="tile size in pixels (default 32)")
        p.add_argument("--overwrite", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.interop import import_ldm

        overrides = {k: v for k, v in (("scaling_factor", args.scaling_factor), ("shift_factor", args.shift_factor),
                                        ("norm_num_groups", args.norm_num_groups),
                                        ("sample_size", args.sample_size)) if v is not None}
        print(import_ldm(args.file, args.out, overrides, overwrite=args.overwrite))
        return 0
