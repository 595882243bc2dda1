"""Runs inside bench/.venv-pythae: pythae's ``VAE.get_nll`` on given weights and images.

The encoder and decoder are the 784-400-20 network written as pythae expects (its BaseEncoder /
BaseDecoder with ModelOutput); weights come from a safetensors file written by eval_speed.py, so
both implementations score the very same model. Prints one JSON line.

Run (from eval_speed.py): python pythae_nll.py WEIGHTS.safetensors IMAGES.npy K ROUNDS
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from pythae.models import VAE, VAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder
from safetensors.torch import load_file
from torch import nn


class Encoder(BaseEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.mu = nn.Linear(400, 20)
        self.lv = nn.Linear(400, 20)

    def forward(self, x):
        h = F.relu(self.fc1(x.reshape(x.shape[0], -1)))
        return ModelOutput(embedding=self.mu(h), log_covariance=self.lv(h))


class Decoder(BaseDecoder):
    def __init__(self) -> None:
        super().__init__()
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def forward(self, z):
        return ModelOutput(reconstruction=torch.sigmoid(self.fc4(F.relu(self.fc3(z)))).reshape(-1, 1, 28, 28))


def main() -> None:
    weights, images, k, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(0)
    model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=20, reconstruction_loss="bce"),
                encoder=Encoder(), decoder=Decoder())
    missing, unexpected = model.load_state_dict(load_file(weights), strict=False)
    assert not unexpected and all(not m.startswith(("encoder.", "decoder.")) for m in missing), (missing, unexpected)
    x = torch.from_numpy(np.load(images)).float()
    model.eval()
    times, nll = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        with torch.no_grad():
            nll = -model.get_nll(x, n_samples=k, batch_size=min(k, 1000))
        times.append(time.perf_counter() - started)
    best = min(times)
    print(json.dumps({"n": len(x), "k": k, "seconds": times, "images_per_s": len(x) / best,
                      "images_per_s_median": len(x) / sorted(times)[len(times) // 2], "nll": nll}))

if __name__ == "__main__":
    main()
