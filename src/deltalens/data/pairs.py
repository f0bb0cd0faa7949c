"""Clean / corrupted prompt pairs: the input format of circuit discovery.

One JSON object per line::

    {"clean": "The capital of France is", "corrupted": "The capital of Italy is",
     "clean_answer": " Paris", "corrupted_answer": " Rome",
     "id": "capital-france-italy", "names": {"COUNTRY": 3, "END": -1}}

* ``clean`` / ``corrupted`` (aliases ``clean_prompt``, ``corrupt``, ``corrupted_prompt``) —
  the two prompts. They must tokenize to the **same number of tokens**: deltalens patches
  position *i* of one run into position *i* of the other, so a pair of unequal length is
  **refused** (with both tokenizations in the message), never silently aligned.
* ``clean_answer`` / ``corrupted_answer`` (aliases ``answer``, ``corrupt_answer``,
  ``wrong_answer``) — the continuation the clean (resp. corrupted) prompt should produce:
  a string (leading space included where the tokenizer needs it) or a token id. Multi-token
  answers are allowed; how they are scored is the metric's business
  (:mod:`deltalens.circuits.metrics`): ``logit_diff`` uses their **first token**,
  ``logprob_diff`` the **summed log-probability** of all their tokens.
* ``names`` (optional) — named positions for tables and figure labels (the seed's
  ``D1``, ``D2``, ``END``): a token index (python indexing, ``-1`` = last prompt token) or a
  substring of the clean prompt (the token holding its first character, first occurrence).
* ``id``, ``system`` (optional) — an identifier, and a system prompt used when the task is
  built with the chat template.

Records are checked here for shape (keys, types); token-level checks (equal lengths,
answers in the vocabulary, names in range) happen when a task is built for a model
(:func:`deltalens.circuits.build_task`), with the file and line in every message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from .jsonl import iter_jsonl
from .prompts import bundled_path

_CLEAN = ("clean", "clean_prompt")
_CORRUPT = ("corrupted", "corrupt", "corrupted_prompt", "corrupt_prompt")
_CLEAN_ANS = ("clean_answer", "answer")
_CORRUPT_ANS = ("corrupted_answer", "corrupt_answer", "wrong_answer")


@dataclass
class PairRecord:
    """One clean/corrupted pair (see module docstring)."""

    clean: str
    corrupted: str
    clean_answer: str | int
    corrupted_answer: str | int
    id: Any = None
    names: dict[str, int | str] = field(default_factory=dict)
    system: str | None = None
    source: str = "<memory>"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "clean": self.clean,
            "corrupted": self.corrupted,
            "clean_answer": self.clean_answer,
            "corrupted_answer": self.corrupted_answer,
        }
        if self.id is not None:
            d["id"] = self.id
        if self.names:
            d["names"] = dict(self.names)
        if self.system:
            d["system"] = self.system
        return d


def _pick(rec: dict[str, Any], keys: tuple[str, ...], what: str, where: str) -> Any:
    found = [k for k in keys if k in rec]
    if not found:
        raise DataFormatError(
            f"{where}: missing the {what} (key '{keys[0]}'; accepted: {', '.join(keys)}; keys here: {', '.join(rec) or 'none'})"
        )
    if len(found) > 1:
        raise DataFormatError(f"{where}: the {what} is given twice ({' and '.join(found)}); keep one")
    return rec[found[0]]


def pair_from_dict(rec: dict[str, Any], where: str = "<memory>") -> PairRecord:
    """Validate one record (a dict) and return a :class:`PairRecord`."""
    if not isinstance(rec, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    clean = _pick(rec, _CLEAN, "clean prompt", where)
    corrupted = _pick(rec, _CORRUPT, "corrupted prompt", where)
    for name, v in (("clean", clean), ("corrupted", corrupted)):
        if not isinstance(v, str) or not v:
            raise DataFormatError(f"{where}: the {name} prompt must be a non-empty string, got {v!r:.60}")
    answers = []
    for keys, what in ((_CLEAN_ANS, "clean answer"), (_CORRUPT_ANS, "corrupted answer")):
        a = _pick(rec, keys, what, where)
        if isinstance(a, bool) or not isinstance(a, (str, int)) or (isinstance(a, str) and not a):
            raise DataFormatError(
                f"{where}: the {what} must be a non-empty string or a token id, got {a!r:.60}"
            )
        answers.append(a)
    if answers[0] == answers[1]:
        raise DataFormatError(
            f"{where}: clean and corrupted answers are both {answers[0]!r}; the metric would be 0"
        )
    names = rec.get("names") or {}
    if not isinstance(names, dict):
        raise DataFormatError(
            f"{where}: 'names' must be an object name → token index or substring, got {names!r:.60}"
        )
    for k, v in names.items():
        if isinstance(v, bool) or not isinstance(v, (int, str)) or (isinstance(v, str) and not v):
            raise DataFormatError(
                f"{where}: names.{k} must be a token index or a non-empty substring, got {v!r:.60}"
            )
        if isinstance(v, str) and v not in clean:
            raise DataFormatError(
                f"{where}: names.{k} = {v!r} does not occur in the clean prompt {clean!r:.80}"
            )
    system = rec.get("system")
    if system is not None and not isinstance(system, str):
        raise DataFormatError(f"{where}: 'system' must be a string")
    return PairRecord(clean, corrupted, answers[0], answers[1], rec.get("id"), dict(names), system, where)


def read_pairs(path: str | Path) -> list[PairRecord]:
    """Read a pairs JSONL file (see module docstring); raises on an empty file."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".json"):
        raise DataFormatError(f"{path}: pairs are read from a .jsonl file (one pair per line)")
    out = [pair_from_dict(rec, f"{path}:{n}") for n, rec in iter_jsonl(path)]
    if not out:
        raise DataFormatError(f"{path}: no pairs found (the file is empty)")
    return out


def bundled_pairs(name: str = "capitals") -> list[PairRecord]:
    """A bundled pair set: ``capitals`` (factual recall, solved by SmolLM2) or
    ``error_types`` (the Python TypeError/SyntaxError example of the circuits seed)."""
    p = bundled_path("circuits", f"{name}.jsonl")
    if not p.exists():
        have = sorted(f.stem for f in bundled_path("circuits").glob("*.jsonl"))
        raise DataFormatError(f"no bundled pair set '{name}'; available: {', '.join(have)}")
    return read_pairs(p)


def load_pairs(spec: str | Path) -> list[PairRecord]:
    """A bundled pair-set name or a path to a pairs JSONL file."""
    s = str(spec)
    if (
        not s.endswith((".jsonl", ".json"))
        and "/" not in s
        and bundled_path("circuits", f"{s}.jsonl").exists()
    ):
        return bundled_pairs(s)
    return read_pairs(spec)
