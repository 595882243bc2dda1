"""A latent-diffusion run on an autoencoder-kl run as a diffusers pipeline folder that diffusers'
unconditional latent-diffusion pipeline (``LDMPipeline``) loads:

    model_index.json   {"_class_name": "LDMPipeline", "vqvae": AutoencoderKL, "unet": UNet2DModel,
                        "scheduler": DDIMScheduler}
    vqvae/             the autoencoder (config.json + diffusion_pytorch_model.safetensors)
    unet/              the denoiser (diffusers' own save_pretrained, safetensors)
    scheduler/         DDIM with the run's training schedule (scheduler_config.json)

``LDMPipeline`` divides latents by ``vqvae.config.scaling_factor`` and applies no shift, so the
exported autoencoder's ``scaling_factor`` is the one the run's latents were scaled by (1 / the
run's latent_std), and runs whose codes needed a shift cannot be exported. For the same generator
and number of steps the pipeline reproduces ``vaekit sample`` (the same noise, scheduler and UNet).
"""

from __future__ import annotations

from pathlib import Path

from vaekit.errors import VaekitError
from vaekit.interop.diffusers_format import DIFFUSERS_VERSION, write_autoencoder, write_folder
from vaekit.io import write_json

MODEL_INDEX = "model_index.json"


def write_ldm_pipeline(model, out: str | Path, overwrite: bool = False) -> Path:
    from diffusers import DDIMScheduler

    from vaekit.models.autoencoder_kl import AutoencoderKL
    from vaekit.models.denoisers import UNet
    from vaekit.models.diffusion import noise_scheduler

    cfg = model.config
    if not isinstance(model.vae, AutoencoderKL):
        raise VaekitError(f"only latent diffusion on an autoencoder-kl run exports as a diffusers pipeline; "
                          f"this run's VAE is '{model.vae.name}'")
    if not isinstance(model.denoiser, UNet):
        raise VaekitError("only a unet denoiser exports as a diffusers pipeline (this run's is an mlp)")
    if cfg.conditional:
        raise VaekitError("diffusers' LDMPipeline is unconditional; a class-conditional run cannot be exported")
    if len(cfg.latent_mean) != 1 or len(cfg.latent_std) != 1 or cfg.latent_mean[0] != 0.0:
        raise VaekitError("LDMPipeline scales latents by one factor and applies no shift; this run's latents were "
                          "shifted, so it cannot be exported")
    scaling = 1.0 / cfg.latent_std[0]

    def build(tmp: Path) -> None:
        (tmp / "vqvae").mkdir()
        write_autoencoder(model.vae, tmp / "vqvae", scaling_factor=scaling, shift_factor=None)
        model.denoiser.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        DDIMScheduler.from_config(noise_scheduler(cfg).config).save_pretrained(tmp / "scheduler")
        write_json(tmp / MODEL_INDEX, {"_class_name": "LDMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
                                       "vqvae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DModel"],
                                       "scheduler": ["diffusers", "DDIMScheduler"]})

    return write_folder(out, overwrite, MODEL_INDEX, build)
