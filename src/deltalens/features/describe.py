"""``deltalens info`` for feature-analysis artifacts (registered on import)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..info import register_describer


@register_describer
def _firing_stats(path: Path) -> dict[str, Any] | None:
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from ..io import read_safetensors_metadata

    try:
        meta = read_safetensors_metadata(path)
    except Exception:  # noqa: BLE001 - not ours to judge; other describers will
        return None
    if meta.get("kind") != "deltalens.firing_stats":
        return None
    from .firing import FiringStats

    st = FiringStats.load(path)
    return {
        "kind": "SAE firing statistics",
        "path": str(path),
        **st.summary(),
        "config": meta.get("config"),
        "provenance": meta.get("meta"),
    }


@register_describer
def _dashboards(path: Path) -> dict[str, Any] | None:
    index = path / "index.json" if path.is_dir() else path
    if index.name != "index.json" or not index.is_file():
        return None
    try:
        kind = json.loads(index.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    from .dashboard import LEGACY_KIND, FeatureDashboards

    if kind not in (FeatureDashboards.KIND, LEGACY_KIND):
        return None
    return {"kind": FeatureDashboards.KIND, "path": str(path), **FeatureDashboards.load(index).summary()}


@register_describer
def _feature_result(path: Path) -> dict[str, Any] | None:
    """A feature result's JSON header under any name (``universal.json`` beside ``universal.csv``)."""
    if path.suffix != ".json" or not path.is_file():
        return None
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    from .universal import SpecificFeatures, UniversalFeatures
    from .weights import WeightMetrics

    for cls in (UniversalFeatures, SpecificFeatures, WeightMetrics):
        if kind == cls.KIND:
            return {"kind": cls.KIND, "path": str(path), **cls.load(path).summary()}
    return None


@register_describer
def _feature_csv(path: Path) -> dict[str, Any] | None:
    if path.suffix != ".csv" or not path.is_file():
        return None
    from .universal import SPECIFIC_COLUMNS, UNIVERSAL_COLUMNS, UNIVERSAL_COLUMNS_ANNOTATED

    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        kinds = {
            tuple(UNIVERSAL_COLUMNS): "universal features CSV",
            tuple(UNIVERSAL_COLUMNS_ANNOTATED): "universal features CSV (with annotation columns)",
            tuple(SPECIFIC_COLUMNS): "specific features CSV",
        }
        kind = kinds.get(tuple(cols))
        if kind is None:
            return None
        rows = list(reader)
    out: dict[str, Any] = {
        "kind": kind,
        "path": str(path),
        "rows": len(rows),
        "sources": sorted({r["source"] for r in rows}),
        "tokens": sorted({r["token"] for r in rows}),
        "features": len({(r["source"], r["token"], r["feature_id"]) for r in rows}),
    }
    records = path.parent / f"{path.stem}_activeprompts.jsonl"
    if records.is_file():
        out["active_prompts"] = str(records)
    return out
