"""Report section of the feature analysis: universal/specific tables, firing statistics,
dashboards (top examples with per-token highlighting) and evolution across iterations."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..experiment import Experiment
from .html import bars_svg, esc, figures, fmt, json_file, section, table, token_strip


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        r = csv.DictReader(fh)
        return list(r.fieldnames or []), list(r)


def _num(x: str) -> Any:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return x
    return int(v) if v.is_integer() and "." not in x else v


def _universal(d: Path) -> str:
    out = []
    for f in sorted(d.glob("*.csv")):
        cols, rows = _csv_rows(f)
        show = [c for c in cols if c not in ("chat_desc", "pt_desc", "type")]
        rows.sort(key=lambda r: (-int(r.get("num_prompts") or 0), -float(r.get("activation_mean") or 0)))
        body = [[_num(r.get(c, "")) for c in show] for r in rows]
        out.append(table(show, body, caption=f"{f.name}: {len(rows)} universal features", max_rows=60))
        rec = f.parent / f"{f.stem}_activeprompts.jsonl"
        if rec.is_file():
            n = sum(1 for line in rec.open(encoding="utf-8") if line.strip())
            out.append(
                f"<p class=note>{n} active (feature, prompt) records in <code>{esc(rec.name)}</code>.</p>"
            )
    return "".join(out)


def _specific(d: Path) -> str:
    out = []
    for f in sorted(d.glob("*.csv")):
        _, rows = _csv_rows(f)
        agg: dict[tuple[str, str, str], list[float]] = {}
        for r in rows:
            agg.setdefault((r["source"], r["token"], r["feature_id"]), []).append(float(r["activation"] or 0))
        body = [
            (s, t, int(fid), sum(1 for v in vals if v > 0), len(vals), sum(vals) / len(vals), max(vals))
            for (s, t, fid), vals in agg.items()
        ]
        out.append(
            table(
                ["source", "token", "feature", "prompts > 0", "prompts", "mean", "max"],
                body,
                caption=f"{f.name}: {len(rows)} rows",
                max_rows=60,
            )
        )
    return "".join(out)


def _firing(d: Path) -> str:
    from ..features.firing import FiringStats

    rows = []
    for f in sorted(d.rglob("*.safetensors")):
        try:
            s = FiringStats.load(f).summary()
        except Exception:  # noqa: BLE001 - one unreadable file must not hide the rest
            continue
        rows.append(
            (
                str(f.relative_to(d)),
                s["d_sae"],
                s["n_tokens"],
                s["alive"],
                s["dead"],
                s.get("prompt_only", "–"),
                s["mean_l0"],
            )
        )
    if not rows:
        return ""
    return table(
        ["statistics", "latents", "tokens", "alive", "dead", "prompt-only", "mean L0"],
        rows,
        caption="firing statistics",
    )


def _dashboards(d: Path, max_latents: int = 12, max_examples: int = 5) -> str:
    """Per latent: its top examples as token strips (shade ∝ activation / max; hover shows the
    value), the activation-density histogram and the logit effects (tokens it promotes and
    suppresses, hover shows the value) as inline SVG bars."""
    out = []
    for index in sorted(d.rglob("index.json")):
        idx = json_file(index) or {}
        if idx.get("kind") not in ("feature dashboards", "deltalens.feature_dashboards"):
            continue
        feats = idx.get("features", [])
        cards = []
        for entry in feats[:max_latents]:
            rec = json_file(index.parent / entry["file"]) or {}
            acts = rec.get("activations", [])[:max_examples]
            vmax = float(rec.get("maxActApprox") or 0)
            ex = "".join(
                f"<div class=ex>{token_strip(a.get('tokens', []), a.get('values'), vmax)} "
                f"<span class=note>max {esc(fmt(a.get('maxValue')))}</span></div>"
                for a in acts
            )
            hist = bars_svg(
                [f"{fmt(v)}" for v in rec.get("freq_hist_data_bar_values", [])],
                rec.get("freq_hist_data_bar_heights", []),
                "activation density (tokens per log-spaced bin)",
            )
            pos, neg = rec.get("pos_str", [])[:10], rec.get("neg_str", [])[:10]
            effects = bars_svg(
                [repr(t) for t in pos] + [repr(t) for t in neg],
                list(rec.get("pos_values", [])[: len(pos)]) + list(rec.get("neg_values", [])[: len(neg)]),
                "logit effects: promoted (left), suppressed (right)",
            )
            promotes = ", ".join(repr(t) for t in pos[:6])
            suppresses = ", ".join(repr(t) for t in neg[:4])
            cards.append(
                f"<div class=card id='latent-{esc(rec.get('index'))}'><h3>latent {esc(rec.get('index'))} · fires on "
                f"{esc(fmt(100 * float(rec.get('frac_nonzero') or 0)))}% of tokens · max "
                f"{esc(fmt(rec.get('maxActApprox')))}</h3><p class=note>promotes {esc(promotes)}; suppresses "
                f"{esc(suppresses)}</p>{ex}{hist}{effects}</div>"
            )
        more = (
            f"<p class=note>{len(feats) - max_latents} more latents in {esc(index.parent)}.</p>"
            if len(feats) > max_latents
            else ""
        )
        out.append(f"<h3>dashboards: {esc(index.parent.relative_to(d))}</h3>{''.join(cards)}{more}")
    return "".join(out)


def _evolution(d: Path) -> str:
    out = []
    for summary in sorted(d.rglob("summary.json")):
        data = json_file(summary) or {}
        per = data.get("per_iteration") or []
        if not per:
            continue
        cols = list(per[0].keys())
        out.append(
            table(
                cols,
                [[r.get(c) for c in cols] for r in per],
                caption=f"evolution {summary.parent.name}: " + " → ".join(data.get("iterations", [])),
            )
        )
        counts = data.get("status_counts", {})
        out.append(
            table(
                ["status", "latents"], [(k, v) for k, v in counts.items() if v], caption="latents by status"
            )
        )
        out.append(figures(summary.parent.glob("evolution_*.png")))
    return "".join(out)


@section(80, "SAE features")
def features_section(exp: Experiment) -> str | None:
    """Replaces the generic per-area section of the same title (``sections_areas``; modules
    load in name order, so this registration comes last): the same CSVs and figures,
    summarised, plus firing statistics and dashboards."""
    root = exp.features_dir()
    if not root.is_dir():
        return None
    parts = []
    for title, sub, fn in (
        ("Universal features", "universal", _universal),
        ("Specific features", "specific", _specific),
        ("Firing statistics", "firing", _firing),
        ("Dashboards", "dashboards", _dashboards),
        ("Evolution across iterations", "evolution", _evolution),
    ):
        d = exp.features_dir(sub)
        if d.is_dir():
            body = fn(d)
            if body:
                parts.append(f"<h3>{esc(title)}</h3>{body}")
    return "".join(parts) or None
