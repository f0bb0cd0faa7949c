"""The circuit figure: a self-contained SVG (and an HTML page around it) of a :class:`Circuit`.

Layout: rows are the places nodes live in forward order (embeddings at the bottom, then
per layer attention / MLP / residual sites, the logits on top), columns the token
positions (one column when nodes are aggregated over positions). Nodes are coloured by
type, edges drawn from source to target with width ∝ ``|weight| / max |weight|`` and
colour by sign (blue: the edge moves the metric towards the clean answer, red: away).
Every text that comes from the model (tokens, descriptions) is XML-escaped; hovering a
node or an edge shows its numbers.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ..io import atomic_write
from .graph import Circuit

COLOURS = {
    "latent": "#4e79a7",
    "error": "#9c9c9c",
    "head": "#f28e2b",
    "attn": "#ffbe7d",
    "mlp": "#59a14f",
    "embed": "#b07aa1",
    "token": "#b07aa1",
    "logit": "#e15759",
}
_COMP = {"embed": -1, "resid_pre": 0, "attn_out": 1, "mlp_out": 2, "resid": 3}


def _row_key(n: dict[str, Any]) -> tuple[float, float]:
    t = n["type"]
    if t == "logit":
        return (float("inf"), 0)
    if t in ("embed", "token"):
        return (-1, -1)
    if t in ("head", "attn"):
        return (n["layer"], 1)
    if t == "mlp" and n["site"].startswith("mlp."):
        return (n["layer"], 2)
    site = str(n.get("site", ""))
    comp, _, layer = site.rpartition(".")
    if comp in _COMP and layer.lstrip("-").isdigit():
        return (int(layer), _COMP[comp])
    return (n.get("layer") or 0, 0)


def _row_name(key: tuple[float, float], nodes: list[dict[str, Any]]) -> str:
    if key[0] == float("inf"):
        return "logits"
    if key[0] == -1:
        return "embed"
    names = {"head": "attn", "attn": "attn"}
    n = nodes[0]
    if n["type"] in names or n["type"] == "mlp" and str(n["site"]).startswith("mlp."):
        return f"{names.get(n['type'], 'mlp')} {int(key[0])}"
    return str(n["site"])


def _short(n: dict[str, Any]) -> str:
    t = n["type"]
    if t == "latent":
        return str(n["index"])
    if t == "error":
        return "ε"
    if t == "head":
        return f"h{n['index']}"
    return {"attn": "in", "mlp": "mlp", "embed": "emb", "token": "tok", "logit": "m"}.get(t, t)


def circuit_svg(circuit: Circuit, max_edges: int = 150, cell_w: int = 110, row_h: int = 46) -> str:
    """The SVG text of ``circuit`` (the ``max_edges`` strongest edges and the nodes they touch)."""
    edges = circuit.top_edges(max_edges)
    used = {e[0] for e in edges} | {e[1] for e in edges}
    nodes = [n for n in circuit.nodes if n["id"] in used or n["type"] == "logit"]
    positional = any(n.get("position") is not None for n in nodes if n["type"] != "logit")
    cols = sorted({n["position"] for n in nodes if positional and n.get("position") is not None})
    col_of = {c: i for i, c in enumerate(cols)} if cols else {}
    rows: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for n in nodes:
        rows.setdefault(_row_key(n), []).append(n)
    order = sorted(rows)
    n_cols = max(1, len(cols))
    grid: dict[tuple[float, float], dict[int, list[dict[str, Any]]]] = {}
    for key in order:
        cells: dict[int, list[dict[str, Any]]] = {}
        for n in rows[key]:
            ci = col_of.get(n.get("position"), n_cols - 1 if n["type"] == "logit" else 0) if positional else 0
            cells.setdefault(ci, []).append(n)
        grid[key] = cells
    cell_w = max(cell_w, 24 * max(len(ns) for cells in grid.values() for ns in cells.values()))
    left, top = 110, 40
    W = max(left + n_cols * cell_w + 20, int(7.6 * len(_title(circuit))) + left)
    if not positional:  # one column: spread each row's nodes over the whole width
        cell_w = W - left - 20
    H = top + len(order) * row_h + 60
    xy: dict[str, tuple[float, float]] = {}
    for ri, key in enumerate(order):
        y = top + (len(order) - 1 - ri) * row_h + row_h / 2
        for ci, ns in grid[key].items():
            ns.sort(key=lambda n: (n["type"] in ("error", "head"), n["type"] == "error", n.get("index") or 0))
            for k, n in enumerate(ns):
                x = left + ci * cell_w + cell_w * (k + 1) / (len(ns) + 1)
                xy[n["id"]] = (x, y)
    wmax = max((abs(e[2]) for e in edges), default=1.0) or 1.0
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' viewBox='0 0 {W} {H}' "
        "font-family='system-ui,sans-serif' font-size='11'>",
        f"<rect width='{W}' height='{H}' fill='white'/>",
        f"<text x='{left}' y='18' font-size='13' font-weight='600'>{html.escape(_title(circuit))}</text>",
    ]
    for ri, key in enumerate(order):
        y = top + (len(order) - 1 - ri) * row_h + row_h / 2
        out.append(
            f"<text x='{left - 8}' y='{y + 4}' text-anchor='end' fill='#5b6472'>{html.escape(_row_name(key, rows[key]))}</text>"
        )
        out.append(f"<line x1='{left}' x2='{W - 20}' y1='{y}' y2='{y}' stroke='#eef0f3'/>")
    labels = _column_labels(circuit, nodes, cols)
    for ci, lab in enumerate(labels):
        x = left + ci * cell_w + cell_w / 2
        out.append(
            f"<text x='{x}' y='{H - 30}' text-anchor='middle' fill='#1d2330'>{html.escape(lab)}</text>"
        )
    for s, t, w in sorted(edges, key=lambda e: abs(e[2])):
        if s not in xy or t not in xy:
            continue
        (x1, y1), (x2, y2) = xy[s], xy[t]
        width = 0.5 + 5.5 * abs(w) / wmax
        colour = "#2c6fbb" if w >= 0 else "#d1495b"
        out.append(
            f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' stroke='{colour}' "
            f"stroke-width='{width:.2f}' stroke-opacity='0.55'><title>{html.escape(f'{s} → {t}: {w:.4g}')}</title></line>"
        )
    for n in nodes:
        if n["id"] not in xy:
            continue
        x, y = xy[n["id"]]
        tip = f"{n['id']} ({n['type']})"
        if n.get("token"):
            tip += f" token {n['token']!r}"
        if n.get("score") is not None:
            tip += f", score {n['score']:.4g}"
        if n.get("description"):
            tip += f": {n['description']}"
        out.append(
            f"<g><title>{html.escape(tip)}</title><circle cx='{x:.1f}' cy='{y:.1f}' r='9' "
            f"fill='{COLOURS.get(n['type'], '#777')}' stroke='white'/>"
            f"<text x='{x:.1f}' y='{y + 3.5:.1f}' text-anchor='middle' font-size='8' fill='white'>"
            f"{html.escape(_short(n))}</text></g>"
        )
    lx = left
    for t in sorted({n["type"] for n in nodes}):
        out.append(f"<circle cx='{lx}' cy='{H - 10}' r='5' fill='{COLOURS.get(t, '#777')}'/>")
        out.append(f"<text x='{lx + 8}' y='{H - 6}' fill='#5b6472'>{html.escape(t)}</text>")
        lx += 70
    out.append("</svg>")
    return "\n".join(out)


def _title(c: Circuit) -> str:
    what = {"feature_edges": "feature circuit", "eap": "EAP circuit", "eap-ig": "EAP-IG circuit"}.get(
        c.method, c.method
    )
    run = f"{c.metric_name}, clean {c.clean:.3g}, corrupted {c.corrupted:.3g}"
    return f"{what}: {len(c.nodes)} nodes, {len(c.edges)} edges ({run})"


def _column_labels(c: Circuit, nodes: list[dict[str, Any]], cols: list[int]) -> list[str]:
    if not cols:
        return ["all positions"]
    tok = {n["position"]: n.get("token") for n in nodes if n.get("token") and n["type"] != "logit"}
    return [f"{p}: {str(tok.get(p, ''))[:12]}" for p in cols]


def save_figure(circuit: Circuit, out_dir: str | Path, max_edges: int = 150) -> dict[str, Path]:
    """Write ``circuit.svg`` and ``circuit.html`` (the SVG with a caption) into ``out_dir``."""
    d = Path(out_dir)
    svg = circuit_svg(circuit, max_edges)
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>"
        + html.escape(_title(circuit))
        + "</title></head><body style='font-family:system-ui,sans-serif'>"
        + svg
        + "<p>Rows: sites in forward order; columns: token positions. Edge width ∝ |weight|; blue: towards "
        "the clean answer, red: away. Hover for numbers.</p></body></html>"
    )
    return {"svg": atomic_write(d / "circuit.svg", svg), "html": atomic_write(d / "circuit.html", page)}
