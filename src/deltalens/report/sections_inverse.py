"""Report section of the inverse problems: per run, the collection and filter, the clusters
(size, cohesion, driving tokens), the optimised prompts with the acceptance columns and their token
heatmaps, the explanations with their simulation scores, and the figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..experiment import Experiment
from .html import esc, figures, json_file, section, table

_OPT_COLS = (
    "latent",
    "text",
    "activation",
    "collection_max",
    "ce",
    "collection_ce_p90",
    "survives",
    "meets_activation",
    "meets_ce",
    "found",
)


def _frac(rows: list[dict[str, Any]], key: str) -> str:
    v = [bool(r[key]) for r in rows if r.get(key) is not None]
    return f"{sum(v)}/{len(v)}" if v else "–"


def _run(d: Path) -> str:
    run = json_file(d / "inverse_run.json") or {}
    if run.get("kind") != "inverse run":
        return ""
    cfg = run.get("config") or {}
    done = ", ".join(k for k, v in (run.get("stages") or {}).items() if v.get("done"))
    parts = [
        f"<h3>{esc(run.get('name'))} <span class=note>{esc(cfg.get('model'))} · SAE {esc(cfg.get('sae'))} · "
        f"finished stages: {esc(done or '–')}</span></h3>"
    ]
    coll = json_file(d / "collect" / "collect.json") or {}
    filt = json_file(d / "filter" / "filter.json") or {}
    if coll:
        counts = ", ".join(f"{k} {v}" for k, v in (filt.get("counts") or {}).items())
        parts.append(
            f"<p>collection: {esc(coll.get('n_prompts'))} prompts × {esc(coll.get('d_sae'))} latents at "
            f"{esc(coll.get('site'))}; filter kept {esc(len(filt.get('kept') or []))} ({esc(counts)})</p>"
        )
    an = json_file(d / "cluster" / "analysis.json") or {}
    if an.get("clusters") is not None:
        rows = [
            [
                c["cluster"],
                c["size"],
                c.get("cohesion"),
                ", ".join(repr(t["token"]) for t in c.get("top_tokens", [])[:5]),
                " | ".join(p["text"][:60] for p in c.get("top_prompts", [])[:2]),
                ", ".join(map(str, c["latents"][:10])),
            ]
            for c in an["clusters"]
        ]
        parts.append(
            table(
                ["cluster", "size", "cohesion", "driving tokens", "driving prompts", "latents"],
                rows,
                caption=f"clusters ({an.get('noise', 0)} noise latents); cohesion = mean pairwise cosine",
            )
        )
    summ = json_file(d / "optimize" / "optimize_summary.json") or {}
    rows = summ.get("rows") or []
    if rows:
        parts.append(
            table(
                list(_OPT_COLS),
                [[r.get(c) for c in _OPT_COLS] for r in rows],
                caption=(
                    f"optimised prompts: found {_frac(rows, 'found')} (survives re-tokenisation, activation ≥ "
                    f"the collection maximum, CE ≤ the collection's 90th percentile); survives "
                    f"{_frac(rows, 'survives')}"
                ),
            )
        )
        parts.append(_heatmaps(d, rows))
    ex = json_file(d / "explain" / "explanations.json") or {}
    if ex.get("explanations"):
        parts.append(
            table(
                ["latent", "description", "simulation r", "offline r", "source"],
                [
                    [
                        e["index"],
                        e["description"],
                        e["simulation"].get("r"),
                        e.get("offline_r"),
                        e.get("source"),
                    ]
                    for e in ex["explanations"]
                ],
                caption="explanations; r = Pearson correlation of simulated and real activations on held-out prompts",
            )
        )
    viz = d / "viz"
    if viz.is_dir():
        parts.append(figures(sorted(viz.glob("*.png"))))
        cmap = viz / "cluster_map.html"
        if cmap.is_file():
            # the interactive map travels inside the page: a sandboxed frame (scripts, no same
            # origin, no network) whose document is the escaped srcdoc; the PNG above is the fallback
            parts.append(
                "<h3>interactive cluster map</h3><iframe title='cluster map' sandbox='allow-scripts' "
                "style='width:100%;height:640px;border:1px solid #e6e9ee' "
                f"srcdoc='{esc(cmap.read_text(encoding='utf-8'))}'></iframe>"
            )
    return "".join(parts)


def _heatmaps(d: Path, rows: list[dict[str, Any]], limit: int = 20) -> str:
    from ..errors import DataFormatError
    from ..inverse.optimize import OptimizeResult
    from ..inverse.viz import heatmap_rows

    res = []
    for r in rows[:limit]:
        try:
            res.append(OptimizeResult.load(d / "optimize" / f"latent_{r['latent']}"))
        except DataFormatError:
            continue
    return (
        f"<div class=note>token activations of the reported prompts</div>{heatmap_rows(res)}" if res else ""
    )


@section(88, "Inverse problems")
def inverse_section(exp: Experiment) -> str | None:
    root = exp.inverse_dir()
    if not root.is_dir():
        return None
    parts = [_run(p.parent) for p in sorted(root.rglob("inverse_run.json"))]
    return "".join(p for p in parts if p) or None
