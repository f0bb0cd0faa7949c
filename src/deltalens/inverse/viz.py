"""Figures of an inverse-problem run: the cluster map, optimisation progress, token heatmaps.

* :func:`cluster_map_html` — a self-contained interactive HTML page (inline SVG and a few lines of
  JavaScript, no network): one point per latent at its UMAP position, coloured by cluster;
  hovering shows the latent id, cluster, top tokens and explanation. The data travel as JSON in
  a ``<script type="application/json">`` block with ``<``, ``>`` and ``&`` written as ``\\u003c``
  etc., and the tooltip is filled with ``textContent`` — model text can never become markup.
* :func:`progress_figure` — activation (best so far) and prompt CE per step for each
  optimisation (:func:`deltalens.plots.optimization_progress`), with the collection's maximum
  and CE percentile as dashed references when known.
* :func:`token_heatmap_html` — every reported prompt, each token shaded by the target's
  activation on it (``alpha = a_t / max_t a_t``), HTML-escaped, with its score, CE and whether it
  survived re-tokenisation.
* :func:`acceptance_figure` — every reported prompt at (CE − the collection's CE p90,
  activation / the collection maximum);
* :func:`cluster_map_png` — the static map for the report.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write


def _json_for_script(obj: Any) -> str:
    s = json.dumps(obj, ensure_ascii=False)
    return s.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def latent_top_tokens(coll: Any, latents: Sequence[int], tokenizer: Any, k: int = 3) -> dict[int, list[str]]:
    """The ``k`` token strings carrying most of each latent's activation mass in ``coll``."""
    out = {}
    M = coll.token_mass.tocsc()
    for i in latents:
        col = M[:, int(i)]
        order = np.argsort(-col.data, kind="stable")[:k]
        out[int(i)] = [tokenizer.decode([int(col.indices[j])]) for j in order]
    return out


def cluster_points(
    clustering: Any,
    *,
    collection: Any = None,
    tokenizer: Any = None,
    explanations: Any = None,
) -> list[dict[str, Any]]:
    """One record per latent: ``latent``, ``cluster``, ``x``, ``y``, ``tokens``, ``explanation``."""
    desc = explanations.descriptions() if explanations is not None else {}
    toks = (
        latent_top_tokens(collection, clustering.latents, tokenizer)
        if collection is not None and tokenizer is not None
        else {}
    )
    return [
        {
            "latent": int(i),
            "cluster": int(c),
            "x": float(x),
            "y": float(y),
            "tokens": toks.get(int(i), []),
            "explanation": desc.get(int(i), ""),
        }
        for i, c, (x, y) in zip(clustering.latents, clustering.labels, clustering.embedding)
    ]


_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]

_MAP_JS = """
(function(){
var pts=JSON.parse(document.getElementById('pts').textContent),pal=JSON.parse(document.getElementById('pal').textContent);
var svg=document.getElementById('map'),tip=document.getElementById('tip'),W=760,H=560,pad=24;
var xs=pts.map(function(p){return p.x}),ys=pts.map(function(p){return p.y});
var x0=Math.min.apply(null,xs),x1=Math.max.apply(null,xs),y0=Math.min.apply(null,ys),y1=Math.max.apply(null,ys);
function sx(v){return pad+(x1>x0?(v-x0)/(x1-x0):0.5)*(W-2*pad)} function sy(v){return H-pad-(y1>y0?(v-y0)/(y1-y0):0.5)*(H-2*pad)}
pts.forEach(function(p){var c=document.createElementNS('http://www.w3.org/2000/svg','circle');
c.setAttribute('cx',sx(p.x));c.setAttribute('cy',sy(p.y));c.setAttribute('r',p.cluster<0?3:5);
c.setAttribute('fill',p.cluster<0?'#c8c8c8':pal[p.cluster%pal.length]);c.setAttribute('class','pt');
c.addEventListener('mouseenter',function(e){
 tip.textContent='';function line(b,t){var d=document.createElement('div');var s=document.createElement('b');
  s.textContent=b;d.appendChild(s);d.appendChild(document.createTextNode(' '+t));tip.appendChild(d);}
 line('latent',String(p.latent));line('cluster',p.cluster<0?'noise':String(p.cluster));
 line('top tokens',p.tokens.map(function(t){return JSON.stringify(t)}).join(', ')||'–');line('explanation',p.explanation||'–');
 tip.style.display='block';tip.style.left=(e.pageX+12)+'px';tip.style.top=(e.pageY+12)+'px';});
c.addEventListener('mouseleave',function(){tip.style.display='none'});svg.appendChild(c);});
})();
"""


def cluster_map_html(
    clustering: Any,
    path: str | Path,
    *,
    collection: Any = None,
    tokenizer: Any = None,
    explanations: Any = None,
    title: str = "latent clusters",
) -> Path:
    """Write the interactive cluster map (module docstring); returns ``path``."""
    pts = cluster_points(clustering, collection=collection, tokenizer=tokenizer, explanations=explanations)
    n_c = len({p["cluster"] for p in pts if p["cluster"] >= 0})
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font:13px system-ui,sans-serif;margin:16px;color:#1d2330}svg{border:1px solid #dde1e7;background:#fff}"
        ".pt{stroke:#fff;stroke-width:.6;cursor:pointer}.pt:hover{stroke:#000;stroke-width:1.5}"
        "#tip{position:absolute;display:none;max-width:420px;background:#fffbe6;border:1px solid #c9b458;"
        "padding:6px 8px;border-radius:4px;overflow-wrap:anywhere;pointer-events:none}</style></head><body>"
        f"<h2>{html.escape(title)}</h2><p>{len(pts)} latents, {n_c} clusters "
        f"(grey: noise). Hover a point for its id, top tokens and explanation.</p>"
        "<svg id=map width=760 height=560 viewBox='0 0 760 560'></svg><div id=tip></div>"
        f"<script type='application/json' id=pts>{_json_for_script(pts)}</script>"
        f"<script type='application/json' id=pal>{_json_for_script(_PALETTE)}</script>"
        f"<script>{_MAP_JS}</script></body></html>"
    )
    return atomic_write(path, page)


def cluster_map_png(clustering: Any, path: str | Path, *, selected: Sequence[int] = ()) -> Path:
    """The static map (:func:`deltalens.plots.cluster_map`), selected latents annotated."""
    from ..plots import cluster_map

    pos = {i: j for j, i in enumerate(clustering.latents)}
    ann = {pos[i]: str(i) for i in selected if i in pos}
    return cluster_map(
        clustering.embedding, clustering.labels, path,
        title=f"{len(clustering.latents)} latents, {clustering.n_clusters} clusters", annotate=ann,
    )  # fmt: skip


def progress_figure(
    results: Sequence[Any], path: str | Path, *, title: str = "optimisation progress", max_runs: int = 12
) -> Path:
    """Activation and CE per step of each :class:`~.optimize.OptimizeResult` (module docstring)."""
    from ..plots import optimization_progress

    runs, refs = {}, {}
    fluent = all(h.get("best_fluent_activation") is not None for r in results for h in r.history)
    a_key, c_key = (
        ("best_fluent_activation", "ce_at_best_fluent") if fluent else ("best_activation", "ce_at_best")
    )
    for r in list(results)[:max_runs]:
        name = f"latent {r.latent}" if r.latent is not None else r.target
        runs[name] = {
            "step": [h["step"] for h in r.history],
            "activation": [h[a_key] for h in r.history],
            "ce": [h[c_key] for h in r.history],
        }
        refs[name] = {
            "activation": r.reference.get("collection_max"),
            "ce": r.reference.get("collection_ce_p90"),
        }
    sub = " (best with CE ≤ max_ce)" if fluent else " (best at any CE)"
    return optimization_progress(runs, path, title=title + sub, references=refs)


def acceptance_figure(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Each optimised latent at (CE − the collection's CE p90, activation / the collection max):
    the found prompts lie left of x = 0 and on or above y = 1."""
    from ..plots import scatter

    ok = [r for r in rows if r.get("collection_max") and r.get("collection_ce_p90") is not None]
    x = [r["ce"] - r["collection_ce_p90"] for r in ok]
    y = [r["activation"] / r["collection_max"] for r in ok]
    found = sum(bool(r.get("found")) for r in ok)
    return scatter(
        x, y, path, title=f"reported prompts: {found}/{len(ok)} found", xlabel="CE − collection CE p90 (nats/token)",
        ylabel="activation / collection max", annotate=[str(r["latent"]) for r in ok], hline=1.0, vline=0.0,
    )  # fmt: skip


def _spans(tokens: Sequence[str], values: Sequence[float]) -> str:
    vmax = max([v for v in values if v is not None and np.isfinite(v)] + [0.0])
    out = []
    for t, v in zip(tokens, values):
        a = 0.0 if vmax <= 0 or v is None else max(0.0, min(1.0, float(v) / vmax))
        shown = html.escape(t.replace("\n", "⏎"), quote=True)
        out.append(
            f"<span title='{html.escape(f'{float(v):.3g}' if v is not None else '–', quote=True)}' "
            f"style='background:rgba(255,140,0,{a:.2f})'>{shown}</span>"
        )
    return "".join(out)


def heatmap_rows(results: Sequence[Any]) -> str:
    """HTML rows (one ``<div>`` per result) of the token heatmaps, every model string escaped."""
    rows = []
    for r in results:
        b = r.best
        name = f"latent {r.latent}" if r.latent is not None else r.target
        ok = "survives re-tokenisation" if b.get("survives") else "does NOT survive re-tokenisation"
        ref = r.reference
        extra = (
            f" · collection max {ref['collection_max']:.3g}, CE p90 {ref['collection_ce_p90']:.3g}"
            if ref.get("collection_max") is not None and ref.get("collection_ce_p90") is not None
            else ""
        )
        rows.append(
            f"<div class=row><b>{html.escape(name)}</b> <span class=note>{html.escape(r.method)} · activation "
            f"{b.get('activation', float('nan')):.3g} · CE {b.get('ce', float('nan')):.3g}{html.escape(extra)} · "
            f"{ok}</span><br><code>{_spans(b.get('tokens', []), b.get('per_position', []))}</code></div>"
        )
    return "".join(rows)


def token_heatmap_html(results: Sequence[Any], path: str | Path, *, title: str = "optimised prompts") -> Path:
    """Write the token heatmaps of the reported prompts (module docstring)."""
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>body{{font:13px system-ui,sans-serif;margin:16px}}"
        ".row{margin:10px 0}.note{color:#5b6472}code{font-size:14px;white-space:pre-wrap}</style></head><body>"
        f"<h2>{html.escape(title)}</h2><p class=note>Shading: the target's activation on each token "
        "(darkest = the prompt's maximum); hover a token for its value.</p>"
        f"{heatmap_rows(results)}</body></html>"
    )
    return atomic_write(path, page)


def visualize(
    out_dir: str | Path,
    *,
    clustering: Any = None,
    selection: Any = None,
    optimized: Sequence[Any] = (),
    explanations: Any = None,
    collection: Any = None,
    tokenizer: Any = None,
) -> dict[str, Path]:
    """Every figure the given results allow, written into ``out_dir``; returns them by name."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    if clustering is not None:
        out["cluster_map_html"] = cluster_map_html(
            clustering,
            d / "cluster_map.html",
            collection=collection,
            tokenizer=tokenizer,
            explanations=explanations,
        )
        out["cluster_map_png"] = cluster_map_png(
            clustering, d / "cluster_map.png", selected=selection.latents if selection is not None else ()
        )
    if optimized:
        from .pipeline import acceptance

        out["progress_png"] = progress_figure(optimized, d / "optimization_progress.png")
        rows = [acceptance(r) for r in optimized]
        if any(r["collection_max"] for r in rows):
            out["acceptance_png"] = acceptance_figure(rows, d / "acceptance.png")
        out["heatmaps_html"] = token_heatmap_html(optimized, d / "token_heatmaps.html")
    return out
