"""KL autoencoder speed: vaekit's AutoencoderKL against diffusers' AutoencoderKL holding identical
weights (the SD 1.x layout, seeded random init), side by side in one process.

- encode and decode at 256^2 and 512^2, batch 1 and 4: vaekit fp32 and bf16 (autocast) against
  diffusers fp32 (best of --reps runs each; this machine is noisy);
- the PSNR of bf16 reconstructions against fp32 ones, on a trained small run when present
  (bench/results/runs/kl-photos, made by kl_results.py);
- images per second of one full LDM-loss training step (L1 + LPIPS + PatchGAN) at 256^2 on the
  small-f8 preset, fp32 and bf16;
- peak RSS of a tiled 2048^2 decode (SD layout, 512 px tiles) in a fresh process, vaekit and
  diffusers' enable_tiling().

Run: python bench/kl_speed.py [--reps 3] [--skip-rss]
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


def speed_table(reps: int) -> list[dict]:
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
    rows = []
    with torch.no_grad():
        for res in (256, 512):
            for batch in (1, 4):
                x = torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(res)) * 2 - 1
                z = ours.encode(x).mean
                r = reps if res * batch <= 512 else max(1, reps - 1)
                t = {
                    "diffusers enc": best(lambda x=x: theirs.encode(x).latent_dist.mean, r),
                    "vaekit enc": best(lambda x=x: ours.encode(x).mean, r),
                    "diffusers dec": best(lambda z=z: theirs.decode(z).sample, r),
                    "vaekit dec": best(lambda z=z: ours.decode(z), r),
                }
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    t["vaekit bf16 enc"] = best(lambda x=x: ours.encode(x).mean, r)
                    t["vaekit bf16 dec"] = best(lambda z=z: ours.decode(z), r)
                for op in ("enc", "dec"):
                    ref = t[f"diffusers {op}"]
                    rows.append({"op": "encode" if op == "enc" else "decode", "size": f"{res}x{res}", "batch": batch,
                                 "diffusers fp32 s": ref, "vaekit fp32 s": t[f"vaekit {op}"],
                                 "fp32 speed-up": ref / t[f"vaekit {op}"], "vaekit bf16 s": t[f"vaekit bf16 {op}"],
                                 "bf16 speed-up vs diffusers fp32": ref / t[f"vaekit bf16 {op}"]})
                print(f"kl_speed: {res}^2 x{batch} done", file=sys.stderr, flush=True)
    return rows


def bf16_psnr() -> dict | None:
    import torch

    import vaekit
    from vaekit.cli.common import run_data
    from vaekit.evaluation.images import psnr
    from vaekit.run import read_run_config

    run_dir = RESULTS / "runs" / "kl-photos"
    if not (run_dir / "model.safetensors").is_file():
        return None
    model = vaekit.load(run_dir)
    data = run_data(read_run_config(run_dir)).test
    x, _ = data.batch(torch.arange(len(data)))
    with torch.no_grad():
        fp32 = model.decode(model.encode(x).mode()).clamp(-1, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model.decode(model.encode(x).mode()).float().clamp(-1, 1)
    unit = (x + 1) / 2
    a, b = float(psnr(unit, (fp32 + 1) / 2).mean()), float(psnr(unit, (bf16 + 1) / 2).mean())
    return {"run": str(run_dir), "n": len(x), "psnr fp32": a, "psnr bf16": b, "difference dB": b - a}


def training_step_speed(reps: int) -> list[dict]:
    import torch

    from vaekit.config import from_dict
    from vaekit.data import ArrayData, DataInfo, DataSplits
    from vaekit.models import PRESETS
    from vaekit.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
    from vaekit.objectives.ldm import LDMLoss
    from vaekit.training.config import TrainConfig
    from vaekit.training.trainer import Trainer

    rows = []
    batch = 4
    x = torch.rand(batch, 3, 256, 256) * 2 - 1
    info = DataInfo(shape=(3, 256, 256), input_range=(-1.0, 1.0))
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = AutoencoderKL(from_dict(AutoencoderKLConfig, {**PRESETS.get("small-f8")["model_config"],
                                                              "sample_size": 256}))
        cfg = TrainConfig(objective="ldm", batch_size=batch, lr=1e-4, beta=1e-6, adam_betas=(0.5, 0.9),
                          disc_start=0, precision=precision, lpips_net="vgg")
        splits = DataSplits(ArrayData(x), None, ArrayData(x), info)
        trainer = Trainer(RESULTS / "runs" / "kl-step", model, LDMLoss(model, cfg), splits, cfg, progress=False)
        index = torch.arange(batch)
        seconds = best(lambda t=trainer, i=index: t.train_step(i, 0), reps)
        rows.append({"step": "LDM loss (L1 + LPIPS-VGG + PatchGAN), small-f8, 256^2, batch 4",
                     "precision": precision, "s/step": seconds, "images/s": batch / seconds})
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
    args = p.parse_args()
    from vaekit.runtime import tune_cpu

    tune_cpu()
    print(f"kl_speed on {machine()}", file=sys.stderr, flush=True)
    speed = speed_table(args.reps)
    quality = bf16_psnr()
    steps = training_step_speed(args.reps)
    rss = [] if args.skip_rss else rss_table()
    cols = ["op", "size", "batch", "diffusers fp32 s", "vaekit fp32 s", "fp32 speed-up", "vaekit bf16 s",
            "bf16 speed-up vs diffusers fp32"]
    text = f"KL autoencoder, SD 1.x layout, identical weights, best of {args.reps} ({machine()})\n\n"
    text += markdown_table(speed, cols)
    fp32 = statistics.geometric_mean(r["fp32 speed-up"] for r in speed)
    bf16 = statistics.geometric_mean(r["bf16 speed-up vs diffusers fp32"] for r in speed)
    text += f"\n\nGeometric mean speed-up: fp32 {fp32:.2f}x, bf16 {bf16:.2f}x (vs diffusers fp32).\n"
    if quality:
        text += (f"\nbf16 reconstruction quality ({quality['n']} held-out crops, {quality['run']}): PSNR fp32 "
                 f"{quality['psnr fp32']:.3f} dB, bf16 {quality['psnr bf16']:.3f} dB, difference "
                 f"{quality['difference dB']:+.3f} dB\n")
    text += "\n" + markdown_table(steps, ["step", "precision", "s/step", "images/s"]) + "\n"
    if rss:
        text += "\nTiled 2048x2048 decode, SD layout, 512 px tiles, fresh process\n\n"
        text += markdown_table(rss, ["implementation", "seconds", "peak RSS MiB", "output"]) + "\n"
    print(text)
    save("kl_speed", {"speed": speed, "bf16_quality": quality, "training": steps, "tiled_rss": rss}, text,
         precision="per column (fp32; bf16 autocast)")


if __name__ == "__main__":
    main()
