"""k-sparse probes on a large sparse latent table vs the same probes on the dense array.

Workload: 10,000 sequences × 16,384 latents, ~1 % density (exponential activations), labels
driven by 8 planted latents (plus noise). ``fit_probe(method="ksparse")`` with 5-fold
stratified CV over k ∈ {1, 2, 4, 8, 16, 32, 64} (the ranking by normalised mean difference
recomputed on every training fold, then scikit-learn logistic regression on the kept
columns), then the full-data refit.

* Targets: ≤ 60 s wall and peak RSS ≤ 2 GB (``VmHWM`` after a reset through
  ``/proc/self/clear_refs``) with the CSR table.
* Baseline (same run): the identical probe on ``X.toarray()`` (float64) — the ratio is
  dense time / sparse time, and the dense peak RSS is printed next to the sparse one.
  ``--no-dense`` skips it (it needs ~3 GB).

    python benchmarks/probes.py [--n 10000] [--d 16384] [--no-dense]
"""

from __future__ import annotations

import argparse
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from _common import report  # noqa: F401  (puts src on the path)


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


def table(n: int, d: int, density: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = sp.random(
        n,
        d,
        density=density,
        format="csr",
        dtype=np.float32,
        random_state=seed,
        data_rvs=lambda m: rng.exponential(1.0, m).astype(np.float32),
    )
    planted = rng.choice(d, 8, replace=False)
    keep = np.ones(d, dtype=np.float32)
    keep[planted] = 0.0
    vals = (rng.random((n, 8)) < 0.05) * rng.exponential(2.0, (n, 8))
    r, c = np.nonzero(vals)
    P = sp.csr_matrix((vals[r, c].astype(np.float32), (r, planted[c])), shape=(n, d))
    X = (X @ sp.diags(keep) + P).tocsr()
    w = np.linspace(2.0, 0.5, 8)
    logit = np.asarray(X[:, planted].toarray() @ w).ravel() - 0.4 + rng.normal(0, 0.5, n)
    y = (logit > np.median(logit)).astype(np.int64)
    return X, y, planted


def run(X, y, ks):
    from deltalens.probes import fit_probe

    reset_peak()
    t = time.perf_counter()
    p = fit_probe(X, y, "ksparse", folds=5, ks=ks)
    return time.perf_counter() - t, peak_rss_mb(), p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=16_384)
    ap.add_argument("--density", type=float, default=0.01)
    ap.add_argument("--no-dense", action="store_true")
    a = ap.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    ks = (1, 2, 4, 8, 16, 32, 64)
    X, y, planted = table(a.n, a.d, a.density)
    base = peak_rss_mb()
    print(
        f"table: {X.shape[0]} × {X.shape[1]}, density {X.nnz / (X.shape[0] * X.shape[1]):.4f}, "
        f"{X.data.nbytes / 2**20:.0f} MB values; load average {os.getloadavg()[0]:.2f}; RSS before {base:.0f} MB"
    )
    t_sp, rss_sp, p = run(X, y, ks)
    found = len(set(p.top_latents(8)) & {int(c) for c in planted})
    print(
        f"sparse (CSR): {t_sp:.1f} s, peak RSS {rss_sp:.0f} MB; best k = {p.k}, CV AUROC {p.cv_auroc:.3f} ± "
        f"{p.cv_auroc_se:.3f}; planted latents in top 8: {found}/8"
    )
    print("  path: " + ", ".join(f"k={r['k']}: {r['cv_auroc']:.3f}" for r in p.path))
    ok = t_sp <= 60 and rss_sp <= 2048
    print(f"targets (≤ 60 s, ≤ 2048 MB): {'PASS' if ok else 'FAIL'}")
    if not a.no_dense:
        Xd = X.toarray().astype(np.float64)
        t_d, rss_d, pd_ = run(Xd, y, ks)
        print(
            f"dense (ndarray float64, {Xd.nbytes / 2**30:.2f} GB): {t_d:.1f} s, peak RSS {rss_d:.0f} MB; "
            f"same folds → same AUROC: {abs(pd_.cv_auroc - p.cv_auroc) < 1e-6}"
        )
        print(f"ratio dense / sparse time: {t_d / t_sp:.2f}x; memory {rss_d / rss_sp:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if not ok and not os.environ.get("DELTALENS_BENCH_NO_FAIL"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
