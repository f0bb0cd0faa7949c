"""Report section of the causal experiments: per run, the controls, one row per cell and metric
(effect with its 95 % CI, sign-flip p, the null band of matched random groups and z) and the
figures (effect by iteration with the null band, steering dose–response)."""

from __future__ import annotations

from pathlib import Path

from ..experiment import Experiment
from .html import esc, figures, json_file, section, table

_COLS = (
    "type",
    "group",
    "iteration",
    "branch",
    "coef",
    "metric",
    "effect",
    "ci_low",
    "ci_high",
    "p",
    "null_low",
    "null_high",
    "z",
    "outside_null",
    "control_mean",
    "mean",
    "n",
)


def _run(d: Path) -> str:
    data = json_file(d / "causal.json") or {}
    if data.get("kind") != "causal experiments":
        return ""
    cfg = data.get("config") or {}
    ctrl = "; ".join(
        f"{m}: " + ", ".join(f"{k} = {v:.4g}" for k, v in (means or {}).items() if v is not None)
        for m, means in (data.get("controls") or {}).items()
    )
    head = (
        f"<h3>{esc(data.get('name'))} <span class=note>{esc(data.get('cells'))} cells, "
        f"{esc(cfg.get('n'))} rollouts × prompts, {esc(cfg.get('null_groups'))} null groups per cell, "
        f"{esc(cfg.get('ablation'))} ablation, {esc(cfg.get('steering_scale'))} steering at "
        f"{esc(cfg.get('positions'))}</span></h3><p class=note>controls (unmodified models): {esc(ctrl)}</p>"
    )
    rows = [[r.get(c) for c in _COLS] for r in data.get("rows", [])]
    return (
        head
        + table(
            list(_COLS),
            rows,
            caption="effect = Δ mean metric vs the control; null band = mean ± 1.96 sd of random groups",
        )
        + figures(sorted(d.glob("*.png")))
    )


@section(86, "Causal experiments")
def causal_section(exp: Experiment) -> str | None:
    root = exp.causal_dir()
    if not root.is_dir():
        return None
    parts = [_run(p.parent) for p in sorted(root.rglob("causal.json"))]
    return "".join(p for p in parts if p) or None
