"""A small convolutional classifier per dataset, whose penultimate features are the space sample
quality is measured in (``vaekit.evaluation.sample_quality``).

FID's Inception weights come from the internet, so vaekit follows the MNIST literature's offline
convention instead (the KID paper's code used a LeNet trained on MNIST): a classifier trained on the
dataset itself. It is trained on first use (seeded, a few epochs of Adam on the training split, in
the dataset's own space: [0, 1], no padding, no binarisation) and cached as safetensors under
``$VAEKIT_CACHE/classifiers``, with its test accuracy in the file's metadata. Scores in its feature
space compare runs on the same data; they are not comparable with Inception-FID figures.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.config import replace, to_dict
from vaekit.errors import VaekitError
from vaekit.io import cache_dir, load_tensors, save_tensors

CLASSIFIER_FORMAT = 2
FEATURES = 128
EPOCHS = 6
BATCH = 128
MIN_ACCURACY = 0.9  # below this the classifier's features are a weak yardstick (warned)


class FeatureNet(nn.Module):
    """conv 32 / pool / conv 64 / pool / conv 128 / adaptive pool 4x4 / fc 128 (the features) / fc
    classes, BatchNorm after each convolution: a LeNet-sized network (7.5M multiply-adds per 28x28
    image) whose features are the ReLU of the 128-unit layer."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()

        def conv(a: int, b: int) -> list[nn.Module]:
            return [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(*conv(channels, 32), nn.MaxPool2d(2, ceil_mode=True), *conv(32, 64),
                                  nn.MaxPool2d(2, ceil_mode=True), *conv(64, 128), nn.AdaptiveAvgPool2d(4),
                                  nn.Flatten(), nn.Linear(128 * 16, FEATURES), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURES, num_classes))

    def features(self, x: Tensor) -> Tensor:  # [B, C, H, W] in [0, 1] -> [B, 128]
        return self.body(x * 2 - 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass
class Classifier:
    net: FeatureNet
    test_accuracy: float
    key: str

    @torch.no_grad()
    def features(self, x: Tensor, batch_size: int = 512) -> Tensor:
        self.net.eval()
        return torch.cat([self.net.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).double()

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 512) -> Tensor:
        self.net.eval()
        return torch.cat([self.net(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def canonical_data_config(data_cfg):
    """The dataset's own form of a run's data settings: no padding, binarisation, augmentation or limit,
    and no validation split (the classifier learns from all training images, whatever a run held out)."""
    return replace(data_cfg, "data settings", pad_to=None, binarize="none", augment=False, limit=None,
                   samples_per_epoch=None, eval_samples=None, val_fraction=0.0, perturb=0.0)


def classifier_key(data_cfg, shape: tuple[int, ...], num_classes: int, seed: int) -> str:
    # perturb is a training-batch setting, 0 in the canonical form: left out, so keys from before it existed hold
    settings = {k: v for k, v in to_dict(data_cfg).items() if k not in ("skip_bad", "perturb")}
    doc = json.dumps({"data": settings, "shape": list(shape), "classes": num_classes, "seed": seed,
                      "epochs": EPOCHS, "format": CLASSIFIER_FORMAT}, sort_keys=True)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(data_cfg.spec)).strip("-")[-40:] or "data"
    return f"{name}-{hashlib.sha256(doc.encode()).hexdigest()[:12]}"


def dataset_classifier(data_cfg, splits, seed: int = 0, log: Callable[[str], None] | None = None) -> Classifier:
    """The cached classifier of this dataset, trained now if there is none (``splits``: the dataset
    in its own space, from ``load_data(canonical_data_config(...))``)."""
    info = splits.info
    if info.kind != "image" or info.num_classes < 2:
        what = "tabular" if info.kind != "image" else "unlabelled"
        raise VaekitError(f"sample quality needs labelled image data; {info.source} is {what}")
    key = classifier_key(data_cfg, info.shape, info.num_classes, seed)
    path = cache_dir() / "classifiers" / f"{key}.safetensors"
    net = FeatureNet(info.shape[0], info.num_classes)
    say = log or (lambda m: None)
    if path.is_file():
        try:
            tensors, meta = load_tensors(path)
            net.load_state_dict(tensors)
            return Classifier(net.eval(), float(meta["test_accuracy"]), key)
        except (VaekitError, RuntimeError, KeyError, ValueError) as e:  # damaged or from another version
            say(f"{path}: cannot use the cached classifier ({str(e).splitlines()[0]}); training it again")
    say(f"training the sample-quality classifier for {info.source} once ({EPOCHS} epochs) -> {path}")
    started = time.perf_counter()
    with torch.random.fork_rng():  # seeded, and the caller's random stream is left as it was
        torch.manual_seed(seed)
        net = FeatureNet(info.shape[0], info.num_classes)
        accuracy = train_classifier(net, splits, seed)
    save_tensors(path, net.state_dict(), metadata={
        "test_accuracy": f"{accuracy:.6f}", "format": str(CLASSIFIER_FORMAT), "dataset": str(info.source),
        "shape": json.dumps(list(info.shape)), "epochs": str(EPOCHS), "seed": str(seed),
        "train_seconds": f"{time.perf_counter() - started:.1f}"})
    if accuracy < MIN_ACCURACY:
        say(f"warning: the sample-quality classifier reaches {accuracy:.1%} test accuracy on {info.source} (below "
            f"{MIN_ACCURACY:.0%}); its feature space may separate samples poorly")
    return Classifier(net.eval(), accuracy, key)


def train_classifier(net: FeatureNet, splits, seed: int) -> float:
    """Adam with a one-cycle learning rate (peak 2e-3) over EPOCHS, batch 128, on the training split;
    returns the test accuracy."""
    train, test = splits.train, splits.test
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps = EPOCHS * math.ceil(len(train) / BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    net.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(train), generator=gen)
        for start in range(0, len(train), BATCH):
            x, y = train.batch(perm[start : start + BATCH])
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    x, y = test.batch(torch.arange(len(test)))
    return float((Classifier(net, 0.0, "").predict(x) == y).float().mean())
