"""Reconstruction quality of image autoencoders: PSNR, SSIM and LPIPS on [0, 1] images, the KL per
latent element, and the latents' mean and standard deviation (1/std is the ``scaling_factor`` that
gives a diffusion model unit-variance latents, as Stable Diffusion's 0.18215 was chosen).

SSIM follows Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
data range 1, no padding (as scikit-image with gaussian_weights=True), averaged over channels and
pixels; each metric is averaged over images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_KEYS = ("psnr", "ssim", "lpips", "kl_per_element", "latent_mean", "latent_std", "scaling_factor", "n")


@dataclass
class ImageEvaluation:
    psnr: float
    ssim: float
    lpips: float | None
    kl_per_element: float
    latent_mean: float
    latent_std: float
    scaling_factor: float
    n: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per image, [B], for images in [0, 1]."""
    mse = ((x - y) ** 2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse.clamp(min=1e-12))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, size: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM per image, [B], for images in [0, 1] (computed in float64)."""
    x, y = x.double(), y.double()
    c = x.shape[1]
    g = _gaussian_window(size, sigma).to(x.device)
    win_h = g.view(1, 1, size, 1).repeat(c, 1, 1, 1)
    win_w = g.view(1, 1, 1, size).repeat(c, 1, 1, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, win_h, groups=c), win_w, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).float()


@torch.no_grad()
def evaluate_images(model, data, batch_size: int = 16, lpips_net: str | None = "vgg", tiled: bool = False,
                    device: str | torch.device = "cpu", seed: int = 0) -> tuple[ImageEvaluation, Tensor, Tensor]:
    """Metrics over ``data`` (ArrayData or ImageStream, images in the model's input range), plus the
    first inputs and reconstructions (for a grid). Under torchrun the ranks share the batches (as
    ``evaluate`` does) and every rank returns the totals; the grid shows this rank's first images."""
    from vaekit import sharding
    from vaekit.runtime import tune_cpu
    from vaekit.training import distributed

    tune_cpu()
    world = distributed.setup()  # under torchrun: the job's ranks share the work
    model.eval()
    lo, hi = model.input_range
    lp = None
    if lpips_net:
        from vaekit.perceptual import load_lpips

        lp = load_lpips(lpips_net, device)
    gen = torch.Generator(device=device)
    # psnr, ssim, lpips, kl, then the latents' sum, sum of squares and count
    totals = torch.zeros(7, dtype=torch.float64)
    shown_x, shown_r = [], []
    n = len(data)
    for chunk in distributed.chunks(n, batch_size, seed, world):
        gen.manual_seed(chunk.seed)
        x, _ = data.batch(chunk.index)
        x = x.to(device)
        with sharding.rows(*chunk.rows):
            q = model.encode_tiled(x) if tiled else model.encode(x)
            xr = (model.decode_tiled(q.mode()) if tiled else model.decode(q.mode())).clamp(lo, hi)
            z = q.sample(generator=gen).double()
        unit_x, unit_r = (x - lo) / (hi - lo), (xr - lo) / (hi - lo)
        lpips_sum = lp(unit_x * 2 - 1, unit_r * 2 - 1).sum() if lp is not None else torch.zeros(())
        parts = [psnr(unit_x, unit_r).sum(), ssim(unit_x, unit_r).sum(), lpips_sum,
                 (q.kl() / math.prod(q.mean.shape[1:])).sum(), z.sum(), (z * z).sum(), torch.tensor(float(z.numel()))]
        totals += torch.stack([p.double().cpu() for p in parts])
        if sum(len(s) for s in shown_x) < 8:
            shown_x.append(x.cpu())
            shown_r.append(xr.cpu())
    psnr_sum, ssim_sum, lpips_total, kl_sum, z_sum, z_sq, z_count = distributed.all_reduce_sum(totals, world).tolist()
    totals = {"psnr": psnr_sum, "ssim": ssim_sum, "lpips": lpips_total, "kl": kl_sum}
    mean = z_sum / z_count
    std = math.sqrt(max(z_sq / z_count - mean**2, 0.0))
    result = ImageEvaluation(
        psnr=totals["psnr"] / n,
        ssim=totals["ssim"] / n,
        lpips=totals["lpips"] / n if lp is not None else None,
        kl_per_element=totals["kl"] / n,
        latent_mean=mean,
        latent_std=std,
        scaling_factor=1.0 / std if std > 0 else float("nan"),
        n=n,
    )
    return result, torch.cat(shown_x)[:8], torch.cat(shown_r)[:8]
