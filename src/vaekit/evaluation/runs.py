"""``evaluate_run``: what ``vaekit evaluate`` measures for a run, chosen by its model's ``evaluator``.

- ``likelihood`` models: ELBO parts, the importance-weighted NLL, bits/dim and active units (plus
  per-layer KL and active units for hierarchical models), on a held-out split or other data;
- ``images`` models (autoencoder-kl): PSNR, SSIM, LPIPS, KL per latent element and the latents'
  statistics, with a grid of inputs above reconstructions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vaekit.errors import VaekitError

LIKELIHOOD_KEYS = ("elbo", "recon", "kl", "nll", "bits_per_dim", "active_units", "k", "n")
HIERARCHICAL_KEYS = ("kl_per_layer", "active_units_per_layer")  # added for hvae and ladder runs


@dataclass
class EvaluationRequest:
    split: str = "test"
    data: str | None = None  # other data, same forms as --data
    iw: int | None = None  # importance samples (likelihood models; default 1)
    batch_size: int | None = None
    lpips_net: str | None = "vgg"  # images: vgg, alex or None
    tiled: bool = False
    grid: Path | None = None  # images: where the grid goes (default RUN/eval_grid.png)
    seed: int = 0
    device: str = "cpu"
    extra: dict = field(default_factory=dict)


def evaluate_run(run: str | Path, cfg, model, request: EvaluationRequest) -> tuple[dict, tuple[str, ...]]:
    """(values, the keys to report in order) for the run's evaluator."""
    evaluator = EVALUATORS[getattr(model, "evaluator", "likelihood")]
    return evaluator(Path(run), cfg, model, request)


def run_split(cfg, split: str):
    from vaekit.data import load_data

    return load_data(cfg.data, saved=cfg.data_info).split(split)


def _likelihood(run: Path, cfg, model, req: EvaluationRequest) -> tuple[dict, tuple[str, ...]]:
    from vaekit.evaluation.likelihood import evaluate

    k = 1 if req.iw is None else req.iw
    if k < 1:
        raise VaekitError(f"--iw must be >= 1, got {k}")
    if req.data is not None:
        from vaekit.config import replace
        from vaekit.data import load_data
        from vaekit.likelihoods import check_levels

        splits = load_data(replace(cfg.data, spec=req.data, test_spec=None), saved=cfg.data_info)
        check_levels(cfg.model.likelihood, splits.info)
        data = splits.test
    else:
        data = run_split(cfg, req.split)
    result = evaluate(model, data, k=k, batch_size=req.batch_size or 4096, seed=req.seed, device=req.device)
    values = result.as_dict()
    return values, LIKELIHOOD_KEYS + tuple(k for k in HIERARCHICAL_KEYS if k in values)


def _images(run: Path, cfg, model, req: EvaluationRequest) -> tuple[dict, tuple[str, ...]]:
    import torch

    from vaekit.evaluation.images import IMAGE_KEYS, evaluate_images
    from vaekit.viz.grid import image_grid, save_png

    if req.iw is not None:
        raise VaekitError("--iw applies to likelihood models; image autoencoders report PSNR, SSIM and LPIPS")
    data = folder_data(req.data, cfg) if req.data is not None else run_split(cfg, req.split)
    result, shown, recon = evaluate_images(model, data, batch_size=req.batch_size or 8, lpips_net=req.lpips_net,
                                           tiled=req.tiled, device=req.device, seed=req.seed)
    from vaekit.training.distributed import current

    if current().writer:  # under torchrun: rank 0's first images
        grid = image_grid(torch.cat([shown, recon]), nrow=len(shown), value_range=model.input_range)
        save_png(grid, req.grid or run / "eval_grid.png")
    return result.as_dict(), IMAGE_KEYS


def folder_data(spec: str, cfg):
    """Every image of ``spec`` (centre-cropped to the run's resolution) as a stream, or the test split
    of an in-memory source."""
    from vaekit.config import replace
    from vaekit.data import ImageStream, load_data
    from vaekit.data.sources import ReadOptions, read_source

    info = cfg.data_info
    resolution = cfg.data.resolution or info.shape[-1]
    raw = read_source(spec, ReadOptions(resolution, cfg.data.color, cfg.data.skip_bad, lazy=True))
    if raw.items is not None:
        grey = info.shape[0] == 1
        return ImageStream(raw.items, None, resolution, grey, resize=cfg.data.resize, augment=False,
                           input_range=tuple(info.input_range), seed=cfg.data.split_seed)
    return load_data(replace(cfg.data, spec=spec, test_spec=None, augment=False), saved=info).test


def _diffusion(run: Path, cfg, model, req: EvaluationRequest) -> tuple[dict, tuple[str, ...]]:
    """The denoising loss on held-out data (seeded noise and timesteps); sample quality is
    ``vaekit sample-quality``'s to measure."""
    import torch

    from vaekit.config import to_dict
    from vaekit.run import open_run

    if req.iw is not None or req.data is not None:
        raise VaekitError("--iw and --data apply to VAE runs; measure a diffusion run with 'vaekit sample-quality'")
    data = cfg.model_class.prepare_data(cfg.data, to_dict(cfg.model), cfg.data_info, open_run).split(req.split)
    gen = torch.Generator(device=req.device).manual_seed(req.seed)
    size, total = req.batch_size or 1024, 0.0
    with torch.no_grad():
        for start in range(0, len(data), size):
            x, y = data.batch(torch.arange(start, min(start + size, len(data))))
            y = None if y is None else y.to(req.device)
            total += float(model.denoising_loss(x.to(req.device), y, gen).double().sum())
    return {"loss": total / len(data), "n": len(data)}, ("loss", "n")


EVALUATORS: dict[str, Callable] = {"likelihood": _likelihood, "images": _images, "diffusion": _diffusion}
