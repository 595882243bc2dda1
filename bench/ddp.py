"""Distributed training: 1 rank against 2 ranks under torchrun on this machine (gloo on 127.0.0.1, one
thread per rank), and on paper what a 1M-image autoencoder-kl run at 256^2 needs on 8 GPUs.

Part 1 (measured): ``torchrun --nproc-per-node 1`` and ``--nproc-per-node 2`` of ``vaekit train`` with
the same global batch, for the pytorch-example MLP and a conv VAE on Fashion-MNIST. Seconds per epoch
come from metrics.jsonl (the trainer's own clock; the first epoch is a warm-up and left out when
there are more), the scaling efficiency is t(1 rank) / (2 t(2 ranks)), and the final training losses
of both runs are shown (they agree: N ranks train what one process trains).

Part 2 (estimated; no GPU was lent): the LDM-loss training step of the SD 1.x layout at 256^2
(L1 + LPIPS-VGG + PatchGAN, both optimizer steps) is counted with torch's FlopCounterMode (forward
and backward, exact for these layers) and timed on this CPU; with a stated GPU throughput, model
FLOP utilisation and all-reduce bandwidth this gives, for 8 GPUs, the per-GPU batch at which the
gradient all-reduce (fp32 gradients of the autoencoder and the discriminator, ring all-reduce,
not overlapped with the backward pass in vaekit) costs at most 5% of a step, the global batch, and
the time of one 1M-image epoch. Change the assumptions with --gpu-tflops, --mfu and --busbw-gbs.

Run: python bench/ddp.py [--epochs 3]      (about 8 minutes on the 2-core VM)
     python bench/ddp.py --quick           (digits, small models, 64^2: about a minute; prints, saves nothing)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

from common import RESULTS, machine, markdown_table, require_fashion_mnist, save

IMAGES = 1_000_000
GPUS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(ranks: int, name: str, flags: list[str]) -> dict:
    out = RESULTS / "runs" / f"ddp-{name}-{ranks}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), "-m", "vaekit", "train", *flags, "--out", str(out),
           "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per rank: the 2 cores, one each
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        sys.exit(f"bench: torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in history]
    timed = seconds[1:] if len(seconds) > 1 else seconds
    return {"ranks": ranks, "s/epoch": statistics.mean(timed), "epochs": len(history),
            "train_loss": history[-1]["train_loss"], "precision": history[-1]["precision"],
            "wall s": time.perf_counter() - started}


def scaling(epochs: int, quick: bool, precision: str) -> list[dict]:
    data = ["--data", "digits", "--limit", "1200"] if quick else ["--data", "fashion-mnist"]
    workloads = {
        "mlp": [*data, "--preset", "pytorch-example"],
        "conv": [*data, "--model", "conv", "--channels", "8,16" if quick else "32,64", "--latent-dim", "16",
                 "--batch-size", "128"],
    }
    rows = []
    for name, flags in workloads.items():
        flags = [*flags, "--val-fraction", "0", "--epochs", str(epochs), "--precision", precision, "--seed", "1"]
        one, two = torchrun_train(1, name, flags), torchrun_train(2, name, flags)
        rows.append({"model": name, "global batch": 128, "1 rank s/epoch": one["s/epoch"],
                     "2 ranks s/epoch": two["s/epoch"], "speed-up": one["s/epoch"] / two["s/epoch"],
                     "efficiency": one["s/epoch"] / (2 * two["s/epoch"]), "train loss 1 rank": one["train_loss"],
                     "train loss 2 ranks": two["train_loss"], "precision": one["precision"]})
        print(f"ddp: {name} done", file=sys.stderr, flush=True)
    return rows


def ldm_step_cost(resolution: int, preset: str, reps: int) -> dict:
    """FLOPs (forward + backward) and CPU seconds of one LDM-loss step per image, fp32 and bf16."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vaekit.config import from_dict
    from vaekit.models import PRESETS
    from vaekit.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
    from vaekit.objectives.ldm import LDMLoss
    from vaekit.perceptual import LPIPS
    from vaekit.precision import autocast
    from vaekit.protocol import Batch
    from vaekit.training.config import TrainConfig

    torch.manual_seed(0)
    model = AutoencoderKL(from_dict(AutoencoderKLConfig, {**PRESETS.get(preset)["model_config"],
                                                          "sample_size": resolution}))
    objective = LDMLoss(model, TrainConfig(objective="ldm", disc_start=0, lpips_net="vgg"))
    objective._lpips = LPIPS("vgg")  # the architecture is what counts (no weights needed for FLOPs and time)
    params = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in objective.discriminator.parameters())
    x = torch.rand(1, 3, resolution, resolution) * 2 - 1

    class Ctx:  # the step's own arithmetic, no optimizer
        step, epoch, kl_anneal, kl_weight, device = 10**6, 0, 1.0, 1e-6, torch.device("cpu")
        dataset_size = IMAGES

        def __init__(self, precision: str) -> None:
            self.precision = precision

        def autocast(self):
            return autocast("cpu", self.precision)

        def optimize(self, name, loss):
            loss.backward()
            return True

        def gather(self, t):
            return t

        def batch_mean(self, t):
            return t

    counter = FlopCounterMode(display=False)
    with counter:
        objective.training_step(model, Batch(x), Ctx("fp32"))
    out = {"preset": preset, "resolution": resolution, "parameters": params,
           "gflop/image": counter.get_total_flops() / 1e9}
    for precision in ("fp32", "bf16"):
        objective.training_step(model, Batch(x), Ctx(precision))  # warm-up
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            objective.training_step(model, Batch(x), Ctx(precision))
            times.append(time.perf_counter() - started)
        out[f"cpu s/image {precision}"] = min(times)
    return out


def estimate(cost: dict, gpu_tflops: float, mfu: float, busbw_gbs: float) -> dict:
    """Per-GPU batch, global batch and epoch time for IMAGES images on GPUS GPUs."""
    flop = cost["gflop/image"] * 1e9
    per_image = flop / (gpu_tflops * 1e12 * mfu)  # seconds of one GPU per image
    grad_bytes = 4 * cost["parameters"]  # fp32 gradients
    allreduce = 2 * (GPUS - 1) / GPUS * grad_bytes / (busbw_gbs * 1e9)  # ring all-reduce, seconds per step
    # all-reduce <= 5% of the step: b * per_image >= 19 * allreduce
    per_gpu = max(1, int(-(-19 * allreduce // per_image)))
    step = per_gpu * per_image + allreduce
    epoch_s = IMAGES / (GPUS * per_gpu) * step
    return {"GPU s/image": per_image, "all-reduce s/step": allreduce, "per-GPU batch (all-reduce <= 5%)": per_gpu,
            "global batch": GPUS * per_gpu, "steps per epoch": IMAGES // (GPUS * per_gpu), "s/step": step,
            "hours per 1M-image epoch": epoch_s / 3600,
            "this CPU, days per epoch (bf16)": IMAGES * cost["cpu s/image bf16"] / 86400}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--precision", default="auto", help="of the scaling runs (default auto)")
    p.add_argument("--gpu-tflops", type=float, default=312.0, help="dense bf16 peak of one GPU (A100: 312)")
    p.add_argument("--mfu", type=float, default=0.35, help="model FLOP utilisation assumed for the conv net")
    p.add_argument("--busbw-gbs", type=float, default=200.0, help="NCCL all-reduce bus bandwidth, GB/s (NVLink)")
    p.add_argument("--quick", action="store_true", help="digits, small models, a 64^2 step; prints, saves nothing")
    args = p.parse_args()
    if not args.quick:
        require_fashion_mnist()
    from vaekit.runtime import tune_cpu

    tune_cpu()
    epochs = 2 if args.quick else args.epochs
    print(f"ddp on {machine()}", file=sys.stderr, flush=True)
    rows = scaling(epochs, args.quick, args.precision)
    cost = ldm_step_cost(64, "small-f8", 1) if args.quick else ldm_step_cost(256, "sd", 2)
    guess = estimate(cost, args.gpu_tflops, args.mfu, args.busbw_gbs)
    text = (f"DDP on this machine: 1 against 2 ranks (torchrun, gloo, one thread each), {epochs} epochs, "
            f"{'digits' if args.quick else 'Fashion-MNIST 60k'} ({machine()})\n\n")
    text += markdown_table(rows, ["model", "global batch", "1 rank s/epoch", "2 ranks s/epoch", "speed-up",
                                  "efficiency", "train loss 1 rank", "train loss 2 ranks", "precision"])
    text += (f"\n\nLDM-loss step ({cost['preset']} layout, {cost['resolution']}^2, L1 + LPIPS-VGG + PatchGAN, "
             f"forward + backward): {cost['gflop/image']:,.0f} GFLOP per image (FlopCounterMode), "
             f"{cost['parameters'] / 1e6:.1f}M parameters (autoencoder + discriminator); on this CPU "
             f"{cost['cpu s/image fp32']:.2f} s/image fp32, {cost['cpu s/image bf16']:.2f} s/image bf16.\n\n")
    text += (f"On paper, {IMAGES:,} images on {GPUS} GPUs (assumed: {args.gpu_tflops:g} TFLOP/s bf16 at "
             f"{args.mfu:.0%} utilisation, all-reduce bus bandwidth {args.busbw_gbs:g} GB/s; not measured):\n\n")
    text += markdown_table([guess], list(guess))
    print(text)
    if not args.quick:
        save("ddp", {"scaling": rows, "ldm_step": cost, "estimate": guess,
                     "assumptions": {"gpu_tflops": args.gpu_tflops, "mfu": args.mfu, "busbw_gbs": args.busbw_gbs}},
             text, precision=f"scaling runs: {rows[0]['precision']}; step: fp32 and bf16")


if __name__ == "__main__":
    main()
