"""``deltalens info`` for circuits artifacts (registered on import; :func:`deltalens.info.describe`
imports this module)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..info import register_describer
from . import graph_pipeline as _graph_pipeline  # noqa: F401  (registers TranscoderSet for info)


@register_describer
def describe_circuits(path: Path) -> dict[str, Any] | None:
    """``deltalens info`` for circuits artifacts: patching/attribution results, SAE
    attribution directories, faithfulness curves."""
    target = path / "attribution.json" if path.is_dir() else path
    if target.suffix != ".json" or not target.is_file():
        return None
    try:
        d = json.loads(target.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "circuits.patching":
        return {
            "kind": f"circuits {d['method']} ({d['direction']})",
            "path": str(path),
            "metric": d["metric"],
            "clean": d["clean"],
            "corrupted": d["corrupted"],
            "components": d["components"],
            "layers": f"{len(d['layers'])} ({d['layers'][0]}..{d['layers'][-1]})",
            "positions": d["labels"],
            "provenance": d.get("meta", {}).get("provenance"),
        }
    if kind == "circuits.sae_attribution":
        return {
            "kind": "circuits SAE attribution",
            "path": str(path),
            "site": d["site"],
            "mode": d["mode"],
            "keep_error": d["keep_error"],
            "d_sae": d["d_sae"],
            "error_table": d["error_table"],
            "files": sorted(p.name for p in target.parent.iterdir()),
        }
    if kind == "circuits.faithfulness":
        return {
            "kind": "circuits faithfulness curve",
            "path": str(path),
            "nodes": d["nodes"],
            "k": d["k"],
            "faithfulness": d["faithfulness"],
            "completeness": d["completeness"],
        }
    return None
