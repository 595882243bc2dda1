"""What a model learned, as pictures: samples, reconstructions, interpolations, traversals, loss
curves and the latent space. Image data gives image grids; tabular data gives plots of features
(``vaekit.viz.tabular``). Every function returns a PIL image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from vaekit.data import ArrayData, DataInfo
from vaekit.errors import VaekitError
from vaekit.evaluation import posterior_means
from vaekit.viz.grid import figure_to_image, image_grid, label_rows, pyplot
from vaekit.viz.tabular import feature_histograms, feature_paths, feature_scatter, feature_traversals


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _labels_for(model, n: int, label: int | None) -> Tensor | None:
    """Labels for generation: the given class, or for a conditional model cycle through classes."""
    k = model.config.num_classes
    if label is not None:
        if not model.config.conditional:
            raise VaekitError("--label needs a conditional model (train with --conditional)")
        if not 0 <= label < k:
            raise VaekitError(f"--label must be in 0..{k - 1}, got {label}")
        return torch.full((n,), label, dtype=torch.long, device=_device(model))
    if model.config.conditional:
        return torch.arange(n, device=_device(model)) % k
    return None


@torch.no_grad()
def samples(model, info: DataInfo, n: int = 64, label: int | None = None, temperature: float = 1.0,
            seed: int = 0, reference: ArrayData | None = None, prior=None, **sampling):
    """A grid of ``n`` samples (feature histograms for tabular data). ``prior``: a distribution over the
    flattened latent to decode instead of the model's own; ``sampling``: options of the model's
    ``sample`` (a diffusion model's steps, sampler and guidance)."""
    if n < 1:
        raise VaekitError(f"-n must be >= 1, got {n}")
    if temperature <= 0:
        raise VaekitError(f"--temperature must be positive, got {temperature}")
    model.eval()
    gen = torch.Generator(device=_device(model)).manual_seed(seed)
    y = _labels_for(model, n, label)
    if prior is None:
        x = model.sample(n, y, temperature=temperature, generator=gen, **sampling).cpu()
    else:  # a fitted prior over the (flattened) latent
        z = prior.sample(n, generator=gen, temperature=temperature).to(_device(model))
        x = model.decode(z.float().view(n, *model.latent_shape), y).cpu()
    if info.kind == "image":
        nrow = model.config.num_classes if model.config.conditional and label is None else None
        return image_grid(x, nrow=nrow, value_range=info.value_range)
    return feature_histograms(x, reference, info, f"{n} samples (T={temperature})")


@torch.no_grad()
def reconstructions(model, data: ArrayData, info: DataInfo, n: int = 16):
    """Inputs (top row of each pair) above their reconstructions (decoder mean at the posterior mean)."""
    model.eval()
    sub = data.take(min(n, len(data)))
    dev = _device(model)
    y = None if sub.y is None else sub.y.to(dev)
    recon = model.decode(model.encode(sub.x.to(dev), y).mean, y).cpu()
    if info.kind == "image":
        per_row = min(len(sub), 8)
        rows = []
        for start in range(0, len(sub), per_row):
            rows += [sub.x[start : start + per_row], recon[start : start + per_row]]
        width = max(len(r) for r in rows)
        padded = [torch.cat([r, torch.ones(width - len(r), *r.shape[1:])]) if len(r) < width else r for r in rows]
        return image_grid(torch.cat(padded), nrow=width, value_range=info.value_range)
    return feature_scatter(sub.x, recon, info)


@torch.no_grad()
def reconstruct_file(model, path):
    """One image file of any size through an image autoencoder, tiled: the reconstruction as a PIL
    image of the same size (edges are padded by reflection to the downsampling factor and cropped
    back). Grey, palette, 16-bit and transparent images are converted to the model's channels."""
    from PIL import Image

    from vaekit.data.images import open_image, to_mode

    if not hasattr(model, "decode_tiled"):
        raise VaekitError(f"reconstructing an image file needs an image autoencoder (autoencoder-kl), not "
                          f"'{model.name}'")
    cfg = model.config
    grey = cfg.in_channels == 1
    im = to_mode(open_image(path), grey)
    a = np.asarray(im, dtype=np.float32)
    a = a[None] if grey else a.transpose(2, 0, 1)
    lo, hi = model.input_range
    x = torch.from_numpy(np.ascontiguousarray(a))[None] / 255.0 * (hi - lo) + lo
    f = cfg.downsample_factor
    h, w = x.shape[-2:]
    if h < f or w < f:
        raise VaekitError(f"{path}: {w}x{h} px is smaller than the model's downsampling factor {f}")
    ph, pw = (-h) % f, (-w) % f
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
    x = x.to(_device(model))
    q = model.encode_tiled(x)
    out = model.decode_tiled(q.mode())[..., :h, :w].clamp(lo, hi)
    arr = ((out[0].cpu() - lo) / (hi - lo) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(arr[0] if grey else arr.transpose(1, 2, 0))


def slerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation (White 2016), falling back to linear for (anti)parallel vectors."""
    a, b = z0.flatten(), z1.flatten()
    cos = torch.dot(a, b) / (a.norm() * b.norm() + 1e-12)
    omega = torch.arccos(cos.clamp(-1, 1))
    if omega.abs() < 1e-4 or (math.pi - omega).abs() < 1e-4:
        return lerp(z0, z1, t)
    s = torch.sin(omega)
    w0 = (torch.sin((1 - t) * omega) / s).view(-1, *[1] * z0.dim())
    w1 = (torch.sin(t * omega) / s).view(-1, *[1] * z0.dim())
    return w0 * z0 + w1 * z1


def lerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    tt = t.view(-1, *[1] * z0.dim())
    return (1 - tt) * z0 + tt * z1


@torch.no_grad()
def interpolations(model, data: ArrayData, info: DataInfo, i: int = 0, j: int = 1, steps: int = 10):
    """Linear (top row) and spherical (bottom row) paths between the latents of examples i and j."""
    for idx in (i, j):
        if not 0 <= idx < len(data):
            raise VaekitError(f"example index {idx} is out of range (the split has {len(data)} examples)")
    if steps < 2:
        raise VaekitError(f"--steps must be >= 2, got {steps}")
    model.eval()
    dev = _device(model)
    x, y = data.batch(torch.tensor([i, j]))
    x, y = x.to(dev), None if y is None else y.to(dev)
    z = model.encode(x, y).mean
    t = torch.linspace(0, 1, steps, device=dev)
    paths = {"linear": lerp(z[0], z[1], t), "spherical": slerp(z[0], z[1], t)}
    # a conditional model keeps the first example's label along the path
    yy = None if y is None else y[:1].repeat(steps)
    decoded = {name: model.decode(p, yy).cpu() for name, p in paths.items()}
    if info.kind == "image":
        grid = image_grid(torch.cat([decoded["linear"], decoded["spherical"]]), nrow=steps,
                          value_range=info.value_range)
        return label_rows(grid, ["linear", "spherical"], rows=2, width=70)
    return feature_paths(decoded, t.cpu(), info)


@torch.no_grad()
def traversals(model, data: ArrayData, info: DataInfo, dims: int = 10, steps: int = 9, span: float = 3.0,
               index: int = 0):
    """Each latent unit swept over [-span, span] from the posterior mean of example ``index``, most
    active units (largest variance of the posterior mean across the data) first."""
    if steps < 2:
        raise VaekitError(f"--steps must be >= 2, got {steps}")
    if not 0 <= index < len(data):
        raise VaekitError(f"--index {index} is out of range (the split has {len(data)} examples)")
    model.eval()
    dev = _device(model)
    mu = posterior_means(model, data.take(min(len(data), 5000)))  # activity from up to 5000 examples
    activity = mu.var(0, unbiased=False)
    order = torch.argsort(activity, descending=True)[: max(1, min(dims, mu.shape[1]))]
    x, y = data.batch(torch.tensor([index]))
    x, y = x.to(dev), None if y is None else y.to(dev)
    base = model.encode(x, y).mean[0]
    values = torch.linspace(-span, span, steps, device=dev)
    rows = []
    for d in order.tolist():
        z = base.flatten().repeat(steps, 1)
        z[:, d] = values
        rows.append(model.decode(z.view(steps, *base.shape), None if y is None else y.repeat(steps)).cpu())
    labels = [f"z{d}  var {activity[d]:.2f}" for d in order.tolist()]
    if info.kind == "image":
        grid = image_grid(torch.cat(rows), nrow=steps, value_range=info.value_range)
        return label_rows(grid, labels, rows=len(rows), width=110)
    return feature_traversals(rows, values.cpu(), labels, info)


# panels of the training curves: (title, [(metrics.jsonl key, label), ...]); those present are drawn
CURVE_PANELS = [
    ("ELBO (nats)", [("train_elbo", "train"), ("val_elbo", "val")]),
    ("reconstruction -log p(x|z)", [("train_recon", "train"), ("val_recon", "val")]),
    ("L1", [("train_rec", "train"), ("val_l1", "val")]),
    ("LPIPS", [("train_lpips", "train"), ("val_lpips", "val")]),
    ("PSNR (dB)", [("val_psnr", "val")]),
    ("KL(q || p)", [("train_kl", "train"), ("val_kl", "val")]),
    ("adversarial", [("train_g_loss", "generator"), ("train_d_loss", "discriminator")]),
]


def loss_curves(history: list[dict]):
    plt = pyplot()
    if not history:
        raise VaekitError("no metrics recorded yet (metrics.jsonl is empty)")
    epochs = [r["epoch"] for r in history]
    panels = [(t, [(k, lab) for k, lab in keys if any(k in r for r in history)]) for t, keys in CURVE_PANELS]
    panels = [(t, keys) for t, keys in panels if keys]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for (key, label), style in zip(keys, ("-", "--")):
            points = [(e, r[key]) for e, r in zip(epochs, history) if key in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label,
                    marker="." if len(epochs) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    kl_axes = [ax for ax, (t, _) in zip(axes[0], panels) if t.startswith("KL")]
    if kl_axes and any(r.get("kl_weight", 1.0) != 1.0 for r in history):
        twin = kl_axes[0].twinx()
        twin.plot(epochs, [r.get("kl_weight", 1.0) for r in history], ":", color="grey")
        twin.set_ylabel("KL weight", color="grey")
    fig.tight_layout()
    return figure_to_image(fig)


@torch.no_grad()
def latent_scatter(model, data: ArrayData, info: DataInfo, max_points: int = 5000):
    """Posterior means in 2-D (PCA when the latent has more than 2 dimensions), coloured by label."""
    plt = pyplot()
    sub = data.take(min(len(data), max_points))
    mu = posterior_means(model, sub).double().numpy()
    if mu.shape[1] > 2:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=0)
        pts = pca.fit_transform(mu)
        xlabel, ylabel = (f"PC{i + 1} ({100 * v:.0f}% var)" for i, v in enumerate(pca.explained_variance_ratio_))
    elif mu.shape[1] == 2:
        pts, xlabel, ylabel = mu, "z0", "z1"
    else:
        pts = np.stack([mu[:, 0], np.zeros(len(mu))], 1)
        xlabel, ylabel = "z0", ""
    fig, ax = plt.subplots(figsize=(6, 5))
    if sub.y is not None:
        y = sub.y.numpy()
        cmap = plt.get_cmap("tab10" if info.num_classes <= 10 else "tab20")
        for c in range(info.num_classes):
            m = y == c
            name = info.class_names[c] if c < len(info.class_names) else str(c)
            ax.scatter(pts[m, 0], pts[m, 1], s=6, alpha=0.7, color=cmap(c % cmap.N), label=name)
        ax.legend(markerscale=3, fontsize=7, loc="best", ncol=2 if info.num_classes > 5 else 1)
    else:
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("posterior means" + (" (PCA)" if mu.shape[1] > 2 else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_to_image(fig)
