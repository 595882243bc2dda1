"""Checkpoints that load anywhere: vaekit runs <-> diffusers folders and original LDM checkpoints."""

from __future__ import annotations

from pathlib import Path

from vaekit.errors import VaekitError


def _require_kl(model, what: str):
    from vaekit.models.autoencoder_kl import AutoencoderKL

    if not isinstance(model, AutoencoderKL):
        raise VaekitError(f"{what}: only autoencoder-kl runs (and latent-diffusion runs on them) have a diffusers form "
                          f"(this run is '{model.name}')")
    return model


def export_diffusers(run: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write RUN as a diffusers folder: an autoencoder-kl run as an AutoencoderKL folder, a
    latent-diffusion run on one as an LDMPipeline folder (vqvae, unet, scheduler)."""
    from vaekit.interop.diffusers_format import write_diffusers_folder
    from vaekit.run import load

    model = load(run, precision="fp32")  # exported weights stay float32
    if getattr(model, "name", "") == "latent-diffusion":
        from vaekit.interop.diffusers_pipeline import write_ldm_pipeline

        return write_ldm_pipeline(model, out, overwrite=overwrite)
    return write_diffusers_folder(_require_kl(model, str(run)), out, overwrite=overwrite)


def save_imported_run(model, out: str | Path, source: str, overwrite: bool = False) -> Path:
    """A run directory for weights that were imported rather than trained here."""
    from vaekit.data import DataConfig, DataInfo
    from vaekit.run import RunConfig, prepare_run_dir, save_weights, write_run_config
    from vaekit.training.config import TrainConfig

    cfg = model.config
    info = DataInfo(kind="image", shape=(cfg.in_channels, cfg.sample_size, cfg.sample_size),
                    value_range=(-1.0, 1.0), source=f"imported from {source}")
    run_cfg = RunConfig(type(model), cfg, DataConfig(spec=""), info, TrainConfig())
    run = prepare_run_dir(out, overwrite=overwrite)
    save_weights(run, model)  # weights first: a folder without config.json is not a run
    write_run_config(run, run_cfg)
    return run


def import_diffusers(folder: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    from vaekit.interop.diffusers_format import read_diffusers_folder
    from vaekit.models.autoencoder_kl import AutoencoderKL
    from vaekit.run import load_state_strict

    cfg, state = read_diffusers_folder(folder)
    model = AutoencoderKL(cfg)
    load_state_strict(model, state, f"{folder}")
    return save_imported_run(model, out, str(folder), overwrite)


def import_ldm(path: str | Path, out: str | Path, overrides: dict | None = None, overwrite: bool = False) -> Path:
    """Convert an original CompVis/Stability first-stage checkpoint (.safetensors, or .ckpt read
    with torch.load(weights_only=True)) into a vaekit run."""
    from vaekit.config import from_dict
    from vaekit.interop.ldm import infer_config, ldm_to_diffusers, read_ldm_checkpoint
    from vaekit.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
    from vaekit.run import load_state_strict

    state = ldm_to_diffusers(read_ldm_checkpoint(path))
    try:
        fields = {**infer_config(state), **(overrides or {})}
    except KeyError as e:
        raise VaekitError(f"{path}: incomplete autoencoder weights (no {e.args[0]})") from None
    cfg = from_dict(AutoencoderKLConfig, fields, f"{path}")
    model = AutoencoderKL(cfg)
    load_state_strict(model, state, f"{path}")
    return save_imported_run(model, out, str(path), overwrite)
