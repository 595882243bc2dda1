"""Sample quality, offline, in the feature space of a classifier trained on the dataset itself
(``vaekit.evaluation.classifier``):

- FCD, the Frechet distance between Gaussians fitted to the features of generated and real test
  images (Heusel et al. 2017's FID with the dataset's own classifier in place of Inception), with
  the matrix square root from ``scipy.linalg.sqrtm``;
- precision and recall of k-nearest-neighbour manifolds (Kynkaanniemi et al. 2019, k = 3): the
  share of generated samples inside the real manifold (each real feature's ball out to its k-th
  nearest real neighbour), and the share of real samples inside the generated one;
- for a conditional model, the classifier's accuracy on samples generated for each class.

Every result carries the real-vs-real floor (training images against test images, same n) and the
classifier's own test accuracy. Samples are compared in the dataset's own space: [0, 1] grey
levels (a Bernoulli model's decoder mean, not a binarised draw), padding cropped away.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

K_NEAREST = 3


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) for feature sets [N, D] and [M, D]."""
    from scipy import linalg

    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # a singular product (fewer samples than features) is handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s_a @ s_b)
        if not np.isfinite(covmean).all():  # offset both, as pytorch-fid does
            offset = np.eye(len(s_a)) * 1e-6
            covmean = linalg.sqrtm((s_a + offset) @ (s_b + offset))
    covmean = covmean.real
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))
    return max(value, 0.0)


def _kth_neighbour_radius(x: Tensor, k: int, chunk: int) -> Tensor:
    """Distance from each row of x to its k-th nearest other row, [N]."""
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the nearest is the point itself, at 0
    return torch.cat(out)


def _covered(points: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> Tensor:
    """Whether each point lies in some ball (centre, radius), [N] bool."""
    hits = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i : i + chunk], centres)
        hits.append((d <= radii[None]).any(1))
    return torch.cat(hits)


def precision_recall(real: Tensor, fake: Tensor, k: int = K_NEAREST, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of feature sets [N, D] and [M, D]."""
    real, fake = real.double(), fake.double()
    precision = _covered(fake, real, _kth_neighbour_radius(real, k, chunk), chunk).double().mean()
    recall = _covered(real, fake, _kth_neighbour_radius(fake, k, chunk), chunk).double().mean()
    return float(precision), float(recall)


@dataclass
class SampleQuality:
    run: str
    prior: str
    n: int
    fcd: float
    precision: float
    recall: float
    accuracy: float | None  # conditional models: the classifier's accuracy on class-conditional samples
    samples_per_second: float
    floor_fcd: float  # real training images against real test images
    floor_precision: float
    floor_recall: float
    classifier_accuracy: float
    steps: int | None = None
    sampler: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def dataset_images(data, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """n images (a seeded choice when the split has more) and their labels."""
    idx = torch.arange(len(data)) if len(data) <= n else torch.randperm(len(data), generator=torch.Generator()
                                                                         .manual_seed(seed))[:n].sort().values
    return data.batch(idx)


def sample_quality(run: str | Path, prior: str = "model", n: int = 10000, steps: int | None = None,
                   sampler: str | None = None, guidance: float | None = None, seed: int = 0, batch_size: int = 256,
                   device: str = "cpu", precision: str = "auto",
                   log: Callable[[str], None] | None = None) -> SampleQuality:
    """FCD, precision, recall (and class accuracy) of n samples from RUN against its test images.
    ``precision`` is what the model samples in; the classifier's features are always fp32."""
    from vaekit.data import load_data
    from vaekit.errors import VaekitError
    from vaekit.evaluation.classifier import canonical_data_config, dataset_classifier
    from vaekit.generation import describe_prior, is_diffusion, sampler_for
    from vaekit.run import open_run, read_run_config

    if n < 2:
        raise VaekitError(f"-n must be >= 2, got {n}")
    cfg, model = open_run(run, device, precision)
    vae_run = getattr(model.config, "vae", None)  # a latent-diffusion run: its data is its VAE run's
    data_cfg = read_run_config(vae_run) if vae_run else cfg
    if data_cfg.data_info.kind != "image" or data_cfg.data_info.num_classes < 2:
        what = "tabular" if data_cfg.data_info.kind != "image" else "unlabelled"
        raise VaekitError(f"sample-quality needs labelled image data; {run} was trained on {data_cfg.data.spec}, "
                          f"which is {what}")
    draw = sampler_for(run, model, getattr(model, "output_info", None) or cfg.data_info, prior, steps=steps,
                       sampler=sampler, guidance=guidance)  # refuses a bad --prior before any work
    canonical = canonical_data_config(data_cfg.data)
    splits = load_data(canonical)
    draw.shape = splits.info.shape
    classifier = dataset_classifier(canonical, splits, log=log)

    test_x, _ = dataset_images(splits.test, n, seed)
    train_x, _ = dataset_images(splits.train, n, seed + 1)
    real = classifier.features(test_x)
    floor = classifier.features(train_x)
    gen = torch.Generator(device=device).manual_seed(seed)
    started = time.perf_counter()
    images, labels = draw.draw(n, generator=gen, batch_size=batch_size)
    seconds = time.perf_counter() - started
    fake = classifier.features(images)
    accuracy = None
    if labels is not None:
        accuracy = float((classifier.predict(images) == labels).float().mean())
    floor_p, floor_r = precision_recall(real, floor)
    p, r = precision_recall(real, fake)
    return SampleQuality(
        run=str(run), prior=describe_prior(model, prior), n=n, fcd=frechet_distance(fake, real), precision=p,
        recall=r, accuracy=accuracy, samples_per_second=n / seconds, floor_fcd=frechet_distance(floor, real),
        floor_precision=floor_p, floor_recall=floor_r, classifier_accuracy=classifier.test_accuracy,
        steps=draw.options.get("steps", model.config.steps) if is_diffusion(model) else None,
        sampler=draw.options.get("sampler", model.config.sampler) if is_diffusion(model) else None,
    )
