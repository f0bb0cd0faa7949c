"""Descriptions of SAE latents for circuit nodes, from explanations or feature dashboards.

:func:`latent_descriptions` looks, in order, for

1. an explanations file next to the SAE — ``explanations.json`` in the SAE directory or its
   parent — as ``{"<latent>": "text"}``, a list of ``{"index"|"latent": i,
   "description"|"explanation": "text"}`` records, or such a list under ``"explanations"``;
2. feature dashboards (:mod:`deltalens.features.dashboard`: ``index.json`` +
   ``features/<i>.json``) in ``dashboards=`` or ``<sae_dir>/dashboards``; a latent's
   description is then the first of the dashboard's ``explanations`` (Neuronpedia's field,
   which :func:`deltalens.inverse.explain.apply_to_dashboards` fills), else built from the
   dashboard: the tokens it fires on most and the tokens it promotes
   (``fires on 'Paris', 'France'; promotes ' capital'``).

``deltalens inverse explain`` writes the explanations file (``{"kind": "inverse explanations",
"explanations": [{"index": i, "description": "…", …}]}``) in this format.

It returns ``{latent: text}`` (empty when nothing is found) and never fails on a missing
file; a malformed file is an error naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataFormatError

EXPLANATIONS_FILE = "explanations.json"


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{path}: not a readable JSON file ({exc})") from None


def _from_explanations(data: Any, path: Path) -> dict[int, str]:
    if isinstance(data, dict) and "explanations" in data:
        data = data["explanations"]
    out: dict[int, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            if str(k).isdigit() and isinstance(v, str):
                out[int(k)] = v
        return out
    if isinstance(data, list):
        for i, r in enumerate(data):
            if not isinstance(r, dict):
                raise DataFormatError(f"{path}: entry {i} is not an object")
            idx = r.get("index", r.get("latent"))
            text = r.get("description", r.get("explanation"))
            if isinstance(idx, int) and isinstance(text, str):
                out[idx] = text
        return out
    raise DataFormatError(f"{path}: expected an object or a list of explanations")


def _from_dashboard(rec: dict[str, Any]) -> str | None:
    for ex in rec.get("explanations") or []:  # Neuronpedia's list; deltalens inverse explain adds one
        if isinstance(ex, dict) and isinstance(ex.get("description"), str) and ex["description"]:
            return ex["description"]
    fires: list[str] = []
    for ex in rec.get("activations", [])[:5]:
        toks, i = ex.get("tokens") or [], ex.get("maxValueTokenIndex")
        if isinstance(i, int) and 0 <= i < len(toks) and toks[i] not in fires:
            fires.append(toks[i])
    promotes = [t for t in rec.get("pos_str", [])[:3]]
    parts = []
    if fires:
        parts.append("fires on " + ", ".join(repr(t) for t in fires[:4]))
    if promotes:
        parts.append("promotes " + ", ".join(repr(t) for t in promotes))
    return "; ".join(parts) or None


def latent_descriptions(
    sae_dir: str | Path | None, dashboards: str | Path | None = None, latents: list[int] | None = None
) -> dict[int, str]:
    """``{latent: description}`` for an SAE (module docstring); ``latents`` limits the
    dashboard files read."""
    roots = [Path(sae_dir)] if sae_dir is not None else []
    for root in roots + [r.parent for r in roots]:
        p = root / EXPLANATIONS_FILE
        if p.is_file():
            return _from_explanations(_read(p), p)
    cands = ([Path(dashboards)] if dashboards is not None else []) + [r / "dashboards" for r in roots]
    for d in cands:
        index = d / "index.json"
        if not index.is_file():
            continue
        idx = _read(index)
        entries = idx.get("features", []) if isinstance(idx, dict) else []
        out: dict[int, str] = {}
        want = None if latents is None else set(latents)
        for e in entries:
            i = e.get("index") if isinstance(e, dict) else None
            if not isinstance(i, int) or (want is not None and i not in want):
                continue
            f = d / str(e.get("file", f"features/{i}.json"))
            if f.is_file():
                text = _from_dashboard(_read(f))
                if text:
                    out[i] = text
        return out
    return {}


def describe_nodes(nodes: list[dict[str, Any]], site: str, descriptions: dict[int, str]) -> int:
    """Fill ``description`` of the latent nodes at ``site``; returns how many were filled."""
    n = 0
    for node in nodes:
        if node["type"] == "latent" and node["site"] == site and node["index"] in descriptions:
            node["description"] = descriptions[node["index"]]
            n += 1
    return n
