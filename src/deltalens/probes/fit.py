"""Sparse and difference-in-means probes on latent tables (scikit-learn does every fit).

Features ``X`` ``[n, d]`` (dense array, tensor or scipy sparse), labels ``y ∈ {0, 1}``
(1 = high). Per latent ``i``, with classes ``H`` (y = 1) and ``L`` (y = 0):

* ``μ_H[i], μ_L[i]`` — class means; ``diff[i] = μ_H[i] − μ_L[i]``;
* ``diff_norm[i] = diff[i] / s[i]`` with the pooled standard deviation
  ``s² = ((n_H−1)·var_H + (n_L−1)·var_L) / (n_H + n_L − 2)`` (0 where ``s = 0``);
* ``direction[i] = sign(diff[i])`` — the latent predicts *high* (+1) or *low* (−1).

Methods (:func:`fit_probe`):

* ``"l1"`` — L1-regularised logistic regression (``liblinear``) on features scaled to unit
  variance (``StandardScaler(with_mean=False)``, which keeps sparse input sparse), along a
  regularisation path ``C ∈ Cs``; the chosen ``C`` has the best mean cross-validated AUROC
  (with ``k``: the largest ``C`` whose full-data fit keeps ≤ ``k`` non-zero coefficients).
  Importance ``= |coef|`` (standardised);
* ``"ksparse"`` — k-sparse probe (Gurnee et al. 2023): rank latents by ``|diff_norm|``, keep
  the top ``k``, fit logistic regression (L2, ``C``) on them (standardised). Inside
  cross-validation the ranking uses the training fold only. ``k=None`` sweeps
  ``ks = 1, 2, 4, …, 64`` and keeps the ``k`` with the best mean CV AUROC (the smallest on
  ties). Importance ``= |coef|`` of the kept latents (0 elsewhere);
* ``"diff_mean"`` — difference-in-means probe: the score of a sequence is the projection
  ``x · diff`` (on the top ``k`` latents by ``|diff_norm|`` when ``k`` is given, else all);
  accuracy thresholds it at the midpoint of the two training-class mean scores. Importance
  ``= |diff_norm|``.

Every probe reports stratified k-fold cross-validated AUROC and accuracy
(``StratifiedKFold(folds, shuffle=True, random_state=seed)``) as the mean over folds with the
fold standard error ``std(ddof=1)/√folds``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, ShapeError

METHODS = ("l1", "ksparse", "diff_mean")
DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def as_features(features: Any) -> Any:
    """A CSR matrix (sparse input) or a 2-D float array (dense input / tensors)."""
    import scipy.sparse as sp

    if sp.issparse(features):
        return sp.csr_matrix(features, dtype=np.float64)
    if hasattr(features, "detach"):
        features = features.detach().cpu().numpy()
    X = np.asarray(features, dtype=np.float64)
    if X.ndim != 2:
        raise ShapeError(f"features must be 2-D [n, d], got shape {X.shape}")
    return X


def class_stats(X: Any, y: np.ndarray) -> dict[str, np.ndarray]:
    """``mean_high``, ``mean_low``, ``diff``, ``diff_norm`` per column (see module docstring)."""
    import scipy.sparse as sp

    out = {}
    for name, m in (("high", y == 1), ("low", y == 0)):
        Xm = X[np.flatnonzero(m)]
        mu = np.asarray(Xm.mean(0)).ravel()
        sq = np.asarray(Xm.multiply(Xm).mean(0)).ravel() if sp.issparse(Xm) else (Xm * Xm).mean(0)
        n = int(m.sum())
        var = np.maximum(sq - mu * mu, 0.0) * (n / max(n - 1, 1))
        out[f"mean_{name}"], out[f"var_{name}"], out[f"n_{name}"] = mu, var, n
    n1, n0 = out["n_high"], out["n_low"]
    pooled = np.sqrt(((n1 - 1) * out["var_high"] + (n0 - 1) * out["var_low"]) / max(n1 + n0 - 2, 1))
    diff = out["mean_high"] - out["mean_low"]
    with np.errstate(divide="ignore", invalid="ignore"):
        dn = np.where(pooled > 0, diff / np.where(pooled > 0, pooled, 1.0), 0.0)
    return {
        "mean_high": out["mean_high"],
        "mean_low": out["mean_low"],
        "diff": diff,
        "diff_norm": dn,
        "pooled_std": pooled,
    }


def rank_by_diff(X: Any, y: np.ndarray, k: int | None = None) -> np.ndarray:
    """Columns by decreasing ``|diff_norm|`` (ties: lower index first); the top ``k``."""
    dn = np.abs(class_stats(X, y)["diff_norm"])
    order = np.lexsort((np.arange(len(dn)), -dn))
    return order if k is None else order[:k]


def splits(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The cross-validation folds every probe uses."""
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def logistic(penalty: str, C: float, seed: int, sparse: bool) -> Any:
    """The scikit-learn estimator of the logistic probes (a scaler + LogisticRegression)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if penalty == "l1":
        lr = LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", max_iter=1000, random_state=seed)
    else:
        lr = LogisticRegression(C=C, max_iter=1000)
    return make_pipeline(StandardScaler(with_mean=not sparse), lr)


def _take(X: Any, cols: np.ndarray) -> Any:
    import scipy.sparse as sp

    sub = X[:, cols]
    return sub.toarray() if sp.issparse(sub) else sub


def _scores(y: np.ndarray, score: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)), float(np.mean(pred == y))


def _mean_se(v: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0


@dataclass
class Probe:
    """A fitted probe: cross-validated scores, per-latent statistics and importance."""

    method: str
    k: int | None
    folds: int
    seed: int
    d: int
    n_high: int
    n_low: int
    importance: np.ndarray
    coef: np.ndarray
    intercept: float
    stats: dict[str, np.ndarray]
    fold_auroc: list[float]
    fold_accuracy: list[float]
    path: list[dict[str, Any]] = field(default_factory=list)
    C: float | None = None
    threshold: float = 0.0

    @property
    def cv_auroc(self) -> float:
        """Mean AUROC over the cross-validation folds."""
        return _mean_se(self.fold_auroc)[0]

    @property
    def cv_auroc_se(self) -> float:
        return _mean_se(self.fold_auroc)[1]

    @property
    def cv_accuracy(self) -> float:
        return _mean_se(self.fold_accuracy)[0]

    @property
    def cv_accuracy_se(self) -> float:
        return _mean_se(self.fold_accuracy)[1]

    @property
    def direction(self) -> np.ndarray:
        """+1 where the latent is higher in the high class, −1 where lower, 0 where equal."""
        return np.sign(self.stats["diff"]).astype(np.int64)

    def top_latents(self, k: int) -> list[int]:
        """The ``k`` most important latents, most important first (ties and latents of zero
        importance ordered by ``|diff_norm|``, then index)."""
        dn = np.abs(self.stats["diff_norm"])
        order = np.lexsort((np.arange(self.d), -dn, -self.importance))
        return [int(i) for i in order[:k]]

    def decision_function(self, features: Any) -> np.ndarray:
        """Scores of new rows (the full-data fit; higher = more likely high)."""
        X = as_features(features)
        return np.asarray(X @ self.coef).ravel() + self.intercept

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "k": self.k,
            "C": self.C,
            "cv_auroc": self.cv_auroc,
            "cv_auroc_se": self.cv_auroc_se,
            "cv_accuracy": self.cv_accuracy,
            "cv_accuracy_se": self.cv_accuracy_se,
            "n_high": self.n_high,
            "n_low": self.n_low,
            "d": self.d,
            "n_nonzero": int((self.importance > 0).sum()),
        }


def _fit_logistic(
    X: Any, y: np.ndarray, cols: np.ndarray | None, penalty: str, C: float, seed: int
) -> tuple[Any, Any]:
    import scipy.sparse as sp

    Xs = X if cols is None else _take(X, cols)
    est = logistic(penalty, C, seed, sp.issparse(Xs)).fit(Xs, y)
    return est, Xs


def _unscaled(est: Any, d: int, cols: np.ndarray | None) -> tuple[np.ndarray, float, np.ndarray]:
    """Coefficients in the original feature space, the intercept, and |standardised coef|."""
    scaler, lr = est[0], est[-1]
    c_std = lr.coef_.ravel()
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    c = c_std / scale
    b = float(lr.intercept_[0])
    if getattr(scaler, "mean_", None) is not None and scaler.with_mean:
        b -= float(np.dot(c, scaler.mean_))
    coef, imp = np.zeros(d), np.zeros(d)
    idx = np.arange(d) if cols is None else cols
    coef[idx], imp[idx] = c, np.abs(c_std)
    return coef, b, imp


def _cv_ksparse(
    X: Any, y: np.ndarray, folds: list, ks: Sequence[int], C: float, seed: int
) -> dict[int, tuple[list, list]]:
    res: dict[int, tuple[list, list]] = {k: ([], []) for k in ks}
    for tr, te in folds:
        order = rank_by_diff(X[tr], y[tr], max(ks))
        for k in ks:
            cols = order[:k]
            est, _ = _fit_logistic(X[tr], y[tr], cols, "l2", C, seed)
            Xt = _take(X[te], cols)
            a, acc = _scores(y[te], est.decision_function(Xt), est.predict(Xt))
            res[k][0].append(a)
            res[k][1].append(acc)
    return res


def _fit_ksparse(
    X: Any, y: np.ndarray, k: int | None, folds: list, C: float, seed: int, ks: Sequence[int]
) -> dict[str, Any]:
    d = X.shape[1]
    grid = [k] if k is not None else sorted({min(int(x), d) for x in ks})
    cv = _cv_ksparse(X, y, folds, grid, C, seed)
    path = [
        {
            "k": kk,
            "cv_auroc": _mean_se(cv[kk][0])[0],
            "cv_auroc_se": _mean_se(cv[kk][0])[1],
            "cv_accuracy": _mean_se(cv[kk][1])[0],
        }
        for kk in grid
    ]
    best = max(grid, key=lambda kk: (round(_mean_se(cv[kk][0])[0], 12), -kk))
    cols = rank_by_diff(X, y, best)
    est, _ = _fit_logistic(X, y, cols, "l2", C, seed)
    coef, b, imp = _unscaled(est, d, cols)
    return {
        "k": best,
        "coef": coef,
        "intercept": b,
        "importance": imp,
        "fold_auroc": cv[best][0],
        "fold_accuracy": cv[best][1],
        "path": path,
        "C": C,
    }


def _fit_l1(
    X: Any, y: np.ndarray, k: int | None, folds: list, Cs: Sequence[float], seed: int
) -> dict[str, Any]:
    d = X.shape[1]
    path, fits = [], {}
    for C in Cs:
        aucs, accs = [], []
        for tr, te in folds:
            est, _ = _fit_logistic(X[tr], y[tr], None, "l1", C, seed)
            a, acc = _scores(y[te], est.decision_function(X[te]), est.predict(X[te]))
            aucs.append(a)
            accs.append(acc)
        est, _ = _fit_logistic(X, y, None, "l1", C, seed)
        coef, b, imp = _unscaled(est, d, None)
        fits[C] = (coef, b, imp, aucs, accs)
        path.append(
            {
                "C": float(C),
                "n_nonzero": int((imp > 0).sum()),
                "cv_auroc": _mean_se(aucs)[0],
                "cv_auroc_se": _mean_se(aucs)[1],
                "cv_accuracy": _mean_se(accs)[0],
            }
        )
    if k is not None:
        ok = [p["C"] for p in path if p["n_nonzero"] <= k]
        best = max(ok) if ok else min(Cs)
    else:
        best = max(Cs, key=lambda C: (round(_mean_se(fits[C][3])[0], 12), -C))
    coef, b, imp, aucs, accs = fits[best]
    return {
        "k": k,
        "coef": coef,
        "intercept": b,
        "importance": imp,
        "fold_auroc": aucs,
        "fold_accuracy": accs,
        "path": path,
        "C": float(best),
    }


def _diff_scores(X: Any, y: np.ndarray, k: int | None) -> tuple[np.ndarray, float]:
    st = class_stats(X, y)
    w = st["diff"].copy()
    if k is not None:
        keep = np.zeros(len(w), dtype=bool)
        keep[rank_by_diff(X, y, k)] = True
        w[~keep] = 0.0
    s = np.asarray(X @ w).ravel()
    thr = 0.5 * (s[y == 1].mean() + s[y == 0].mean())
    return w, float(thr)


def _fit_diff_mean(X: Any, y: np.ndarray, k: int | None, folds: list) -> dict[str, Any]:
    aucs, accs = [], []
    for tr, te in folds:
        w, thr = _diff_scores(X[tr], y[tr], k)
        s = np.asarray(X[te] @ w).ravel()
        a, acc = _scores(y[te], s, (s > thr).astype(np.int64))
        aucs.append(a)
        accs.append(acc)
    w, thr = _diff_scores(X, y, k)
    imp = np.abs(class_stats(X, y)["diff_norm"])
    if k is not None:
        imp = np.where(w != 0, imp, 0.0)
    return {
        "k": k,
        "coef": w,
        "intercept": -thr,
        "importance": imp,
        "fold_auroc": aucs,
        "fold_accuracy": accs,
        "path": [],
        "C": None,
        "threshold": thr,
    }


def check_labels(y: Any, n: int, folds: int) -> np.ndarray:
    """``y`` as a 0/1 int array of length ``n`` with ≥ ``folds`` rows per class."""
    yy = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y).ravel()
    if len(yy) != n:
        raise ShapeError(f"{len(yy)} labels for {n} feature rows")
    if not np.isin(yy, (0, 1)).all():
        bad = yy[~np.isin(yy, (0, 1))][0]
        raise ConfigError(f"labels must be 0/1, got {bad!r}")
    yy = yy.astype(np.int64)
    n1, n0 = int(yy.sum()), int(len(yy) - yy.sum())
    if folds < 2:
        raise ConfigError(f"--folds must be ≥ 2, got {folds}")
    if min(n1, n0) < folds:
        raise ConfigError(
            f"--folds {folds} needs at least {folds} sequences per class; got {n1} high and {n0} low"
        )
    return yy


def fit_probe(
    features: Any,
    labels: Any,
    method: str = "l1",
    k: int | None = None,
    folds: int = 5,
    *,
    seed: int = 0,
    C: float = 1.0,
    Cs: Sequence[float] = DEFAULT_CS,
    ks: Sequence[int] = DEFAULT_KS,
) -> Probe:
    """Fit a probe of ``method`` (``"l1"``, ``"ksparse"``, ``"diff_mean"``; see the module
    docstring) on ``features`` ``[n, d]`` and 0/1 ``labels``, with ``folds``-fold stratified
    cross-validation. ``C`` is the inverse L2 strength of the k-sparse logistic regression,
    ``Cs`` the L1 path, ``ks`` the k-sparse sweep when ``k`` is None."""
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}; got {method!r}")
    X = as_features(features)
    y = check_labels(labels, X.shape[0], folds)
    if k is not None and k < 1:
        raise ConfigError(f"--k must be ≥ 1, got {k}")
    fl = splits(y, folds, seed)
    if method == "ksparse":
        r = _fit_ksparse(X, y, k, fl, C, seed, ks)
    elif method == "l1":
        r = _fit_l1(X, y, k, fl, Cs, seed)
    else:
        r = _fit_diff_mean(X, y, k, fl)
    st = class_stats(X, y)
    return Probe(
        method,
        r["k"],
        folds,
        seed,
        X.shape[1],
        int(y.sum()),
        int(len(y) - y.sum()),
        r["importance"],
        r["coef"],
        r["intercept"],
        st,
        list(r["fold_auroc"]),
        list(r["fold_accuracy"]),
        r["path"],
        r["C"],
        r.get("threshold", 0.0),
    )


def random_latents_control(
    features: Any,
    labels: Any,
    k: int,
    folds: int = 5,
    *,
    seed: int = 0,
    C: float = 1.0,
    pool: np.ndarray | None = None,
) -> Probe:
    """Control: logistic regression on ``k`` random columns (from ``pool``: e.g. the latents
    that fire at least once) instead of the best ones — what a probe of that size gets by chance."""
    X = as_features(features)
    y = check_labels(labels, X.shape[0], folds)
    rng = np.random.default_rng(seed)
    cand = np.arange(X.shape[1]) if pool is None else np.asarray(pool)
    cols = np.sort(rng.choice(cand, size=min(k, len(cand)), replace=False))
    aucs, accs = [], []
    for tr, te in splits(y, folds, seed):
        est, _ = _fit_logistic(X[tr], y[tr], cols, "l2", C, seed)
        Xt = _take(X[te], cols)
        a, acc = _scores(y[te], est.decision_function(Xt), est.predict(Xt))
        aucs.append(a)
        accs.append(acc)
    est, _ = _fit_logistic(X, y, cols, "l2", C, seed)
    coef, b, imp = _unscaled(est, X.shape[1], cols)
    return Probe(
        "random_latents",
        len(cols),
        folds,
        seed,
        X.shape[1],
        int(y.sum()),
        int(len(y) - y.sum()),
        imp,
        coef,
        b,
        class_stats(X, y),
        aucs,
        accs,
        [{"columns": cols.tolist()}],
        C,
    )
