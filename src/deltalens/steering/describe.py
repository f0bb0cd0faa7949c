"""``deltalens info`` for trait vectors, trait classifiers, control vectors and steering results
(registered on import; :func:`deltalens.info.describe` imports this module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..info import register_describer
from . import extraction, runs  # noqa: F401  (register ExtractionResult, SteeringRun, CombinationResult)


@register_describer
def describe_steering(path: Path) -> dict[str, Any] | None:
    """``deltalens info`` for trait vectors, trait classifiers, control vectors and steering results."""
    if path.suffix == ".safetensors" and path.is_file():
        from ..io import read_safetensors_metadata

        meta = read_safetensors_metadata(path)
        fmt = str(meta.get("format", ""))
        if fmt.startswith("deltalens.vector"):
            keys = (
                "trait",
                "variant",
                "positions",
                "component",
                "layer",
                "method",
                "norm",
                "n_pos",
                "n_neg",
                "n_val",
                "val_accuracy",
                "val_auroc",
                "val_separation",
                "model",
            )
            return {"kind": "trait vector", "path": str(path), **{k: meta[k] for k in keys if k in meta}}
        if fmt.startswith("deltalens.trait_classifier"):
            return {
                "kind": "offline-judge trait classifier",
                "path": str(path),
                **{k: v for k, v in meta.items() if k != "format"},
            }
        return None
    if path.suffix == ".gguf" and path.is_file():
        from ..vectors import import_gguf

        try:
            dirs, hint = import_gguf(path)
        except Exception:
            return None
        return {
            "kind": "llama.cpp control vector",
            "path": str(path),
            "model_hint": hint,
            "layers": sorted(dirs),
            "norms": {L: round(float(v.norm()), 4) for L, v in sorted(dirs.items())},
        }
    if path.name == "results.jsonl" and path.is_file() and "steering" in path.parts:
        from .results import ResultsLog

        log = ResultsLog(path)
        recs = log.latest_per_key()
        base = next((r for r in recs if r.kind == "baseline"), None)
        ok = [r for r in recs if r.kind != "baseline" and r.coherent(70.0)]
        best = max(ok, key=lambda r: r.trait_mean or 0.0) if ok else None
        return {
            "kind": "steering results",
            "path": str(path),
            "records": len(log),
            "configurations": len(recs),
            "judges": sorted({str(r.judge or "").split(":")[0] for r in recs}),
            "baseline_trait": None if base is None else base.trait_mean,
            "best_with_coherence_70": None
            if best is None
            else {"label": best.label, "trait": best.trait_mean, "coherence": best.coherence_mean},
        }
    return None
