"""Optimise an input to maximise a target (:mod:`.score`): discrete EPO and continuous soft prompts.

**EPO** (evolutionary prompt optimisation, Thompson et al. 2024, "Fluent dreaming for language
models"): a population of ``M`` prompts of ``length`` tokens, member ``m`` holding the fluency
weight ``λ_m`` (``0`` and a geometric range ``lambda_min … lambda_max``), each maximising
``J_m(x) = A(x) − λ_m·CE(x)``. Every step:

1. GCG-style token gradients: ``G_m = ∂J_m/∂onehot(x_m)`` ``[L, V]`` (one batched backward);
2. ``candidates`` children per member, each swapping one random position ``p`` for a random token
   among the ``top_k`` of ``G_m[p]`` (clean tokens only, :mod:`.tokens`);
3. all children evaluated as text in batches of ``batch_size`` (activation and CE in one forward);
   children that do not survive re-tokenisation are dropped;
4. member ``m`` becomes the argmax of ``J_m`` over the population and all children.

Every evaluated prompt enters the archive; the result is its **Pareto front** of activation vs CE
(no other prompt has higher activation and lower CE), and the reported prompt is the one of
highest activation with ``CE ≤ max_ce`` (when given).

**Soft prompt** (embedding optimisation with projection, after PEZ, Wen et al. 2023): ``R``
restarts of continuous embeddings ``z`` ``[L, d]``; the forward runs on the nearest clean tokens'
embeddings ``P(z)`` (straight-through: the gradient at ``P(z)`` is applied to ``z``), and the loss
is ``−A(P(z)) + λ·CE_soft(z)`` with the differentiable fluency
``CE_soft = −(1/(L−1)) Σ_{t≥1} Σ_v q_t(v) log p(v | P(z)_{<t})``, ``q_t = softmax(−‖z_t − E_v‖²/τ)``.
Every step's projected prompt is re-tokenised and scored as text; the best text is reported.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ConfigError
from ..stage import StageConfig, StageResult, at_least, in_range, one_of, option, register_result
from .score import Target, as_target, check_target_site, forward, score_ids, token_cross_entropy
from .tokens import allowed_tokens, embedding_matrix, encode_plain, retokenize

METHODS = ("epo", "soft")
INITS = ("random", "top_context")
OPTIMIZE_JSON = "optimize.json"


@dataclass
class OptimizeConfig(StageConfig):
    """Settings of both optimisers (recorded in ``optimize.json``)."""

    method: str = option("epo", flag="--method", help="epo (discrete, evolutionary) or soft (embeddings).")
    length: int = option(8, flag="--length", help="Prompt length in tokens.")
    steps: int = option(40, flag="--steps", help="Optimisation steps.")
    population: int = option(8, flag="--population", help="EPO population (one fluency weight each).")
    candidates: int = option(32, flag="--candidates", help="EPO children per member per step.")
    top_k: int = option(32, flag="--top-k", help="EPO: tokens per position ranked by gradient.")
    lambda_min: float = option(0.05, flag="--lambda-min", help="Smallest non-zero fluency weight λ.")
    lambda_max: float = option(2.0, flag="--lambda-max", help="Largest fluency weight λ.")
    batch_size: int = option(128, flag="--eval-batch-size", help="Candidates per forward pass.")
    restarts: int = option(8, flag="--restarts", help="Soft prompt: parallel restarts.")
    lr: float = option(0.05, flag="--lr", help="Soft prompt: Adam learning rate.")
    fluency: float = option(0.1, flag="--fluency", help="Soft prompt: weight λ of the soft cross-entropy.")
    tau: float = option(1.0, flag="--tau", help="Soft prompt: temperature of the soft tokens q_t.")
    max_ce: float | None = option(None, flag="--max-ce", help="Report the best prompt with CE ≤ this.")
    init: str = option("random", flag="--init", help="random or top_context (the top collection context).")
    skip: int = option(1, flag="--skip", help="Positions ignored at the start (attention sink).")
    seed: int = option(0, flag="--seed", help="Random seed.")

    def validate(self) -> None:
        one_of(self, "method", METHODS)
        one_of(self, "init", INITS)
        for name in ("steps", "population", "candidates", "top_k", "batch_size", "restarts"):
            at_least(self, name, 1)
        at_least(self, "skip", 0)
        if self.length <= self.skip:
            raise ConfigError(f"--length must be > --skip ({self.skip}), got {self.length}")
        at_least(self, "lambda_min", 0)
        if self.lambda_max < self.lambda_min:
            raise ConfigError(f"--lambda-max {self.lambda_max:g} is below --lambda-min {self.lambda_min:g}")
        in_range(self, "fluency", 0, 1e6)
        if self.max_ce is not None and not math.isfinite(self.max_ce):
            raise ConfigError(f"--max-ce must be a finite number, got {self.max_ce!r}")
        if not self.lr > 0 or not self.tau > 0:
            raise ConfigError(f"--lr and --tau must be > 0, got {self.lr!r} and {self.tau!r}")

    def lambdas(self) -> np.ndarray:
        """``[population]``: 0, then a geometric range ``lambda_min … lambda_max``."""
        if self.population == 1:
            return np.zeros(1)
        lo = max(self.lambda_min, 1e-6)
        return np.concatenate([[0.0], np.geomspace(lo, max(self.lambda_max, lo), self.population - 1)])


@register_result
@dataclass
class OptimizeResult(StageResult):
    """One optimisation: the reported prompt (``best``), the Pareto front, per-step history."""

    KIND: ClassVar[str] = "inverse optimisation"
    FILENAME: ClassVar[str] = OPTIMIZE_JSON

    target: str
    latent: int | None
    method: str
    best: dict[str, Any]
    front: list[dict[str, Any]]
    history: list[dict[str, Any]]
    evaluated: int
    seconds: float
    config: dict[str, Any]
    reference: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return str(self.best.get("text", ""))

    def summary(self) -> dict[str, Any]:
        b = self.best
        return {
            "target": self.target,
            "method": self.method,
            "text": b.get("text"),
            "activation": b.get("activation"),
            "ce": b.get("ce"),
            "survives_retokenization": b.get("survives"),
            "evaluated": self.evaluated,
            "seconds": round(self.seconds, 2),
            **self.reference,
        }


class _Archive:
    """Every evaluated text-valid prompt: ``ids → (activation, ce)``."""

    def __init__(self) -> None:
        self.points: dict[tuple[int, ...], tuple[float, float]] = {}
        self.objective: dict[tuple[int, ...], float] = {}

    def add(self, ids: torch.Tensor, act: np.ndarray, ce: np.ndarray, obj: np.ndarray | None = None) -> None:
        obj = act if obj is None else obj
        for r, a, c, o in zip(ids.tolist(), act.tolist(), ce.tolist(), obj.tolist()):
            if math.isfinite(a) and math.isfinite(c):
                self.points[tuple(r)] = (float(a), float(c))
                self.objective[tuple(r)] = float(o)

    def front(self) -> list[tuple[tuple[int, ...], float, float]]:
        """Pareto front: sorted by CE, keeping each point whose activation beats all of lower CE."""
        pts = sorted(self.points.items(), key=lambda kv: (kv[1][1], -kv[1][0]))
        out, best = [], -math.inf
        for ids, (a, c) in pts:
            if a > best:
                out.append((ids, a, c))
                best = a
        return out


def _entry(lm: Any, ids: tuple[int, ...] | list[int], act: float, ce: float) -> dict[str, Any]:
    text = lm.tokenizer.decode(list(ids))
    return {"text": text, "ids": list(ids), "activation": act, "ce": ce}


def _finish(lm: Any, target: Target, archive: _Archive, cfg: OptimizeConfig, **kw: Any) -> dict[str, Any]:
    """Pick the reported prompt from the front and re-score it as text (re-tokenised)."""
    pts = [(k, a, c) for k, (a, c) in archive.points.items()]
    pool = [p for p in pts if cfg.max_ce is None or p[2] <= cfg.max_ce] or archive.front()[:1]
    ids, _, _ = max(pool, key=lambda p: (p[1], archive.objective[p[0]]))
    text = lm.tokenizer.decode(list(ids))
    back = encode_plain(lm, text)
    s = score_ids(lm, target, [back], skip=cfg.skip)
    return {
        "text": text,
        "ids": list(ids),
        "retokenized_ids": back,
        "survives": back == list(ids),
        "activation": float(s.activation[0]),
        "objective": float(s.objective[0]),
        "ce": float(s.ce[0]),
        "per_position": [float(v) for v in s.per_position[0]],
        "tokens": lm.token_str(back),
        **kw,
    }


def _valid(lm: Any, cand: torch.Tensor) -> torch.Tensor:
    _, _, ok = retokenize(lm, cand)
    return torch.as_tensor(ok, dtype=torch.bool)


def token_gradients(lm: Any, target: Target, ids: torch.Tensor, lam: torch.Tensor, skip: int) -> torch.Tensor:
    """``[M, L, V]`` ``∂(A − λ_m·CE)/∂onehot`` of each row (one forward + backward)."""
    E, scale = embedding_matrix(lm)
    onehot = torch.nn.functional.one_hot(ids.to(E.device), E.shape[0]).to(E.dtype).requires_grad_(True)
    emb = (onehot @ E) * scale
    with torch.enable_grad():
        h, logits = forward(lm, target, embeds=emb, need_logits=True)
        a = target.objective(h, logits)[:, skip:].max(-1).values
        ce = token_cross_entropy(logits, ids.to(logits.device))
        (grad,) = torch.autograd.grad((a - lam.to(a.device) * ce).sum(), onehot)
    return grad


def _children(
    pop: torch.Tensor, grad: torch.Tensor, allowed: torch.Tensor, cfg: OptimizeConfig, g: torch.Generator
) -> torch.Tensor:
    """``[M·candidates, L]`` single-token swaps among each member's top-k gradient tokens."""
    M, L = pop.shape
    grad = grad.masked_fill(~allowed.to(grad.device)[None, None], -math.inf)
    top = grad.topk(min(cfg.top_k, int(allowed.sum())), dim=-1).indices.cpu()  # [M, L, k]
    n = cfg.candidates
    pos = torch.randint(0, L, (M, n), generator=g)
    pick = torch.randint(0, top.shape[-1], (M, n), generator=g)
    kids = pop[:, None, :].repeat(1, n, 1)
    new = top[torch.arange(M)[:, None], pos, pick]
    kids.scatter_(2, pos[..., None], new[..., None])
    return kids.reshape(M * n, L)


def _random_prompts(allowed: torch.Tensor, n: int, L: int, g: torch.Generator) -> torch.Tensor:
    pool = allowed.nonzero().flatten()
    return pool[torch.randint(0, len(pool), (n, L), generator=g)]


def _init(
    lm: Any, n: int, cfg: OptimizeConfig, allowed: torch.Tensor, init_ids: Any, g: torch.Generator
) -> torch.Tensor:
    """``[n, length]`` starting prompts: ``init_ids`` (cut or padded with random clean tokens), else random."""
    out = _random_prompts(allowed, n, cfg.length, g)
    if init_ids is not None:
        rows = [list(r) for r in (init_ids if isinstance(init_ids[0], (list, tuple)) else [init_ids])]
        for i in range(n):
            r = rows[i % len(rows)][-cfg.length :]
            if r:
                out[i, cfg.length - len(r) :] = torch.as_tensor(r)
    return out


def epo(
    lm: Any,
    target: Any,
    config: OptimizeConfig | None = None,
    *,
    latent: int | None = None,
    site: Any = None,
    init_ids: Any = None,
    progress: Any = None,
) -> OptimizeResult:
    """EPO (module docstring) of ``target`` (a :class:`Target`, or an SAE with ``latent``)."""
    cfg = config or OptimizeConfig()
    tgt = as_target(target, latent, site)
    check_target_site(lm, tgt)
    t0 = time.time()
    g = torch.Generator().manual_seed(cfg.seed)
    allowed = allowed_tokens(lm)
    lam = torch.as_tensor(cfg.lambdas(), dtype=torch.float32)
    pop = _init(lm, len(lam), cfg, allowed, init_ids, g)
    s = score_ids(lm, tgt, pop, batch_size=cfg.batch_size, skip=cfg.skip)
    act, ce = torch.as_tensor(s.objective), torch.as_tensor(s.ce)
    archive, history, evaluated = _Archive(), [], len(pop)
    ok = _valid(lm, pop)
    archive.add(pop[ok], s.activation[ok.numpy()], s.ce[ok.numpy()], s.objective[ok.numpy()])
    for step in range(cfg.steps):
        grad = token_gradients(lm, tgt, pop, lam, cfg.skip)
        kids = torch.unique(_children(pop, grad, allowed, cfg, g), dim=0)
        kids = kids[_valid(lm, kids)]
        if len(kids):
            sk = score_ids(lm, tgt, kids, batch_size=cfg.batch_size, skip=cfg.skip)
            evaluated += len(kids)
            archive.add(kids, sk.activation, sk.ce, sk.objective)
            pool = torch.cat([pop, kids])
            pa = torch.cat([act, torch.as_tensor(sk.objective)])
            pc = torch.cat([ce, torch.as_tensor(sk.ce)])
            best = (pa[None] - lam[:, None] * pc[None]).argmax(1)
            pop, act, ce = pool[best], pa[best], pc[best]
        front = archive.front()
        history.append(_step_record(step, front, act, ce, evaluated, t0, cfg.max_ce))
        if progress is not None:
            progress(history[-1])
    best = _finish(lm, tgt, archive, cfg)
    return OptimizeResult(
        tgt.name, getattr(tgt, "latent", None), "epo", best,
        [_entry(lm, *p) for p in archive.front()], history, evaluated, time.time() - t0, cfg.to_dict(),
    )  # fmt: skip


def _step_record(
    step: int,
    front: list,
    act: torch.Tensor,
    ce: torch.Tensor,
    evaluated: int,
    t0: float,
    max_ce: float | None = None,
) -> dict[str, Any]:
    """One step of the history: the best activation so far (any CE) and its CE; with ``max_ce``
    also the best so far with ``CE ≤ max_ce`` (what would be reported now) and its CE."""
    top = max(front, key=lambda p: p[1]) if front else (None, float("nan"), float("nan"))
    fluent = [p for p in front if max_ce is not None and p[2] <= max_ce]
    best_f = max(fluent, key=lambda p: p[1]) if fluent else None
    return {
        "step": step,
        "best_activation": top[1],
        "ce_at_best": top[2],
        "best_fluent_activation": None if best_f is None else best_f[1],
        "ce_at_best_fluent": None if best_f is None else best_f[2],
        "population_activation": [float(v) for v in act],
        "population_ce": [float(v) for v in ce],
        "front_size": len(front),
        "evaluated": evaluated,
        "seconds": time.time() - t0,
    }


def _nearest(z: torch.Tensor, E: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """``[R, L]`` ids of the clean tokens nearest (L2) to each embedding in ``z``."""
    d = torch.cdist(z.reshape(-1, z.shape[-1]), E[pool])
    return pool[d.argmin(-1)].reshape(z.shape[:2])


def soft_prompt(
    lm: Any,
    target: Any,
    config: OptimizeConfig | None = None,
    *,
    latent: int | None = None,
    site: Any = None,
    init_ids: Any = None,
    progress: Any = None,
) -> OptimizeResult:
    """Soft-prompt optimisation with projection (module docstring)."""
    cfg = config or OptimizeConfig(method="soft")
    tgt = as_target(target, latent, site)
    check_target_site(lm, tgt)
    t0 = time.time()
    g = torch.Generator().manual_seed(cfg.seed)
    allowed = allowed_tokens(lm)
    pool = allowed.nonzero().flatten().to(lm.device)
    E, scale = embedding_matrix(lm)
    E = E.detach()
    start = _init(lm, cfg.restarts, cfg, allowed, init_ids, g)
    z = E[start.to(E.device)].clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=cfg.lr * float(E.norm(dim=-1).mean()))
    archive, history, evaluated = _Archive(), [], 0
    for step in range(cfg.steps):
        ids = _nearest(z.detach(), E, pool)
        hard = E[ids]
        emb = (z + (hard - z).detach()) * scale
        with torch.enable_grad():
            h, logits = forward(lm, tgt, embeds=emb, need_logits=True)
            a = tgt.objective(h, logits)[:, cfg.skip :].max(-1).values
            q = torch.softmax(-(torch.cdist(z, E[pool][None].expand(len(z), -1, -1)) ** 2) / cfg.tau, -1)
            lp = torch.log_softmax(logits[:, :-1].float(), -1)[..., pool]
            ce_soft = -(q[:, 1:] * lp).sum(-1).mean(-1)
            loss = -(a - cfg.fluency * ce_soft).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        texts, back, ok = retokenize(lm, ids.cpu())
        good = [b for b, o in zip(back, ok) if o]
        if good:
            sk = score_ids(lm, tgt, good, batch_size=cfg.batch_size, skip=cfg.skip)
            archive.add(torch.as_tensor(good), sk.activation, sk.ce, sk.objective)
            evaluated += len(good)
        history.append(
            {
                **_step_record(
                    step, archive.front(), a.detach(), ce_soft.detach(), evaluated, t0, cfg.max_ce
                ),
                "loss": float(loss.detach()),
            }
        )
        if progress is not None:
            progress(history[-1])
    if not archive.points:
        raise ConfigError(
            f"soft prompt: no projected prompt of {tgt.name} survived re-tokenisation in {cfg.steps} steps"
        )
    best = _finish(lm, tgt, archive, cfg)
    return OptimizeResult(
        tgt.name, getattr(tgt, "latent", None), "soft", best,
        [_entry(lm, *p) for p in archive.front()], history, evaluated, time.time() - t0, cfg.to_dict(),
    )  # fmt: skip


def optimize(lm: Any, target: Any, config: OptimizeConfig | None = None, **kw: Any) -> OptimizeResult:
    """Run ``config.method`` (``epo`` or ``soft``) on ``target``."""
    cfg = config or OptimizeConfig()
    return (epo if cfg.method == "epo" else soft_prompt)(lm, target, cfg, **kw)


def save_many(results: list[OptimizeResult], root: str | Path) -> list[Path]:
    """Save results under ``root/latent_<id>/`` (one directory per target)."""
    out = []
    for r in results:
        name = f"latent_{r.latent}" if r.latent is not None else r.target.replace(" ", "_")
        out.append(r.save(Path(root) / name))
    return out
