"""Steered evaluation: generate under many configurations at once, judge, append results.

:func:`evaluate_candidates` generates every :class:`~deltalens.steering.Candidate` whose
responses are not yet in the results log (one batched sweep,
:func:`~deltalens.steering.generate_sweep`), scores responses with a judge (through the
cache), optionally projects them on a monitor vector, and appends one
:class:`~deltalens.steering.results.SteeringRecord` per candidate to ``results.jsonl``.
Candidates already evaluated with the same judge are read back, not recomputed; those
with responses but missing or failed scores are only re-scored. Coefficients (relative or
raw) are explained in :mod:`deltalens.steering.terms`.

With a ``backend`` (:class:`~deltalens.scale.backends.BackendConfig`: ``local``, ``ray`` or
``slurm``) the same chunks of whole configurations are work units: each worker loads the model
from its spec once (:func:`generate_chunk`) and generates its chunk; the driver judges and
appends each chunk's records as the chunk finishes. A chunk that fails after its retries is
recorded in ``failed.jsonl`` beside ``results.jsonl`` and the run ends with
:class:`~deltalens.errors.WorkUnitError` once every other chunk is written; a re-run computes
only what is missing.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .. import judges as J
from ..io import config_hash, now_iso
from .monitor import project
from .results import ResultsLog, SteeringRecord
from .sweep import SweepStats, generate_sweep
from .terms import COEF_MODES, Candidate, Term, check_widths, needed_norms

__all__ = [
    "COEF_MODES",
    "Candidate",
    "EvalSettings",
    "Monitor",
    "Term",
    "candidate_key",
    "evaluate_candidates",
]

if TYPE_CHECKING:
    from ..models.loading import LoadedModel
    from ..scale.backends import BackendConfig


@dataclass
class EvalSettings:
    """What every candidate of a run shares (part of each record's key)."""

    questions: list[str]
    max_new_tokens: int = 64
    positions: str = "response"
    chat: bool | str = "auto"
    max_rows: int = 256
    system: list[str | None] | None = None  # one system prompt per question (the prompting baseline)

    @property
    def questions_sha(self) -> str:
        return hashlib.sha256("\x00".join(self.questions).encode()).hexdigest()[:16]

    @property
    def system_sha(self) -> str | None:
        if self.system is None:
            return None
        return hashlib.sha256("\x00".join(s or "" for s in self.system).encode()).hexdigest()[:16]


def candidate_key(lm: LoadedModel, cand: Candidate, settings: EvalSettings) -> str:
    return config_hash(
        {
            "model": lm.weights_hash,
            "terms": [t.describe() for t in cand.terms],
            "positions": settings.positions,
            "questions": settings.questions_sha,
            "max_new_tokens": settings.max_new_tokens,
            "chat": str(settings.chat),
            # present only under system prompts, so keys of unprompted configurations are unchanged
            **({"system": settings.system_sha} if settings.system is not None else {}),
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
        return project(
            lm, items, self.vector, self.site, positions=self.positions, reduce=self.reduce
        ).tolist()


def _scored_responses(
    gens: list[dict[str, Any]],
    t_scores: Sequence[J.Score],
    c_scores: Sequence[J.Score],
    proj: Sequence[float] | None,
    k0: int,
) -> list[dict[str, Any]]:
    """Response entries of a record: text, token ids, scores (statuses when not ok), projection."""
    resp = []
    for j, g in enumerate(gens):
        ts, cs = t_scores[k0 + j], c_scores[k0 + j]
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
            r["projection"] = proj[k0 + j]
        resp.append(r)
    return resp


def make_record(
    lm: LoadedModel,
    key: str,
    cand: Candidate,
    settings: EvalSettings,
    judge_id: str,
    trait: str,
    resp: list[dict[str, Any]],
    norms: dict[int, float],
    monitored: bool,
) -> SteeringRecord:
    """The :class:`SteeringRecord` of one candidate's scored responses."""
    statuses = Counter(x.get("trait_status", "ok") for x in resp) + Counter(
        "coherence_" + x.get("coherence_status", "ok") for x in resp
    )
    single = cand.kind == "single" and len(cand.terms) == 1
    t0 = cand.terms[0] if single else None
    return SteeringRecord(
        key=key,
        kind=cand.kind,
        label=cand.label,
        trait=trait,
        terms=[t.describe(norms) for t in cand.terms],
        layer=t0.at_layer if t0 else None,
        coef=float(t0.coef) if t0 else None,
        method=t0.vector.method if t0 else None,
        positions=settings.positions,
        max_new_tokens=settings.max_new_tokens,
        questions_sha=settings.questions_sha,
        n_questions=len(settings.questions),
        judge=judge_id,
        trait_mean=_mean([x["trait"] for x in resp]),
        coherence_mean=_mean([x["coherence"] for x in resp]),
        n=len(resp),
        n_errors=sum(
            1 for x in resp if x.get("trait_status") == "error" or x.get("coherence_status") == "error"
        ),
        status_counts=dict(statuses),
        projection_mean=_mean([x.get("projection") for x in resp]) if monitored else None,
        responses=resp,
        meta=cand.meta,
        model=lm.name,
        weights_hash=lm.weights_hash,
        created=now_iso(),
    )


def evaluate_candidates(
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
    on_record: Callable[[SteeringRecord], None] | None = None,
    stats: SweepStats | None = None,
    backend: BackendConfig | None = None,
) -> list[SteeringRecord]:
    """Evaluate ``candidates`` (see the module docstring); returns one record per candidate."""
    judge.check()
    check_widths(candidates, lm.d_model, f"model {lm.name}")
    norms = needed_norms(lm, candidates)
    keys = [candidate_key(lm, c, settings) for c in candidates]
    out: dict[int, SteeringRecord] = {}
    to_generate: list[int] = []
    to_rescore: list[tuple[int, SteeringRecord]] = []
    seen: dict[str, int] = {}
    for i, k in enumerate(keys):
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
        r_scores = J.score(judge, "relevance", items, trait, cache) if judge.scores_relevance else None
        proj: list[float] | None = None
        if monitor is not None:
            pairs = [
                {"prompt_ids": g["prompt_ids"], "response_ids": g["response_ids"]} for gl in gens for g in gl
            ]
            proj = monitor(lm, pairs)
        k = 0
        for i, gl in zip(idxs, gens):
            resp = _scored_responses(gl, t_scores, c_scores, proj, k)
            if r_scores is not None:
                for j, x in enumerate(resp):
                    x["relevance"] = r_scores[k + j].value
            k += len(gl)
            rec = make_record(
                lm,
                keys[i],
                candidates[i],
                settings,
                judge.id,
                trait_id or trait.name,
                resp,
                norms,
                proj is not None,
            )
            log.append(rec)
            out[i] = log.latest(keys[i]) or rec
            if on_record is not None:
                on_record(rec)

    for i, prev in to_rescore:
        finish([i], [prev.responses])
    chunks = [to_generate[s : s + per_chunk] for s in range(0, len(to_generate), per_chunk)]
    if backend is not None and chunks:
        _generate_on_backend(lm, candidates, chunks, norms, settings, backend, finish, log, keys, progress)
        return [out[seen[k]] for k in keys]
    for s in range(0, len(to_generate), per_chunk):
        idxs = to_generate[s : s + per_chunk]
        t0 = time.time()
        gens = generate_sweep(
            lm,
            settings.questions,
            [candidates[i] for i in idxs],
            norms=norms,
            max_new_tokens=settings.max_new_tokens,
            positions=settings.positions,
            max_rows=settings.max_rows,
            chat=settings.chat,
            system=settings.system,
            progress=progress,
            stats=stats,
        )
        finish(idxs, [[g.to_dict() for g in gl] for gl in gens])
        if stats is not None:
            stats.seconds = time.time() - t0
    return [out[seen[k]] for k in keys]


# ---- work units on a backend (Ray, SLURM) --------------------------------------------------------
_WORKER_MODEL: dict[tuple[str, str, str], LoadedModel] = {}


def generate_chunk(
    model: dict[str, str],
    questions: list[str],
    candidates: list[Candidate],
    norms: dict[int, float],
    max_new_tokens: int,
    positions: str,
    max_rows: int,
    chat: bool | str,
) -> dict[str, Any]:
    """One work unit: greedy generations of ``questions`` under each candidate, as dicts
    (``{"weights_hash", "gens": [[Generation.to_dict()…] per candidate]}``). The model is loaded
    from ``model["spec"]`` once per worker process and kept for later units."""
    from ..models import load

    key = (model["spec"], model["dtype"], model["device"])
    if key not in _WORKER_MODEL:
        _WORKER_MODEL.clear()
        _WORKER_MODEL[key] = load(model["spec"], dtype=model["dtype"], device=model["device"])
    lm = _WORKER_MODEL[key]
    gens = generate_sweep(
        lm,
        questions,
        candidates,
        norms=norms,
        max_new_tokens=max_new_tokens,
        positions=positions,
        max_rows=max_rows,
        chat=chat,
        progress=False,
    )
    return {"weights_hash": lm.weights_hash, "gens": [[g.to_dict() for g in gl] for gl in gens]}


def _generate_on_backend(
    lm: LoadedModel,
    candidates: Sequence[Candidate],
    chunks: list[list[int]],
    norms: dict[int, float],
    settings: EvalSettings,
    backend: BackendConfig,
    finish: Callable[[list[int], list[list[dict[str, Any]]]], None],
    log: ResultsLog,
    keys: list[str],
    progress: bool,
) -> None:
    from ..errors import ConfigError, WorkUnitError
    from ..io import append_log
    from ..scale.backends import Unit, run_units

    if not lm.spec:
        raise ConfigError(f"--backend {backend.backend} needs a model loaded from a spec (a path or name)")
    model = {"spec": str(lm.spec), "dtype": str(lm.dtype).replace("torch.", ""), "device": str(lm.device)}
    units = [
        Unit(
            keys[idxs[0]],
            (
                model,
                list(settings.questions),
                [candidates[i] for i in idxs],
                dict(norms),
                settings.max_new_tokens,
                settings.positions,
                settings.max_rows,
                settings.chat,
            ),
        )
        for idxs in chunks
    ]
    by_key = {keys[idxs[0]]: idxs for idxs in chunks}
    failed_log = log.path.with_name("failed.jsonl")
    if backend.backend == "slurm" and not backend.slurm_folder:  # submitit's job files beside the results
        backend = backend.replace(slurm_folder=str(log.path.parent / "submitit"))

    def on_result(u: Unit, res: dict[str, Any]) -> None:
        if res["weights_hash"] != lm.weights_hash:
            raise ConfigError(
                f"a worker loaded {model['spec']} with weights {res['weights_hash']}, this run has "
                f"{lm.weights_hash}; every worker must see the same model files"
            )
        finish(by_key[u.key], res["gens"])

    def on_failure(u: Unit, err: str, attempts: int) -> None:
        append_log(
            failed_log,
            {"keys": [keys[i] for i in by_key[u.key]], "error": err, "attempts": attempts, "time": now_iso()},
        )

    rep = run_units(
        generate_chunk, units, backend, on_result=on_result, on_failure=on_failure, progress=progress
    )
    if rep.failed:
        first = next(iter(rep.failed.values()))
        raise WorkUnitError(
            f"{len(rep.failed)} of {len(units)} work units failed after {backend.retries} retries "
            f"(recorded in {failed_log}; first: {first}); the others are in {log.path} — rerun to compute "
            "only the missing ones"
        )
