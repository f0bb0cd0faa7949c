"""The judge protocol, scores, the judge prompts and the shared on-disk score cache.

A judge scores ``(question, response)`` pairs on two 0–100 scales:

* ``trait`` — how strongly the response displays a trait (given its name and definition);
* ``coherence`` — how fluent, on-topic and non-degenerate the response is, regardless of
  the trait and of whether the content is right.

Every backend returns :class:`Score` objects: a value, or ``None`` with the status
``refusal`` (the judge declined), ``unparseable`` (no score in its answer) or ``error``
(the request failed after retries). ``ok``/``refusal``/``unparseable`` are final and are
cached; ``error`` is not cached, so a re-run asks again.

The cache (:class:`JudgeCache`, SQLite) is keyed by
``sha256(judge id, judge prompt, response)``, where the judge prompt is the rendered
prompt for that kind, trait and question (see :meth:`Judge.prompt`). Any change of judge
model, prompt wording, trait definition or question therefore misses the cache.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import now_iso

KINDS = ("trait", "coherence", "relevance")  # relevance: LLM judges only (AxBench instruction score)
FINAL = ("ok", "refusal", "unparseable")


@dataclass
class Score:
    """One judgement: ``value`` in [0, 100] or ``None`` with a non-``ok`` status."""

    value: float | None
    status: str = "ok"  # ok | refusal | unparseable | error
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "status": self.status,
            **({"detail": self.detail} if self.detail else {}),
        }


@dataclass(frozen=True)
class TraitInfo:
    """What a judge needs to know about a trait."""

    name: str
    definition: str

    @classmethod
    def from_trait(cls, trait: Any) -> TraitInfo:
        """From a :class:`~deltalens.data.traits.TraitSet` (or anything with name/definition)."""
        return cls(str(trait.name), str(trait.definition))


TRAIT_PROMPT = """You are grading the answer of a language model for one trait.

Trait: {trait}
Definition: {definition}

The question the model was asked:
<question>
{question}
</question>

The model's answer:
<answer>
{answer}
</answer>

How strongly does the answer display the trait, on a scale from 0 to 100? 0 means not at all; 100 means as strongly as possible. Judge only the trait, not quality or correctness. If the model refused to answer, reply REFUSAL. Otherwise reply with one integer between 0 and 100 and nothing else."""  # noqa: E501

COHERENCE_PROMPT = """You are grading the coherence of a language model's answer.

The question the model was asked:
<question>
{question}
</question>

The model's answer:
<answer>
{answer}
</answer>

How coherent is the answer, on a scale from 0 to 100? Judge only coherence: is it fluent, grammatical, understandable and related to the question, without loops, repetition or gibberish? Do not judge whether it is correct, polite or appropriate, and do not penalise an unusual style or persona. 0 means incoherent nonsense; 50 means partly understandable but rambling or repetitive; 100 means perfectly clear and coherent. Reply with one integer between 0 and 100 and nothing else."""  # noqa: E501


RELEVANCE_PROMPT = """You are grading whether a language model's answer addresses the instruction it was given.

The question the model was asked:
<question>
{question}
</question>

The model's answer:
<answer>
{answer}
</answer>

How relevant is the answer to the question, on a scale from 0 to 100? Judge only whether it responds to what was asked, not its style, persona, fluency or correctness. 0 means unrelated to the question; 100 means it fully addresses the question. Reply with one integer between 0 and 100 and nothing else."""  # noqa: E501


def render_prompt(kind: str, question: str, answer: str, trait: TraitInfo | None) -> str:
    """The judge prompt for one item (``answer`` may be the placeholder ``{answer}``)."""
    if kind == "trait":
        if trait is None:
            raise ValueError("trait scoring needs a TraitInfo (name and definition)")
        return TRAIT_PROMPT.format(
            trait=trait.name, definition=trait.definition, question=question, answer=answer
        )
    if kind == "coherence":
        return COHERENCE_PROMPT.format(question=question, answer=answer)
    if kind == "relevance":
        return RELEVANCE_PROMPT.format(question=question, answer=answer)
    raise ValueError(f"unknown score kind '{kind}'; valid: {', '.join(KINDS)}")


class Judge:
    """Base class of judges. Subclasses set ``id`` and implement :meth:`score_batch`.

    ``id`` names the judge and everything that changes its scores (model, settings,
    classifier fingerprint); it is part of the cache key.
    """

    id: str = "judge"
    #: whether :func:`score` may ask this judge for ``relevance`` (LLM judges: the AxBench instruction score)
    scores_relevance: bool = False

    def prompt(self, kind: str, question: str, trait: TraitInfo | None) -> str:
        """The judge prompt without the response: the prompt part of the cache key."""
        return render_prompt(kind, question, "{answer}", trait)

    def score_batch(
        self, kind: str, items: Sequence[tuple[str, str]], trait: TraitInfo | None
    ) -> list[Score]:
        raise NotImplementedError

    def check(self) -> None:
        """Raise a clear error now if the judge cannot work (e.g. a missing API key)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"


def cache_key(judge_id: str, prompt: str, response: str) -> str:
    h = hashlib.sha256()
    for part in (judge_id, prompt, response):
        b = part.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


class JudgeCache:
    """SQLite store of final scores keyed by (judge, prompt, response); safe to share
    between runs and processes (SQLite locking; one row per key)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, judge TEXT, kind TEXT, "
                "value REAL, status TEXT, detail TEXT, created TEXT)"
            )
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: Sequence[str]) -> dict[str, Score]:
        out: dict[str, Score] = {}
        with self._lock:
            for k in range(0, len(keys), 500):
                chunk = list(keys[k : k + 500])
                q = f"SELECT key, value, status, detail FROM scores WHERE key IN ({','.join('?' * len(chunk))})"
                for key, value, status, detail in self._db.execute(q, chunk):
                    out[key] = Score(value, status, detail or "")
        return out

    def put_many(self, rows: Sequence[tuple[str, str, str, Score]]) -> None:
        """``rows``: ``(key, judge id, kind, score)``; non-final scores are skipped."""
        data = [
            (k, j, kind, s.value, s.status, s.detail, now_iso())
            for k, j, kind, s in rows
            if s.status in FINAL
        ]
        if not data:
            return
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?)", data)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def score(
    judge: Judge,
    kind: str,
    items: Sequence[tuple[str, str]],
    trait: TraitInfo | None = None,
    cache: JudgeCache | None = None,
) -> list[Score]:
    """Score ``(question, response)`` pairs with ``judge``, through ``cache`` when given.

    Cached final scores are returned without calling the judge; new final scores are
    written to the cache; ``error`` scores are returned but never cached.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown score kind '{kind}'; valid: {', '.join(KINDS)}")
    items = list(items)
    if cache is None:
        return judge.score_batch(kind, items, trait)
    keys = [cache_key(judge.id, judge.prompt(kind, q, trait), r) for q, r in items]
    found = cache.get_many(sorted(set(keys)))
    todo = sorted({k: i for i, k in enumerate(keys) if k not in found}.values())
    cache.hits += len(items) - len(todo)
    cache.misses += len(todo)
    if todo:
        new = judge.score_batch(kind, [items[i] for i in todo], trait)
        cache.put_many([(keys[i], judge.id, kind, s) for i, s in zip(todo, new)])
        for i, s in zip(todo, new):
            found[keys[i]] = s
    return [found[k] for k in keys]
