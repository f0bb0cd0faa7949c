"""Report section of circuits with edges: per saved circuit (``circuit.json``), its summary,
the circuit figure (the SVG embedded as an image), the strongest edges, the top path and the
faithfulness-vs-edge-budget table with CPR / CMD; per attribution graph (``graph.json``), its
replacement and completeness scores."""

from __future__ import annotations

import base64
from pathlib import Path

from ..experiment import Experiment
from .html import esc, json_file, section, table


def _svg(path: Path, caption: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f"<figure style='max-width:100%'><img style='max-width:100%' alt='{esc(caption)}' "
        f"src='data:image/svg+xml;base64,{data}'><figcaption>{esc(caption)}</figcaption></figure>"
    )


def _circuit(d: Path, root: Path) -> str:
    from ..circuits.graph import Circuit

    try:
        c = Circuit.load(d)
    except Exception as exc:  # a broken artifact must not hide the others
        return f"<p class=note>{esc(d.name)}: {esc(exc)}</p>"
    s = c.summary()
    out = [
        f"<h3>{esc(d.relative_to(root))}</h3>",
        table(
            ["method", "metric", "clean", "corrupted", "nodes", "edges", "thresholds"],
            [(c.method, c.metric_name, c.clean, c.corrupted, s["nodes"], s["edges"], str(c.thresholds))],
        ),
        "<p>top path: <code>" + esc(" → ".join(c.top_path())) + "</code></p>",
        _svg(
            d / "circuit.svg", "circuit: rows = sites in forward order, columns = positions; width ∝ |weight|"
        ),
        table(["source", "target", "weight"], c.top_edges(15), caption="strongest edges"),
    ]
    b = json_file(d / "edge_budget.json")
    if isinstance(b, dict) and b.get("kind") == "circuits.edge_budget":
        rows = list(zip(b["budgets_percent"], b["kept"], b["faithfulness"], b["completeness"]))
        out.append(
            table(
                ["budget %", "edges", "faithfulness", "completeness (M∖C)"],
                rows,
                caption=f"faithfulness vs edge budget ({b['n_edges']} edges): CPR {b['CPR']:.3f}, CMD {b['CMD']:.3f}",
            )
        )
    return "".join(out)


def _graph(d: Path, root: Path) -> str:
    g = json_file(d / "graph.json")
    if not isinstance(g, dict) or "metadata" not in g:
        return ""
    meta = g["metadata"]
    info = meta.get("info", {}) if isinstance(meta.get("info"), dict) else {}
    scores = meta.get("scores") or info.get("scores") or {}
    rows = [(k, v) for k, v in scores.items()]
    out = [
        f"<h3>{esc(d.relative_to(root))} <span class=note>attribution graph of {esc(meta.get('prompt', ''))!s}</span></h3>",
        table(
            ["score", "value"],
            rows,
            caption=f"{len(g.get('nodes', []))} nodes, {len(g.get('links', []))} links",
        ),
        _svg(d / "circuit.svg", "attribution graph (pruned)"),
    ]
    return "".join(out)


@section(72, "Circuit edges")
def circuit_edges_section(exp: Experiment) -> str | None:
    root = exp.root / "circuits"
    if not root.is_dir():
        return None
    parts = [_circuit(p.parent, exp.root) for p in sorted(root.rglob("circuit.json"))]
    parts += [_graph(p.parent, exp.root) for p in sorted(root.rglob("graph.json"))]
    return "".join(p for p in parts if p) or None
