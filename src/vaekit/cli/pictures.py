"""Picture commands: sample, reconstruct, interpolate, traverse, plot."""

from __future__ import annotations

import argparse
import json

from vaekit.cli.common import add_device, add_out, add_run, open_run, output_path, positive_int, run_data
from vaekit.cli.main import Command, command


def _split_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="examples from (default: test)")


@command("sample")
class SampleCommand(Command):
    help = "draw samples from the prior and decode them into a grid"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        p.add_argument("-n", type=positive_int, default=64, help="number of samples (default 64)")
        add_out(p, "samples.png")
        p.add_argument("--label", type=int, default=None, help="class to generate (conditional models)")
        p.add_argument("--temperature", type=float, default=1.0, help="scale of the prior noise (default 1)")
        p.add_argument("--seed", type=int, default=0)
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.viz.grid import save_png
        from vaekit.viz.pictures import samples

        cfg, model = open_run(args.run, args.device)
        reference = run_data(cfg).test if cfg.data_info.kind == "vector" else None
        image = samples(model, cfg.data_info, args.n, args.label, args.temperature, args.seed, reference)
        print(save_png(image, output_path(args, "samples.png")))
        return 0


@command("reconstruct")
class ReconstructCommand(Command):
    help = "show held-out inputs above their reconstructions"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        p.add_argument("-n", type=positive_int, default=16, help="number of examples (default 16)")
        add_out(p, "reconstructions.png")
        _split_arg(p)
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.viz.grid import save_png
        from vaekit.viz.pictures import reconstructions

        cfg, model = open_run(args.run, args.device)
        data = run_data(cfg).split(args.split)
        print(save_png(reconstructions(model, data, cfg.data_info, args.n), output_path(args, "reconstructions.png")))
        return 0


@command("interpolate")
class InterpolateCommand(Command):
    help = "decode linear and spherical latent paths between two held-out examples"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        p.add_argument("--from", dest="start", type=int, default=0, help="index of the first example (default 0)")
        p.add_argument("--to", dest="end", type=int, default=1, help="index of the second example (default 1)")
        p.add_argument("--steps", type=int, default=10, help="points on each path (default 10)")
        add_out(p, "interpolation.png")
        _split_arg(p)
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.viz.grid import save_png
        from vaekit.viz.pictures import interpolations

        cfg, model = open_run(args.run, args.device)
        data = run_data(cfg).split(args.split)
        image = interpolations(model, data, cfg.data_info, args.start, args.end, args.steps)
        print(save_png(image, output_path(args, "interpolation.png")))
        return 0


@command("traverse")
class TraverseCommand(Command):
    help = "sweep each latent unit, most active first"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        p.add_argument("--dims", type=positive_int, default=10, help="how many units (default 10)")
        p.add_argument("--steps", type=int, default=9, help="values per unit (default 9)")
        p.add_argument("--span", type=float, default=3.0, help="sweep from -SPAN to +SPAN (default 3)")
        p.add_argument("--index", type=int, default=0, help="example whose code is the starting point (default 0)")
        add_out(p, "traversal.png")
        _split_arg(p)
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.viz.grid import save_png
        from vaekit.viz.pictures import traversals

        cfg, model = open_run(args.run, args.device)
        data = run_data(cfg).split(args.split)
        image = traversals(model, data, cfg.data_info, args.dims, args.steps, args.span, args.index)
        print(save_png(image, output_path(args, "traversal.png")))
        return 0


@command("plot")
class PlotCommand(Command):
    help = "loss curves and the latent space (2-D, or PCA) coloured by label"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from pathlib import Path

        add_run(p)
        p.add_argument("--out", type=Path, default=None, help="directory for the PNGs (default: RUN)")
        _split_arg(p)
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.run import METRICS
        from vaekit.viz.grid import save_png
        from vaekit.viz.pictures import latent_scatter, loss_curves

        cfg, model = open_run(args.run, args.device)
        out = args.out or args.run
        history = [json.loads(line) for line in (args.run / METRICS).read_text().splitlines() if line.strip()] \
            if (args.run / METRICS).is_file() else []
        print(save_png(loss_curves(history), out / "loss_curves.png"))
        data = run_data(cfg).split(args.split)
        print(save_png(latent_scatter(model, data, cfg.data_info), out / "latent.png"))
        return 0
