"""Attribution graphs from per-layer transcoders (Ameisen et al. 2025, "Circuit tracing:
revealing computational graphs in language models"), on plain Hugging Face models.

**The replacement model, linearised.** Every MLP is replaced by its transcoder plus an
error node (:class:`deltalens.hooks.TranscoderSplice`: the forward value is the model's);
attention patterns are frozen (the query and key projections pass no gradient,
:class:`~deltalens.hooks.DetachOutput`) and so are the scales of every norm
(:class:`~deltalens.hooks.FreezeNorm`). What remains between the nodes is linear, so the
effect of one node on another along the residual stream and the attention value paths is
well defined.

**Nodes**: active transcoder features ``(layer, position, feature)`` (activation ``a > 0``),
one error node per ``(layer, position)``, the token embeddings, and the target logits
(the most likely next tokens up to cumulative probability ``logit_probability``, at most
``max_logits``). **Edges** (``A[target, source]``, the direct effect):

* into a feature: its pre-activation (the transcoder encoder's input, linear in the residual
  stream here) — ``A[t, s] = a_s · ∂pre_t/∂a_s`` for a feature source,
  ``ε_s · ∂pre_t/∂ε_s`` for an error node, ``e_p · ∂pre_t/∂e_p`` for a token embedding;
* into a logit: the demeaned logit ``z_v − mean(z)`` at the last position, likewise.

Each target's row is one vector–Jacobian product; ``batch_size`` targets share one backward
pass (the prompt is run as ``batch_size`` identical rows, row ``g`` carrying target ``g``; one
forward serves every backward).

**Which feature rows.** Logit rows first; then, repeatedly, the not-yet-computed features
with the largest influence on the logits through the rows known so far, until
``max_feature_nodes``. **Influence** (as circuit-tracer): with ``Â`` = ``|A|`` with rows
normalised to sum 1 and ``w`` the logit probabilities, ``influence = w (Â + Â² + …)``.
**Pruning**: keep the nodes that carry ``node_threshold`` of the cumulative influence, then
the edges that carry ``edge_threshold`` of the edge influence ``Â_ij · (influence_i + w_i)``.
**Scores** (unpruned graph): replacement = token influence / (token + error influence);
completeness = ``Σ_i (1 − Σ_{j∈errors} Â_ij)(influence_i + w_i) / Σ_i (influence_i + w_i)``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError
from ..hooks import DetachOutput, FreezeNorm, Leaf, Site, StopForward, TranscoderSplice, intervene
from .graph import Circuit

if TYPE_CHECKING:
    from ..models.loading import LoadedModel


def linearised(
    lm: LoadedModel, transcoders: dict[int, Any], constant_prefix: int = 0
) -> tuple[list[Any], Leaf, list[TranscoderSplice]]:
    """The interventions of the linearised replacement model (module docstring); the MLP
    outputs of the first ``constant_prefix`` positions are held constant."""
    if getattr(lm.model.config, "final_logit_softcapping", None):
        raise ConfigError(
            f"{lm.name} soft-caps its logits; attribution graphs need logits linear in the residual stream"
        )
    missing = [layer for layer in range(lm.n_layers) if layer not in transcoders]
    if missing:
        raise ConfigError(f"attribution graphs need a transcoder at every layer; missing layers {missing}")
    emb = Leaf(Site(0, "embed"))
    splices = [TranscoderSplice(layer, transcoders[layer], constant_prefix) for layer in range(lm.n_layers)]
    ivs: list[Any] = [emb, *splices]
    for layer in range(lm.n_layers):
        ivs += [FreezeNorm(m, layer) for m in lm.arch.norms(layer)]
        ivs += [DetachOutput(m, n, layer) for m, n in lm.arch.qk_projections(layer)]
    ivs.append(FreezeNorm(lm.arch.final_norm))
    return ivs, emb, splices


def attention_routes(
    lm: LoadedModel,
    prompt: str | Sequence[int],
    transcoders: dict[int, Any],
    source: tuple[Any, ...],
    direction: torch.Tensor,
    constant_first: bool = True,
) -> list[float]:
    """Which attention layers carry one edge into a logit: ``drop[l] = A − A_l`` with ``A`` the
    edge ``s · ∂(direction · z_last)/∂s`` from ``source`` in the linearised replacement model and
    ``A_l`` the same with layer ``l``'s attention output passing no gradient (its output
    projection detached). ``source`` is ``("feature", layer, pos, index)`` or ``("token", pos)``;
    ``direction`` a vocabulary-sized vector (a logit node's direction). An edge that must cross
    positions goes through attention: a layer whose ``drop`` is about the whole edge carries
    it; layers at or below a feature's own layer give 0 (one forward and backward per layer)."""
    ids_list = list(prompt) if not isinstance(prompt, str) else lm.encode(prompt)
    ids = torch.tensor([ids_list], device=lm.device)
    cp = 1 if constant_first else 0

    def edge(extra: list[Any]) -> float:
        ivs, emb, splices = linearised(lm, transcoders, cp)
        with torch.enable_grad(), intervene(lm, ivs + extra):
            z = lm.model(input_ids=ids, use_cache=False).logits[0, -1].float()
            obj = (z * direction.to(z.device)).sum()
            if source[0] == "feature":
                _, layer, pos, idx = source
                leaf = splices[layer].features[-1]
                (g,) = torch.autograd.grad(obj, [leaf], allow_unused=True)
                return 0.0 if g is None else float((g[0, pos, idx] * leaf[0, pos, idx]).detach())
            leaf = emb.leaves[-1]
            (g,) = torch.autograd.grad(obj, [leaf], allow_unused=True)
            return 0.0 if g is None else float((g[0, source[1]] * leaf[0, source[1]]).sum().detach())

    full = edge([])
    drops = []
    for layer in range(lm.n_layers):
        proj = lm.arch.head_projection(layer)
        if proj is None:
            raise ConfigError(f"{lm.name}: no attention output projection found at layer {layer}")
        drops.append(full - edge([DetachOutput(proj[0], None, layer)]))
    return drops


@dataclass
class AttributionGraph:
    """An attribution graph before pruning: ``adjacency[target, source]`` over the nodes
    ``[features (selected) | errors (layer-major, L·T) | tokens (T) | logits (K)]``."""

    prompt: str
    token_ids: list[int]
    tokens: list[str]
    n_layers: int
    features: torch.Tensor  # [F, 3] (layer, position, feature) of the selected features
    activations: torch.Tensor  # [F]
    adjacency: torch.Tensor  # [N, N]
    logit_ids: list[int]
    logit_probs: torch.Tensor  # [K]
    logit_tokens: list[str]
    n_active: int
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_pos(self) -> int:
        return len(self.token_ids)

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    def slices(self) -> tuple[slice, slice, slice, slice]:
        f, t, L = self.n_features, self.n_pos, self.n_layers
        return slice(0, f), slice(f, f + L * t), slice(f + L * t, f + L * t + t), slice(f + L * t + t, None)

    def logit_weights(self) -> torch.Tensor:
        w = torch.zeros(self.adjacency.shape[0])
        w[self.slices()[3]] = self.logit_probs.float()
        return w

    def node_influence(self) -> torch.Tensor:
        return influence(self.adjacency, self.logit_weights())

    def _best_to_logit(self, logit: int) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        """``best[s]`` = the largest ``share(p)`` over paths ``p`` from node ``s`` to logit
        ``logit`` and ``nxt[s]`` the next node on it (dynamic programming over the DAG), the
        logit's node index and ``Â``."""
        A = normalise_rows(self.adjacency).double()
        N = A.shape[0]
        lg = self.slices()[3].start + logit
        best = torch.zeros(N, dtype=torch.float64)
        best[lg] = 1.0
        nxt = torch.full((N,), -1, dtype=torch.long)
        for _ in range(N):
            cand, arg = (best[:, None] * A).max(0)  # over targets t, for every source s
            better = cand > best * (1 + 1e-12)
            better[lg] = False
            if not bool(better.any()):
                break
            best = torch.where(better, cand, best)
            nxt = torch.where(better, arg, nxt)
        return best, nxt, lg, A

    @staticmethod
    def _follow(path: list[int], nxt: torch.Tensor, lg: int) -> list[int]:
        while path[-1] != lg and int(nxt[path[-1]]) >= 0 and len(path) <= len(nxt):
            path.append(int(nxt[path[-1]]))
        return path

    def top_path(self, logit: int = 0) -> tuple[list[int], float]:
        """The strongest path from an input token to logit ``logit``: the node indices (token
        first) of the path ``p`` maximising ``share(p) = ∏_{(s→t)∈p} Â[t, s]`` with ``Â`` the
        row-normalised ``|A|`` — the fraction of the logit's attribution that flows along that
        one path (the shares of all paths from every source sum to 1 at the logit, and their
        sum per node is its influence). Exact (dynamic programming over the DAG); error nodes
        are sources, so a token-rooted path runs through features only."""
        best, nxt, lg, _ = self._best_to_logit(logit)
        tok = self.slices()[2]
        start = tok.start + int(best[tok].argmax())
        if float(best[start]) <= 0:
            return [], 0.0
        return self._follow([start], nxt, lg), float(best[start])

    def top_feature_path(self, logit: int = 0) -> tuple[list[int], float]:
        """The strongest token → logit path that passes through at least one feature:
        ``max_{t, f} Â[f, t] · best(f)`` over tokens ``t`` and features ``f``, with ``best(f)``
        the largest share from ``f`` on (as :meth:`top_path`). The direct token → logit edge
        sums every linear route through the residual stream, the frozen attention and the skip
        connections, and is often the top path; this is the strongest route that the
        transcoder features explain."""
        f_sl, _, tok, _ = self.slices()
        if f_sl.stop == 0:
            return [], 0.0
        best, nxt, lg, A = self._best_to_logit(logit)
        cand = A[f_sl, tok] * best[f_sl][:, None]  # [features, tokens]
        v, flat = cand.flatten().max(0)
        if float(v) <= 0:
            return [], 0.0
        f, t = divmod(int(flat), cand.shape[1])
        return self._follow([tok.start + t, f], nxt, lg), float(v)

    def scores(self) -> dict[str, float]:
        """Replacement and completeness scores (module docstring)."""
        _, err, tok, _ = self.slices()
        w = self.logit_weights()
        A = normalise_rows(self.adjacency)
        inf = influence(self.adjacency, w)
        t_inf, e_inf = float(inf[tok].sum()), float(inf[err].sum())
        out_inf = inf + w
        non_err = 1 - A[:, err].sum(-1)
        return {
            "replacement": t_inf / (t_inf + e_inf) if t_inf + e_inf > 0 else float("nan"),
            "completeness": float((non_err * out_inf).sum() / out_inf.sum()),
        }


def normalise_rows(A: torch.Tensor) -> torch.Tensor:
    """``|A|`` with every row scaled to sum 1 (zero rows stay zero)."""
    a = A.abs()
    return a / a.sum(-1, keepdim=True).clamp(min=1e-10)


def influence(A: torch.Tensor, w: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """``w (Â + Â² + …)``: the total influence of every node on the weighted logits (a DAG,
    so the series ends after its depth)."""
    An = normalise_rows(A)
    cur = w @ An
    total = cur.clone()
    for _ in range(max_iter):
        if not bool((cur.abs() > 1e-12).any()):
            return total
        cur = cur @ An
        total += cur
    raise RuntimeError("influence did not converge: the graph has a cycle")


def _cumulative_keep(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mask of the largest entries whose sum reaches ``threshold`` of the total."""
    flat = scores.flatten()
    order = flat.argsort(descending=True)
    cum = flat[order].cumsum(0) / flat.sum().clamp(min=1e-12)
    n = int(torch.searchsorted(cum, torch.tensor(threshold, dtype=cum.dtype)).item()) + 1
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[order[: min(n, len(order))]] = True
    return keep.view_as(scores)


def prune(
    graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(node_mask [N], edge_mask [N, N])`` by cumulative influence (module docstring);
    tokens and logits are always kept; features and errors without a kept outgoing edge
    (and features without a kept incoming one) are dropped, repeatedly."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0 <= v <= 1:
            raise ConfigError(f"{name} must be in [0, 1], got {v}")
    feat, err, tok, logit = graph.slices()
    w = graph.logit_weights()
    inf = influence(graph.adjacency, w)
    node = _cumulative_keep(inf, node_threshold)
    node[tok.start :] = True
    A = graph.adjacency.clone()
    A[~node] = 0
    A[:, ~node] = 0
    An = normalise_rows(A)
    edge_scores = An * (influence(A, w) + w)[:, None]
    edge = _cumulative_keep(edge_scores, edge_threshold) & (A != 0)
    while True:
        old = node.clone()
        node[: tok.start] &= edge[:, : tok.start].any(0)
        node[feat] &= edge[feat].any(1)
        edge &= node[:, None] & node[None, :]
        if bool((node == old).all()):
            return node, edge


def _targets_rows(
    lm: LoadedModel,
    ids: torch.Tensor,
    transcoders: dict[int, Any],
    targets: list[tuple[str, int, int, int]],
    batch_size: int,
    logit_dirs: torch.Tensor,
    constant_prefix: int = 0,
) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """Leaf gradients of each target (one VJP each); targets ``("feature", layer, pos, idx)``
    or ``("logit", k, 0, 0)``. Returns per target ``{"features": [L, T, d_tc], "errors":
    [L, T], "tokens": [T]}`` already multiplied by the source values (direct effects)."""
    G = max(1, min(batch_size, len(targets)))
    deepest = max((t[1] for t in targets if t[0] == "feature"), default=-1)
    need_logits = any(t[0] == "logit" for t in targets)
    ivs, emb, splices = linearised(lm, transcoders, constant_prefix)
    stop = None if need_logits else Site(deepest, "mlp_out")
    out: list[dict[str, torch.Tensor]] = []
    T = ids.shape[1]
    with torch.enable_grad(), intervene(lm, ivs, stop_at=stop):
        logits = None
        try:
            res = lm.model(input_ids=ids.repeat(G, 1).to(lm.device), use_cache=False)
            logits = res.logits
        except StopForward:
            pass
        pres = [s.pre[-1] if s.pre else None for s in splices]
        ran = [j for j, s in enumerate(splices) if s.features]  # layers the forward reached
        feats = [splices[j].features[-1] for j in ran]
        errs = [splices[j].errors[-1] for j in ran]
        e_leaf = emb.leaves[-1]
        leaves = [e_leaf, *feats, *errs]
        n_l = len(ran)
        d_tc = feats[0].shape[-1]
        base_f = torch.zeros(len(splices), T, d_tc)
        base_e = torch.zeros(len(splices), T, e_leaf.shape[-1])
        for j, f, e in zip(ran, feats, errs):
            base_f[j] = f[0].detach().float().cpu()
            base_e[j] = e[0].detach().float().cpu()
        base_t = e_leaf[0].detach().float().cpu()
        for start in range(0, len(targets), G):
            chunk = targets[start : start + G]
            obj = torch.zeros((), device=e_leaf.device)
            for g, (kind, a, p, i) in enumerate(chunk):
                if kind == "feature":
                    obj = obj + pres[a][g, p, i].float()
                else:
                    assert logits is not None
                    obj = obj + (logits[g, T - 1].float() * logit_dirs[a].to(logits.device)).sum()
            grads = torch.autograd.grad(obj, leaves, retain_graph=True, allow_unused=True)
            g_emb = (grads[0] if grads[0] is not None else torch.zeros_like(e_leaf)).float().cpu()
            gf = torch.zeros(G, len(splices), T, d_tc)
            ge = torch.zeros(G, len(splices), T, e_leaf.shape[-1])
            for k, j in enumerate(ran):
                if grads[1 + k] is not None:
                    gf[:, j] = grads[1 + k].float().cpu()
                if grads[1 + n_l + k] is not None:
                    ge[:, j] = grads[1 + n_l + k].float().cpu()
            for g in range(len(chunk)):
                out.append(
                    {
                        "features": gf[g] * base_f,
                        "errors": (ge[g] * base_e).sum(-1),
                        "tokens": (g_emb[g] * base_t).sum(-1),
                    }
                )
    info = {"logits": None if logits is None else logits[0, T - 1].detach().float().cpu()}
    return out, info


def attribution_graph(
    lm: LoadedModel,
    prompt: str | Sequence[int],
    transcoders: dict[int, Any] | Sequence[Any],
    max_feature_nodes: int = 512,
    batch_size: int = 32,
    max_logits: int = 5,
    logit_probability: float = 0.95,
    target_tokens: Sequence[int] | None = None,
    contrast_tokens: Sequence[int] | None = None,
    constant_first: bool = True,
) -> AttributionGraph:
    """Build the attribution graph of ``prompt`` (module docstring).

    (One function: the selection loop reads and extends the adjacency rows it computes.)

    Args:
        transcoders: one per layer (``{layer: transcoder}`` or a list in layer order).
        max_feature_nodes: feature rows to compute (the most influential first).
        batch_size: targets per backward pass.
        target_tokens: logit targets to use instead of the most likely tokens.
        contrast_tokens: one per target: the target becomes the logit difference
            ``z_t − z_c`` (a pair task's metric) instead of the demeaned logit ``z_t − mean(z)``;
            its influence weight is still ``p(t)``.
        constant_first: hold the first position's MLP outputs constant (no feature or error
            nodes there), as circuit-tracer does with the BOS token: the first position is
            the attention sink, its residual a function of its own token only, and its huge
            activations would otherwise soak up the graph's influence. Its token embedding
            stays a node.
    """
    t0 = time.perf_counter()
    tcs = dict(transcoders) if isinstance(transcoders, dict) else {t.layer: t for t in transcoders}
    tok = lm.tokenizer
    ids_list = list(prompt) if not isinstance(prompt, str) else lm.encode(prompt)
    ids = torch.tensor([ids_list])
    T, L = len(ids_list), lm.n_layers
    V = lm.vocab_size
    # one plain linearised forward: activations, logits, targets
    cp = 1 if constant_first else 0
    ivs, emb, splices = linearised(lm, tcs, cp)
    with torch.no_grad(), intervene(lm, ivs):
        logits = lm.model(input_ids=ids.to(lm.device), use_cache=False).logits[0, -1].float().cpu()
    acts = torch.stack([s.features[-1][0].float().cpu() for s in splices])  # [L, T, d_tc]
    probs = logits.softmax(-1)
    if target_tokens is not None:
        logit_ids = [int(t) for t in target_tokens]
        for t in logit_ids:
            if not 0 <= t < V:
                raise ConfigError(f"target token id {t} is not in {lm.name}'s vocabulary (0..{V - 1})")
    else:
        order = probs.argsort(descending=True)
        cum = probs[order].cumsum(0)
        k = int((cum < logit_probability).sum()) + 1
        logit_ids = order[: max(1, min(max_logits, k))].tolist()
    lp = probs[logit_ids]
    dirs = torch.zeros(len(logit_ids), V)
    for j, t in enumerate(logit_ids):
        dirs[j, t] = 1.0
    if contrast_tokens is not None:
        if target_tokens is None or len(contrast_tokens) != len(logit_ids):
            raise ConfigError("contrast tokens need one target token each")
        for j, c in enumerate(contrast_tokens):
            if not 0 <= int(c) < V or int(c) == logit_ids[j]:
                raise ConfigError(f"contrast token id {c} is not a vocabulary id other than the target's")
            dirs[j, int(c)] = -1.0  # logit difference z_t − z_c
    else:
        dirs -= 1.0 / V  # demeaned logit z_v − mean(z)
    active = (acts > 0).nonzero()  # [n_active, 3] (layer, pos, feature)
    if T < 1:
        raise ConfigError("empty prompt")
    n_act = len(active)
    a_vals = acts[active[:, 0], active[:, 1], active[:, 2]]
    # rows over all active features + errors + tokens, computed lazily
    n_src = n_act + L * T + T
    rows: dict[int, torch.Tensor] = {}  # target index (feature i or n_act + ... for logits) -> [n_src]

    def flatten(r: dict[str, torch.Tensor]) -> torch.Tensor:
        f = r["features"][active[:, 0], active[:, 1], active[:, 2]]
        return torch.cat([f, r["errors"].flatten(), r["tokens"]])

    logit_rows, _ = _targets_rows(
        lm, ids, tcs, [("logit", j, 0, 0) for j in range(len(logit_ids))], batch_size, dirs, cp
    )
    logit_mat = torch.stack([flatten(r) for r in logit_rows])  # [K, n_src]
    done: list[int] = []
    while len(done) < min(max_feature_nodes, n_act):
        # influence of each active feature through the rows known so far
        K = len(logit_ids)
        N = n_src + K
        A = torch.zeros(N, N)
        for i in done:
            A[i, :n_src] = rows[i]
        A[n_src:, :n_src] = logit_mat
        w = torch.zeros(N)
        w[n_src:] = lp
        inf = influence(A, w)[:n_act]
        inf[torch.tensor(done, dtype=torch.long)] = -1.0
        want = min(batch_size, min(max_feature_nodes, n_act) - len(done))
        pick = [int(i) for i in inf.argsort(descending=True)[:want] if float(inf[i]) > 0]
        if not pick:
            break
        got, _ = _targets_rows(
            lm,
            ids,
            tcs,
            [("feature", int(active[i, 0]), int(active[i, 1]), int(active[i, 2])) for i in pick],
            batch_size,
            dirs,
            cp,
        )
        for i, r in zip(pick, got):
            rows[i] = flatten(r)
            done.append(i)
    sel = torch.tensor(sorted(done), dtype=torch.long)
    F = len(sel)
    cols = torch.cat([sel, torch.arange(n_act, n_src)])
    N = F + L * T + T + len(logit_ids)
    A = torch.zeros(N, N)
    for j, i in enumerate(sel.tolist()):
        A[j, : F + L * T + T] = rows[i][cols]
    A[F + L * T + T :, : F + L * T + T] = logit_mat[:, cols]
    return AttributionGraph(
        prompt=prompt if isinstance(prompt, str) else tok.decode(ids_list),
        token_ids=ids_list,
        tokens=[tok.decode([i]) for i in ids_list],
        n_layers=L,
        features=active[sel] if F else torch.zeros(0, 3, dtype=torch.long),
        activations=a_vals[sel] if F else torch.zeros(0),
        adjacency=A,
        logit_ids=logit_ids,
        logit_probs=lp,
        logit_tokens=[tok.decode([i]) for i in logit_ids]
        if contrast_tokens is None
        else [f"{tok.decode([i])} − {tok.decode([int(c)])}" for i, c in zip(logit_ids, contrast_tokens)],
        n_active=n_act,
        seconds=time.perf_counter() - t0,
        meta={
            "max_feature_nodes": max_feature_nodes,
            "batch_size": batch_size,
            "contrast_tokens": None if contrast_tokens is None else [int(c) for c in contrast_tokens],
            "constant_first": constant_first,
        },
    )


def graph_circuit(
    graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> Circuit:
    """The pruned graph as a :class:`Circuit` (for the figure, the Parquet edge list and
    ``deltalens info``); node ids follow circuit-tracer (``L_feature_pos``, ``L_-1_pos``,
    ``E_token_pos``, ``(L+1)_token_pos``)."""
    node_mask, edge_mask = prune(graph, node_threshold, edge_threshold)
    ids, nodes = node_table(graph)
    inf = graph.node_influence()
    keep = node_mask.nonzero().flatten().tolist()
    out_nodes = []
    for i in keep:
        n = dict(nodes[i])
        n["score"] = float(inf[i])
        out_nodes.append(n)
    tgt, src = edge_mask.nonzero(as_tuple=True)
    edges = [(ids[s], ids[t], float(graph.adjacency[t, s])) for t, s in zip(tgt.tolist(), src.tolist())]
    p = graph.logit_probs
    path, share = graph.top_path()
    return Circuit(
        method="attribution_graph",
        metric_name="logit",
        direction="-",
        clean=float(p[0]),
        corrupted=0.0,
        nodes=out_nodes,
        edges=edges,
        thresholds={"node": node_threshold, "edge": edge_threshold},
        seconds=graph.seconds,
        meta={
            "prompt": graph.prompt,
            "scores": graph.scores(),
            "logit_tokens": graph.logit_tokens,
            "top_path": [ids[i] for i in path],
            "top_path_share": share,
        },
    )


def node_table(graph: AttributionGraph) -> tuple[list[str], list[dict[str, Any]]]:
    """Ids and node dicts (the :class:`Circuit` node layout) of every node of the graph."""
    ids: list[str] = []
    nodes: list[dict[str, Any]] = []
    T, L = graph.n_pos, graph.n_layers

    def add(nid: str, **kw: Any) -> None:
        ids.append(nid)
        nodes.append({"id": nid, "score": None, "activation": None, "description": None, **kw})

    for (layer, pos, f), a in zip(graph.features.tolist(), graph.activations.tolist()):
        add(
            f"{layer}_{f}_{pos}",
            type="latent",
            layer=layer,
            site=f"mlp_out.{layer}",
            position=pos,
            token=graph.tokens[pos],
            index=f,
        )
        nodes[-1]["activation"] = a
    for layer in range(L):
        for pos in range(T):
            add(
                f"{layer}_-1_{pos}",
                type="error",
                layer=layer,
                site=f"mlp_out.{layer}",
                position=pos,
                token=graph.tokens[pos],
                index=None,
            )
    for pos in range(T):
        add(
            f"E_{graph.token_ids[pos]}_{pos}",
            type="token",
            layer=None,
            site="embed",
            position=pos,
            token=graph.tokens[pos],
            index=graph.token_ids[pos],
        )
    for t, tok, p in zip(graph.logit_ids, graph.logit_tokens, graph.logit_probs.tolist()):
        add(
            f"{L + 1}_{t}_{T - 1}",
            type="logit",
            layer=None,
            site="logits",
            position=T - 1,
            token=tok,
            index=t,
        )
        nodes[-1]["description"] = f"output {tok!r} (p={p:.3f})"
    return ids, nodes
