"""The result of a causal grid: one summary row per cell and metric, with its control and null.

``causal/<name>/`` holds ``results.jsonl`` (one line per generated cell: its scores per item),
``causal.json`` (this result: the rows below and the run's provenance), ``summary.csv`` (the
rows) and figures: ``effect_by_iteration_<type>_<metric>.png`` (effect per iteration with the
null band) and ``dose_response_<metric>.png`` (steering effect per coefficient).

A summary row: ``type, group, iteration, branch, sae, coef, metric, effect, ci_low, ci_high,
p, null_mean, null_low, null_high, z, p_null, outside_null, mean, control_mean, n`` — the
formulas are in :mod:`deltalens.causal.stats`. A group that came from a probe of metric ``m``
is reported for ``m``; an explicit group for every metric.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..io import atomic_write
from ..stage import StageResult, register_result
from .stats import null_comparison, paired_effect

SUMMARY_CSV = "summary.csv"
COLUMNS = (
    "type",
    "group",
    "iteration",
    "branch",
    "sae",
    "coef",
    "metric",
    "effect",
    "ci_low",
    "ci_high",
    "p",
    "null_mean",
    "null_low",
    "null_high",
    "z",
    "p_null",
    "outside_null",
    "mean",
    "control_mean",
    "n",
    "n_null",
    "latents",
)


@register_result
@dataclass
class CausalResult(StageResult):
    """Summary rows of a causal grid (module docstring) and its provenance."""

    KIND: ClassVar[str] = "causal experiments"
    FILENAME: ClassVar[str] = "causal.json"

    name: str
    rows: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    cells: int = 0
    controls: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        path = super().save(d)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
        atomic_write(d / SUMMARY_CSV, buf.getvalue())
        figures(self, d)
        return path

    def summary(self) -> dict[str, Any]:
        real = [r for r in self.rows if r.get("effect") is not None]
        outside = [r for r in real if r.get("outside_null")]
        return {
            "name": self.name,
            "cells": self.cells,
            "summary rows": len(self.rows),
            "outside the null band": f"{len(outside)} of {len(real)}",
            "types": sorted({r["type"] for r in self.rows}),
            "metrics": sorted({r["metric"] for r in self.rows}),
            "seconds": round(self.seconds, 1),
        }

    def table(self) -> list[dict[str, Any]]:
        return list(self.rows)


def summarize(
    records: list[dict[str, Any]], config: Any, plan: Any = None, seconds: float = 0.0
) -> CausalResult:
    """Summary rows from the ``results.jsonl`` records (paired effect vs the control of the
    cell's model, null comparison against the null cells of the same cell)."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    by_key = {r["key"]: r for r in records}
    controls = {r["model"]: r for r in records if r["type"] == "control"}
    nulls: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("null_of") is not None:
            nulls.setdefault((r["type"], r["sae"], r["null_of"], r.get("coef")), []).append(r)
    seed = int(cfg.get("seed", 0))
    rows = []
    for r in by_key.values():
        if r["type"] == "control" or r.get("null_of") is not None:
            continue
        ctrl = controls.get(r["model"])
        if ctrl is None:
            continue
        metrics = [r["metric"]] if r.get("metric") else sorted(r["scores"])
        for m in metrics:
            eff = paired_effect(
                r["scores"][m],
                ctrl["scores"][m],
                bootstrap=int(cfg.get("bootstrap", 2000)),
                permutations=int(cfg.get("permutations", 5000)),
                seed=seed,
            )
            null_eff = [
                paired_effect(n["scores"][m], ctrl["scores"][m], bootstrap=0, permutations=0)["effect"]
                for n in nulls.get((r["type"], r["sae"], r["group"], r.get("coef")), [])
            ]
            rows.append(
                {
                    "type": r["type"],
                    "group": r["group"],
                    "iteration": r["iteration"],
                    "branch": r["branch"],
                    "sae": r["sae"],
                    "coef": r.get("coef"),
                    "metric": m,
                    **eff,
                    **null_comparison(eff["effect"], null_eff),
                    "latents": r["latents"],
                }
            )
    rows.sort(key=lambda x: (x["type"], x["metric"], x["group"], x["iteration"], x["branch"], x["coef"] or 0))
    return CausalResult(
        name=str(cfg.get("name", "causal")),
        rows=rows,
        config=cfg,
        cells=len(by_key),
        controls={f"M{k}": v["means"] for k, v in sorted(controls.items())},
        seconds=seconds,
    )


def summarize_dir(run_dir: str | Path) -> CausalResult:
    """:func:`summarize` of a run directory (finished or interrupted): its ``grid.json`` config and
    ``results.jsonl`` lines."""
    from ..errors import DataFormatError
    from ..io import read_json, read_log

    d = Path(run_dir)
    if not (d / "grid.json").is_file():
        raise DataFormatError(f"not a valid {CausalResult.KIND} directory: {d} (no grid.json)")
    records, _ = read_log(d / "results.jsonl", "cells")
    return summarize(records, read_json(d / "grid.json").get("config") or {})


def figures(res: CausalResult, out: Path) -> list[Path]:
    """Effect by iteration per metric and type (null band shaded); steering dose–response."""
    from ..plots import effects_with_null

    paths = []
    for t in sorted({r["type"] for r in res.rows}):
        for m in sorted({r["metric"] for r in res.rows if r["type"] == t}):
            rows = [r for r in res.rows if r["type"] == t and r["metric"] == m]
            if t == "steering":  # one coefficient per line: the largest
                top = max(float(r["coef"]) for r in rows)
                rows = [r for r in rows if float(r["coef"]) == top]
            series: dict[str, list[dict[str, Any]]] = {}
            for r in rows:
                series.setdefault(f"{r['group']} ({r['branch']})", []).append(r)
            paths.append(
                effects_with_null(
                    series,
                    out / f"effect_by_iteration_{t}_{_slug(m)}.png",
                    x="iteration",
                    title=f"{t}: effect on {m} (null band shaded)",
                    xlabel="iteration",
                )
            )
    steer = [r for r in res.rows if r["type"] == "steering"]
    for m in sorted({r["metric"] for r in steer}):
        rows = [r for r in steer if r["metric"] == m]
        if len({r["coef"] for r in rows}) < 2:
            continue
        series = {}
        for r in rows:
            series.setdefault(f"{r['group']} M{r['iteration']} ({r['branch']})", []).append(r)
        paths.append(
            effects_with_null(
                series,
                out / f"dose_response_{_slug(m)}.png",
                x="coef",
                title=f"steering dose–response on {m}",
                xlabel="coefficient",
            )
        )
    return paths


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in s)
