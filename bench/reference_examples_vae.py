"""A faithful reimplementation of pytorch/examples' ``vae/main.py`` for the side-by-side benchmark.

As a user without torchvision runs it: a Dataset that turns each uint8 image into a tensor
through Pillow (what ``transforms.ToTensor`` does), a DataLoader (batch 128, shuffled), the
784-400-20 network with ReLU and a sigmoid output, the summed binary cross-entropy plus the KL,
Adam 1e-3, and the test loss computed after every epoch. Prints one JSON line per epoch.

Run: python bench/reference_examples_vae.py --epochs 10 [--fashion-dir DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


class ImageDataset(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = Image.fromarray(self.images[i], mode="L")
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).float().div(255).unsqueeze(0)
        return tensor, 0


class VAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fashion-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--limit", type=int, default=None, help="only the first N training images (a quick check)")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    train = ImageDataset(read_idx(args.fashion_dir / "train-images-idx3-ubyte.gz")[: args.limit])
    test = ImageDataset(read_idx(args.fashion_dir / "t10k-images-idx3-ubyte.gz"))
    train_loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test, batch_size=128, shuffle=False)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(1, args.epochs + 1):
        model.train()
        started = time.perf_counter()
        train_loss = 0.0
        for data, _ in train_loader:
            optimizer.zero_grad()
            recon, mu, logvar = model(data)
            loss = loss_function(recon, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        seconds = time.perf_counter() - started
        model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for data, _ in test_loader:
                recon, mu, logvar = model(data)
                test_loss += loss_function(recon, data, mu, logvar).item()
        print(json.dumps({"epoch": epoch, "seconds": seconds, "train_loss": train_loss / len(train),
                          "test_loss": test_loss / len(test)}), flush=True)


if __name__ == "__main__":
    main()
