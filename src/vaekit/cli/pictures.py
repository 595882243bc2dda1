"""Picture commands: sample, reconstruct, interpolate, traverse, plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaekit.cli.base import Command, command
from vaekit.cli.common import add_device, add_run, open_run, positive_int, run_data


def add_split(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="examples from (default: test)")


class PictureCommand(Command):
    """RUN [options] --out FILE.png: open the run (and a data split when ``uses_split``), draw one
    picture with ``draw`` and save it."""

    default_name = "picture.png"
    uses_split = True

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        self.add_options(p)
        p.add_argument("--out", type=Path, default=None, help=f"PNG file to write (default: RUN/{self.default_name})")
        if self.uses_split:
            add_split(p)
        add_device(p)

    def add_options(self, p: argparse.ArgumentParser) -> None:
        pass

    def draw(self, model, cfg, data, args: argparse.Namespace):
        raise NotImplementedError

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.viz.grid import save_png

        cfg, model = open_run(args.run, args.device, args.precision)
        data = run_data(cfg).split(args.split) if self.uses_split else None
        out = args.out if args.out is not None else args.run / self.default_name
        print(save_png(self.draw(model, cfg, data, args), out))
        return 0


@command("sample")
class SampleCommand(PictureCommand):
    help = "draw samples from the prior and decode them into a grid"
    default_name = "samples.png"
    uses_split = False

    def add_options(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("-n", type=positive_int, default=64, help="number of samples (default 64)")
        p.add_argument("--label", type=int, default=None, help="class to generate (conditional models)")
        p.add_argument("--temperature", type=float, default=1.0, help="scale of the prior noise (default 1)")
        p.add_argument("--prior", choices=("model", "standard", "gmm", "aggregate"), default="model",
                       help="model: the model's own prior (default); standard: N(0, I); gmm: the mixture fitted by "
                            "'vaekit fit-prior'; aggregate: the aggregate posterior (codes of training images)")
        p.add_argument("--steps", type=positive_int, default=None, help="diffusion runs: sampling steps (default: "
                       "the run's, 50)")
        p.add_argument("--sampler", choices=("ddim", "dpm", "ddpm"), default=None,
                       help="diffusion runs: DDIM (default), multistep DPM-Solver++, or ancestral DDPM")
        p.add_argument("--guidance", type=float, default=None,
                       help="conditional diffusion runs: classifier-free guidance weight (1: none)")
        p.add_argument("--seed", type=int, default=0)

    def draw(self, model, cfg, data, args):
        from vaekit.generation import prior_for
        from vaekit.viz.pictures import samples

        info = getattr(model, "output_info", None) or cfg.data_info
        reference = run_data(cfg).test if info.kind == "vector" else None
        prior, options = prior_for(args.run, model, args.prior, steps=args.steps, sampler=args.sampler,
                                   guidance=args.guidance)
        return samples(model, info, args.n, args.label, args.temperature, args.seed, reference, prior, **options)


@command("reconstruct")
class ReconstructCommand(PictureCommand):
    help = "show held-out inputs above their reconstructions, or reconstruct one IMAGE of any size (tiled)"
    default_name = "reconstructions.png"

    def add_options(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("image", type=Path, nargs="?", default=None,
                       help="an image file to reconstruct at full size (image autoencoders)")
        p.add_argument("-n", type=positive_int, default=16, help="number of examples (default 16)")

    def run(self, args: argparse.Namespace) -> int:
        if args.image is None:
            return super().run(args)
        from vaekit.viz.grid import save_png
        from vaekit.viz.pictures import reconstruct_file

        _, model = open_run(args.run, args.device, args.precision)
        out = args.out if args.out is not None else args.run / "reconstruction.png"
        print(save_png(reconstruct_file(model, args.image), out))
        return 0

    def draw(self, model, cfg, data, args):
        from vaekit.viz.pictures import reconstructions

        return reconstructions(model, data, cfg.data_info, args.n)


@command("interpolate")
class InterpolateCommand(PictureCommand):
    help = "decode linear and spherical latent paths between two held-out examples"
    default_name = "interpolation.png"

    def add_options(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--from", dest="start", type=int, default=0, help="index of the first example (default 0)")
        p.add_argument("--to", dest="end", type=int, default=1, help="index of the second example (default 1)")
        p.add_argument("--steps", type=int, default=10, help="points on each path (default 10)")

    def draw(self, model, cfg, data, args):
        from vaekit.viz.pictures import interpolations

        return interpolations(model, data, cfg.data_info, args.start, args.end, args.steps)


@command("traverse")
class TraverseCommand(PictureCommand):
    help = "sweep each latent unit, most active first"
    default_name = "traversal.png"

    def add_options(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--dims", type=positive_int, default=10, help="how many units (default 10)")
        p.add_argument("--steps", type=int, default=9, help="values per unit (default 9)")
        p.add_argument("--span", type=float, default=3.0, help="sweep from -SPAN to +SPAN (default 3)")
        p.add_argument("--index", type=int, default=0, help="example whose code is the starting point (default 0)")

    def draw(self, model, cfg, data, args):
        from vaekit.viz.pictures import traversals

        return traversals(model, data, cfg.data_info, args.dims, args.steps, args.span, args.index)


@command("plot")
class PlotCommand(Command):
    help = "loss curves and the latent space (2-D, or PCA) coloured by label"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run(p)
        p.add_argument("--out", type=Path, default=None, help="directory for the PNGs (default: RUN)")
        add_split(p)
        add_device(p)

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.run import read_metrics
        from vaekit.viz.grid import save_png
        from vaekit.viz.pictures import latent_scatter, loss_curves

        cfg, model = open_run(args.run, args.device, args.precision)
        out = args.out or args.run
        print(save_png(loss_curves(read_metrics(args.run)), out / "loss_curves.png"))
        data = run_data(cfg).split(args.split)
        print(save_png(latent_scatter(model, data, cfg.data_info), out / "latent.png"))
        return 0
