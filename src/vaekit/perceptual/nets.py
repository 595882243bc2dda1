"""The two LPIPS backbones as layer tables (torchvision's AlexNet and VGG16 feature stacks), the
ReLU outputs LPIPS taps, and the input normalisation; shared by the network and the weight
converter."""

from __future__ import annotations

NETS = {
    # torchvision-style feature stacks: (kind, spec); the indices where LPIPS taps a ReLU output
    "alex": {
        "layers": [("conv", 3, 64, 11, 4, 2), ("relu",), ("pool", 3, 2), ("conv", 64, 192, 5, 1, 2), ("relu",),
                   ("pool", 3, 2), ("conv", 192, 384, 3, 1, 1), ("relu",), ("conv", 384, 256, 3, 1, 1), ("relu",),
                   ("conv", 256, 256, 3, 1, 1), ("relu",)],
        "taps": (1, 4, 7, 9, 11),
        "channels": (64, 192, 384, 256, 256),
    },
    "vgg": {
        "layers": [("conv", 3, 64, 3, 1, 1), ("relu",), ("conv", 64, 64, 3, 1, 1), ("relu",), ("pool", 2, 2),
                   ("conv", 64, 128, 3, 1, 1), ("relu",), ("conv", 128, 128, 3, 1, 1), ("relu",), ("pool", 2, 2),
                   ("conv", 128, 256, 3, 1, 1), ("relu",), ("conv", 256, 256, 3, 1, 1), ("relu",),
                   ("conv", 256, 256, 3, 1, 1), ("relu",), ("pool", 2, 2),
                   ("conv", 256, 512, 3, 1, 1), ("relu",), ("conv", 512, 512, 3, 1, 1), ("relu",),
                   ("conv", 512, 512, 3, 1, 1), ("relu",), ("pool", 2, 2),
                   ("conv", 512, 512, 3, 1, 1), ("relu",), ("conv", 512, 512, 3, 1, 1), ("relu",),
                   ("conv", 512, 512, 3, 1, 1), ("relu",)],
        "taps": (3, 8, 15, 22, 29),
        "channels": (64, 128, 256, 512, 512),
    },
}
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
