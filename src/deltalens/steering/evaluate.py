"""Steered evaluation: generate under many configurations at once, judge, append results.

A :class:`Candidate` is one configuration to evaluate: zero or more :class:`Term`
(a trait vector applied at a layer with a coefficient). Coefficients are *relative*
(default) or *raw*:

* relative — the added vector is ``coef · n_L · v̂``, with ``v̂ = v/‖v‖`` and ``n_L`` the
  mean activation norm at layer L (:func:`deltalens.vectors.reference_norms`); 0.1 adds
  10 % of a typical residual norm, comparable across layers and models;
* raw — the added vector is ``coef · v`` (``v`` as stored in the vector file).

:func:`evaluate` generates every candidate whose responses are not yet in the results
log (one batched sweep, :func:`~deltalens.steering.generate_sweep`), scores responses
with a judge (through the cache), optionally projects them on a monitor vector, and
appends one record per candidate to ``results.jsonl``. Candidates already evaluated
with the same judge are read back, not recomputed; those with responses but missing or
failed scores are only re-scored.

Record fields: ``key`` (hash of model, terms, positions, questions, max_new_tokens,
chat), ``kind`` (``baseline``/``single``/``combination``), ``label``, ``terms`` (layer,
component, coef, coef_mode, applied norm, vector identity), ``layer``/``coef``/``method``
(single vectors), ``judge``, ``trait_mean`` / ``coherence_mean`` (means over ``ok``
scores), ``n``, ``n_errors``, ``status_counts``, ``projection_mean``, ``responses``
(question, response, scores, statuses, projection), ``meta`` (search round…),
``model``, ``weights_hash``, ``created``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .. import judges as J
from ..io import config_hash, now_iso
from ..vectors import TraitVector, reference_norms
from .monitor import project
from .results import ResultsLog
from .sweep import SteerConfig, SteerTerm, SweepStats, generate_sweep

if TYPE_CHECKING:
    from ..models.loading import LoadedModel

COEF_MODES = ("relative", "raw")


@dataclass
class Term:
    """A trait vector applied at ``layer`` (default: the vector's own layer) with ``coef``."""

    vector: TraitVector
    coef: float
    layer: int | None = None
    coef_mode: str = "relative"
    component: str | None = None

    def __post_init__(self) -> None:
        if self.coef_mode not in COEF_MODES:
            raise ValueError(f"coef_mode must be one of {COEF_MODES}, got {self.coef_mode!r}")

    @property
    def at_layer(self) -> int:
        return int(self.vector.layer if self.layer is None else self.layer)

    @property
    def at_component(self) -> str:
        return self.component or self.vector.component

    def added_vector(self, norms: dict[int, float]) -> torch.Tensor:
        """The vector added at coefficient 1 (``n_L·v̂`` relative, ``v`` raw)."""
        if self.coef_mode == "relative":
            return self.vector.unit * float(norms[self.at_layer])
        return self.vector.vector.float()

    def describe(self, norms: dict[int, float] | None = None) -> dict[str, Any]:
        m = self.vector.meta
        d: dict[str, Any] = {
            "layer": self.at_layer,
            "component": self.at_component,
            "coef": round(float(self.coef), 6),
            "coef_mode": self.coef_mode,
            "vector": {
                "trait": m.get("trait"),
                "variant": m.get("variant"),
                "positions": m.get("positions"),
                "method": m.get("method"),
                "layer": m.get("layer"),
                "fingerprint": self.vector.fingerprint(),
            },
        }
        if norms is not None:
            d["added_norm"] = round(abs(float(self.coef)) * float(self.added_vector(norms).norm()), 4)
        return d


@dataclass
class Candidate:
    """One configuration to evaluate (no terms = the unsteered baseline)."""

    terms: tuple[Term, ...] = ()
    kind: str = "single"
    label: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def baseline(cls) -> Candidate:
        return cls((), "baseline", "baseline")

    @classmethod
    def single(cls, vector: TraitVector, coef: float, coef_mode: str = "relative", **meta: Any) -> Candidate:
        label = f"{vector.method} L{vector.layer} c{coef:g}"
        return cls((Term(vector, coef, coef_mode=coef_mode),), "single", label, dict(meta))


@dataclass
class EvalSettings:
    """What every candidate of a run shares (part of each record's key)."""

    questions: list[str]
    max_new_tokens: int = 64
    positions: str = "response"
    chat: bool | str = "auto"
    max_rows: int = 256

    @property
    def questions_sha(self) -> str:
        return hashlib.sha256("\x00".join(self.questions).encode()).hexdigest()[:16]


def candidate_key(lm: LoadedModel, cand: Candidate, settings: EvalSettings) -> str:
    return config_hash(
        {
            "model": lm.weights_hash,
            "terms": [t.describe() for t in cand.terms],
            "positions": settings.positions,
            "questions": settings.questions_sha,
            "max_new_tokens": settings.max_new_tokens,
            "chat": str(settings.chat),
        }
    )


def _mean(xs: Sequence[float | None]) -> float | None:
    v = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(v) / len(v) if v else None


@dataclass
class Monitor:
    """Project responses on ``vector`` at ``site`` (see :mod:`deltalens.steering.monitor`)."""

    vector: torch.Tensor
    site: Any
    positions: str = "response"
    reduce: str = "mean"

    def __call__(self, lm: LoadedModel, items: Sequence[Any]) -> list[float]:
        return project(lm, items, self.vector, self.site, positions=self.positions, reduce=self.reduce).tolist()


def evaluate(
    lm: LoadedModel,
    candidates: Sequence[Candidate],
    settings: EvalSettings,
    judge: J.Judge,
    trait: J.TraitInfo,
    log: ResultsLog,
    *,
    cache: J.JudgeCache | None = None,
    monitor: Monitor | None = None,
    trait_id: str | None = None,
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    stats: SweepStats | None = None,
) -> list[dict[str, Any]]:
    """Evaluate ``candidates`` (see the module docstring); returns one record per candidate."""
    judge.check()
    norms_needed = sorted({t.at_layer for c in candidates for t in c.terms if t.coef_mode == "relative"})
    norms = reference_norms(lm, norms_needed) if norms_needed else {}
    keys = [candidate_key(lm, c, settings) for c in candidates]
    out: dict[int, dict[str, Any]] = {}
    to_generate: list[int] = []
    to_rescore: list[tuple[int, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for i, (c, k) in enumerate(zip(candidates, keys)):
        if k in seen:  # the same configuration twice in one call: evaluate once
            continue
        seen[k] = i
        done = log.complete(k, judge.id)
        if done is not None:
            out[i] = done
            continue
        prev = log.with_responses(k)
        if prev is not None:
            to_rescore.append((i, prev))
        else:
            to_generate.append(i)

    P = len(settings.questions)
    per_chunk = max(1, settings.max_rows // max(P, 1))

    def finish(idxs: list[int], gens: list[list[dict[str, Any]]]) -> None:
        items = [(g["question"], g["response"]) for gl in gens for g in gl]
        t_scores = J.score(judge, "trait", items, trait, cache)
        c_scores = J.score(judge, "coherence", items, trait, cache)
        proj: list[float] | None = None
        if monitor is not None:
            pairs = [{"prompt_ids": g["prompt_ids"], "response_ids": g["response_ids"]} for gl in gens for g in gl]
            proj = monitor(lm, pairs)
        k = 0
        for i, gl in zip(idxs, gens):
            cand = candidates[i]
            resp = []
            for g in gl:
                ts, cs = t_scores[k], c_scores[k]
                r = {
                    "question": g["question"],
                    "response": g["response"],
                    "finished": g.get("finished"),
                    "prompt_ids": g["prompt_ids"],
                    "response_ids": g["response_ids"],
                    "trait": ts.value,
                    "coherence": cs.value,
                }
                if ts.status != "ok":
                    r["trait_status"] = ts.status
                if cs.status != "ok":
                    r["coherence_status"] = cs.status
                if ts.detail and ts.status != "ok" or cs.detail and cs.status == "error":
                    r["detail"] = (ts.detail or cs.detail)[:200]
                if proj is not None:
                    r["projection"] = proj[k]
                resp.append(r)
                k += 1
            statuses = Counter(x.get("trait_status", "ok") for x in resp) + Counter(
                "coherence_" + x.get("coherence_status", "ok") for x in resp
            )
            rec = {
                "key": keys[i],
                "kind": cand.kind,
                "label": cand.label,
                "trait": trait_id or trait.name,
                "terms": [t.describe(norms) for t in cand.terms],
                **(
                    {"layer": cand.terms[0].at_layer, "coef": float(cand.terms[0].coef), "method": cand.terms[0].vector.method}
                    if cand.kind == "single" and len(cand.terms) == 1
                    else {}
                ),
                "positions": settings.positions,
                "max_new_tokens": settings.max_new_tokens,
                "questions_sha": settings.questions_sha,
                "n_questions": P,
                "judge": judge.id,
                "trait_mean": _mean([x["trait"] for x in resp]),
                "coherence_mean": _mean([x["coherence"] for x in resp]),
                "n": len(resp),
                "n_errors": sum(1 for x in resp if x.get("trait_status") == "error" or x.get("coherence_status") == "error"),
                "status_counts": dict(statuses),
                "projection_mean": _mean([x.get("projection") for x in resp]) if proj is not None else None,
                "responses": resp,
                "meta": cand.meta,
                "model": lm.name,
                "weights_hash": lm.weights_hash,
                "created": now_iso(),
            }
            log.append(rec)
            out[i] = log.latest(keys[i]) or rec
            if on_record is not None:
                on_record(rec)

    for i, prev in to_rescore:
        finish([i], [prev["responses"]])
    for s in range(0, len(to_generate), per_chunk):
        idxs = to_generate[s : s + per_chunk]
        t0 = time.time()
        cfgs = [
            SteerConfig(tuple(SteerTerm(t.at_layer, t.added_vector(norms), float(t.coef), t.at_component) for t in candidates[i].terms))
            for i in idxs
        ]
        gens = generate_sweep(
            lm, settings.questions, cfgs, max_new_tokens=settings.max_new_tokens, positions=settings.positions,
            max_rows=settings.max_rows, chat=settings.chat, progress=progress, stats=stats,
        )
        finish(idxs, [[g.to_dict() for g in gl] for gl in gens])
        if stats is not None:
            stats.seconds = time.time() - t0
    return [out[seen[k]] for k in keys]


def trait_delta(record: dict[str, Any], baseline: dict[str, Any]) -> float | None:
    """``trait_mean(record) − trait_mean(baseline)``."""
    a, b = record.get("trait_mean"), baseline.get("trait_mean")
    return None if a is None or b is None else float(a) - float(b)
