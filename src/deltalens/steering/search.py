"""Coefficient search and the checkpoint summary of a vector's steering results.

**Adaptive search** (:func:`adaptive_search`) finds, for every layer at once, the largest
coefficient that keeps coherence at or above ``threshold``. Each layer follows its own
trajectory, but all layers are stepped together: round k evaluates one coefficient per
active layer, all as row slices of one generation batch. Per layer, with ``lo`` the
largest coefficient seen with coherence ≥ threshold and ``hi`` the smallest seen below:

* no failure yet (``hi`` unset): next = coef × ``up`` (default 1.6);
* no success yet (``lo`` unset): next = coef × ``down`` (default 0.5);
* bracketed: next = √(lo · hi) (bisection in log space); the layer stops once
  ``hi / lo ≤ 1 + tol``.

The search starts at ``start`` (relative coefficient, default 0.15: 15 % of the layer's
mean activation norm) and runs ``steps`` rounds (default 6). A fine grid
(:func:`grid_search`, ``--coefficients``) evaluates given coefficients for given layers,
again in one batch. Every evaluation is a record in ``results.jsonl`` and is reused by a
re-run, so a killed search resumes where it stopped.

**Checkpoint summary** (:func:`checkpoint_summary`), per vector set (method):
trait Δ = trait_mean − baseline trait_mean;

* ``best_layer`` — the layer of the largest Δ among configurations with coherence ≥ 70
  (falls back to ≥ 0 when none reaches 70, flagged);
* ``max_delta_coh80`` / ``max_delta_coh70`` — the largest Δ with coherence ≥ 80 / ≥ 70
  (any layer), with its layer and coefficient;
* ``coef_coh_below_80`` — at the best layer, the smallest evaluated coefficient whose
  coherence is below 80 (where coherence first drops below 80 as the coefficient grows).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..vectors import TraitVector
from .evaluate import Candidate, EvalSettings, Monitor, evaluate_candidates
from .results import ResultsLog, SteeringRecord

if TYPE_CHECKING:
    from ..judges import Judge, JudgeCache, TraitInfo
    from ..models.loading import LoadedModel
    from ..scale.backends import BackendConfig


@dataclass
class LayerState:
    layer: int
    coef: float
    lo: float | None = None
    hi: float | None = None
    done: bool = False
    history: list[tuple[float, float | None, float | None]] = field(default_factory=list)


@dataclass
class SearchResult:
    baseline: SteeringRecord
    records: list[SteeringRecord]
    states: dict[str, dict[int, LayerState]] = field(default_factory=dict)


def _next_coef(st: LayerState, ok: bool, up: float, down: float, tol: float) -> None:
    if ok:
        st.lo = st.coef if st.lo is None else max(st.lo, st.coef)
    else:
        st.hi = st.coef if st.hi is None else min(st.hi, st.coef)
    if st.hi is None:
        st.coef = st.coef * up
    elif st.lo is None:
        st.coef = st.coef * down
    else:
        if st.hi / st.lo <= 1 + tol:
            st.done = True
        st.coef = math.sqrt(st.lo * st.hi)
    st.coef = float(f"{st.coef:.4g}")  # readable, stable keys


def adaptive_search(
    lm: LoadedModel,
    vector_sets: dict[str, dict[int, TraitVector]],
    settings: EvalSettings,
    judge: Judge,
    trait: TraitInfo,
    log: ResultsLog,
    *,
    layers: Sequence[int] | None = None,
    start: float = 0.15,
    steps: int = 6,
    threshold: float = 75.0,
    up: float = 1.6,
    down: float = 0.5,
    tol: float = 0.08,
    coef_mode: str = "relative",
    cache: JudgeCache | None = None,
    monitor: Monitor | None = None,
    trait_id: str | None = None,
    progress: bool = True,
    report: Callable[[int, list[tuple[str, LayerState, SteeringRecord]]], None] | None = None,
    backend: BackendConfig | None = None,
) -> SearchResult:
    """Adaptive per-layer coefficient search for one or more vector sets (``{method: {layer: vector}}``),
    all layers and sets stepped together in one batch per round (see the module docstring)."""
    base = evaluate_candidates(
        lm,
        [Candidate.baseline()],
        settings,
        judge,
        trait,
        log,
        cache=cache,
        monitor=monitor,
        trait_id=trait_id,
        progress=progress,
        backend=backend,
    )[0]
    states: dict[str, dict[int, LayerState]] = {}
    for name, vs in vector_sets.items():
        ls = sorted(vs) if layers is None else [L for L in layers if L in vs]
        states[name] = {L: LayerState(L, start) for L in ls}
    records: list[SteeringRecord] = []
    for step in range(steps):
        active = [(name, st) for name, sts in states.items() for st in sts.values() if not st.done]
        if not active:
            break
        cands = [
            Candidate.single(
                vector_sets[name][st.layer],
                st.coef,
                coef_mode,
                search="adaptive",
                round=step,
                vector_set=name,
            )
            for name, st in active
        ]
        recs = evaluate_candidates(
            lm,
            cands,
            settings,
            judge,
            trait,
            log,
            cache=cache,
            monitor=monitor,
            trait_id=trait_id,
            progress=progress,
            backend=backend,
        )
        rows = []
        for (name, st), rec in zip(active, recs):
            coh = rec.coherence_mean
            st.history.append((st.coef, rec.trait_mean, coh))
            rows.append((name, LayerState(st.layer, st.coef, st.lo, st.hi), rec))
            _next_coef(st, coh is not None and coh >= threshold, up, down, tol)
            records.append(rec)
        if report is not None:
            report(step, rows)
    return SearchResult(base, records, states)


def grid_search(
    lm: LoadedModel,
    vector_sets: dict[str, dict[int, TraitVector]],
    settings: EvalSettings,
    judge: Judge,
    trait: TraitInfo,
    log: ResultsLog,
    coefficients: Sequence[float],
    *,
    layers: Sequence[int] | None = None,
    coef_mode: str = "relative",
    cache: JudgeCache | None = None,
    monitor: Monitor | None = None,
    trait_id: str | None = None,
    progress: bool = True,
    backend: BackendConfig | None = None,
) -> SearchResult:
    """Evaluate every (layer, coefficient) of a grid for each vector set, in one batch (or as
    work units on ``backend``, see :func:`~deltalens.steering.evaluate.evaluate_candidates`)."""
    base = evaluate_candidates(
        lm,
        [Candidate.baseline()],
        settings,
        judge,
        trait,
        log,
        cache=cache,
        monitor=monitor,
        trait_id=trait_id,
        progress=progress,
        backend=backend,
    )[0]
    cands = []
    for name, vs in vector_sets.items():
        ls = sorted(vs) if layers is None else [L for L in layers if L in vs]
        for L in ls:
            for c in coefficients:
                cands.append(Candidate.single(vs[L], float(c), coef_mode, search="grid", vector_set=name))
    recs = evaluate_candidates(
        lm,
        cands,
        settings,
        judge,
        trait,
        log,
        cache=cache,
        monitor=monitor,
        trait_id=trait_id,
        progress=progress,
        backend=backend,
    )
    return SearchResult(base, recs)


# ---- summaries ---------------------------------------------------------------------------------


def _best(rows: list[dict[str, Any]], min_coh: float) -> dict[str, Any] | None:
    ok = [
        r
        for r in rows
        if r.get("coherence") is not None and r["coherence"] >= min_coh and r.get("delta") is not None
    ]
    return max(ok, key=lambda r: r["delta"]) if ok else None


def checkpoint_summary(
    records: Sequence[SteeringRecord], baseline: SteeringRecord
) -> dict[str, dict[str, Any]]:
    """Per method: best layer, max Δ at coherence ≥ 80 / ≥ 70, coefficient where coherence
    first drops below 80 (see the module docstring). Records of kind ``single`` only."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.kind != "single" or r.trait_mean is None:
            continue
        row = {
            "layer": r.layer,
            "coef": r.coef,
            "trait": r.trait_mean,
            "coherence": r.coherence_mean,
            "delta": r.delta(baseline),
            "coef_mode": r.coef_mode,
        }
        by_method.setdefault(str(r.method), []).append(row)
    out: dict[str, dict[str, Any]] = {}
    for method, rows in by_method.items():
        b80, b70 = _best(rows, 80.0), _best(rows, 70.0)
        best = b70 or _best(rows, -1.0)
        best_layer = best["layer"] if best else None
        drop = None
        if best_layer is not None:
            at = sorted((r for r in rows if r["layer"] == best_layer), key=lambda r: r["coef"])
            drop = next((r["coef"] for r in at if r["coherence"] is not None and r["coherence"] < 80), None)
        out[method] = {
            "best_layer": best_layer,
            "best_layer_meets_coh70": b70 is not None,
            "max_delta_coh80": None if b80 is None else b80["delta"],
            "at_coh80": None
            if b80 is None
            else {
                "layer": b80["layer"],
                "coef": b80["coef"],
                "coherence": b80["coherence"],
                "trait": b80["trait"],
            },
            "max_delta_coh70": None if b70 is None else b70["delta"],
            "at_coh70": None
            if b70 is None
            else {
                "layer": b70["layer"],
                "coef": b70["coef"],
                "coherence": b70["coherence"],
                "trait": b70["trait"],
            },
            "coef_coh_below_80": drop,
            "n_configs": len(rows),
            "baseline_trait": baseline.trait_mean,
            "baseline_coherence": baseline.coherence_mean,
        }
    return out


def per_layer_table(
    records: Sequence[SteeringRecord], baseline: SteeringRecord, min_coh: float = 70.0
) -> list[dict[str, Any]]:
    """Per (method, layer): the best Δ with coherence ≥ ``min_coh`` and its coefficient."""
    groups: dict[tuple[str, int], list[SteeringRecord]] = {}
    for r in records:
        if r.kind == "single" and r.trait_mean is not None and r.layer is not None:
            groups.setdefault((str(r.method), int(r.layer)), []).append(r)
    out = []
    for (method, layer), rs in sorted(groups.items()):
        ok = [r for r in rs if r.coherent(min_coh)]
        best = max(ok, key=lambda r: r.trait_mean or 0.0) if ok else None
        out.append(
            {
                "method": method,
                "layer": layer,
                "n": len(rs),
                "best_coef": None if best is None else best.coef,
                "delta": None if best is None else best.delta(baseline),
                "coherence": None if best is None else best.coherence_mean,
            }
        )
    return out
