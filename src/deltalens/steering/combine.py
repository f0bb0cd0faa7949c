"""Phase 2: do combinations of two trait vectors beat the best single vector?

Given two vector sources A and B (the seed's *natural* and *instruction* vectors, each a
vector set ``{layer: vector}`` with its Phase-1 best layer ``L_A``/``L_B`` and best relative
coefficient ``c_A``/``c_B`` at coherence ≥ 70), the strategies of the seed are:

1. **sum at A's layer** — ``u = (â + b̂) / ‖â + b̂‖`` with both vectors taken at ``L_A``,
   steered at ``L_A`` with coefficient ``m · c_A``;
2. **sum at B's layer** — the same at ``L_B`` with ``m · c_B``;
3. **sum at the best layer of either** — strategy 1 or 2, whichever source had the larger
   single-vector Δ (its results are shared with that strategy);
4. **ensemble** — two hooks: A at ``L_A`` with ``m · c_A / 2`` and B at ``L_B`` with
   ``m · c_B / 2`` (half-strength each at ``m = 1``).

Each strategy sweeps the multiplier ``m`` (default 0.5, 0.75, 1, 1.25, 1.5, 2) in one
batch, and reports its best Δ with coherence ≥ 70. Coefficients are relative
(:mod:`deltalens.steering.evaluate`), so a unit-norm sum is steered at the same scale as
a single vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..vectors import TraitVector
from .results import SteeringRecord
from .terms import Candidate, Term

MULTIPLIERS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


@dataclass
class Source:
    """A vector set with its Phase-1 winner."""

    name: str  # short label, e.g. "nat5_md"
    vectors: dict[int, TraitVector]
    best_layer: int
    best_coef: float  # relative coefficient
    best_delta: float | None = None
    best_coherence: float | None = None


def summed_vector(a: TraitVector, b: TraitVector, layer: int) -> TraitVector:
    """``(â + b̂)/‖â + b̂‖`` as a vector of its own (metadata records both parents)."""
    u = a.unit + b.unit
    u = u / u.norm().clamp(min=1e-12)
    meta = {
        "trait": f"{a.meta.get('trait')}+{b.meta.get('trait')}",
        "variant": f"{a.meta.get('variant')}+{b.meta.get('variant')}",
        "positions": f"{a.meta.get('positions')}+{b.meta.get('positions')}",
        "method": f"sum({a.method},{b.method})",
        "layer": layer,
        "component": a.component,
        "parents": [a.fingerprint(), b.fingerprint()],
    }
    return TraitVector(u, meta)


def combination_candidates(
    a: Source, b: Source, multipliers: Sequence[float] = MULTIPLIERS
) -> list[Candidate]:
    """Candidates of strategies 1, 2 and 4 (3 reuses 1 or 2; see :func:`comparison_table`)."""
    cands = []
    for strat, src in (("sum@A", a), ("sum@B", b)):
        L = src.best_layer
        if L not in a.vectors or L not in b.vectors:
            continue
        v = summed_vector(a.vectors[L], b.vectors[L], L)
        for m in multipliers:
            c = round(m * src.best_coef, 6)
            cands.append(
                Candidate(
                    (Term(v, c),), "combination", f"{strat} L{L} c{c:g}", {"strategy": strat, "multiplier": m}
                )
            )
    for m in multipliers:
        ta = Term(a.vectors[a.best_layer], round(m * a.best_coef / 2, 6))
        tb = Term(b.vectors[b.best_layer], round(m * b.best_coef / 2, 6))
        cands.append(
            Candidate(
                (ta, tb),
                "combination",
                f"ensemble L{a.best_layer}+L{b.best_layer} x{m:g}",
                {"strategy": "ensemble", "multiplier": m},
            )
        )
    return cands


def _best_ok(recs: list[SteeringRecord], min_coh: float) -> SteeringRecord | None:
    ok = [r for r in recs if r.coherent(min_coh)]
    return max(ok, key=lambda r: r.trait_mean or 0.0) if ok else None


def comparison_table(
    a: Source, b: Source, records: Sequence[SteeringRecord], baseline: SteeringRecord, min_coh: float = 70.0
) -> list[dict[str, Any]]:
    """The seed's Phase-2 table: best single per source, then strategies 1–4 (best Δ at coherence ≥ ``min_coh``)."""
    rows: list[dict[str, Any]] = []
    for src in (a, b):
        rows.append(
            {
                "config": f"best single ({src.name})",
                "layers": str(src.best_layer),
                "coef": src.best_coef,
                "delta": src.best_delta,
                "coherence": src.best_coherence,
                "notes": "Phase 1 winner",
            }
        )
    by_strat: dict[str, list[SteeringRecord]] = {}
    for r in records:
        by_strat.setdefault(r.meta.get("strategy", "?"), []).append(r)
    winner = a if (a.best_delta or -1e9) >= (b.best_delta or -1e9) else b
    plan = [
        ("strategy 1", "sum@A", f"sum at {a.name}'s layer", str(a.best_layer)),
        ("strategy 2", "sum@B", f"sum at {b.name}'s layer", str(b.best_layer)),
        (
            "strategy 3",
            "sum@A" if winner is a else "sum@B",
            f"sum at the best layer of either ({winner.name})",
            str(winner.best_layer),
        ),
        (
            "strategy 4",
            "ensemble",
            "ensemble, half coefficients at both layers",
            f"{a.best_layer}+{b.best_layer}",
        ),
    ]
    for name, key, note, layers in plan:
        best = _best_ok(by_strat.get(key, []), min_coh)
        if best is None:
            rows.append(
                {
                    "config": name,
                    "layers": layers,
                    "coef": None,
                    "delta": None,
                    "coherence": None,
                    "notes": f"{note}; no multiplier reached coherence ≥ {min_coh:g}",
                }
            )
            continue
        coefs = "+".join(f"{c:g}" for c in best.coefs)
        rows.append(
            {
                "config": name,
                "layers": layers,
                "coef": coefs,
                "delta": best.delta(baseline),
                "coherence": best.coherence_mean,
                "notes": f"{note} (x{best.meta.get('multiplier')})",
            }
        )
    return rows
