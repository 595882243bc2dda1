"""KL autoencoder speed: vaekit's AutoencoderKL against diffusers' AutoencoderKL holding identical
weights (the SD 1.x layout, seeded random init), side by side in one process.

- encode, decode and encode+decode at 256^2 and 512^2, batch 1 and 4: vaekit fp32 and vaekit with
  ``--precision auto`` (``load(run)``'s default: on a CPU with AMX a bf16 channels-last copy of the
  weights, elsewhere fp32) against diffusers fp32 (best of --reps runs each; this machine is noisy).
  Targets: auto >= 3.5x diffusers fp32 on an AMX CPU; fp32 >= 1.0x without AMX;
- the PSNR of auto reconstructions against fp32 ones, on a trained small run when present
  (bench/results/runs/kl-photos from kl_results.py, else generation.py's tiny-f4 run; target: within
  0.1 dB);
- images per second of one full LDM-loss training step (L1 + LPIPS + PatchGAN) at 256^2 on the
  small-f8 preset, fp32 and auto (target on an AMX CPU: auto >= 2x fp32);
- peak RSS of a tiled 2048^2 decode (SD layout, 512 px tiles) in a fresh process, vaekit and
  diffusers' enable_tiling().

Run: python bench/kl_speed.py [--reps 3] [--skip-rss] [--sizes 256,512]
     python bench/kl_speed.py --quick    (64^2, batch 1, one rep, no RSS; prints, saves nothing)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from common import HERE, RESULTS, json_lines, machine, markdown_table, run, save


def best(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def speed_table(reps: int, sizes=(256, 512), batches=(1, 4)) -> tuple[list[dict], str]:
    import copy

    import diffusers
    import torch

    from vaekit.config import from_dict
    from vaekit.models import PRESETS
    from vaekit.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig

    torch.manual_seed(0)
    ours = AutoencoderKL(from_dict(AutoencoderKLConfig, PRESETS.get("sd")["model_config"])).eval()
    theirs = diffusers.AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                     down_block_types=("DownEncoderBlock2D",) * 4,
                                     up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=512)
    theirs.load_state_dict(ours.state_dict())
    theirs.eval()
    auto = copy.deepcopy(ours).set_precision("auto")  # what vaekit.load(run) gives on this machine
    rows = []
    with torch.no_grad():
        for res in sizes:
            for batch in batches:
                x = torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(res)) * 2 - 1
                z = ours.encode(x).mean
                r = reps if res * batch <= 512 else max(1, reps - 1)
                t = {
                    "diffusers enc": best(lambda x=x: theirs.encode(x).latent_dist.mean, r),
                    "vaekit enc": best(lambda x=x: ours.encode(x).mean, r),
                    "diffusers dec": best(lambda z=z: theirs.decode(z).sample, r),
                    "vaekit dec": best(lambda z=z: ours.decode(z), r),
                }
                if auto.inference_precision == "fp32":  # the same code path as the fp32 column: timed once
                    t["auto enc"], t["auto dec"] = t["vaekit enc"], t["vaekit dec"]
                else:
                    t["auto enc"] = best(lambda x=x: auto.encode(x).mean, r)
                    t["auto dec"] = best(lambda z=z: auto.decode(z), r)
                for who in ("diffusers", "vaekit", "auto"):
                    t[f"{who} enc+dec"] = t[f"{who} enc"] + t[f"{who} dec"]
                for op, label in (("enc", "encode"), ("dec", "decode"), ("enc+dec", "encode+decode")):
                    ref = t[f"diffusers {op}"]
                    rows.append({"op": label, "size": f"{res}x{res}", "batch": batch, "diffusers fp32 s": ref,
                                 "vaekit fp32 s": t[f"vaekit {op}"], "fp32 speed-up": ref / t[f"vaekit {op}"],
                                 "vaekit auto s": t[f"auto {op}"], "auto speed-up": ref / t[f"auto {op}"]})
                print(f"kl_speed: {res}^2 x{batch} done", file=sys.stderr, flush=True)
    return rows, auto.inference_precision


def auto_psnr() -> dict | None:
    import torch

    import vaekit
    from vaekit.cli.common import run_data
    from vaekit.evaluation.images import psnr
    from vaekit.run import read_run_config

    # a trained autoencoder-kl: kl_results.py's photo run, else generation.py's tiny-f4 on Fashion-MNIST
    candidates = [RESULTS / "runs" / "kl-photos", RESULTS / "runs" / "generation" / "ae"]
    run_dir = next((r for r in candidates if (r / "model.safetensors").is_file()), None)
    if run_dir is None:
        return None
    model, auto = vaekit.load(run_dir, precision="fp32"), vaekit.load(run_dir)  # auto: load's default
    data = run_data(read_run_config(run_dir)).test
    x, _ = data.batch(torch.arange(min(len(data), 1024)))
    with torch.no_grad():
        fp32 = model.decode(model.encode(x).mode()).clamp(-1, 1)
        fast = auto.decode(auto.encode(x).mode()).clamp(-1, 1)
    unit = (x + 1) / 2
    a, b = float(psnr(unit, (fp32 + 1) / 2).mean()), float(psnr(unit, (fast + 1) / 2).mean())
    return {"run": str(run_dir), "n": len(x), "precision": auto.inference_precision, "psnr fp32": a,
            "psnr auto": b, "difference dB": b - a}


def training_step_speed(reps: int, resolution: int = 256, batch: int = 4) -> list[dict]:
    import torch

    from vaekit.config import from_dict
    from vaekit.data import ArrayData, DataInfo, DataSplits
    from vaekit.models import PRESETS
    from vaekit.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
    from vaekit.objectives.ldm import LDMLoss
    from vaekit.training.config import TrainConfig
    from vaekit.training.trainer import Trainer

    rows = []
    x = torch.rand(batch, 3, resolution, resolution) * 2 - 1
    info = DataInfo(shape=(3, resolution, resolution), input_range=(-1.0, 1.0))
    for precision in ("fp32", "auto"):
        torch.manual_seed(0)
        model = AutoencoderKL(from_dict(AutoencoderKLConfig, {**PRESETS.get("small-f8")["model_config"],
                                                              "sample_size": resolution}))
        cfg = TrainConfig(objective="ldm", batch_size=batch, lr=1e-4, beta=1e-6, adam_betas=(0.5, 0.9),
                          disc_start=0, precision=precision, lpips_net="vgg")
        splits = DataSplits(ArrayData(x), None, ArrayData(x), info)
        trainer = Trainer(RESULTS / "runs" / "kl-step", model, LDMLoss(model, cfg), splits, cfg, progress=False)
        index = torch.arange(batch)
        if precision == "auto" and trainer.precision.name == "fp32":
            seconds = rows[0]["s/step"]  # auto is fp32 here: the same step, timed once
        else:
            seconds = best(lambda t=trainer, i=index: t.train_step(i, 0), reps)
        rows.append({"step": f"LDM loss (L1 + LPIPS-VGG + PatchGAN), small-f8, {resolution}^2, batch {batch}",
                     "precision": precision if precision == "fp32" else f"auto ({trainer.precision.name})",
                     "s/step": seconds, "images/s": batch / seconds})
    rows[1]["speed-up"] = rows[0]["s/step"] / rows[1]["s/step"]
    return rows


def rss_table() -> list[dict]:
    rows = []
    for impl in ("vaekit", "diffusers"):
        out = json_lines(run([sys.executable, HERE / "kl_tiled_rss.py", impl]))[-1]
        rows.append(out)
        print(f"kl_speed: tiled 2048^2 decode ({impl}) done", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--sizes", default="256,512", help="image sizes, comma-separated (default 256,512)")
    p.add_argument("--quick", action="store_true", help="64^2, batch 1, one rep, no RSS; prints, saves nothing")
    args = p.parse_args()
    from vaekit.runtime import tune_cpu

    tune_cpu()
    print(f"kl_speed on {machine()}", file=sys.stderr, flush=True)
    if args.quick:
        args.reps, args.skip_rss = 1, True
        speed, auto = speed_table(1, sizes=(64,), batches=(1,))
        steps = training_step_speed(1, resolution=64, batch=1)
    else:
        speed, auto = speed_table(args.reps, sizes=tuple(int(v) for v in args.sizes.split(",")))
        steps = training_step_speed(args.reps)
    quality = auto_psnr()
    rss = [] if args.skip_rss else rss_table()
    cols = ["op", "size", "batch", "diffusers fp32 s", "vaekit fp32 s", "fp32 speed-up", "vaekit auto s",
            "auto speed-up"]
    text = (f"KL autoencoder, SD 1.x layout, identical weights, best of {args.reps}; vaekit auto = {auto} here "
            f"({machine()})\n\n")
    text += markdown_table(speed, cols)
    both = [r for r in speed if r["op"] == "encode+decode"]
    fp32 = statistics.geometric_mean(r["fp32 speed-up"] for r in both)
    fast = statistics.geometric_mean(r["auto speed-up"] for r in both)
    text += (f"\n\nGeometric mean speed-up of encode+decode against diffusers fp32: vaekit fp32 {fp32:.2f}x, "
             f"vaekit auto ({auto}) {fast:.2f}x (targets: auto >= 3.5x on an AMX CPU, fp32 >= 1.0x without).\n")
    if quality:
        text += (f"\nauto ({quality['precision']}) reconstruction quality ({quality['n']} held-out crops, "
                 f"{quality['run']}): PSNR fp32 {quality['psnr fp32']:.3f} dB, auto {quality['psnr auto']:.3f} dB, "
                 f"difference {quality['difference dB']:+.3f} dB (target: within 0.1 dB)\n")
    else:
        text += "\n(no trained autoencoder-kl run for the PSNR check: run kl_results.py or generation.py first)\n"
    text += "\n" + markdown_table(steps, ["step", "precision", "s/step", "images/s", "speed-up"]) + "\n"
    if rss:
        text += "\nTiled 2048x2048 decode, SD layout, 512 px tiles, fresh process\n\n"
        text += markdown_table(rss, ["implementation", "seconds", "peak RSS MiB", "output"]) + "\n"
    print(text)
    if args.quick:
        return
    save("kl_speed", {"speed": speed, "auto_quality": quality, "training": steps, "tiled_rss": rss}, text,
         precision=f"per column (fp32; auto = {auto})")


if __name__ == "__main__":
    main()
