"""Faithfulness and completeness of a circuit: keep the top-k nodes, mean-ablate the rest.

Definitions (Marks et al. 2024, "Sparse feature circuits", §3; Wang et al. 2023 for
mean ablation). ``F(·)`` is the task metric (mean over pairs) on the **clean** prompts
with every node *outside* the given set mean-ablated:

* ``F(M)`` — the whole model (nothing ablated);
* ``F(∅)`` — every node ablated;
* **faithfulness** of a circuit ``C``:  ``(F(C) − F(∅)) / (F(M) − F(∅))`` — 1 means the
  circuit alone recovers the model's behaviour;
* **completeness**, reported as the faithfulness of the complement ``M∖C``:
  ``(F(M∖C) − F(∅)) / (F(M) − F(∅))`` — near 0 means nothing important was left out.

Nodes are either components (``attn_out`` / ``mlp_out`` of one layer at one grid
position, ranked by a :class:`~deltalens.circuits.PatchingResult`) or SAE nodes (one latent
at one position, and the error node at each position, ranked by an
:class:`~deltalens.circuits.SAEAttribution`). ``C_k`` = the ``k`` nodes with the largest
|score|. **Mean ablation** replaces a node's activation with its mean over both runs
(clean and corrupted) of every pair at the same position (real tokens only). Only grid
(prompt) positions hold nodes; answer tokens of ``logprob_diff`` are never ablated.
Every k is one group of rows of a batched forward.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..errors import ConfigError, DataFormatError
from ..hooks import Replace, Site, Splice, intervene
from ..io import write_json
from ..stage import StageResult, register_result
from .patching import cache_run
from .results import PatchingResult
from .sae_attribution import SAEAttribution
from .task import PairTask

if TYPE_CHECKING:
    from ..models.loading import LoadedModel

DEFAULT_KS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


@register_result
@dataclass
class FaithfulnessCurve(StageResult):
    """Faithfulness / completeness as the circuit grows (see module docstring).

    Saved as one JSON file (``faithfulness.json`` in a directory, or any ``.json`` path)."""

    KIND: ClassVar[str] = "circuits.faithfulness"
    FILENAME: ClassVar[str] = "faithfulness.json"

    nodes: str
    ks: list[int]
    n_nodes: int
    f_model: float
    f_empty: float
    f_circuit: list[float]
    f_complement: list[float]
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def faithfulness(self) -> list[float]:
        den = self.f_model - self.f_empty
        return [(f - self.f_empty) / den if den else float("nan") for f in self.f_circuit]

    @property
    def completeness(self) -> list[float]:
        """Faithfulness of the complement ``M∖C_k`` (0 = complete)."""
        den = self.f_model - self.f_empty
        return [(f - self.f_empty) / den if den else float("nan") for f in self.f_complement]

    def smallest_k(self, target: float = 0.8) -> int | None:
        """The smallest k whose circuit reaches the given faithfulness (None if none does)."""
        for k, f in zip(self.ks, self.faithfulness):
            if f >= target:
                return k
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.KIND,
            "schema": self.SCHEMA,
            "nodes": self.nodes,
            "n_nodes": self.n_nodes,
            "definitions": {
                "faithfulness": "(F(C) - F(empty)) / (F(M) - F(empty))",
                "completeness": "(F(M minus C) - F(empty)) / (F(M) - F(empty)); 0 = complete",
                "ablation": "mean over clean and corrupted runs, per position",
            },
            "F_model": self.f_model,
            "F_empty": self.f_empty,
            "k": self.ks,
            "F_circuit": self.f_circuit,
            "F_complement": self.f_complement,
            "faithfulness": self.faithfulness,
            "completeness": self.completeness,
            "seconds": round(self.seconds, 3),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaithfulnessCurve:
        if d.get("kind", cls.KIND) != cls.KIND:
            raise DataFormatError(f"not a valid {cls.KIND} (kind is {d.get('kind')!r})")
        return cls(
            str(d["nodes"]),
            [int(k) for k in d["k"]],
            int(d["n_nodes"]),
            float(d["F_model"]),
            float(d["F_empty"]),
            [float(x) for x in d["F_circuit"]],
            [float(x) for x in d["F_complement"]],
            float(d.get("seconds", 0.0)),
            dict(d.get("meta") or {}),
        )

    def save(self, path: str | Path) -> Path:
        """Write the curve: ``path`` is a ``.json`` file or a directory (``faithfulness.json`` in it)."""
        p = Path(path)
        return write_json(p if p.suffix == ".json" else p / self.FILENAME, self.to_dict())

    def summary(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "k": self.ks,
            "faithfulness": self.faithfulness,
            "completeness": self.completeness,
        }

    def plot(self, path: str | Path) -> Path:
        from ..plots import new_figure, save_figure

        fig, ax = new_figure(6.0, 4.0)
        ax.plot(self.ks, self.faithfulness, marker="o", ms=3, label="faithfulness F(C)")
        ax.plot(self.ks, self.completeness, marker="s", ms=3, label="complement F(M∖C)")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(f"k (top nodes kept, of {self.n_nodes} {self.nodes} nodes)")
        ax.set_ylabel("(F − F(∅)) / (F(M) − F(∅))")
        ax.set_title("circuit faithfulness (mean ablation)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        return save_figure(fig, path)


def _masked_mean(xs: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``[S, T, d]`` tensors at real positions → ``[T, d]``."""
    m = mask.to(xs[0].device).float().unsqueeze(-1)
    tot = sum((x.float() * m).sum(0) for x in xs)
    return (tot / (len(xs) * m.sum(0)).clamp(min=1)).to(xs[0].dtype)


def _ks(ks: Sequence[int] | None, n: int) -> list[int]:
    ks = sorted({int(k) for k in (ks or DEFAULT_KS) if 0 < int(k) <= n} | {n})
    return ks


def _component_curve(
    lm: LoadedModel, task: PairTask, result: PatchingResult, ks: Sequence[int] | None, batch_tokens: int
) -> FaithfulnessCurve:
    comps = [c for c in result.components if c in ("attn_out", "mlp_out")]
    if not comps:
        raise ConfigError(
            "component faithfulness needs attn_out and/or mlp_out scores (resid nodes overlap every "
            "upstream node and cannot be ablated independently)"
        )
    sites = [Site(layer, c) for c in comps for layer in result.layers]
    cols = list(result.positions)
    ci = [result.components.index(c) for c in comps]
    scores = result.effect[ci].reshape(len(sites), len(cols))  # [n_sites, P]
    n = scores.numel()
    order = scores.flatten().abs().argsort(descending=True)
    ks = _ks(ks, n)
    clean, _ = cache_run(lm, task, "clean", sites)
    corr, _ = cache_run(lm, task, "corrupted", sites)
    means = {s: _masked_mean([clean[s], corr[s]], task.mask.bool()) for s in sites}

    keeps = _keep_masks(order, ks, n)
    S, T = task.n_seqs, task.width
    col_idx = torch.tensor(cols)
    per = max(1, batch_tokens // max(1, S * T))
    out = []
    for start in range(0, len(keeps), per):
        chunk = keeps[start : start + per]
        G = len(chunk)
        ivs = []
        for si, s in enumerate(sites):
            where = torch.zeros(G, T, dtype=torch.bool)
            for g, keep in enumerate(chunk):
                where[g, col_idx] = ~keep.view(len(sites), len(cols))[si]
            if where.any():
                ivs.append(Replace(s, means[s], where=where.repeat_interleave(S, 0)))
        with torch.no_grad(), intervene(lm, ivs):
            logits = task.forward(lm, task.clean_ids.repeat(G, 1), task.mask.repeat(G, 1))
        out.append(task.metric(logits).mean(-1).cpu())
    f = torch.cat(out).tolist()
    return FaithfulnessCurve(
        "component",
        ks,
        n,
        f[0],
        f[1],
        f[2::2],
        f[3::2],
        meta={
            "components": comps,
            "layers": result.layers,
            "positions": cols,
            "ranked_by": f"|{result.method} effect| ({result.direction})",
        },
    )


def _keep_masks(order: torch.Tensor, ks: Sequence[int], n: int) -> list[torch.Tensor]:
    """Keep-masks over ``n`` nodes, one per evaluation: M (all), ∅ (none), then C_k (the
    top-k by ``order``) and its complement M∖C_k for each k."""
    keeps = [torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)]
    for k in ks:
        kc = torch.zeros(n, dtype=torch.bool)
        kc[order[:k]] = True
        keeps += [kc, ~kc]
    return keeps


def _sae_curve(
    lm: LoadedModel,
    task: PairTask,
    result: SAEAttribution,
    sae: Any,
    ks: Sequence[int] | None,
    include_error: bool,
    batch_tokens: int,
) -> FaithfulnessCurve:
    if sae is None:
        raise ConfigError("SAE faithfulness needs the SAE object (sae=)")
    s = result.site
    cols = list(result.positions)
    P, D = len(cols), result.d_sae
    scores = result.scores.flatten()
    if include_error and result.error_scores is not None:
        scores = torch.cat([scores, result.error_scores])
    n = scores.numel()
    order = scores.abs().argsort(descending=True)
    ks = _ks(ks, n)
    recs = {}
    for which in ("clean", "corrupted"):
        sp = Splice(s, sae, keep_error=True, record=True, check_site=False)
        with torch.no_grad(), intervene(lm, [sp]):
            task.forward(lm, task.ids(which), task.mask)
        recs[which] = (sp.latents[-1], sp.errors[-1])
    real = task.mask.bool()
    f_mean = _masked_mean([recs["clean"][0], recs["corrupted"][0]], real)  # [T, d_sae]
    e_mean = _masked_mean([recs["clean"][1], recs["corrupted"][1]], real)  # [T, d]

    keeps = _keep_masks(order, ks, n)
    S, T = task.n_seqs, task.width
    col_idx = torch.tensor(cols)
    per = max(1, batch_tokens // max(1, S * T))
    out = []
    for start in range(0, len(keeps), per):
        chunk = keeps[start : start + per]
        G = len(chunk)
        lat_ablate = torch.zeros(G, T, D, dtype=torch.bool)
        err_ablate = torch.zeros(G, T, dtype=torch.bool)
        for g, keep in enumerate(chunk):
            lat_ablate[g, col_idx] = ~keep[: P * D].view(P, D)
            if include_error and result.error_scores is not None:
                err_ablate[g, col_idx] = ~keep[P * D :]
            # else: error nodes are not candidates and are always kept (never ablated)
        lat_m = lat_ablate.repeat_interleave(S, 0).to(lm.device)
        err_m = err_ablate.repeat_interleave(S, 0).to(lm.device)

        def edit(f: torch.Tensor, lat_m: torch.Tensor = lat_m) -> torch.Tensor:
            return torch.where(lat_m, f_mean.to(f.dtype), f)

        def edit_error(e: torch.Tensor, err_m: torch.Tensor = err_m) -> torch.Tensor:
            return torch.where(err_m.unsqueeze(-1), e_mean.to(e.dtype), e)

        sp = Splice(s, sae, keep_error=True, edit=edit, edit_error=edit_error, check_site=False)
        with torch.no_grad(), intervene(lm, [sp]):
            logits = task.forward(lm, task.clean_ids.repeat(G, 1), task.mask.repeat(G, 1))
        out.append(task.metric(logits).mean(-1).cpu())
    f = torch.cat(out).tolist()
    return FaithfulnessCurve(
        "SAE",
        ks,
        n,
        f[0],
        f[1],
        f[2::2],
        f[3::2],
        meta={
            "site": str(s),
            "include_error_nodes": include_error,
            "positions": cols,
            "ranked_by": f"|{result.mode} SAE attribution| ({result.direction})",
        },
    )


def faithfulness_curve(
    lm: LoadedModel,
    task: PairTask,
    result: PatchingResult | SAEAttribution,
    ks: Sequence[int] | None = None,
    sae: Any = None,
    include_error: bool = True,
    batch_tokens: int = 4096,
) -> FaithfulnessCurve:
    """Faithfulness and completeness of the top-k circuits ranked by ``result`` (component
    nodes from a patching/attribution result, SAE nodes from an SAE attribution — then pass
    ``sae``). ``include_error``: SAE error nodes compete for circuit membership like latents
    (otherwise they are never ablated, so F(M) is still the model)."""
    t0 = time.perf_counter()
    if isinstance(result, SAEAttribution):
        curve = _sae_curve(lm, task, result, sae, ks, include_error, batch_tokens)
    elif isinstance(result, PatchingResult):
        curve = _component_curve(lm, task, result, ks, batch_tokens)
    else:
        raise ConfigError(f"cannot build a circuit from {type(result).__name__}")
    curve.seconds = time.perf_counter() - t0
    return curve
