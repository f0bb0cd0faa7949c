"""``deltalens info`` for probe artifacts (registered on import). The stage results
(``probe.json``, ``annotate.json``, ``correlate.json``, ``compare.json``) are registered
results; this adds the latent table directory and the probe CSVs."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..info import register_describer

_CSV_KINDS = {
    ("latent", "metric", "method", "importance", "rank"): "probe importance CSV",
    (
        "latent",
        "metric",
        "direction",
        "round",
        "importance",
        "auroc_before",
        "auroc_after",
    ): "probe annotation CSV",
    ("metric", "threshold", "property", "spearman"): "probe correlations CSV",
}


@register_describer
def _latent_table(path: Path) -> dict[str, Any] | None:
    from .table import TABLE_JSON, LatentTable

    d = path.parent if path.is_file() and path.name == TABLE_JSON else path
    if not (d.is_dir() and (d / TABLE_JSON).is_file()):
        return None
    t = LatentTable.load(d)
    return {"kind": LatentTable.KIND, "path": str(d), **t.summary()}


@register_describer
def _probe_csv(path: Path) -> dict[str, Any] | None:
    if path.suffix != ".csv" or not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = tuple(reader.fieldnames or [])
        kind = next((k for prefix, k in _CSV_KINDS.items() if cols[: len(prefix)] == prefix), None)
        if kind is None:
            return None
        rows = list(reader)
    return {
        "kind": kind,
        "path": str(path),
        "rows": len(rows),
        "metrics": sorted({r.get("metric", "") for r in rows}),
    }
