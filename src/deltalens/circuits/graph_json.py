"""Attribution graphs as the JSON that circuit-tracer's frontend (and Neuronpedia's graph
viewer) reads: ``{"metadata", "qParams", "nodes", "links"}``.

:data:`GRAPH_SCHEMA` is a JSON Schema written from the frontend's data models
(circuit-tracer ``frontend/graph_models.py``: ``Metadata``, ``QParams``, ``Node``, ``Link``,
``Model``) — required fields where those models have no default, the field types, and the
node id conventions (``"{layer}_{feature}_{pos}"`` for features, ``"{layer}_-1_{pos}"`` for
error nodes, ``"E_{token}_{pos}"`` for token embeddings, ``"{n_layers+1}_{token}_{pos}"`` for
logits). :func:`graph_json` builds the document from a pruned graph and
:func:`validate_graph_json` checks one (``jsonschema``), naming the first violation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from ..io import write_json
from .attribution_graph import AttributionGraph, prune

_NUM_OR_NULL = {"type": ["number", "null"]}

GRAPH_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "circuit-tracer attribution graph (frontend Model)",
    "type": "object",
    "required": ["metadata", "qParams", "nodes", "links"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["slug", "scan", "transcoder_list", "prompt_tokens", "prompt"],
            "properties": {
                "slug": {"type": "string"},
                "scan": {"type": "string"},
                "transcoder_list": {"type": "array", "items": {"type": "string"}},
                "prompt_tokens": {"type": "array", "items": {"type": "string"}},
                "prompt": {"type": "string"},
                "node_threshold": _NUM_OR_NULL,
                "schema_version": {"type": ["integer", "null"]},
            },
        },
        "qParams": {
            "type": "object",
            "required": ["pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"],
            "properties": {
                "pinnedIds": {"type": "array", "items": {"type": "string"}},
                "supernodes": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
                "linkType": {"type": "string"},
                "clickedId": {"type": "string"},
                "sg_pos": {"type": "string"},
            },
        },
        "nodes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId"],
                "properties": {
                    "node_id": {"type": "string", "pattern": "^(E|-?[0-9]+)_-?[0-9]+_[0-9]+$"},
                    "feature": {"type": "integer"},
                    "layer": {"type": "string", "pattern": "^(E|[0-9]+)$"},
                    "ctx_idx": {"type": "integer", "minimum": 0},
                    "feature_type": {
                        "enum": ["cross layer transcoder", "mlp reconstruction error", "embedding", "logit"]
                    },
                    "token_prob": {"type": "number"},
                    "is_target_logit": {"type": "boolean"},
                    "run_idx": {"type": "integer"},
                    "reverse_ctx_idx": {"type": "integer"},
                    "jsNodeId": {"type": "string"},
                    "clerp": {"type": "string"},
                    "influence": _NUM_OR_NULL,
                    "activation": _NUM_OR_NULL,
                },
            },
        },
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["source", "target", "weight"],
                "properties": {
                    "source": {"type": "string"},
                    "target": {"type": "string"},
                    "weight": {"type": "number"},
                },
            },
        },
    },
}


def _cantor(x: int, y: int) -> int:
    """Cantor pairing (the frontend's global feature number for ``(layer, feature)``)."""
    return (x + y) * (x + y + 1) // 2 + y


def graph_json(
    graph: AttributionGraph,
    slug: str = "deltalens-graph",
    scan: str = "deltalens",
    transcoder_list: list[str] | None = None,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    descriptions: dict[tuple[int, int], str] | None = None,
) -> dict[str, Any]:
    """The frontend document of ``graph`` pruned at the thresholds (module docstring);
    ``descriptions[(layer, feature)]`` fills a feature's ``clerp``."""
    node_mask, edge_mask = prune(graph, node_threshold, edge_threshold)
    inf = graph.node_influence()
    total = float(inf.sum()) or 1.0
    order = inf.argsort(descending=True)
    cum = inf[order].cumsum(0) / total
    cumulative = inf.clone()
    cumulative[order] = cum
    F, L, T = graph.n_features, graph.n_layers, graph.n_pos
    nodes: dict[int, dict[str, Any]] = {}
    for i in node_mask.nonzero().flatten().tolist():
        if i < F:
            layer, pos, f = graph.features[i].tolist()
            nodes[i] = {
                "node_id": f"{layer}_{f}_{pos}",
                "feature": _cantor(layer, f),
                "layer": str(layer),
                "ctx_idx": pos,
                "feature_type": "cross layer transcoder",
                "jsNodeId": f"{layer}_{f}-0",
                "clerp": (descriptions or {}).get((layer, f), ""),
                "influence": float(cumulative[i]),
                "activation": float(graph.activations[i]),
            }
        elif i < F + L * T:
            layer, pos = divmod(i - F, T)
            nodes[i] = {
                "node_id": f"{layer}_-1_{pos}",
                "feature": -1,
                "layer": str(layer),
                "ctx_idx": pos,
                "feature_type": "mlp reconstruction error",
                "jsNodeId": f"{layer}_-1-{pos}",
                "influence": float(cumulative[i]),
            }
        elif i < F + L * T + T:
            pos = i - F - L * T
            tok = graph.token_ids[pos]
            nodes[i] = {
                "node_id": f"E_{tok}_{pos}",
                "feature": pos,
                "layer": "E",
                "ctx_idx": pos,
                "feature_type": "embedding",
                "jsNodeId": f"E_{tok}-{pos}",
                "influence": float(cumulative[i]),
            }
        else:
            k = i - F - L * T - T
            tok, p = graph.logit_ids[k], float(graph.logit_probs[k])
            nodes[i] = {
                "node_id": f"{L + 1}_{tok}_{T - 1}",
                "feature": tok,
                "layer": str(L + 1),
                "ctx_idx": T - 1,
                "feature_type": "logit",
                "token_prob": p,
                "is_target_logit": k == 0,
                "jsNodeId": f"L_{tok}-{T - 1}",
                "clerp": f'Output "{graph.logit_tokens[k]}" (p={p:.3f})',
            }
    tgt, src = edge_mask.nonzero(as_tuple=True)
    links = [
        {"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(graph.adjacency[t, s])}
        for t, s in zip(tgt.tolist(), src.tolist())
        if s in nodes and t in nodes
    ]
    connected = {lk["source"] for lk in links} | {lk["target"] for lk in links}
    kept = [
        n for n in nodes.values() if n["node_id"] in connected or n["feature_type"] in ("embedding", "logit")
    ]
    return {
        "metadata": {
            "slug": slug,
            "scan": scan,
            "transcoder_list": list(transcoder_list or []),
            "prompt_tokens": list(graph.tokens),
            "prompt": graph.prompt,
            "node_threshold": node_threshold,
            "schema_version": 1,
            "info": {"generator": "deltalens", "scores": graph.scores(), "edge_threshold": edge_threshold},
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": kept,
        "links": links,
    }


def validate_graph_json(doc: Any, where: str = "graph JSON") -> None:
    """Raise :class:`DataFormatError` naming the first violation of :data:`GRAPH_SCHEMA`."""
    import jsonschema

    v = jsonschema.Draft202012Validator(GRAPH_SCHEMA)
    err = next(iter(sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))), None)
    if err is not None:
        path = "/".join(str(p) for p in err.absolute_path) or "(top)"
        raise DataFormatError(f"{where}: {path}: {err.message}")


def save_graph_json(doc: dict[str, Any], path: str | Path) -> Path:
    """Validate, then write atomically."""
    validate_graph_json(doc, str(path))
    return write_json(path, doc)
