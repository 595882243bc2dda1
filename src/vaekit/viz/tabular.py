"""Pictures of tabular data: feature histograms (samples against data), input-vs-reconstruction
scatter plots, feature paths (interpolation) and feature response curves (traversal)."""

from __future__ import annotations

import math

from torch import Tensor

from vaekit.data import ArrayData, DataInfo
from vaekit.viz.grid import figure_to_image, pyplot

MAX_FEATURES = 8


def _feature_names(info: DataInfo, d: int) -> list[str]:
    names = list(info.feature_names) or [f"x{i}" for i in range(d)]
    return names[:d]


def _grid_axes(n: int, size: float = 2.6):
    plt = pyplot()
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * 0.85 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def feature_histograms(x: Tensor, reference: ArrayData | None, info: DataInfo, title: str):
    x = x.flatten(1).numpy()
    d = min(x.shape[1], MAX_FEATURES)
    names = _feature_names(info, x.shape[1])
    fig, axes = _grid_axes(d)
    ref = None if reference is None else reference.take(len(reference)).x.flatten(1).numpy()
    for i, ax in zip(range(d), axes):
        bins = 30
        if ref is not None:
            ax.hist(ref[:, i], bins=bins, density=True, alpha=0.5, label="data")
        ax.hist(x[:, i], bins=bins, density=True, alpha=0.5, label="generated")
        ax.set_title(names[i], fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return figure_to_image(fig)


def feature_scatter(x: Tensor, recon: Tensor, info: DataInfo):
    x, recon = x.flatten(1).numpy(), recon.flatten(1).numpy()
    d = min(x.shape[1], MAX_FEATURES)
    names = _feature_names(info, x.shape[1])
    fig, axes = _grid_axes(d)
    for i, ax in zip(range(d), axes):
        ax.scatter(x[:, i], recon[:, i], s=8, alpha=0.7)
        lo, hi = float(min(x[:, i].min(), recon[:, i].min())), float(max(x[:, i].max(), recon[:, i].max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(names[i], fontsize=9)
        ax.set_xlabel("input", fontsize=7)
        ax.set_ylabel("reconstruction", fontsize=7)
    fig.suptitle("reconstructions (dashed: perfect)")
    fig.tight_layout()
    return figure_to_image(fig)


def feature_paths(decoded: dict[str, Tensor], t: Tensor, info: DataInfo):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, (name, x) in zip(axes, decoded.items()):
        x = x.flatten(1).numpy()
        names = _feature_names(info, x.shape[1])
        for i in range(min(x.shape[1], MAX_FEATURES)):
            ax.plot(t.numpy(), x[:, i], label=names[i])
        ax.set_title(f"{name} interpolation")
        ax.set_xlabel("t")
    axes[1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return figure_to_image(fig)


def feature_traversals(rows: list[Tensor], values: Tensor, labels: list[str], info: DataInfo):
    fig, axes = _grid_axes(len(rows), size=3.2)
    for x, label, ax in zip(rows, labels, axes):
        x = x.flatten(1).numpy()
        names = _feature_names(info, x.shape[1])
        for i in range(min(x.shape[1], MAX_FEATURES)):
            ax.plot(values.numpy(), x[:, i], label=names[i])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("latent value", fontsize=7)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    return figure_to_image(fig)
