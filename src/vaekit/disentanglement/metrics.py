"""Disentanglement metrics as disentanglement_lib (Locatello et al. 2019) defines them, on posterior
means. Each metric takes the factor sizes, ``codes_for(factors) -> codes`` (factor indices [N, F]
to representations [N, L]) and a numpy Generator, so it works for any ground-truth dataset.

Estimator choices, stated (defaults are disentanglement_lib's):
- BetaVAE score (Higgins et al. 2017): a point is the mean |z1 - z2| over ``batch_size`` pairs that
  share one uniformly chosen factor; sklearn LogisticRegression (lbfgs) on ``num_train`` points;
  the score is its accuracy on ``num_eval`` new points. Chance is 1 / number of factors.
- FactorVAE score (Kim & Mnih 2018): global variances from ``num_variance`` random points; latent
  dimensions with std < 0.05 are pruned; each vote is the argmin over active dimensions of the
  variance (ddof 1) of ``batch_size`` codes sharing one factor, divided by the global variance;
  majority-vote classifier from ``num_train`` votes, accuracy on ``num_eval``. Chance is 1 / factors.
- MIG (Chen et al. 2018): ``num_train`` points; each code dimension discretised into 20 equal-width
  bins over its range; mutual information (sklearn, nats) with each factor; the gap between the
  two most informative dimensions divided by the factor's entropy, averaged over factors.
- SAP (Kumar et al. 2018): per (dimension, factor) a LinearSVC (C = 0.01, balanced classes) on that
  one dimension, accuracy on ``num_eval`` points; mean over factors of the top-two gap. (With
  ``continuous=True``, the R^2 of a 1-D linear regression instead.) For discrete factors with many
  values (dSprites' 32 positions, 40 orientations) a linear classifier on one dimension cannot
  separate the classes, so even the true factors score far below 1: a property of the estimator.
- DCI (Eastwood & Williams 2018): per factor a GradientBoostingClassifier on all dimensions (default
  settings: 100 trees of depth 3); importances give disentanglement (1 - entropy of each dimension's
  importance over factors, weighted by its share of total importance) and completeness; the
  informativeness is the mean test accuracy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CodesFor = Callable[[np.ndarray], np.ndarray]


def sample_factors(sizes: tuple[int, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([rng.integers(0, k, n) for k in sizes], axis=1)


def _codes(sizes, codes_for: CodesFor, n: int, rng, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    factors = sample_factors(sizes, n, rng)
    codes = np.concatenate([codes_for(factors[i : i + chunk]) for i in range(0, n, chunk)])
    return codes.astype(np.float64), factors


def _grouped_batches(sizes, codes_for: CodesFor, points: int, batch_size: int, rng, pairs: bool, chunk_points=32):
    """Yield (factor index k, codes [P, batch, L] (and a second set for pairs)) in chunks of points."""
    done = 0
    while done < points:
        p = min(chunk_points, points - done)
        ks = rng.integers(0, len(sizes), p)
        f1 = sample_factors(sizes, p * batch_size, rng).reshape(p, batch_size, -1)
        f2 = sample_factors(sizes, p * batch_size, rng).reshape(p, batch_size, -1) if pairs else None
        for i, k in enumerate(ks):
            if pairs:
                f2[i, :, k] = f1[i, :, k]
            else:
                f1[i, :, k] = f1[i, 0, k]
        z1 = codes_for(f1.reshape(p * batch_size, -1)).reshape(p, batch_size, -1).astype(np.float64)
        z2 = codes_for(f2.reshape(p * batch_size, -1)).reshape(p, batch_size, -1).astype(np.float64) if pairs \
            else None
        yield ks, z1, z2
        done += p


def beta_vae_score(sizes, codes_for: CodesFor, rng, batch_size: int = 64, num_train: int = 10000,
                   num_eval: int = 5000) -> dict:
    from sklearn.linear_model import LogisticRegression

    def points(n):
        feats, labels = [], []
        for ks, z1, z2 in _grouped_batches(sizes, codes_for, n, batch_size, rng, pairs=True):
            feats.append(np.abs(z1 - z2).mean(axis=1))
            labels.append(ks)
        return np.concatenate(feats), np.concatenate(labels)

    x_train, y_train = points(num_train)
    x_eval, y_eval = points(num_eval)
    model = LogisticRegression(max_iter=2000)
    model.fit(x_train, y_train)
    return {"train_accuracy": float(model.score(x_train, y_train)), "eval_accuracy": float(model.score(x_eval, y_eval))}


def factor_vae_score(sizes, codes_for: CodesFor, rng, batch_size: int = 64, num_train: int = 10000,
                     num_eval: int = 5000, num_variance: int = 10000, prune_std: float = 0.05) -> dict:
    codes, _ = _codes(sizes, codes_for, num_variance, rng)
    global_var = codes.var(axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_std
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}

    def votes(n):
        table = np.zeros((int(active.sum()), len(sizes)), dtype=np.int64)
        for ks, z, _ in _grouped_batches(sizes, codes_for, n, batch_size, rng, pairs=False):
            local = z.var(axis=1, ddof=1)[:, active] / global_var[active]  # [P, active]
            for k, d in zip(ks, local.argmin(axis=1)):
                table[d, k] += 1
        return table

    train, evaluation = votes(num_train), votes(num_eval)
    classifier = train.argmax(axis=1)
    return {
        "train_accuracy": float(train.max(axis=1).sum() / train.sum()),
        "eval_accuracy": float(evaluation[np.arange(len(classifier)), classifier].sum() / evaluation.sum()),
        "num_active_dims": int(active.sum()),
    }


def _discretize(codes: np.ndarray, bins: int = 20) -> np.ndarray:
    out = np.zeros_like(codes, dtype=np.int64)
    for i in range(codes.shape[1]):
        edges = np.histogram(codes[:, i], bins)[1][:-1]
        out[:, i] = np.digitize(codes[:, i], edges)
    return out


def _mutual_info(discrete: np.ndarray, factors: np.ndarray) -> np.ndarray:
    from sklearn.metrics import mutual_info_score

    return np.array([[mutual_info_score(factors[:, j], discrete[:, i]) for j in range(factors.shape[1])]
                     for i in range(discrete.shape[1])])


def mig(sizes, codes_for: CodesFor, rng, num_train: int = 10000, bins: int = 20) -> dict:
    from sklearn.metrics import mutual_info_score

    codes, factors = _codes(sizes, codes_for, num_train, rng)
    m = _mutual_info(_discretize(codes, bins), factors)  # [L, F]
    entropy = np.array([mutual_info_score(factors[:, j], factors[:, j]) for j in range(factors.shape[1])])
    top = np.sort(m, axis=0)[::-1]
    second = top[1] if len(top) > 1 else np.zeros_like(top[0])
    gaps = (top[0] - second) / entropy
    return {"mig": float(gaps.mean()), "per_factor": gaps.tolist()}


def sap(sizes, codes_for: CodesFor, rng, num_train: int = 10000, num_eval: int = 5000,
        continuous: bool = False) -> dict:
    from sklearn.svm import LinearSVC

    codes, factors = _codes(sizes, codes_for, num_train, rng)
    codes_t, factors_t = _codes(sizes, codes_for, num_eval, rng)
    score = np.zeros((codes.shape[1], factors.shape[1]))
    for i in range(codes.shape[1]):
        if codes[:, i].std() == 0:
            continue  # a dead dimension predicts nothing: its score stays 0
        for j in range(factors.shape[1]):
            if continuous:
                cov = np.cov(codes[:, i], factors[:, j], ddof=1)
                score[i, j] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[1, 1] > 0 else 0.0
            else:
                svc = LinearSVC(C=0.01, class_weight="balanced")
                svc.fit(codes[:, i : i + 1], factors[:, j])
                score[i, j] = np.mean(svc.predict(codes_t[:, i : i + 1]) == factors_t[:, j])
    top = np.sort(score, axis=0)[::-1]
    second = top[1] if len(top) > 1 else np.zeros_like(top[0])
    return {"sap": float((top[0] - second).mean())}


def dci(sizes, codes_for: CodesFor, rng, num_train: int = 10000, num_eval: int = 5000) -> dict:
    from sklearn.ensemble import GradientBoostingClassifier

    codes, factors = _codes(sizes, codes_for, num_train, rng)
    codes_t, factors_t = _codes(sizes, codes_for, num_eval, rng)
    n_codes, n_factors = codes.shape[1], factors.shape[1]
    importance = np.zeros((n_codes, n_factors))
    train_acc, test_acc = [], []
    for j in range(n_factors):
        model = GradientBoostingClassifier(random_state=0)
        model.fit(codes, factors[:, j])
        importance[:, j] = np.abs(model.feature_importances_)
        train_acc.append(model.score(codes, factors[:, j]))
        test_acc.append(model.score(codes_t, factors_t[:, j]))
    return {"disentanglement": _dci_disentanglement(importance), "completeness": _dci_completeness(importance),
            "informativeness_train": float(np.mean(train_acc)), "informativeness_test": float(np.mean(test_acc))}


def _entropy_base(p: np.ndarray, base: int) -> np.ndarray:
    p = np.clip(p, 1e-12, None)
    return -(p * np.log(p)).sum(axis=-1) / np.log(base)


def _dci_disentanglement(importance: np.ndarray) -> float:
    per_code = 1.0 - _entropy_base(importance / (importance.sum(axis=1, keepdims=True) + 1e-11),
                                   importance.shape[1])
    if importance.sum() == 0:
        return 0.0
    weights = importance.sum(axis=1) / importance.sum()
    return float((per_code * weights).sum())


def _dci_completeness(importance: np.ndarray) -> float:
    per_factor = 1.0 - _entropy_base((importance / (importance.sum(axis=0, keepdims=True) + 1e-11)).T,
                                     importance.shape[0])
    if importance.sum() == 0:
        return 0.0
    weights = importance.sum(axis=0) / importance.sum()
    return float((per_factor * weights).sum())


METRICS = {"beta_vae": beta_vae_score, "factor_vae": factor_vae_score, "mig": mig, "sap": sap, "dci": dci}
