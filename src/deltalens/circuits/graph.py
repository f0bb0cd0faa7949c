"""A circuit as a typed result: nodes and weighted edges, saved as JSON + a Parquet edge list.

Every edge method of :mod:`deltalens.circuits` (feature-circuit edges between SAE latents,
EAP / EAP-IG between attention heads and MLPs, attribution graphs) returns a
:class:`Circuit`:

* ``nodes`` — one dict per node: ``id``, ``type`` (``latent``, ``error``, ``head``, ``attn``,
  ``mlp``, ``embed``, ``token``, ``logit``), ``layer``, ``site``, ``position`` (grid column,
  ``None`` for position-aggregated nodes), ``token``, ``index`` (latent or head index),
  ``score`` (the node's attribution: estimated change of the mean metric when the node is
  patched), ``activation`` and ``description``;
* ``edges`` — ``(source, target, weight)``: the estimated change of the metric carried by
  the path source → target → metric (see each method's docstring for its formula).

Saved as ``circuit.json`` (kind, schema, method, thresholds, nodes, summary) and
``edges.parquet`` (columns ``source``, ``target``, ``weight``); ``deltalens info`` reads both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import DataFormatError
from ..io import atomic_path, write_json
from ..stage import StageResult, register_result

NODE_TYPES = ("latent", "error", "head", "attn", "mlp", "embed", "token", "logit")


@register_result
@dataclass
class Circuit(StageResult):
    """Nodes + weighted edges of a circuit (module docstring)."""

    KIND: ClassVar[str] = "circuits.circuit"
    FILENAME: ClassVar[str] = "circuit.json"
    EDGES_FILE: ClassVar[str] = "edges.parquet"

    method: str
    metric_name: str
    direction: str
    clean: float
    corrupted: float
    nodes: list[dict[str, Any]]
    edges: list[tuple[str, str, float]]
    thresholds: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    # ---- views -----------------------------------------------------------------------------
    def node(self, node_id: str) -> dict[str, Any]:
        for n in self.nodes:
            if n["id"] == node_id:
                return n
        raise KeyError(node_id)

    def top_edges(self, k: int = 10) -> list[tuple[str, str, float]]:
        return sorted(self.edges, key=lambda e: -abs(e[2]))[:k]

    def top_path(self, source_types: tuple[str, ...] = ()) -> list[str]:
        """The path to the logit node that maximises the product of |edge weights| along
        it, found greedily backwards from the logit node (strongest incoming edge each step,
        no node visited twice); ``source_types`` stops the walk at a node of those types.
        An attribution graph's circuit carries its exact strongest token → logit path
        (:meth:`AttributionGraph.top_path`) in ``meta["top_path"]``; that one is returned."""
        if self.meta.get("top_path") and not source_types:
            return list(self.meta["top_path"])
        incoming: dict[str, list[tuple[str, float]]] = {}
        for s, t, w in self.edges:
            incoming.setdefault(t, []).append((s, w))
        logit = [n["id"] for n in self.nodes if n["type"] == "logit"]
        if not logit:
            return []
        path = [logit[0]]
        seen = set(path)
        types = {n["id"]: n for n in self.nodes}
        while True:
            here = path[-1]
            node = types.get(here, {})
            if node.get("type") == "head" and not incoming.get(here) and f"attn.{node['layer']}" in incoming:
                here = f"attn.{node['layer']}"  # a head reads its layer's attention input
                if here not in seen:
                    path.append(here)
                    seen.add(here)
            cands = [(s, w) for s, w in incoming.get(here, []) if s not in seen]
            if not cands:
                break
            s, _ = max(cands, key=lambda c: abs(c[1]))
            path.append(s)
            seen.add(s)
            if source_types and self.node(s)["type"] in source_types:
                break
        return path[::-1]

    def summary(self) -> dict[str, Any]:
        types: dict[str, int] = {}
        for n in self.nodes:
            types[n["type"]] = types.get(n["type"], 0) + 1
        return {
            "method": self.method,
            "metric": self.metric_name,
            "direction": self.direction,
            "clean": self.clean,
            "corrupted": self.corrupted,
            "nodes": len(self.nodes),
            "node_types": types,
            "edges": len(self.edges),
            "thresholds": self.thresholds,
            "top_edges": [f"{s} -> {t}: {w:.4g}" for s, t, w in self.top_edges(5)],
        }

    # ---- files -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "metric_name": self.metric_name,
            "direction": self.direction,
            "clean": self.clean,
            "corrupted": self.corrupted,
            "thresholds": self.thresholds,
            "n_edges": len(self.edges),
            "edges_file": self.EDGES_FILE,
            "nodes": self.nodes,
            "seconds": round(self.seconds, 3),
            "meta": self.meta,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``edges.parquet`` then ``circuit.json`` into ``directory`` (both atomically)."""
        import pandas as pd

        d = Path(directory)
        df = pd.DataFrame(
            {
                "source": [e[0] for e in self.edges],
                "target": [e[1] for e in self.edges],
                "weight": [float(e[2]) for e in self.edges],
            }
        )
        with atomic_path(d / self.EDGES_FILE, ".parquet") as tmp:
            df.to_parquet(tmp, index=False)
        return write_json(d / self.FILENAME, {"kind": self.KIND, "schema": self.SCHEMA, **self.to_dict()})

    @classmethod
    def load(cls, directory: str | Path) -> Circuit:
        import pandas as pd

        path = cls.path_in(directory)
        h = cls.read_header(path)
        edges_path = cls.companion(path, h.get("edges_file", cls.EDGES_FILE))
        try:
            df = pd.read_parquet(edges_path)
            edges = [(str(s), str(t), float(w)) for s, t, w in zip(df["source"], df["target"], df["weight"])]
            return cls(
                h["method"],
                h["metric_name"],
                h["direction"],
                float(h["clean"]),
                float(h["corrupted"]),
                list(h["nodes"]),
                edges,
                dict(h.get("thresholds") or {}),
                float(h.get("seconds", 0.0)),
                dict(h.get("meta") or {}),
            )
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise DataFormatError(f"not a valid {cls.KIND}: {path} ({exc})") from None
