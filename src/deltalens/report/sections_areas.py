"""Report sections per analysis area: every figure and table an area wrote.

Each area directory of the experiment (steering, diff, saes, circuits, features, …)
gets a section with its PNG figures (embedded) and its CSV tables (first rows, sortable).
Areas with richer summaries register their own sections too.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..experiment import Experiment
from .html import esc, figure, section, table

AREAS = (
    (40, "steering", "Steering"),
    (50, "diff", "Model diff"),
    (60, "saes", "SAEs"),
    (70, "circuits", "Circuits"),
    (80, "features", "SAE features"),
    (85, "probes", "Probes"),
    (88, "inverse", "Inverse problems"),
)


def _csv_table(path: Path, max_rows: int = 25) -> str:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError:
        return ""
    if not rows:
        return ""
    return table(rows[0], rows[1 : max_rows + 1], caption=f"{path.name} ({len(rows) - 1} rows)")


def _area(exp: Experiment, name: str) -> str | None:
    root = exp.root / name
    if not root.is_dir():
        return None
    out = []
    for sub in sorted({p.parent for p in root.rglob("*.png")} | {p.parent for p in root.rglob("*.csv")}):
        rel = sub.relative_to(exp.root)
        pngs = sorted(sub.glob("*.png"))
        csvs = sorted(sub.glob("*.csv"))
        block = [f"<h3>{esc(rel)}</h3>"]
        block += [_csv_table(c) for c in csvs]
        if pngs:
            block.append(
                "<div class=figs>" + "".join(figure(p, p.stem.replace("_", " ")) for p in pngs) + "</div>"
            )
        out.append("".join(block))
    return "".join(out) or None


def _make(order: int, name: str, title: str) -> None:
    section(order, title)(lambda exp, _n=name: _area(exp, _n))


for _order, _name, _title in AREAS:
    _make(_order, _name, _title)
