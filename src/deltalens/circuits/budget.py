"""Faithfulness and completeness of edge circuits vs the edge budget, with MIB-style CPR / CMD
(Mueller et al. 2025, "MIB: a mechanistic interpretability benchmark"; Hanna et al. 2024).

A circuit ``C_b`` keeps the top ``b`` % of the model's edges by ``|score|`` (EAP or EAP-IG,
:func:`~deltalens.circuits.component_edges.component_edges`). It is run on the **clean**
prompts; every edge ``u → v`` *outside* it is patched with the corrupted run — ``v`` reads
``out_u(corrupted)`` instead of the live ``out_u``::

    in_v ← in_v + Σ_{u: (u→v) ∉ C} (out_u(corrupted) − out_u(live))

in one forward, so upstream changes propagate (``out_u(live)`` is read during the same
forward). With ``F(·)`` the mean metric of such a run, ``F(M)`` = every edge kept (the clean
run) and ``F(∅)`` = none kept (which equals the corrupted run, a check of the edge
bookkeeping):

* **faithfulness** ``f(C) = (F(C) − F(∅)) / (F(M) − F(∅))``;
* **completeness** reported as the faithfulness of the complement ``M∖C`` (0 = complete);
* **CPR** (circuit performance ratio, higher is better) ``= ∫₀¹ f(C_b) db`` and **CMD**
  (circuit–model distance, lower is better) ``= ∫₀¹ |1 − f(C_b)| db``, both by the trapezoid
  rule over ``b ∈ {0} ∪ budgets ∪ {1}`` (fractions of all edges), with ``f(C_0) = 0`` and
  ``f(C_1) = 1`` measured as ``F(∅)`` and ``F(M)``.

Every evaluation is one group of rows of a batched forward.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..errors import ConfigError
from ..hooks import BranchInput, intervene
from ..io import write_json
from ..stage import StageResult, register_result
from .component_edges import ComponentGraph
from .graph import Circuit
from .task import PairTask

if TYPE_CHECKING:
    from ..models.loading import LoadedModel

BUDGETS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)


@register_result
@dataclass
class EdgeBudgetCurve(StageResult):
    """Faithfulness / completeness of top-``b`` % edge circuits and CPR / CMD (module docstring)."""

    KIND: ClassVar[str] = "circuits.edge_budget"
    FILENAME: ClassVar[str] = "edge_budget.json"

    method: str
    budgets: list[float]
    n_edges: int
    kept: list[int]
    f_model: float
    f_empty: float
    f_circuit: list[float]
    f_complement: list[float]
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def _norm(self, xs: Sequence[float]) -> list[float]:
        den = self.f_model - self.f_empty
        return [(x - self.f_empty) / den if den else float("nan") for x in xs]

    @property
    def faithfulness(self) -> list[float]:
        return self._norm(self.f_circuit)

    @property
    def completeness(self) -> list[float]:
        return self._norm(self.f_complement)

    def _area(self, ys: list[float]) -> float:
        xs = [0.0] + [b / 100 for b in self.budgets] + [1.0]
        return sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))

    @property
    def cpr(self) -> float:
        """``∫₀¹ f(C_b) db`` (trapezoid over 0, the budgets, 1)."""
        return self._area([0.0] + self.faithfulness + [1.0])

    @property
    def cmd(self) -> float:
        """``∫₀¹ |1 − f(C_b)| db`` (trapezoid over 0, the budgets, 1)."""
        return self._area([1.0] + [abs(1 - f) for f in self.faithfulness] + [0.0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "budgets_percent": self.budgets,
            "n_edges": self.n_edges,
            "kept": self.kept,
            "F_model": self.f_model,
            "F_empty": self.f_empty,
            "F_circuit": self.f_circuit,
            "F_complement": self.f_complement,
            "faithfulness": self.faithfulness,
            "completeness": self.completeness,
            "CPR": self.cpr,
            "CMD": self.cmd,
            "definitions": {
                "faithfulness": "(F(C) - F(empty)) / (F(M) - F(empty)); edges outside C patched from the corrupted run",
                "CPR": "trapezoid integral of faithfulness over budget fraction 0..1 (higher is better)",
                "CMD": "trapezoid integral of |1 - faithfulness| over budget fraction 0..1 (lower is better)",
            },
            "seconds": round(self.seconds, 3),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EdgeBudgetCurve:
        return cls(
            d["method"],
            list(d["budgets_percent"]),
            int(d["n_edges"]),
            list(d["kept"]),
            float(d["F_model"]),
            float(d["F_empty"]),
            list(d["F_circuit"]),
            list(d["F_complement"]),
            float(d.get("seconds", 0.0)),
            dict(d.get("meta") or {}),
        )

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        return write_json(
            p if p.suffix == ".json" else p / self.FILENAME,
            {"kind": self.KIND, "schema": self.SCHEMA, **self.to_dict()},
        )

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "n_edges": self.n_edges,
            "budgets_percent": self.budgets,
            "faithfulness": [round(f, 4) for f in self.faithfulness],
            "CPR": self.cpr,
            "CMD": self.cmd,
        }


def run_with_edges(
    lm: LoadedModel, task: PairTask, graph: ComponentGraph, keeps: torch.Tensor, batch_tokens: int = 4096
) -> torch.Tensor:
    """Mean metric ``[G]`` of the clean run with, for each keep mask ``keeps[g] [U, V]``, every
    edge outside it patched from the corrupted run (module docstring)."""
    S, T = task.n_seqs, task.width
    corr_reads = graph.readers()
    with torch.no_grad(), intervene(lm, list(corr_reads.values())):
        task.forward(lm, task.ids("corrupted"), task.mask)
    corr = {k: r.value for k, r in corr_reads.items()}
    index = {u.id: i for i, u in enumerate(graph.up)}
    groups: list[tuple[Any, list[int]]] = [("embed", [0])]
    for layer in range(lm.n_layers):
        groups.append(
            (
                ("attn", layer),
                [i for i, u in enumerate(graph.up) if u.kind in ("head", "attn") and u.layer == layer],
            )
        )
        groups.append((("mlp", layer), [index[f"mlp.{layer}"]]))
    valid = graph.mask()
    per = max(1, batch_tokens // max(1, S * T))
    out = []
    for start in range(0, len(keeps), per):
        K = keeps[start : start + per]
        G = len(K)
        live = graph.readers()

        def make_delta(j: int, K: torch.Tensor = K, G: int = G, live: dict = live) -> Any:
            def delta(x: torch.Tensor) -> torch.Tensor:
                tot = torch.zeros(G, S, T, x.shape[-1], device=x.device, dtype=torch.float32)
                for key, idx in groups:
                    if not bool(valid[idx, j].any()):
                        continue
                    a = (~K[:, idx, j]).float().to(x.device)  # [G, n] 1 = edge ablated
                    if not bool(a.any()):
                        continue
                    cur = live[key].value.float().view(G, S, T, -1)
                    diff = corr[key].float().to(x.device).unsqueeze(0) - cur
                    if key != "embed" and key[0] == "attn" and key[1] in graph.head_w:
                        w = graph.head_w[key[1]].to(x.device, torch.float32)  # [H, hd, d]
                        H, hd, _ = w.shape
                        diff = diff.view(G, S, T, H, hd) * a[:, None, None, :, None]
                        tot += diff.reshape(G, S, T, H * hd) @ w.reshape(H * hd, -1)
                    else:
                        tot += diff * a[:, 0, None, None, None]
                return tot.view(G * S, T, -1)

            return delta

        ivs: list[Any] = list(live.values())
        ivs += [BranchInput(v.layer, v.branch, delta=make_delta(j)) for j, v in enumerate(graph.down)]
        with torch.no_grad(), intervene(lm, ivs):
            m = task.metric(task.forward(lm, task.clean_ids.repeat(G, 1), task.mask.repeat(G, 1)))
        out.append(m.mean(-1).cpu())
    return torch.cat(out)


def edge_budget_curve(
    lm: LoadedModel,
    task: PairTask,
    circuit: Circuit,
    budgets: Sequence[float] = BUDGETS,
    batch_tokens: int = 4096,
) -> EdgeBudgetCurve:
    """Faithfulness / completeness of the top-``b`` % circuits ranked by a component-edge
    ``circuit`` (its ``meta["scores"]``, every edge of the model) and CPR / CMD."""
    scores = circuit.meta.get("scores")
    if scores is None or circuit.method not in ("eap", "eap-ig"):
        raise ConfigError(
            "edge budgets need a component-edge circuit (EAP or EAP-IG) with its full score matrix"
        )
    for b in budgets:
        if not 0 < b <= 100:
            raise ConfigError(f"edge budgets are percentages in (0, 100], got {b}")
    t0 = time.perf_counter()
    graph = ComponentGraph(lm, heads=bool(circuit.meta.get("heads", True)))
    S = torch.tensor(scores)
    if list(S.shape) != [len(graph.up), len(graph.down)]:
        raise ConfigError(f"the circuit's score matrix {tuple(S.shape)} does not fit {lm.name}")
    valid = graph.mask()
    n = int(valid.sum())
    order = torch.where(valid, S.abs(), torch.full_like(S, -1.0)).flatten().argsort(descending=True)
    keeps = [valid.clone(), torch.zeros_like(valid)]
    kept = []
    for b in budgets:
        k = max(1, math.ceil(b / 100 * n))
        kept.append(k)
        c = torch.zeros(valid.numel(), dtype=torch.bool)
        c[order[:k]] = True
        c = c.view_as(valid)
        keeps += [c, valid & ~c]
    f = run_with_edges(lm, task, graph, torch.stack(keeps), batch_tokens).tolist()
    return EdgeBudgetCurve(
        circuit.method,
        list(budgets),
        n,
        kept,
        f[0],
        f[1],
        f[2::2],
        f[3::2],
        time.perf_counter() - t0,
        {"ablation": "corrupted run, per edge", "ranked_by": f"|{circuit.method} score|"},
    )
