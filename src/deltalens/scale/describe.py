"""``deltalens info`` for the scale artifacts: a sharded capture in progress (a store directory
with ``parts/`` and no manifest yet), a work-unit results log (:func:`~deltalens.scale.backends.run_sweep`)
and a sweep's ``failed.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..info import register_describer
from ..store import MANIFEST, PARTS, read_manifest


@register_describer
def describe_scale(path: Path) -> dict[str, Any] | None:
    if path.is_dir() and (path / PARTS).is_dir() and not (path / MANIFEST).is_file():
        parts = {}
        for p in sorted((path / PARTS).iterdir()):
            m = read_manifest(p) if p.is_dir() else {}
            span = (m.get("config") or {}).get("span")
            parts[p.name] = {
                "inputs": None if span is None else f"{span[0]}–{span[1] - 1}",
                "sequences": m.get("n_sequences", 0),
                "rows": m.get("n_rows", 0),
                "complete": bool(m.get("complete")),
            }
        return {
            "kind": "sharded capture in progress (rerun the same torchrun command to finish it)",
            "path": str(path),
            "parts": parts,
        }
    if path.suffix == ".jsonl" and path.is_file():
        first = _first_record(path)
        if first is None:
            return None
        from ..io import read_log

        if {"key", "status"} <= set(first):
            recs, torn = read_log(path, "work units")
            ok = {r["key"] for r in recs if r.get("status") == "ok"}
            failed = {r["key"] for r in recs if r.get("status") == "failed"} - ok
            return {
                "kind": "work-unit results (run_sweep)",
                "path": str(path),
                "units done": len(ok),
                "units failed": sorted(failed)[:20],
                **({"torn lines": torn} if torn else {}),
            }
        if {"keys", "error", "attempts"} <= set(first):
            recs, _ = read_log(path, "failures")
            return {
                "kind": "failed work units of a sweep (rerun the sweep to retry them)",
                "path": str(path),
                "failures": len(recs),
                "last error": recs[-1].get("error") if recs else None,
            }
    return None


def _first_record(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            line = fh.readline()
        rec = json.loads(line)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) else None
