"""``vaekit train``: the flags become explicit settings, resolved by ``vaekit.settings`` (defaults <
the model's and objective's defaults < --preset < --config FILE.json < flags), as for Python users."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaekit.cli.base import Command, command
from vaekit.cli.common import int_list, positive_int
from vaekit.errors import VaekitError


@dataclass(frozen=True)
class Flag:
    """One option: where its value goes (section 'model', 'data' or 'training', and the field)."""

    name: str
    section: str
    field: str
    type: Any = str
    help: str = ""
    metavar: str | None = None
    const: Any = None  # a switch: sets the field to this value

    @property
    def dest(self) -> str:
        return self.name[2:].replace("-", "_")


FLAGS = [
    Flag("--latent-dim", "model", "latent_dim", positive_int, "latent size", "N"),
    Flag("--hidden", "model", "hidden", int_list, "mlp hidden sizes, e.g. 400 or 512,256", "N,..."),
    Flag("--channels", "model", "channels", int_list, "conv channels per stride-2 stage, e.g. 32,64", "C,..."),
    Flag("--activation", "model", "activation", str, "mlp activation: relu, silu, gelu, tanh, elu"),
    Flag("--likelihood", "model", "likelihood", str,
         "bernoulli, gaussian, mse, laplace, logistic (8-bit data: a discretised logistic over the 256 levels) "
         "or logistic-mix (a mixture of 5 of them per element); default: bernoulli for data in [0, 1], "
         "else gaussian"),
    Flag("--test-data", "data", "test_spec", str, "test data, same forms as --data (default: the source's own "
         "test split, else a seeded split)", "SPEC"),
    Flag("--val-fraction", "data", "val_fraction", float, "fraction of training data held out for validation "
         "(default 0.1; 0 disables)", "F"),
    Flag("--resolution", "data", "resolution", positive_int, "image folders: resize and centre-crop to N x N", "N"),
    Flag("--color", "data", "color", str, "image folders: auto, grey or rgb"),
    Flag("--binarize", "data", "binarize", str, "none, static (once, seeded) or dynamic (every batch); held-out "
         "data is binarised once with a fixed seed"),
    Flag("--perturb", "data", "perturb", float, "training batches: replace each value with probability P by "
         "uniform noise (a background model for the anomaly ratio score, Ren et al. 2019; typical 0.1-0.3)", "P"),
    Flag("--label-column", "data", "label_column", str, "CSV: the column holding class labels", "NAME"),
    Flag("--limit", "data", "limit", positive_int, "use only the first N training examples", "N"),
    Flag("--epochs", "training", "epochs", positive_int, "epochs (default 10)", "E"),
    Flag("--batch-size", "training", "batch_size", positive_int, "batch size (default 128)", "B"),
    Flag("--lr", "training", "lr", float, "Adam learning rate (default 1e-3; with --resume, the rate from "
         "there on: a step decay)"),
    Flag("--seed", "training", "seed", int, "random seed (default 0)", "S"),
    Flag("--beta", "training", "beta", float, "KL weight (beta-VAE; default 1)", "B"),
    Flag("--warmup-epochs", "training", "warmup_epochs", float, "linear KL warm-up over W epochs", "W"),
    Flag("--kl-schedule", "training", "kl_schedule", str, "constant, linear or cyclical (Fu et al. 2019)"),
    Flag("--cycles", "training", "cycles", positive_int, "cyclical schedule: number of cycles (default 4)", "M"),
    Flag("--free-bits", "training", "free_bits", float, "free bits: at least L nats of KL per latent unit", "L"),
    Flag("--precision", "training", "precision", str, "auto (default: bf16 on a GPU with bf16, a CPU with AMX, "
         "or an AVX512-BF16 CPU where a start-up probe finds it faster; else fp32), fp32, bf16 (autocast), or fp16 "
         "(CUDA, with a gradient scaler)"),
    Flag("--device", "training", "device", str, "cpu, cuda or cuda:N"),
    Flag("--grad-clip", "training", "grad_clip", float, "clip the gradient norm (0: off)", "G"),
    Flag("--checkpoint-every", "training", "checkpoint_every", positive_int, "also checkpoint every N steps", "N"),
    Flag("--grad-accum", "training", "grad_accum", positive_int, "micro-batches per optimizer step", "N"),
    # image autoencoders (--model autoencoder-kl; diffusers' field names)
    Flag("--latent-channels", "model", "latent_channels", positive_int, "autoencoder-kl: latent channels", "C"),
    Flag("--block-out-channels", "model", "block_out_channels", int_list,
         "autoencoder-kl: channels per level, e.g. 128,256,512,512 (downsampling 2^(levels-1))", "C,..."),
    Flag("--layers-per-block", "model", "layers_per_block", positive_int, "autoencoder-kl: resnets per level", "N"),
    Flag("--norm-num-groups", "model", "norm_num_groups", positive_int, "autoencoder-kl: GroupNorm groups", "G"),
    Flag("--sample-size", "model", "sample_size", positive_int, "autoencoder-kl: tile size in pixels", "N"),
    Flag("--scaling-factor", "model", "scaling_factor", float, "autoencoder-kl: latent scaling for diffusion"),
    Flag("--val-data", "data", "test_spec", str, "held-out images (default: an 80/20 seeded split)", "SPEC"),
    Flag("--pad-to", "data", "pad_to", positive_int, "zero-pad images to N x N (e.g. 28 -> 32)", "N"),
    Flag("--augment", "data", "augment", help="stream image folders with random crops and flips (default for "
         "autoencoder-kl)", const=True),
    Flag("--no-augment", "data", "augment", help="load image folders into memory, centre-cropped", const=False),
    Flag("--no-resize", "data", "resize", help="streams: crop at native scale instead of resizing the shorter "
         "side to --resolution first", const=False),
    Flag("--samples-per-epoch", "data", "samples_per_epoch", positive_int, "streams: crops per epoch", "N"),
    Flag("--eval-samples", "data", "eval_samples", positive_int, "streams: held-out crops", "N"),
    Flag("--objective", "training", "objective", str, "elbo (default), iwae, beta-tcvae, factorvae, or ldm "
         "(L1 + LPIPS + PatchGAN, for autoencoder-kl)"),
    Flag("--train", "training", "train_part", str, "all (default), decoder (fine-tune only the decoder, as "
         "sd-vae-ft-mse) or encoder"),
    Flag("--ema", "training", "ema_decay", float, "keep an exponential moving average of the weights with this "
         "decay (e.g. 0.999); evaluation uses it", "DECAY"),
    Flag("--pixel-loss", "training", "pixel_loss", str, "ldm: l1 (default) or l2"),
    Flag("--perceptual-weight", "training", "perceptual_weight", float, "ldm: LPIPS weight (default 1)", "W"),
    Flag("--lpips-net", "training", "lpips_net", str, "ldm: vgg (default) or alex"),
    Flag("--disc-start", "training", "disc_start", int, "ldm: steps before the discriminator joins (default 50001)",
         "N"),
    Flag("--disc-weight", "training", "disc_weight", float, "ldm: adversarial weight (default 0.5)", "W"),
    Flag("--learn-logvar", "training", "learn_logvar", help="ldm: learn the output log-variance", const=True),
    # priors, hierarchies and objectives beyond the ELBO
    Flag("--prior", "model", "prior", str, "mlp/conv: standard (default) or vamp (VampPrior)"),
    Flag("--components", "model", "prior_components", positive_int, "vamp: pseudo-inputs (default 500)", "K"),
    Flag("--latent-dims", "model", "latent_dims", int_list, "hvae: sizes of z_1..z_T, e.g. 100,50", "D,..."),
    Flag("--depth", "model", "depth", positive_int, "hvae: hidden layers per network (default 2); diffusion mlp: "
         "residual blocks (default 4)", "N"),
    Flag("--topology", "model", "topology", str, "ladder: resolutions x blocks, high first, e.g. 28x2,14x2,7x2,1x1"),
    Flag("--width", "model", "width", positive_int, "ladder: channels of the top-down path; diffusion mlp: hidden "
         "width (default 512)", "C"),
    Flag("--zdim", "model", "zdim", positive_int, "ladder: latent channels per block", "Z"),
    Flag("--patch", "model", "patch", positive_int, "ladder: fold PxP pixels into channels first; the topology "
         "then starts at the image size / P (default 1)", "P"),
    Flag("--k", "training", "k", int, "iwae: importance samples per example (default 50)", "K"),
    Flag("--elbo-epochs", "training", "elbo_epochs", int, "iwae: train the first E epochs with the ELBO, then "
         "with the k-sample bound (default 0)", "E"),
    Flag("--tc-alpha", "training", "tc_alpha", float, "beta-tcvae: mutual-information weight (default 1)"),
    Flag("--tc-gamma", "training", "tc_gamma", float, "beta-tcvae: dimension-wise KL weight (default 1)"),
    Flag("--factor-gamma", "training", "factor_gamma", float, "factorvae: total-correlation weight (default 10)"),
    Flag("--grad-skip", "training", "grad_skip", float, "skip updates whose gradient norm exceeds G times the "
         "running mean", "G"),
    # diffusion models (--model latent-diffusion --vae RUN, or --model pixel-diffusion)
    Flag("--vae", "model", "vae", str, "latent-diffusion: the VAE run whose latents it learns", "RUN"),
    Flag("--denoiser", "model", "denoiser", str, "diffusion: mlp, unet or auto (unet for spatial latents)"),
    Flag("--unet-channels", "model", "unet_channels", int_list, "diffusion unet: block widths, e.g. 64,128", "C,..."),
    Flag("--prediction", "model", "prediction", str, "diffusion: epsilon (default) or v_prediction"),
    Flag("--beta-schedule", "model", "beta_schedule", str, "diffusion: linear (default), scaled_linear or "
         "squaredcos_cap_v2"),
    Flag("--timesteps", "model", "timesteps", positive_int, "diffusion: training timesteps (default 1000)", "T"),
    Flag("--class-dropout", "model", "class_dropout", float, "conditional diffusion: labels dropped for "
         "classifier-free guidance (default 0.1)", "P"),
    Flag("--latents", "model", "latents", str, "latent-diffusion: sample (a fresh z ~ q(z|x) each time; default) "
         "or mean"),
    Flag("--latent-scaling", "model", "latent_scaling", str, "latent-diffusion on autoencoder-kl: run (its "
         "scale_latents; default) or std (1 / std of the latents)"),
    Flag("--max-minutes", "training", "max_minutes", float, "stop once this much training time is spent (a CPU "
         "budget; the epoch in progress ends early; with --resume, a new total for the run, 0 for none)", "M"),
]
# the flags --resume may change (vaekit.settings.RESUMABLE); re-stated flags must equal the saved values
RESUMABLE = ("--epochs", "--max-minutes", "--lr", "--ema")


@command("train")
class TrainCommand(Command):
    help = "train a VAE on a dataset, writing a run directory (several processes: torchrun -m vaekit train ...)"
    distributed = True

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", help="digits | fashion-mnist[:DIR] | mnist[:DIR] | a directory of images | "
                       "FILE.npy | FILE.npz | FILE.csv", metavar="SPEC")
        p.add_argument("--out", type=Path, required=True, help="run directory to write", metavar="RUN")
        p.add_argument("--model", help="mlp (default), conv, hvae, ladder, autoencoder-kl, latent-diffusion (with "
                       "--vae RUN) or pixel-diffusion")
        p.add_argument("--preset", help="a named configuration, e.g. pytorch-example")
        p.add_argument("--conditional", action="store_true", default=None, help="condition on class labels (CVAE)")
        p.add_argument("--sigma", help="gaussian or laplace likelihood: learned (default), per-dim, calibrated "
                       "(sigma-VAE: the batch's optimal scale; Rybkin et al. 2021), or a fixed value")
        p.add_argument("--skip-bad", action="store_true", default=None, help="skip unreadable image files")
        for f in FLAGS:
            if f.const is not None:
                p.add_argument(f.name, action="store_const", const=f.const, default=None, help=f.help)
            else:
                p.add_argument(f.name, type=f.type, default=None, help=f.help, metavar=f.metavar)
        p.add_argument("--config", type=Path, help="JSON with 'model', 'data' and 'training' sections (a run's "
                       "config.json works)", metavar="FILE.json")
        p.add_argument("--resume", action="store_true", help="continue RUN from its last checkpoint")
        p.add_argument("--overwrite", action="store_true", help="replace an existing run in RUN")
        p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")

    def run(self, args: argparse.Namespace) -> int:
        from vaekit.training import distributed

        world = distributed.setup()  # under torchrun: join the job first, so that every check below is agreed
        quiet = args.quiet or not world.writer
        log = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
        progress = False if args.quiet else None
        with distributed.agreement(world):
            settings = self.settings(args)
            if args.resume:
                self._check_resume(args, settings)
            elif ("data", "spec") not in settings.origin:
                raise VaekitError("--data is required (e.g. --data digits)")
        if args.resume:
            from vaekit.training.api import resume

            resume(args.out, epochs=args.epochs, max_minutes=args.max_minutes, lr=args.lr, ema_decay=args.ema,
                   progress=progress, log=log)
            log(f"resumed and finished {args.out}")
            return 0
        from vaekit.training.api import train

        train(args.out, settings=settings, overwrite=args.overwrite, progress=progress, log=log)
        log(f"wrote {args.out} (model.safetensors, config.json, metrics.jsonl)")
        return 0

    @staticmethod
    def settings(args: argparse.Namespace):
        """The flags as explicit settings, resolved by the library (vaekit.settings) as for Python users."""
        from vaekit.settings import resolve_settings

        explicit: dict[str, dict] = {"model": {}, "data": {}, "training": {}}
        if args.data is not None:
            explicit["data"]["spec"] = args.data
        if args.skip_bad:
            explicit["data"]["skip_bad"] = True
        if args.sigma is not None:
            explicit["model"].update(parse_sigma(args.sigma))
        for f in FLAGS:
            value = getattr(args, f.dest)
            if value is not None:
                explicit[f.section][f.field] = value
        return resolve_settings(model=args.model, preset=args.preset, config=args.config,
                                conditional=args.conditional, model_overrides=explicit["model"],
                                data=explicit["data"], training=explicit["training"])

    @staticmethod
    def _check_resume(args: argparse.Namespace, settings) -> None:
        """The command that started the run, plus --resume: re-stated settings must equal the saved
        ones; only the RESUMABLE flags may change."""
        from vaekit.run import read_run_config
        from vaekit.settings import restated_conflicts

        if args.overwrite:
            raise VaekitError("--overwrite replaces a run and --resume continues it; pass one of them")
        saved = read_run_config(args.out)
        conflicts = restated_conflicts(saved, settings)
        if conflicts:
            c = conflicts[0]
            more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
            raise VaekitError(f"--resume: {flag_name(c)} differs from the run's saved setting: {args.out} was "
                              f"trained with {_show(c.saved)}, this command gives {_show(c.new)}{more}; drop it "
                              f"or start a new run (only {', '.join(RESUMABLE)} may change)")


def flag_name(conflict) -> str:
    """The flag (or preset/config file) a conflicting setting came from."""
    if conflict.origin != "explicit":
        return f"{conflict.origin} ({conflict.key})"
    if conflict.section == "data" and conflict.key == "spec":
        return "--data"
    if conflict.section == "data" and conflict.key == "skip_bad":
        return "--skip-bad"
    if conflict.section == "model" and conflict.key in ("sigma", "sigma_mode"):
        return "--sigma"
    names = [f.name for f in FLAGS if f.section == conflict.section and f.field == conflict.key]
    return names[0] if names else conflict.key


def _show(value) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return repr(value) if isinstance(value, str) else str(value)


def parse_sigma(text: str) -> dict[str, Any]:
    if text in ("learned", "per-dim", "calibrated"):
        return {"sigma_mode": text}
    try:
        value = float(text)
    except ValueError:
        raise VaekitError(f"--sigma must be 'learned', 'per-dim', 'calibrated' or a positive number, "
                          f"got {text!r}") from None
    if value <= 0:
        raise VaekitError(f"--sigma must be positive, got {value}")
    return {"sigma_mode": "fixed", "sigma": value}
