"""``results.jsonl``: the append-only log of steering evaluations.

One JSON record per evaluated configuration (:class:`SteeringRecord`). The file is never
rewritten: a re-run appends, and readers take the latest record per configuration key. A line
cut short by a killed run is skipped when
reading (and the next append starts on a fresh line), so a kill loses at most the
records in flight.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import append_log, read_log

log = logging.getLogger("deltalens.steering")


@dataclass
class SteeringRecord:
    """One evaluated configuration: a line of ``results.jsonl``.

    ``key`` (hash of model, terms, positions, questions, max_new_tokens, chat), ``kind``
    (``baseline``/``single``/``combination``), ``label``, ``trait``, ``terms`` (layer,
    component, coef, coef_mode, applied norm, vector identity), ``layer``/``coef``/``method``
    (single vectors only), ``positions`` (steering positions), ``max_new_tokens``,
    ``questions_sha``, ``n_questions``, ``judge``, ``trait_mean`` / ``coherence_mean``
    (means over ``ok`` scores), ``n``, ``n_errors``, ``status_counts``, ``projection_mean``,
    ``responses`` (question, response, finished, token ids, scores, statuses, projection),
    ``meta`` (search round, strategy…), ``model``, ``weights_hash``, ``created``. Keys this
    version does not know are kept in ``extra`` and written back.
    """

    key: str
    kind: str = "single"
    label: str = ""
    trait: str | None = None
    terms: list[dict[str, Any]] = field(default_factory=list)
    layer: int | None = None
    coef: float | None = None
    method: str | None = None
    positions: str | None = None
    max_new_tokens: int | None = None
    questions_sha: str | None = None
    n_questions: int | None = None
    judge: str | None = None
    trait_mean: float | None = None
    coherence_mean: float | None = None
    n: int = 0
    n_errors: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    projection_mean: float | None = None
    responses: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    weights_hash: str | None = None
    created: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _SINGLE = ("layer", "coef", "method")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if f.name in self._SINGLE and v is None:
                continue  # only single-vector records carry layer/coef/method
            d[f.name] = v
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SteeringRecord:
        """Tolerant of missing keys (older files); unknown keys go to ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names and v is not None}
        for k in ("terms", "responses"):
            if not isinstance(known.get(k, []), list):
                known.pop(k)
        for k in ("status_counts", "meta"):
            if not isinstance(known.get(k, {}), dict):
                known.pop(k)
        rec = cls(**known)
        rec.extra = {k: v for k, v in d.items() if k not in names}
        return rec

    # ---- derived ------------------------------------------------------------------------------
    @property
    def coef_mode(self) -> str | None:
        """Coefficient mode of the first term (``None`` for the baseline)."""
        return self.terms[0].get("coef_mode") if self.terms else None

    @property
    def fingerprint(self) -> str | None:
        """Fingerprint of the first term's vector."""
        return (self.terms[0].get("vector") or {}).get("fingerprint") if self.terms else None

    @property
    def coefs(self) -> list[float]:
        return [float(t["coef"]) for t in self.terms if "coef" in t]

    def delta(self, baseline: SteeringRecord | None) -> float | None:
        """``trait_mean − baseline.trait_mean``."""
        if baseline is None or self.trait_mean is None or baseline.trait_mean is None:
            return None
        return float(self.trait_mean) - float(baseline.trait_mean)

    def coherent(self, min_coherence: float) -> bool:
        """Scored, with coherence ≥ ``min_coherence``."""
        return self.trait_mean is not None and (self.coherence_mean or 0) >= min_coherence


class ResultsLog:
    """Read and append steering records; look them up by configuration key."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: list[SteeringRecord] = []
        self.skipped_lines = 0
        self.appended = 0  # records appended by this process
        self._by_key: dict[str, list[SteeringRecord]] = {}
        recs, self.skipped_lines = read_log(self.path, "configurations")
        for rec in recs:
            if isinstance(rec.get("key"), str):
                self._add(SteeringRecord.from_dict(rec))

    @property
    def torn_path(self) -> Path:
        """Where lines cut short by a killed run are moved (``results.jsonl.torn``)."""
        return self.path.with_name(self.path.name + ".torn")

    def _add(self, rec: SteeringRecord) -> None:
        self.records.append(rec)
        self._by_key.setdefault(rec.key, []).append(rec)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[SteeringRecord]:
        return iter(self.records)

    def latest(self, key: str) -> SteeringRecord | None:
        recs = self._by_key.get(key)
        return recs[-1] if recs else None

    def complete(self, key: str, judge_id: str) -> SteeringRecord | None:
        """The latest record for ``key`` scored by ``judge_id`` with no scoring errors."""
        for rec in reversed(self._by_key.get(key, [])):
            if rec.judge == judge_id and not rec.n_errors:
                return rec
        return None

    def with_responses(self, key: str) -> SteeringRecord | None:
        """The latest record for ``key`` that holds its responses (for re-scoring)."""
        for rec in reversed(self._by_key.get(key, [])):
            if rec.responses:
                return rec
        return None

    def latest_per_key(self, judge_id: str | None = None) -> list[SteeringRecord]:
        """The latest record of every key (optionally only records of one judge), in first-seen order."""
        out = []
        for recs in self._by_key.values():
            cand = [r for r in recs if judge_id is None or r.judge == judge_id]
            if cand:
                out.append(cand[-1])
        return out

    def append(self, record: SteeringRecord) -> None:
        """Append one record (a line; the file is never rewritten)."""
        d = record.to_dict()
        append_log(self.path, d)
        self.appended += 1
        self._add(SteeringRecord.from_dict(json.loads(json.dumps(d, default=str))))
