"""Comparisons of latent importance between probes.

An *entry* is one probe's importance vector over index-aligned latents (``importance.csv`` of a
``probes fit`` output, one metric and method), named by its fit (``M4D4``, ``M0D4``…). For every
pair of entries ``a, b``:

* ``jaccard@k = |top_k(a) ∩ top_k(b)| / |top_k(a) ∪ top_k(b)|``;
* ``spearman`` — rank correlation of the two importance vectors over the union of each side's
  top ``rank_top`` latents;
* ``axis`` — ``inter-metric`` (same fit, different metrics), ``intra-stage`` (names ``M<i>D<j>``
  with the same data ``D<j>``: M4D4 vs M0D4), ``inter-stage`` (different ``D``: M4D4 vs M5D5),
  else ``other``.

For inter-metric pairs with latent properties (``points.csv`` of ``probes correlate`` at the
lowest threshold), ``properties`` compares the latents important only for ``a`` with those
important only for ``b`` (mean of each property, Mann–Whitney U p-value): which properties
separate e.g. pLDDT latents from activity latents. Along an iterative series (entries in
order, same metric), ``series`` gives Spearman of ``Δimportance`` vs ``Δproperty`` between
consecutive entries (``dec_cos_base``, ``prevalence``, …).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataFormatError, ShapeError

_RUN = re.compile(r"M(\d+)D(\d+)")


@dataclass
class Entry:
    name: str
    metric: str
    method: str
    importance: np.ndarray
    properties: Any = None  # DataFrame: latent + property columns (lowest threshold), or None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.metric}"

    def top(self, k: int) -> list[int]:
        order = np.lexsort((np.arange(len(self.importance)), -self.importance))
        return [int(i) for i in order[:k] if self.importance[i] > 0]


def axis_of(a: Entry, b: Entry) -> str:
    if a.name == b.name and a.metric != b.metric:
        return "inter-metric"
    ra, rb = _RUN.search(a.name), _RUN.search(b.name)
    if ra and rb and a.metric == b.metric:
        return "intra-stage" if ra.group(2) == rb.group(2) else "inter-stage"
    if a.metric != b.metric:
        return "inter-metric"
    return "other"


def load_entries(probe_dirs: Sequence[str | Path], method: str, metrics: Sequence[str] = ()) -> list[Entry]:
    """One entry per (probe directory, metric) for ``method``."""
    from .stages import POINTS_CSV, ProbeFitResult

    out = []
    for d in probe_dirs:
        fit = ProbeFitResult.load(d)
        imp = fit.importance
        if imp is None:
            raise DataFormatError(f"not a valid {fit.KIND}: {d} (no importance.csv)")
        sub = imp[imp["method"] == method]
        if sub.empty:
            raise ConfigError(
                f"--method: {d} has no '{method}' probe (has {', '.join(sorted(set(imp['method'])))})"
            )
        pts = Path(d) / POINTS_CSV
        props = None
        if pts.is_file():
            import pandas as pd

            p = pd.read_csv(pts)
            props = p[p["threshold"] == p["threshold"].min()]
        for m in metrics or list(dict.fromkeys(sub["metric"].astype(str))):
            rows = sub[sub["metric"].astype(str) == m].sort_values("latent")
            if rows.empty:
                continue
            pm = None if props is None else props[props["metric"].astype(str) == m]
            out.append(Entry(fit.name, m, method, rows["importance"].to_numpy(np.float64), pm))
    return out


def pair_row(a: Entry, b: Entry, ks: Sequence[int], rank_top: int) -> dict[str, Any]:
    from scipy.stats import spearmanr

    if len(a.importance) != len(b.importance):
        raise ShapeError(
            f"{a.label} has {len(a.importance)} latents but {b.label} has {len(b.importance)}; "
            "latents must be index-aligned to compare"
        )
    row: dict[str, Any] = {"a": a.label, "b": b.label, "axis": axis_of(a, b)}
    for k in ks:
        ta, tb = set(a.top(k)), set(b.top(k))
        row[f"jaccard@{k}"] = len(ta & tb) / len(ta | tb) if ta | tb else None
    union = sorted(set(a.top(rank_top)) | set(b.top(rank_top)))
    if len(union) >= 3:
        r = spearmanr(a.importance[union], b.importance[union])
        row["spearman"], row["spearman_p"] = float(r.statistic), float(r.pvalue)
    else:
        row["spearman"], row["spearman_p"] = None, None
    row["n_union"] = len(union)
    row["shared_top"] = sorted(set(a.top(max(ks))) & set(b.top(max(ks))))
    return row


def property_separation(a: Entry, b: Entry, k: int) -> list[dict[str, Any]]:
    """Properties of latents important only for ``a`` vs only for ``b`` (top ``k``)."""
    from scipy.stats import mannwhitneyu

    if a.properties is None or b.properties is None:
        return []
    only_a = set(a.top(k)) - set(b.top(k))
    only_b = set(b.top(k)) - set(a.top(k))
    pa = a.properties[a.properties["latent"].isin(only_a)]
    pb = b.properties[b.properties["latent"].isin(only_b)]
    out = []
    skip = {"metric", "latent", "threshold", "importance"}
    for col in [c for c in a.properties.columns if c not in skip and c in b.properties.columns]:
        va, vb = pa[col].to_numpy(float), pb[col].to_numpy(float)
        pv = float(mannwhitneyu(va, vb).pvalue) if len(va) >= 2 and len(vb) >= 2 else None
        out.append(
            {
                "a": a.label,
                "b": b.label,
                "property": col,
                "mean_a_only": float(va.mean()) if len(va) else None,
                "mean_b_only": float(vb.mean()) if len(vb) else None,
                "n_a_only": len(va),
                "n_b_only": len(vb),
                "mannwhitney_p": pv,
            }
        )
    return out


def series_changes(entries: Sequence[Entry], k: int) -> list[dict[str, Any]]:
    """Δimportance vs Δproperty between consecutive entries of one metric (index-aligned)."""
    from scipy.stats import spearmanr

    out = []
    for a, b in zip(entries, entries[1:]):
        if a.metric != b.metric or a.properties is None or b.properties is None:
            continue
        lat = sorted(set(a.properties["latent"]) & set(b.properties["latent"]))
        if len(lat) < 3:
            continue
        d_imp = b.importance[lat] - a.importance[lat]
        pa = a.properties.set_index("latent").loc[lat]
        pb = b.properties.set_index("latent").loc[lat]
        for col in [
            c for c in pa.columns if c not in ("metric", "threshold", "importance") and c in pb.columns
        ]:
            dv = pb[col].to_numpy(float) - pa[col].to_numpy(float)
            ok = np.isfinite(dv)
            rho = None
            if ok.sum() >= 3 and np.ptp(dv[ok]) > 0 and np.ptp(d_imp[ok]) > 0:
                rho = float(spearmanr(d_imp[ok], dv[ok]).statistic)
            out.append(
                {
                    "from": a.label,
                    "to": b.label,
                    "property": col,
                    "spearman_dimportance_dproperty": rho,
                    "n_latents": int(ok.sum()),
                }
            )
    return out


def run_compare(
    probe_dirs: Sequence[str | Path],
    config: Any = None,
    *,
    metrics: Sequence[str] = (),
    out: str | Path | None = None,
) -> Any:
    """Compare every pair of entries of ``probe_dirs`` (see the module docstring); entries in
    the given order also form the series. Saves ``compare.json`` + ``compare.csv`` to ``out``."""
    from .stages import CompareConfig, CompareResult

    cfg = config or CompareConfig()
    entries = load_entries(probe_dirs, cfg.method, metrics)
    if len(entries) < 2:
        raise ConfigError(
            f"need at least two probes to compare; {', '.join(map(str, probe_dirs))} give {len(entries)}"
        )
    rows, props = [], []
    for i, a in enumerate(entries):
        for b in entries[i + 1 :]:
            rows.append(pair_row(a, b, cfg.ks, cfg.rank_top))
            if rows[-1]["axis"] == "inter-metric":
                props += property_separation(a, b, max(cfg.ks))
    series = []
    for m in dict.fromkeys(e.metric for e in entries):
        series += series_changes([e for e in entries if e.metric == m], max(cfg.ks))
    res = CompareResult(rows, series, props, {**cfg.to_dict(), "probes": [str(p) for p in probe_dirs]})
    if out is not None:
        res.save(out)
    return res
