"""Phase cross-checks: does the weight diff (Phase 3) or the activation similarity (Phase 4)
line up with where steering works (Phase 1)?

Curves per layer ``L``:

* ``steer[L]`` — the best trait Δ at coherence ≥ 70 over every run and method of the trait at
  layer ``L`` (the runs' ``layers`` tables);
* ``dtheta[L] = ‖Δθ_L‖_F`` — the weight diff's per-layer Frobenius norm (``per_layer.layer_fro``
  of ``diff weights``' ``results.json``);
* ``align[L] = |cos(Δ_residual[L], v_L)|`` — the weight diff's trait alignment
  (``trait_alignment.traits.<trait>.layers.<L>.resid_mean``);
* ``sim[L]`` — mean base/fine-tuned activation cosine (``per_layer_similarity.mean`` of
  ``diff activations``' ``results.json``).

Each check reports the two curves' peak layers (``argmax``) and their distance, Pearson
``r = Σ(x−x̄)(y−ȳ) / sqrt(Σ(x−x̄)² Σ(y−ȳ)²)`` and Spearman ``ρ`` (Pearson on ranks) over the
layers both curves cover, and a figure of both curves min–max scaled to [0, 1]:
``dtheta_vs_steering``, ``alignment_vs_steering``, ``similarity_vs_weight_norm``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataFormatError
from ..io import read_json
from ..stage import StageResult, register_result


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):  # average ranks of ties
        m = x == v
        r[m] = r[m].mean()
    return r


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson r (``None`` with < 3 points or a constant curve)."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    if len(a) < 3:
        return None
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return None if den == 0 else float((a * b).sum() / den)


def compare_curves(
    name_x: str, x: Mapping[int, float], name_y: str, y: Mapping[int, float]
) -> dict[str, Any]:
    """Peaks, peak distance, Pearson r and Spearman ρ of two per-layer curves on shared layers."""
    layers = sorted(set(x) & set(y))
    xs, ys = [float(x[L]) for L in layers], [float(y[L]) for L in layers]
    px = max(x, key=lambda L: x[L]) if x else None
    py = max(y, key=lambda L: y[L]) if y else None
    return {
        "x": name_x,
        "y": name_y,
        "layers": layers,
        "x_values": xs,
        "y_values": ys,
        "x_peak_layer": px,
        "y_peak_layer": py,
        "peak_distance": None if px is None or py is None else abs(px - py),
        "pearson_r": pearson(xs, ys),
        "spearman_rho": pearson(_rank(np.array(xs)), _rank(np.array(ys))) if len(xs) >= 3 else None,
    }


def steering_curve(layer_tables: Sequence[Sequence[Mapping[str, Any]]]) -> dict[int, float]:
    """Best Δ (coherence ≥ 70) per layer over every run's ``layers`` table and method."""
    out: dict[int, float] = {}
    for rows in layer_tables:
        for r in rows:
            if r.get("delta") is None:
                continue
            L = int(r["layer"])
            out[L] = max(out.get(L, float("-inf")), float(r["delta"]))
    return out


def _curve_list(values: Sequence[Any]) -> dict[int, float]:
    return {i: float(v) for i, v in enumerate(values) if v is not None}


def _read(path: str | Path | None, kind: str) -> dict[str, Any] | None:
    if path is None:
        return None
    p = Path(path)
    p = p / "results.json" if p.is_dir() else p
    if not p.is_file():
        raise DataFormatError(f"{p}: no {kind} results.json here")
    d = read_json(p)
    if not isinstance(d, dict):
        raise DataFormatError(f"{p}: not a {kind} result")
    return d


@register_result
@dataclass
class CrossCheck(StageResult):
    """The phase cross-checks of one trait (module docstring)."""

    KIND = "phase cross-checks"
    FILENAME = "crosscheck.json"

    trait: str
    checks: dict[str, dict[str, Any]]
    figures: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"trait": self.trait, "checks": self.checks, "figures": self.figures}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CrossCheck:
        return cls(str(d["trait"]), dict(d["checks"]), dict(d.get("figures") or {}))

    def summary(self) -> dict[str, Any]:
        return {
            k: {"pearson_r": v["pearson_r"], "peak_distance": v["peak_distance"]}
            for k, v in self.checks.items()
        }

    def save(self, directory: str | Path) -> Path:
        from ..plots import lines_by_layer

        out = Path(directory)
        for name, c in self.checks.items():
            if len(c["layers"]) < 2:
                continue

            def scaled(v: list[float]) -> list[float]:
                lo, hi = min(v), max(v)
                return [0.5 if hi == lo else (x - lo) / (hi - lo) for x in v]

            r = c["pearson_r"]
            lines_by_layer(
                {c["x"]: scaled(c["x_values"]), c["y"]: scaled(c["y_values"])},
                out / f"{name}.png",
                layers=c["layers"],
                title=f"{self.trait}: {name.replace('_', ' ')} (r = {'-' if r is None else f'{r:.2f}'})",
                ylabel="min–max scaled",
            )
            self.figures[name] = f"{name}.png"
        return super().save(out)


def cross_check(
    trait: str,
    layer_tables: Sequence[Sequence[Mapping[str, Any]]],
    weight_diff: str | Path | Mapping[str, Any] | None = None,
    activation_diff: str | Path | Mapping[str, Any] | None = None,
) -> CrossCheck:
    """The cross-checks that the given results allow (see the module docstring)."""
    w = weight_diff if isinstance(weight_diff, Mapping) else _read(weight_diff, "weight diff")
    a = (
        activation_diff
        if isinstance(activation_diff, Mapping)
        else _read(activation_diff, "activation similarity")
    )
    steer = steering_curve(layer_tables)
    checks: dict[str, dict[str, Any]] = {}
    dtheta = _curve_list((w or {}).get("per_layer", {}).get("layer_fro") or [])
    if w is not None and steer and dtheta:
        checks["dtheta_vs_steering"] = compare_curves("‖Δθ‖_F", dtheta, "steering Δ (coh ≥ 70)", steer)
    if w is not None and steer:
        traits = (w.get("trait_alignment") or {}).get("traits") or {}
        name = trait.split("/")[-1]
        key = next((k for k in traits if k == trait), None) or next((k for k in traits if name in k), None)
        if key is not None:
            align = {int(L): abs(float(e["resid_mean"])) for L, e in traits[key]["layers"].items()}
            checks["alignment_vs_steering"] = compare_curves(
                f"|cos(Δ_residual, v)| ({key})", align, "steering Δ (coh ≥ 70)", steer
            )
    sim = _curve_list((a or {}).get("per_layer_similarity", {}).get("mean") or [])
    if sim and dtheta:
        checks["similarity_vs_weight_norm"] = compare_curves("activation similarity", sim, "‖Δθ‖_F", dtheta)
    if not checks:
        raise DataFormatError(
            "no cross-check possible: give a weight diff (diff weights results.json) with steering runs, "
            "or a weight diff and an activation similarity result"
        )
    return CrossCheck(trait.split("/")[-1], checks)
