"""Metrics tables joined with latent tables, and high/low labels.

A **metrics table** is Parquet, CSV or JSONL with a key column — the sequence id (``id``,
matching :attr:`LatentTable.seq_ids`) or the text itself (``text``: matched against the
sequence's text, the response of a generation) — and any number of numeric metric columns
(pLDDT, alignment, activity, judge scores, a dpo-series ``score``…).

:func:`join_metrics` aligns metric values with the table's rows and **reports** (never
silently drops) metric rows whose key matches no sequence, sequences without a metric row,
sequences with no selected position, NaN values per column and constant columns.

:func:`make_labels` turns one metric into 0/1 labels: by quantiles (``high=0.8, low=0.2``:
label 1 where ``m ≥ q_0.8``, label 0 where ``m ≤ q_0.2``, the middle dropped) or by
thresholds (``mode="threshold"``: 1 where ``m ≥ high``, 0 where ``m ≤ low``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataFormatError

KEY_KINDS = ("id", "text")


def read_table_file(path: str | Path) -> Any:
    """A pandas DataFrame from ``.parquet``, ``.csv`` or ``.jsonl`` (errors name the file)."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"{p}: metrics file not found")
    suf = p.suffix.lower()
    try:
        if suf == ".parquet":
            return pd.read_parquet(p)
        if suf == ".csv":
            return pd.read_csv(p)
        if suf in (".jsonl", ".json"):
            from ..data.jsonl import read_jsonl

            return pd.DataFrame(read_jsonl(p))
    except DataFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types for a broken file
        raise DataFormatError(
            f"{p}: cannot read as {suf.lstrip('.')} ({type(exc).__name__}: {exc})"
        ) from None
    raise DataFormatError(f"{p}: unknown metrics format '{suf}' (use .parquet, .csv or .jsonl)")


@dataclass
class MetricsJoin:
    """Metric values aligned with a latent table: ``values[name]`` is ``[n_table]`` float
    (NaN where the sequence has no value), plus the report of what did not match."""

    values: dict[str, np.ndarray]
    key: str
    source: str
    unmatched_keys: list[str] = field(default_factory=list)
    missing_sequences: list[str] = field(default_factory=list)
    empty_sequences: list[str] = field(default_factory=list)
    nan_counts: dict[str, int] = field(default_factory=dict)
    constant: list[str] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "key": self.key,
            "metrics": list(self.values),
            "unmatched_keys": len(self.unmatched_keys),
            "unmatched_examples": self.unmatched_keys[:5],
            "sequences_without_metrics": len(self.missing_sequences),
            "missing_examples": self.missing_sequences[:5],
            "empty_sequences": len(self.empty_sequences),
            "nan": self.nan_counts,
            "constant": self.constant,
        }


def join_metrics(
    table: Any, metrics: Any, key: str = "id", columns: Sequence[str] | None = None, source: str | None = None
) -> MetricsJoin:
    """Align ``metrics`` (a path or a DataFrame) with ``table``'s sequences by ``key``.

    ``key`` is the name of the key column; its values are compared with the table's sequence
    ids, or with the sequence texts when the column is ``text`` (or ``response``). ``columns``
    default to every numeric column other than the key."""
    import pandas as pd

    src = source or (str(metrics) if isinstance(metrics, (str, Path)) else "<metrics table>")
    df = read_table_file(metrics) if isinstance(metrics, (str, Path)) else pd.DataFrame(metrics)
    if key not in df.columns:
        raise DataFormatError(
            f"{src}: key column '{key}' not found (columns: {', '.join(map(str, df.columns))})"
        )
    by_text = key in ("text", "response", "sequence")
    if columns:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataFormatError(
                f"{src}: metric column '{missing[0]}' not found (columns: {', '.join(map(str, df.columns))})"
            )
        cols = list(columns)
    else:
        cols = [
            c
            for c in df.columns
            if c != key and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
        ]
        if not cols:
            other = [c for c in df.columns if c != key]
            eg = (
                f" (non-numeric: {', '.join(map(str, other))}; e.g. {df[other[0]].iloc[0]!r})"
                if other and len(df)
                else ""
            )
            raise DataFormatError(f"{src}: no numeric metric column besides the key '{key}'{eg}")
    for c in cols:
        if not pd.api.types.is_numeric_dtype(df[c]):
            bad = next((v for v in df[c] if not _is_number(v)), None)
            raise DataFormatError(f"{src}: metric column '{c}' is not numeric (value {bad!r})")
    keys = df[key].astype(str).tolist()
    dup = pd.Series(keys).duplicated()
    if dup.any():
        raise DataFormatError(
            f"{src}: key {keys[int(np.argmax(dup.to_numpy()))]!r} occurs more than once in column '{key}'"
        )
    targets = table.texts if by_text else table.seq_ids
    index = {k: i for i, k in enumerate(targets)}
    rows = np.array([index.get(k, -1) for k in keys])
    unmatched = [k for k, r in zip(keys, rows) if r < 0]
    if len(unmatched) == len(keys):
        raise DataFormatError(
            f"{src}: no key in column '{key}' matches a sequence "
            f"(e.g. {keys[0]!r:.60} vs sequence {('text ' if by_text else 'id ')}{targets[0] if targets else None!r:.60})"
        )
    values = {}
    hit = rows >= 0
    for c in cols:
        v = np.full(table.n, np.nan)
        v[rows[hit]] = df[c].to_numpy(dtype=np.float64)[hit]
        values[str(c)] = v
    matched = np.zeros(table.n, dtype=bool)
    matched[rows[hit]] = True
    empty = [table.seq_ids[i] for i in np.flatnonzero(np.asarray(table.n_tokens) == 0)]
    for c in values:
        values[c][np.asarray(table.n_tokens) == 0] = np.nan
    nan = {c: int(np.isnan(v[matched]).sum()) for c, v in values.items()}
    const = [c for c, v in values.items() if np.nanstd(v) == 0 or np.isnan(v).all()]
    return MetricsJoin(
        values, key, src, unmatched, [table.seq_ids[i] for i in np.flatnonzero(~matched)], empty, nan, const
    )


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


@dataclass
class Labels:
    """0/1 labels of the kept rows (``index`` into the table) and the cut points."""

    index: np.ndarray
    y: np.ndarray
    values: np.ndarray
    low_cut: float
    high_cut: float
    metric: str

    @property
    def counts(self) -> dict[str, int]:
        return {"high": int(self.y.sum()), "low": int((1 - self.y).sum())}


def make_labels(
    values: np.ndarray,
    metric: str = "metric",
    *,
    high: float = 0.8,
    low: float = 0.2,
    mode: str = "quantile",
    source: str = "",
    min_per_class: int = 2,
) -> Labels:
    """High (1) / low (0) labels of ``values`` (NaNs dropped); see the module docstring."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.flatnonzero(~np.isnan(v))
    at = f"{source}: " if source else ""
    if len(ok) == 0:
        raise DataFormatError(f"{at}metric '{metric}' has no value for any sequence")
    vv = v[ok]
    if np.all(vv == vv[0]):
        raise DataFormatError(
            f"{at}metric '{metric}' is constant ({vv[0]:g} for all {len(vv)} sequences); nothing to predict"
        )
    if mode == "quantile":
        if not 0 <= low <= high <= 1:
            raise ConfigError(
                f"--low/--high quantiles must satisfy 0 ≤ low ≤ high ≤ 1, got {low:g}, {high:g}"
            )
        lo_cut, hi_cut = float(np.quantile(vv, low)), float(np.quantile(vv, high))
    elif mode == "threshold":
        if low > high:
            raise ConfigError(f"--low threshold {low:g} is above --high {high:g}")
        lo_cut, hi_cut = float(low), float(high)
    else:
        raise ConfigError(f"--label-mode must be one of quantile, threshold; got {mode!r}")
    hi_m, lo_m = vv >= hi_cut, vv <= lo_cut
    if lo_cut == hi_cut:  # ties at the cut: the cut value goes to neither side unless strictly separated
        hi_m, lo_m = vv > hi_cut, vv < lo_cut
        if not hi_m.any():
            hi_m = vv >= hi_cut
        if not lo_m.any():
            lo_m = vv <= lo_cut
    both = hi_m & lo_m
    hi_m &= ~both
    lo_m &= ~both
    keep = hi_m | lo_m
    y = hi_m[keep].astype(np.int64)
    n_hi, n_lo = int(y.sum()), int((1 - y).sum())
    if min(n_hi, n_lo) < min_per_class:
        cls = "high" if n_hi < n_lo else "low"
        raise DataFormatError(
            f"{at}metric '{metric}' gives a single class after labelling ({n_hi} high ≥ {hi_cut:g}, {n_lo} low ≤ {lo_cut:g}); "
            f"need ≥ {min_per_class} '{cls}' sequences — change --high/--low"
        )
    return Labels(ok[keep], y, vv[keep], lo_cut, hi_cut, metric)
