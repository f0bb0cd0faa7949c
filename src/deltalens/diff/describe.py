"""``deltalens info`` for DPO series (``series.json``) and for diff results written before they were
typed (``kind`` ``weight_diff`` …); the typed results (:class:`~deltalens.diff.weights.WeightDiff` …)
are registered StageResults and described by their own ``summary()``. Registered on import;
:func:`deltalens.info.describe` imports this module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..info import register_describer


@register_describer
def describe_diff(path: str | Path) -> dict[str, Any] | None:
    """A summary of a diff's ``results.json``, a series' ``series.json`` or a ``trajectory.json``
    (or a directory holding one); ``None`` for anything else."""
    p = Path(path)
    f = p / "results.json" if p.is_dir() and (p / "results.json").exists() else p
    if p.is_dir() and (p / "series.json").exists():
        f = p / "series.json"
    if p.is_dir() and (p / "trajectory.json").exists():
        f = p / "trajectory.json"
    if f.suffix != ".json" or not f.is_file():
        return None
    try:
        d = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "weight_diff":
        s = d["summary"]
        return {
            "kind": "weight diff",
            "path": str(f),
            "base": d["base"]["name"],
            "ft": d["ft"]["name"],
            "tensors_changed": f"{s['n_changed']}/{s['n_tensors']}",
            "total_rel": s["total_rel"],
            "top_layer": s["top_layer"],
            "top_by_rel": [t["name"] for t in s["top_by_rel"][:5]],
        }
    if kind == "activation_similarity":
        m = d["per_layer_similarity"]["mean"]
        return {
            "kind": "activation similarity (replay)",
            "path": str(f),
            "base": d["base"]["name"],
            "ft": d["ft"]["name"],
            "n_prompts": d["n_prompts"],
            "min_similarity": min(m) if m else None,
            "min_layer": d["layers"][m.index(min(m))] if m else None,
            "traits": list(d.get("correlations", {})),
        }
    if kind == "output_diff":
        return {
            "kind": "output diff",
            "path": str(f),
            "base": d["base"]["name"],
            "ft": d["ft"]["name"],
            "mean_kl": d["mean_kl"],
            "rose_most": [t for t, _ in d["rose_most"][:10]],
        }
    if kind == "dpo_series":
        return {
            "kind": "DPO checkpoint series",
            "path": str(f),
            "base": d["base"]["spec"],
            "scorer": d["scorer"]["name"],
            "checkpoints": d["checkpoints"],
            "scores": d.get("scores"),
        }
    if kind == "series_diff":
        return {
            "kind": "series diff",
            "path": str(f),
            "checkpoints": d["checkpoints"],
            "rows": len(d["rows"]),
        }
    return None
