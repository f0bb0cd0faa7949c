"""Component edges on plain Hugging Face models: EAP and EAP-IG (Hanna et al. 2024,
"Have faith in faithfulness"; Syed et al. 2023, "Attribution patching outperforms automated
circuit discovery"), and exact edge patching to check them.

**Nodes.** Upstream (writers to the residual stream): the input embedding (``embed``,
the residual stream entering block 0), every attention head ``head.L.h`` (its share
``out_h = z_h @ W_O[h]`` of the output projection; query heads, so grouped-query attention
needs no special case — see :meth:`deltalens.models.arch.Arch.head_projection`; where heads do
not add separately, as behind Gemma's post-norm, one ``attn.L`` node per layer) and every
MLP ``mlp.L``. Downstream (readers): the attention input of each layer (``attn.L``, shared by
its heads), the MLP input (``mlp.L``) and the logits (``logits``: the final norm's input).
An edge ``u → v`` exists when ``u`` writes before ``v`` reads (attention of layer L feeds the
MLP of layer L except with a parallel residual).

**Scores**, with ``Δout_u = out_u(source) − out_u(base)`` (clean − corrupted for denoising;
gradients on the base run) and ``m`` the mean metric over pairs, summed over pairs and
positions::

    EAP(u → v)    = Σ Δout_u · ∂m/∂in_v |_base
    EAP-IG(u → v) = Σ Δout_u · (1/N) Σ_{k=1..N} ∂m/∂in_v |_{e = e_base + (k/N)(e_source − e_base)}

where ``in_v`` is the input of ``v``'s branch alone (:class:`deltalens.hooks.BranchInput`: the
other branch and the skip path read the unchanged stream) and EAP-IG interpolates the
input embeddings ``e`` (the "inputs" variant of the paper, right Riemann sum). The **node
score** of ``u`` is ``Σ_v EAP(u → v)``, which equals ``Σ Δout_u · ∂m/∂out_u`` (the stream
after ``u`` fans out to every later reader).

**Exact edge patching** of ``u → v``: the base run with ``in_v ← in_v + Δout_u`` only;
``EAP(u → v)`` is its derivative at zero patch size (the brute-force test).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError
from ..hooks import BranchInput, HeadRead, Read, Replace, Site, intervene
from .attribution import gradient_path
from .graph import Circuit
from .patching import runs_for
from .task import PairTask

if TYPE_CHECKING:
    from ..models.loading import LoadedModel

EDGE_METHODS = ("eap", "eap-ig")


@dataclass(frozen=True)
class Upstream:
    """A writer to the residual stream: ``kind`` embed / head / attn / mlp."""

    kind: str
    layer: int = -1
    head: int | None = None

    @property
    def id(self) -> str:
        if self.kind == "embed":
            return "embed"
        if self.kind == "head":
            return f"head.{self.layer}.{self.head}"
        return f"{self.kind}.{self.layer}"


@dataclass(frozen=True)
class Downstream:
    """A reader of the residual stream: ``branch`` attn / mlp of a layer, or logits."""

    branch: str
    layer: int = -1

    @property
    def id(self) -> str:
        return "logits" if self.branch == "logits" else f"{self.branch}.{self.layer}"


class ComponentGraph:
    """The upstream and downstream nodes of a model and which edges exist."""

    def __init__(self, lm: LoadedModel, heads: bool = True):
        self.lm = lm
        L = lm.n_layers
        self.parallel = bool(
            lm.arch.spec.parallel_residual and getattr(lm.model.config, "use_parallel_residual", True)
        )
        self.head_w: dict[int, torch.Tensor] = {}
        ups: list[Upstream] = [Upstream("embed")]
        for layer in range(L):
            hp = lm.arch.head_projection(layer) if heads else None
            if hp is not None:
                self.head_w[layer] = hp[1].detach()
                ups += [Upstream("head", layer, h) for h in range(hp[2])]
            else:
                ups.append(Upstream("attn", layer))
            ups.append(Upstream("mlp", layer))
        self.up = ups
        self.down = [Downstream(b, layer) for layer in range(L) for b in ("attn", "mlp")] + [
            Downstream("logits")
        ]

    def valid(self, u: Upstream, v: Downstream) -> bool:
        if v.branch == "logits" or u.kind == "embed":
            return True
        if u.kind == "mlp":
            return u.layer < v.layer
        return u.layer < v.layer or (v.branch == "mlp" and u.layer == v.layer and not self.parallel)

    def mask(self) -> torch.Tensor:
        """``[U, V]`` bool: which edges exist."""
        return torch.tensor([[self.valid(u, v) for v in self.down] for u in self.up])

    # ---- reading upstream outputs ----------------------------------------------------------
    def readers(self) -> dict[Any, Read]:
        """Reads that record every upstream output in a forward (per layer for heads)."""
        r: dict[Any, Read] = {"embed": Read(Site(0, "resid_pre"))}
        for layer in range(self.lm.n_layers):
            r[("attn", layer)] = HeadRead(layer) if layer in self.head_w else Read(Site(layer, "attn_out"))
            r[("mlp", layer)] = Read(Site(layer, "mlp_out"))
        return r

    def outputs(self, reads: dict[Any, Read]) -> torch.Tensor:
        """``[U, B, T, d]`` upstream outputs from recorded reads (heads split by ``W_O``)."""
        out = []
        for u in self.up:
            if u.kind == "embed":
                out.append(reads["embed"].value.float())
            elif u.kind == "head":
                out.append(self.head_out(reads[("attn", u.layer)].value, u.layer, u.head))
            else:
                out.append(reads[(u.kind, u.layer)].value.float())
        return torch.stack(out)

    def head_out(self, z: torch.Tensor, layer: int, head: int) -> torch.Tensor:
        w = self.head_w[layer].to(z.device, torch.float32)  # [H, hd, d]
        hd = w.shape[1]
        return z[..., head * hd : (head + 1) * hd].float() @ w[head]

    def run_outputs(self, task: PairTask, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Upstream outputs ``[U, S, T, d]`` and per-pair metric of an unpatched run."""
        reads = self.readers()
        with torch.no_grad(), intervene(self.lm, list(reads.values())):
            m = task.metric(task.forward(self.lm, task.ids(which), task.mask))[0]
        return self.outputs(reads), m


def input_gradients(
    lm: LoadedModel, task: PairTask, graph: ComponentGraph, which: str, embeds: torch.Tensor | None = None
) -> torch.Tensor:
    """``[V, S, T, d]``: ``∂m/∂in_v`` for every downstream node on a run of ``which`` (``embeds``:
    ``[G, S, T, d]`` input embeddings to run instead, gradients averaged over the G groups)."""
    G = 1 if embeds is None else embeds.shape[0]
    ivs: list[Any] = [BranchInput(v.layer, v.branch, grad=True) for v in graph.down]
    if embeds is not None:
        ivs.insert(0, Replace(Site(0, "embed"), embeds.reshape(G * task.n_seqs, task.width, -1)))
    with gradient_path(lm), intervene(lm, ivs):
        m = task.metric(task.forward(lm, task.ids(which).repeat(G, 1), task.mask.repeat(G, 1)))
        leaves = [iv.leaves[-1] for iv in ivs if isinstance(iv, BranchInput)]
        grads = torch.autograd.grad(m.mean(-1).sum(), leaves, allow_unused=True)
    out = torch.stack([torch.zeros_like(z) if g is None else g for g, z in zip(grads, leaves)]).float()
    return out.view(len(graph.down), G, task.n_seqs, task.width, -1).mean(1)


def component_edges(
    lm: LoadedModel,
    task: PairTask,
    method: str = "eap-ig",
    direction: str = "denoising",
    steps: int = 5,
    heads: bool = True,
    edge_threshold: float = 0.0,
    top_edges: int | None = None,
) -> Circuit:
    """EAP or EAP-IG edge scores between every writer and reader of the residual stream
    (module docstring); the circuit keeps edges with ``|score| ≥ edge_threshold`` (and at
    most ``top_edges`` of them) and the nodes they touch. ``meta["scores"]`` keeps the full
    ``[U, V]`` matrix for budget curves."""
    if method not in EDGE_METHODS:
        raise ConfigError(f"unknown edge method '{method}'; valid: {', '.join(EDGE_METHODS)}")
    if steps < 1:
        raise ConfigError(f"--steps must be ≥ 1, got {steps}")
    t0 = time.perf_counter()
    graph = ComponentGraph(lm, heads)
    src_run, base_run = runs_for(direction)
    out_src, m_src = graph.run_outputs(task, src_run)
    out_base, m_base = graph.run_outputs(task, base_run)
    delta = out_src - out_base  # [U, S, T, d]
    if method == "eap":
        g = input_gradients(lm, task, graph, base_run)
    else:
        e_src, e_base = _embeds(lm, task, src_run), _embeds(lm, task, base_run)
        alphas = torch.arange(1, steps + 1, dtype=torch.float32, device=e_src.device) / steps
        g = torch.zeros(len(graph.down), task.n_seqs, task.width, lm.d_model)
        for a in alphas:  # one step per forward keeps memory flat on long prompts
            e = (e_base + a * (e_src - e_base)).unsqueeze(0)
            g += input_gradients(lm, task, graph, base_run, embeds=e).cpu() / steps
    scores = torch.einsum("ustd,vstd->uv", delta.cpu(), g.cpu()) * graph.mask()
    return _circuit(
        task, graph, scores, method, direction, m_src, m_base, edge_threshold, top_edges, t0, steps
    )


def _embeds(lm: LoadedModel, task: PairTask, which: str) -> torch.Tensor:
    r = Read(Site(0, "embed"))
    with torch.no_grad(), intervene(lm, [r]):
        task.forward(lm, task.ids(which), task.mask)
    return r.value.float()


def _circuit(
    task: PairTask,
    graph: ComponentGraph,
    scores: torch.Tensor,
    method: str,
    direction: str,
    m_src: torch.Tensor,
    m_base: torch.Tensor,
    edge_threshold: float,
    top_edges: int | None,
    t0: float,
    steps: int,
) -> Circuit:
    valid = graph.mask()
    flat = [(float(scores[i, j]), i, j) for i, j in valid.nonzero().tolist()]
    flat.sort(key=lambda r: -abs(r[0]))
    keep = [r for r in flat if abs(r[0]) >= edge_threshold]
    if top_edges is not None:
        keep = keep[:top_edges]
    edges = [(graph.up[i].id, graph.down[j].id, w) for w, i, j in keep]
    used = {e[0] for e in edges} | {e[1] for e in edges}
    node_score = scores.sum(1)
    m_clean, m_corr = (m_src, m_base) if direction == "denoising" else (m_base, m_src)
    last = task.prompt_end - 1
    nodes: list[dict[str, Any]] = []
    for i, u in enumerate(graph.up):
        if u.id in used:
            nodes.append(_node(u.id, u.kind, u.layer, u.head, float(node_score[i]), last))
    for v in graph.down:
        if v.id in used and v.branch != "logits" and not any(n["id"] == v.id for n in nodes):
            nodes.append(_node(v.id, v.branch, v.layer, None, None, last))
    clean, corr = float(m_clean.mean()), float(m_corr.mean())
    nodes.append(
        {
            "id": "logits",
            "type": "logit",
            "layer": None,
            "site": "logits",
            "position": last,
            "token": task.metric_name,
            "index": None,
            "score": clean - corr,
            "activation": clean,
            "description": f"{task.metric_name} (clean {clean:.3g}, corrupted {corr:.3g})",
        }
    )
    return Circuit(
        method=method,
        metric_name=task.metric_name,
        direction=direction,
        clean=clean,
        corrupted=corr,
        nodes=nodes,
        edges=edges,
        thresholds={"edge": edge_threshold, "top_edges": top_edges},
        seconds=time.perf_counter() - t0,
        meta={
            "task": task.describe(),
            "steps": steps if method == "eap-ig" else None,
            "upstream": [u.id for u in graph.up],
            "downstream": [v.id for v in graph.down],
            "scores": scores.tolist(),
            "positions": "summed over all positions",
            "heads": bool(graph.head_w),
        },
    )


def _node(nid: str, kind: str, layer: int, head: int | None, score: float | None, pos: int) -> dict[str, Any]:
    desc = {
        "embed": "input embeddings",
        "head": f"attention head {head} of layer {layer}",
        "attn": f"attention of layer {layer} (input shared by its heads)",
        "mlp": f"MLP of layer {layer}",
    }[kind]
    return {
        "id": nid,
        "type": kind,
        "layer": None if kind == "embed" else layer,
        "site": nid,
        "position": None,
        "token": None,
        "index": head,
        "score": score,
        "activation": None,
        "description": desc,
    }


def edge_patching(
    lm: LoadedModel,
    task: PairTask,
    edges: Sequence[tuple[str, str]],
    direction: str = "denoising",
    heads: bool = True,
    batch_tokens: int = 4096,
) -> torch.Tensor:
    """Exact effect of patching each edge alone: mean metric of the base run with
    ``in_v ← in_v + Δout_u`` minus the base run's (``[len(edges)]``, metric units)."""
    graph = ComponentGraph(lm, heads)
    up = {u.id: i for i, u in enumerate(graph.up)}
    down = {v.id: j for j, v in enumerate(graph.down)}
    for a, b in edges:
        if a not in up or b not in down or not graph.valid(graph.up[up[a]], graph.down[down[b]]):
            raise ConfigError(f"no edge {a} -> {b} in {lm.name}")
    src_run, base_run = runs_for(direction)
    out_src, _ = graph.run_outputs(task, src_run)
    out_base, m_base = graph.run_outputs(task, base_run)
    S, T = task.n_seqs, task.width
    per = max(1, batch_tokens // max(1, S * T))
    res = []
    for start in range(0, len(edges), per):
        chunk = edges[start : start + per]
        G = len(chunk)
        deltas: dict[int, torch.Tensor] = {}
        for g, (a, b) in enumerate(chunk):
            d = deltas.setdefault(down[b], torch.zeros(G, S, T, lm.d_model, device=lm.device))
            d[g] += (out_src[up[a]] - out_base[up[a]]).to(lm.device)
        ivs = [
            BranchInput(graph.down[j].layer, graph.down[j].branch, delta=d.view(G * S, T, -1))
            for j, d in deltas.items()
        ]
        with torch.no_grad(), intervene(lm, ivs):
            m = task.metric(task.forward(lm, task.ids(base_run).repeat(G, 1), task.mask.repeat(G, 1)))
        res.append(m.mean(-1).cpu() - float(m_base.mean()))
    return torch.cat(res) if res else torch.zeros(0)
