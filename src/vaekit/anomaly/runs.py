"""What `vaekit anomaly` does for a run: score data, calibrate the threshold on the run's own held-out
normal data, flag, and (when it is known which examples are anomalous) measure ROC-AUC and PR-AUC."""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaekit.anomaly.calibration import Calibration, calibrate, save_calibration
from vaekit.anomaly.scores import (
    ScoreSettings,
    applicable_scores,
    check_scores,
    combine,
    components,
    held_out_split,
    latent_prior,
    parse_scores,
    score_data,
    standardisation,
)
from vaekit.config import check, replace
from vaekit.errors import VaekitError


@dataclass
class AnomalyRequest:
    data: str | None = None  # what to score (any --data form); None: the run's test split
    scores: tuple[str, ...] = ("nll",)  # the first sets the threshold and the flags; ("all",): all that apply
    fpr: float = 0.05
    settings: ScoreSettings = field(default_factory=ScoreSettings)
    anomaly_classes: tuple[int, ...] | None = None  # labels of the anomalous classes in ``data``
    ood_data: str | None = None  # anomalies, scored together with the run's test split (normal)
    background: Path | None = None  # the ratio score's background run (trained with --perturb)
    out: Path | None = None  # the CSV (default RUN/anomaly_scores.csv)
    figures: bool = True  # ROC curve and score histogram beside the CSV, when labels are known
    device: str = "cpu"
    progress: bool = False


@dataclass
class AnomalyReport:
    calibration: Calibration
    n: int
    flagged: int
    csv: Path
    metrics: dict[str, dict[str, float]]  # score -> {"roc_auc", "pr_auc"} (when labels are known)
    figures: list[Path]
    calibration_path: Path

    def summary(self) -> dict:
        cal = self.calibration
        out = {"score": cal.score, "threshold": cal.threshold, "fpr": cal.fpr, "n": self.n, "flagged": self.flagged,
               "calibration": {"data": cal.data, "split": cal.split, "n": cal.n, "flagged": cal.flagged},
               "thresholds": cal.thresholds, "csv": str(self.csv)}
        if self.metrics:
            out["roc_auc"] = self.metrics[cal.score]["roc_auc"]
            out["pr_auc"] = self.metrics[cal.score]["pr_auc"]
            out["per_score"] = self.metrics
        return out


def anomaly_run(run: str | Path, cfg, model, req: AnomalyRequest) -> AnomalyReport:
    """Everything is checked and computed before anything is written: a bad input writes nothing."""
    from vaekit.data import load_data, load_examples
    from vaekit.run import check_output

    run = Path(run)
    names = parse_scores(req.scores)
    every = list(req.scores) == ["all"] or req.scores == "all"
    check(0 < req.fpr < 1, f"--fpr must be in (0, 1), got {req.fpr}")
    background = open_background(req.background, run, req.device)
    if background is not None and not every and "ratio" not in components(names):
        raise VaekitError("--background is the ratio score's background model; add ratio to --score")
    if not every:
        check_scores(model, names, background)
    if req.anomaly_classes is not None and req.ood_data is not None:
        raise VaekitError("--anomaly-classes and --ood-data are two ways to say which examples are anomalous; "
                          "give one")
    out = Path(req.out) if req.out is not None else run / "anomaly_scores.csv"
    figures = [_figure_path(out, "roc"), _figure_path(out, "hist")]
    for path in (out, *figures):
        check_output(run, path)
    if out.suffix.lower() != ".csv":
        raise VaekitError(f"--out {out}: the scores go to a .csv file")

    # what to score, and which of it is anomalous (when known)
    splits = load_data(cfg.data, saved=cfg.data_info) if cfg.data.spec else None
    parts: list[tuple[str, object, list[str] | None]] = []  # (source, data, paths)
    if req.ood_data is not None:
        if splits is None:
            raise VaekitError("--ood-data scores the run's test split as the normal data; this run records no data")
        ood = load_examples(replace(cfg.data, spec=req.ood_data, test_spec=None), cfg.data_info)
        normal = load_examples(cfg.data, cfg.data_info, "test")
        parts = [("test", normal.data, normal.paths), ("ood", ood.data, ood.paths)]
    elif req.data is not None:
        ex = load_examples(replace(cfg.data, spec=req.data, test_spec=None), cfg.data_info)
        parts = [("data", ex.data, ex.paths)]
    else:
        if splits is None:
            raise VaekitError("this run records no data (its weights were imported); pass --data")
        ex = load_examples(cfg.data, cfg.data_info, "test")
        parts = [("test", ex.data, ex.paths)]
    labels = _labels(parts, req)

    # calibration on the run's own held-out normal data
    if splits is None:
        raise VaekitError("this run records no data to calibrate on (its weights were imported)")
    cal_split, cal_data = held_out_split(splits)
    if every:  # --score all: those this model gives for this data
        names = applicable_scores(model, cal_data.batch(torch.arange(min(256, len(cal_data))))[0], background)
    prior, settings = None, req.settings
    if "latent" in components(names):
        prior = latent_prior(model, run=run, components=req.settings.components, seed=req.settings.seed,
                             codes=req.settings.codes)
        # the calibration records the number chosen, so that a later score refits the same mixture
        settings = dataclasses.replace(settings, components=prior.components)
    cal_parts = score_data(model, cal_data, components(names), settings, prior, req.progress, "calibrate",
                           background)
    # combined scores: their parts standardised on the same held-out data ({} when none is asked for, so that
    # settings passed in from an older calibration never carry a stale standardisation into this one)
    settings = dataclasses.replace(settings, standardise=standardisation(cal_parts, names))
    cal_scores = combine(cal_parts, names, settings)
    calibration = calibrate(cal_scores, names[0], req.fpr, settings, cfg.data.spec, cal_split,
                            "" if background is None else str(Path(req.background).resolve()))

    scores = {n: [] for n in names}
    for _, data, _ in parts:
        for n, s in score_data(model, data, names, settings, prior, req.progress, "score", background).items():
            scores[n].append(s)
    scores = {n: torch.cat(v) for n, v in scores.items()}
    flags = scores[names[0]] > calibration.threshold
    metrics = _metrics(scores, labels) if labels is not None else {}

    # write: the CSV, the figures, the calibration
    _write_csv(out, parts, scores, flags, labels)
    written = []
    if labels is not None and req.figures:
        written = _write_figures(figures, scores, labels, calibration)
    path = save_calibration(run, calibration)
    return AnomalyReport(calibration, len(flags), int(flags.sum()), out, metrics, written, path)


def open_background(path: str | Path | None, run: Path, device: str):
    """The ratio score's background model from its run directory (None: none given), on ``device``."""
    if path is None:
        return None
    from vaekit.run import load

    path = Path(path)
    if not (path / "config.json").is_file():
        raise VaekitError(f"--background {path}: not a vaekit run directory (no config.json)")
    if path.resolve() == Path(run).resolve():
        raise VaekitError(f"--background {path} is the run being scored: the ratio would be 0 for every example")
    return load(path, device=device, precision="fp32")  # checked against the run by check_scores


def _labels(parts, req: AnomalyRequest) -> np.ndarray | None:
    """1 for the examples known to be anomalous, 0 for the normal ones; None when unknown."""
    if req.ood_data is not None:
        return np.concatenate([np.full(len(d), int(src == "ood")) for src, d, _ in parts])
    if req.anomaly_classes is None:
        return None
    (_, data, _), = parts
    y = getattr(data, "y", None)
    if y is None:
        raise VaekitError(f"--anomaly-classes needs labelled data; {req.data or 'the test split'} has no labels")
    y = np.asarray(y.numpy() if isinstance(y, Tensor) else y)
    present = sorted(set(y.tolist()))
    missing = [c for c in req.anomaly_classes if c not in present]
    if missing:
        raise VaekitError(f"--anomaly-classes: class(es) {', '.join(map(str, missing))} not in the data "
                          f"(its classes: {_ranges(present)})")
    labels = np.isin(y, list(req.anomaly_classes)).astype(int)
    if labels.all():
        raise VaekitError("--anomaly-classes names every class of the data; no normal examples are left")
    return labels


def _ranges(values: list[int]) -> str:
    if values and values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values))


def _metrics(scores: dict[str, Tensor], labels: np.ndarray) -> dict[str, dict[str, float]]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    if labels.min() == labels.max():
        return {}
    return {n: {"roc_auc": float(roc_auc_score(labels, s.numpy())),
                "pr_auc": float(average_precision_score(labels, s.numpy()))} for n, s in scores.items()}


def _figure_path(out: Path, kind: str) -> Path:
    return out.with_name(f"{out.stem}_{kind}.png")


def _write_csv(out: Path, parts, scores: dict[str, Tensor], flags: Tensor, labels) -> None:
    from vaekit.io import write_text

    sources = [src for src, d, _ in parts for _ in range(len(d))]
    index = [i for _, d, _ in parts for i in range(len(d))]
    paths = None
    if any(p is not None for _, _, p in parts):
        paths = [p for _, d, ps in parts for p in (ps if ps is not None else [""] * len(d))]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["index"] + (["source"] if len(parts) > 1 else []) + (["path"] if paths else [])
    head += (["anomaly"] if labels is not None else []) + list(scores) + ["flagged"]
    w.writerow(head)
    columns = [s.tolist() for s in scores.values()]
    for i in range(len(index)):
        row = [index[i]] + ([sources[i]] if len(parts) > 1 else []) + ([paths[i]] if paths else [])
        row += ([int(labels[i])] if labels is not None else []) + [f"{c[i]:.6f}" for c in columns]
        w.writerow([*row, int(flags[i])])
    write_text(out, buf.getvalue())


def _write_figures(paths: list[Path], scores: dict[str, Tensor], labels: np.ndarray, cal: Calibration) -> list[Path]:
    from sklearn.metrics import roc_curve

    from vaekit.viz.grid import figure_to_image, pyplot, save_png

    if labels.min() == labels.max():
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(labels, s.numpy())
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    ax.axvline(cal.fpr, color="0.5", lw=1, ls=":", label=f"calibrated FPR {cal.fpr:g}")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    save_png(figure_to_image(fig), paths[0])
    s = scores[cal.score].numpy()
    fig, ax = plt.subplots(figsize=(6, 4))
    finite = np.isfinite(s)
    bins = np.histogram_bin_edges(s[finite], bins=50) if finite.any() else 10
    ax.hist(s[(labels == 0) & finite], bins=bins, alpha=0.6, label="normal", density=True)
    ax.hist(s[(labels == 1) & finite], bins=bins, alpha=0.6, label="anomalous", density=True)
    ax.axvline(cal.threshold, color="k", lw=1, ls="--", label=f"threshold (FPR {cal.fpr:g})")
    ax.set(xlabel=f"{cal.score} score (higher = more anomalous)", ylabel="density")
    ax.legend()
    save_png(figure_to_image(fig), paths[1])
    return paths
