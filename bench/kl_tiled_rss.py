"""A tiled 2048x2048 decode (SD 1.x layout, 512 px tiles, 25% overlap) in a fresh process; prints
seconds and the process's peak resident memory. Run by kl_speed.py: python kl_tiled_rss.py vaekit|diffusers"""

from __future__ import annotations

import json
import resource
import sys
import time

from vaekit.runtime import tune_cpu

tune_cpu()

import torch  # noqa: E402


def main() -> None:
    impl = sys.argv[1]
    torch.manual_seed(0)
    z = torch.randn(1, 4, 256, 256)
    with torch.no_grad():
        if impl == "vaekit":
            from vaekit.config import from_dict
            from vaekit.models import PRESETS
            from vaekit.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig

            model = AutoencoderKL(from_dict(AutoencoderKLConfig, PRESETS.get("sd")["model_config"])).eval()
            started = time.perf_counter()
            out = model.decode_tiled(z, tile=512)
        else:
            import diffusers

            model = diffusers.AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                            down_block_types=("DownEncoderBlock2D",) * 4,
                                            up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512).eval()
            model.enable_tiling()
            started = time.perf_counter()
            out = model.decode(z).sample
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"implementation": impl, "seconds": seconds, "peak RSS MiB": round(peak),
                      "output": "x".join(str(s) for s in out.shape)}))


if __name__ == "__main__":
    main()
