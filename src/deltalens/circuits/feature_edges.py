"""Sparse-feature-circuit edges between SAE latents and error nodes at several sites
(Marks et al. 2024, "Sparse feature circuits", §2 and appendix: attribution patching with
stop-gradients).

SAEs sit at several sites (``resid``, ``attn_out``, ``mlp_out`` of several layers), each
spliced as ``x = x̂(f) + ε``. Nodes are the latents ``f_i`` and the error node ``ε`` of every
site at every grid position. With ``Δ = source − base`` (clean − corrupted for denoising,
gradients on the base run, as in :mod:`deltalens.circuits.attribution`) and ``m`` the mean
metric over pairs:

* **node score** (total effect, all paths)::

      IE(u) = Σ_pairs Δu · ∂m/∂u

* **edge** from an upstream node ``u`` to a downstream node ``d`` (the chain rule with
  stop-gradients: every SAE site strictly between ``u`` and ``d`` is held fixed, so only
  the paths from ``u`` that reach ``d`` without passing another SAE site count)::

      IE(u → d) = Σ_pairs (∂m/∂d) · (∂d/∂u)|_direct · Δu

  where ``∂m/∂d`` is the *total* gradient of the downstream node (a vector for an error
  node, contracted with the error's Jacobian), and ``∂d/∂u|direct`` the Jacobian of the
  downstream live value w.r.t. the upstream node with the intermediate sites frozen
  (:class:`deltalens.hooks.EdgeSplice`);
* **edge to the metric** (the direct effect of ``u``): ``Σ_pairs Δu · ∂m/∂u|direct``.

Because every path from ``u`` to ``m`` either reaches no other SAE site or has a first one,
``IE(u) = IE(u → m) + Σ_d IE(u → d)`` summed over every downstream node — the test of the
implementation together with brute-force Jacobian products.

Cost: two forwards + one backward for node scores, one forward with gradients and one
backward per kept downstream node for edges (``retain_graph``; nodes are kept by the node
threshold first, which is what makes this tractable).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError
from ..hooks import EdgeSplice, Site, Splice, intervene
from .attribution import gradient_path
from .graph import Circuit
from .patching import runs_for
from .sae_attribution import sae_site
from .task import PairTask

if TYPE_CHECKING:
    from ..models.loading import LoadedModel
    from ..sae.protocol import SAELike

_ORDER = {"embed": -1, "resid_pre": 0, "attn_out": 1, "mlp_out": 2, "resid": 3}


def site_order(s: Site) -> tuple[int, int]:
    """Sort key: the order in which sites run in a forward pass."""
    return (-1 if s.component == "embed" else s.layer, _ORDER[s.component])


def check_saes(
    lm: LoadedModel, saes: Sequence[SAELike] | Mapping[Any, SAELike]
) -> list[tuple[Site, SAELike]]:
    """``(site, sae)`` pairs in forward order, checked: every SAE fits the model (site in
    range, width), all were trained on one model, no site twice."""
    items = list(saes.items()) if isinstance(saes, Mapping) else [(None, s) for s in saes]
    if not items:
        raise ConfigError("feature edges need at least one SAE")
    models = {
        str(getattr(getattr(s, "cfg", None), "model_name", None))
        for _, s in items
        if getattr(getattr(s, "cfg", None), "model_name", None)
    }
    if len(models) > 1:
        raise ConfigError(
            f"the SAEs were trained on different models ({', '.join(sorted(models))}); use SAEs of one model"
        )
    out: list[tuple[Site, SAELike]] = []
    for site, sae in items:
        s = sae_site(lm, sae, site)
        if any(s == o for o, _ in out):
            raise ConfigError(f"two SAEs at {s}; give one SAE per site")
        out.append((s, sae))
    return sorted(out, key=lambda p: site_order(p[0]))


def _splices(pairs: list[tuple[Site, SAELike]]) -> list[Splice]:
    return [Splice(s, sae, keep_error=True, record=True, check_site=False) for s, sae in pairs]


def feature_edges(
    lm: LoadedModel,
    task: PairTask,
    saes: Sequence[SAELike] | Mapping[Any, SAELike],
    direction: str = "denoising",
    node_threshold: float = 0.0,
    edge_threshold: float = 0.0,
    max_nodes_per_site: int | None = 64,
    positions: Sequence[int] | None = None,
) -> Circuit:
    """The feature circuit of ``task`` through SAEs at several sites (module docstring).

    (One function: node scores, node selection and the edge loop share the three runs'
    tensors; split up it would pass a dozen of them around.)

    Args:
        saes: SAEs (each at its own ``cfg.site``) or ``{site: sae}``.
        node_threshold: keep nodes with ``|IE| ≥`` this (metric units).
        edge_threshold: keep edges with ``|IE(u → d)| ≥`` this.
        max_nodes_per_site: at most this many nodes per site (largest ``|IE|``; ``None``: no cap).
        positions: grid columns holding nodes (default: every prompt column).
    """
    t0 = time.perf_counter()
    sites = check_saes(lm, saes)
    src_run, base_run = runs_for(direction)
    cols = list(task.positions if positions is None else positions)
    ids, mask = task.ids(base_run), task.mask

    src = _splices(sites)
    with torch.no_grad(), intervene(lm, src):
        m_src = task.metric(task.forward(lm, task.ids(src_run), mask))[0]
    base = _splices(sites)
    with gradient_path(lm), intervene(lm, base):
        m_base = task.metric(task.forward(lm, ids, mask))[0]
        leaves = [t for sp in base for t in (sp.latents[-1], sp.errors[-1])]
        g = torch.autograd.grad(m_base.mean(), leaves, allow_unused=True)
    m_base = m_base.detach()
    g_tot = [(_z(g[2 * i], leaves[2 * i]), _z(g[2 * i + 1], leaves[2 * i + 1])) for i in range(len(sites))]
    delta = [
        ((a.latents[-1] - b.latents[-1]).detach().float(), (a.errors[-1] - b.errors[-1]).detach().float())
        for a, b in zip(src, base)
    ]
    # node scores: [T, D] for latents, [T] for the error node
    node_lat = [(d_f * gf).sum(0) for (d_f, _), (gf, _) in zip(delta, g_tot)]
    node_err = [(d_e * ge).sum(-1).sum(0) for (_, d_e), (_, ge) in zip(delta, g_tot)]

    # node selection: per site, grid columns only
    kept: list[list[tuple[int, int | None]]] = []  # per site: (column, latent or None=error)
    for s_i in range(len(sites)):
        cand = []
        for c in cols:
            for j in (node_lat[s_i][c].abs() >= node_threshold).nonzero().flatten().tolist():
                v = float(node_lat[s_i][c, j])
                if v != 0.0 or node_threshold > 0:
                    cand.append((abs(v), c, j))
            ve = float(node_err[s_i][c])
            if abs(ve) >= node_threshold and (ve != 0.0 or node_threshold > 0):
                cand.append((abs(ve), c, None))
        cand.sort(key=lambda r: -r[0])
        if max_nodes_per_site is not None:
            cand = cand[:max_nodes_per_site]
        kept.append([(c, j) for _, c, j in cand])

    # the cut forward: live values depend on upstream leaves only through direct paths
    cut = [EdgeSplice(s, sae) for s, sae in sites]
    with gradient_path(lm), intervene(lm, cut):
        m_cut = task.metric(task.forward(lm, ids, mask))[0]
        leaf = [t for sp in cut for t in sp.leaves[-1]]
        direct = torch.autograd.grad(m_cut.mean(), leaf, retain_graph=True, allow_unused=True)
        edges: list[tuple[str, str, float]] = []
        names = [[_node_id(sites[s_i][0], c, j) for c, j in kept[s_i]] for s_i in range(len(sites))]
        for s_i in range(len(sites)):
            gf_dir, ge_dir = _z(direct[2 * s_i], leaf[2 * s_i]), _z(direct[2 * s_i + 1], leaf[2 * s_i + 1])
            d_f, d_e = delta[s_i]
            for (c, j), nid in zip(kept[s_i], names[s_i]):
                w = (
                    (d_f[:, c, j] * gf_dir[:, c, j]).sum()
                    if j is not None
                    else (d_e[:, c] * ge_dir[:, c]).sum()
                )
                if abs(float(w)) >= edge_threshold:
                    edges.append((nid, "logits", float(w)))
        for d_i in range(1, len(sites)):
            f_live, e_live = cut[d_i].live[-1]
            gf, ge = g_tot[d_i]
            up = leaf[: 2 * d_i]
            for (q, j), down_id in zip(kept[d_i], names[d_i]):
                if j is not None:
                    obj = (gf[:, q, j] * f_live[:, q, j].float()).sum()
                else:
                    obj = (ge[:, q] * e_live[:, q].float()).sum()
                if not obj.requires_grad:
                    continue
                jac = torch.autograd.grad(obj, up, retain_graph=True, allow_unused=True)
                for u_i in range(d_i):
                    jf, je = _z(jac[2 * u_i], up[2 * u_i]), _z(jac[2 * u_i + 1], up[2 * u_i + 1])
                    d_f, d_e = delta[u_i]
                    for (p, i), up_id in zip(kept[u_i], names[u_i]):
                        if p > q:
                            continue  # causal: a later position cannot feed an earlier one
                        w = (
                            (d_f[:, p, i] * jf[:, p, i]).sum()
                            if i is not None
                            else (d_e[:, p] * je[:, p]).sum()
                        )
                        if abs(float(w)) >= edge_threshold and float(w) != 0.0:
                            edges.append((up_id, down_id, float(w)))

    labels = dict(zip(task.positions, task.position_labels()))
    m_clean, m_corr = (m_src, m_base) if direction == "denoising" else (m_base, m_src)
    nodes: list[dict[str, Any]] = []
    for s_i, (s, _sae) in enumerate(sites):
        f_base = base[s_i].latents[-1].detach()
        f_clean = src[s_i].latents[-1] if direction == "denoising" else f_base
        real = task.mask.bool()
        for (c, j), nid in zip(kept[s_i], names[s_i]):
            act = None
            if j is not None:
                rows = real[:, c]
                act = float(f_clean[rows, c, j].float().mean()) if rows.any() else 0.0
            nodes.append(
                {
                    "id": nid,
                    "type": "latent" if j is not None else "error",
                    "layer": s.layer,
                    "site": str(s),
                    "position": c,
                    "token": labels.get(c, str(c)),
                    "index": j,
                    "score": float(node_lat[s_i][c, j]) if j is not None else float(node_err[s_i][c]),
                    "activation": act,
                    "description": None if j is not None else "SAE error node (x - x_hat)",
                }
            )
    nodes.append(_logit_node(task, float(m_clean.mean()), float(m_corr.mean())))
    return Circuit(
        method="feature_edges",
        metric_name=task.metric_name,
        direction=direction,
        clean=float(m_clean.mean()),
        corrupted=float(m_corr.mean()),
        nodes=nodes,
        edges=edges,
        thresholds={"node": node_threshold, "edge": edge_threshold, "max_nodes_per_site": max_nodes_per_site},
        seconds=time.perf_counter() - t0,
        meta={
            "task": task.describe(),
            "sites": [str(s) for s, _ in sites],
            "saes": [repr(sae) for _, sae in sites],
            "gradient_on": base_run,
            "edge_rule": "sum_pairs (dm/dd)_total . (dd/du)_direct . (u_source - u_base); SAE sites between u and d frozen",
            "positions": cols,
        },
    )


def _z(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like, dtype=torch.float32) if g is None else g.float()


def _node_id(site: Site, col: int, latent: int | None) -> str:
    return f"{site}@{col}:{'err' if latent is None else latent}"


def _logit_node(task: PairTask, clean: float, corrupted: float) -> dict[str, Any]:
    return {
        "id": "logits",
        "type": "logit",
        "layer": None,
        "site": "logits",
        "position": task.prompt_end - 1,
        "token": task.metric_name,
        "index": None,
        "score": clean - corrupted,
        "activation": clean,
        "description": f"{task.metric_name} (clean {clean:.3g}, corrupted {corrupted:.3g})",
    }
