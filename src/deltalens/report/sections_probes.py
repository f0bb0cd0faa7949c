"""Report section of the probes: per fit, CV AUROC of every probe next to its dense baseline and
controls, the top latents, the annotation rounds, the correlations at each threshold, the
figures (AUROC bars, connected scatterplots) and any comparison."""

from __future__ import annotations

from pathlib import Path

from ..experiment import Experiment
from .html import esc, figures, json_file, section, table


def _fit(d: Path) -> str:
    data = json_file(d / "probe.json") or {}
    if data.get("kind") != "probe fit":
        return ""
    out = [
        f"<h3>{esc(d.name)} <span class=note>SAE {esc(data.get('sae'))} at {esc(data.get('site'))}, "
        f"{esc(data.get('n_sequences'))} sequences, {esc(data.get('d_sae'))} latents</span></h3>"
    ]
    labels = data.get("labels") or {}
    out.append(
        "<p class=note>"
        + esc(
            "; ".join(
                f"{m}: {v['high']} high (≥ {v['high_cut']:.4g}), {v['low']} low (≤ {v['low_cut']:.4g})"
                for m, v in labels.items()
            )
        )
        + "</p>"
    )
    j = data.get("join") or {}
    out.append(
        f"<p class=note>join on {esc(j.get('key'))}: {esc(j.get('unmatched_keys'))} unmatched metric rows, "
        f"{esc(j.get('sequences_without_metrics'))} sequences without metrics, constant: {esc(j.get('constant') or 'none')}</p>"
    )
    rows = [
        (
            p["metric"],
            p["method"],
            p.get("k"),
            p["cv_auroc"],
            p.get("cv_auroc_se"),
            p.get("dense_auroc"),
            p.get("shuffled_auroc"),
            p.get("random_latents_auroc"),
            ", ".join(map(str, p.get("top_latents", [])[:10])),
        )
        for p in data.get("probes", [])
    ]
    out.append(
        table(
            [
                "metric",
                "method",
                "k",
                "CV AUROC",
                "± SE",
                "dense baseline",
                "shuffled labels",
                "random latents",
                "top latents",
            ],
            rows,
            caption="probes (stratified CV)",
        )
    )
    ann = json_file(d / "annotate.json") or {}
    if ann.get("kind") == "probe annotation":
        out.append(
            table(
                ["latent", "metric", "direction", "round", "importance", "auroc_before", "auroc_after"],
                [
                    [
                        r.get(c)
                        for c in (
                            "latent",
                            "metric",
                            "direction",
                            "round",
                            "importance",
                            "auroc_before",
                            "auroc_after",
                        )
                    ]
                    for r in ann.get("rows", [])
                ],
                caption="iterative annotation",
                max_rows=60,
            )
        )
    cor = json_file(d / "correlate.json") or {}
    if cor.get("kind") == "probe correlations":
        out.append(
            table(
                ["metric", "threshold", "property", "spearman", "p_value", "n_latents"],
                [
                    [
                        r.get(c)
                        for c in ("metric", "threshold", "property", "spearman", "p_value", "n_latents")
                    ]
                    for r in cor.get("rows", [])
                ],
                caption="Spearman(importance, property) per threshold",
            )
        )
    out.append(figures(d.glob("*.png")))
    return "".join(out)


def _compare(d: Path) -> str:
    data = json_file(d / "compare.json") or {}
    rows = data.get("rows") or []
    if data.get("kind") != "probe comparison" or not rows:
        return ""
    cols = [c for c in rows[0] if c not in ("shared_top",)]
    return f"<h3>{esc(d.name)}</h3>" + table(
        cols, [[r.get(c) for c in cols] for r in rows], caption="probe comparison"
    )


@section(85, "Probes")
def probes_section(exp: Experiment) -> str | None:
    """Replaces the generic per-area section of the same title (modules load in name order)."""
    root = exp.probes_dir()
    if not root.is_dir():
        return None
    parts = [_fit(d) for d in sorted(p.parent for p in root.rglob("probe.json"))]
    parts += [_compare(d) for d in sorted(p.parent for p in root.rglob("compare.json"))]
    return "".join(p for p in parts if p) or None
