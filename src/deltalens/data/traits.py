"""Trait datasets: the contrastive data behind trait (persona) vectors.

A trait directory holds one of two formats (the trait seed's ``pv_instruction`` and
``pv_natural`` datasets):

*instruction* — elicit the trait with system prompts on a chat model::

    positive.jsonl   {"system_prompt": "...", "question": "..."}   one scenario per line
    negative.jsonl   same questions, opposite system prompts (paired by line)
    definition.txt   what the trait is (used by judges)
    steering.json    {"questions": [...]}: held-out evaluation questions

*natural* — elicit the trait with first-person narrative openings that a (base) model
continues as raw text, without a chat template::

    positive.txt     one narrative opening per non-blank line
    negative.txt     one narrative opening per non-blank line
    definition.txt, steering.json   as above

A trait is named ``<format>/<name>`` (``instruction/pirate``, ``natural/sycophancy``);
the seed's names ``pv_instruction/...`` and ``pv_natural/...`` are accepted as aliases.
Bundled traits live in ``deltalens/data/bundled/traits/``; any directory with the files
above can be given by path. Everything is validated on load: a bad line raises
:class:`~deltalens.errors.DataFormatError` naming ``file:line``, and steering questions
that also appear among the extraction questions are refused (they must be held out).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from ..io import read_text
from .jsonl import iter_jsonl, iter_lines
from .prompts import bundled_path

FORMATS = ("instruction", "natural")
_ALIASES = {"pv_instruction": "instruction", "pv_natural": "natural"}


@dataclass(frozen=True)
class Scenario:
    """One extraction scenario: a chat question with a system prompt (instruction format)
    or a raw-text opening (natural format, ``question`` holds the text, ``system`` None)."""

    question: str
    system: str | None
    polarity: str  # "pos" | "neg"
    index: int  # line-order index within its polarity (pairs pos/neg in the instruction format)
    source: str  # file:line

    def as_prompt(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "system": self.system,
            "polarity": self.polarity,
            "scenario": self.index,
        }


@dataclass
class TraitSet:
    """A validated trait dataset (see the module docstring)."""

    name: str  # e.g. "pirate"
    format: str  # "instruction" | "natural"
    path: Path
    definition: str
    positive: list[Scenario]
    negative: list[Scenario]
    steering_questions: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """``<format>/<name>``: the trait's name in experiment paths."""
        return f"{self.format}/{self.name}"

    @property
    def chat(self) -> bool:
        """Whether responses are generated with the chat template (instruction format)."""
        return self.format == "instruction"

    @property
    def paired(self) -> bool:
        return self.format == "instruction" and len(self.positive) == len(self.negative)

    def __repr__(self) -> str:
        return (
            f"TraitSet({self.id!r}, {len(self.positive)} positive / {len(self.negative)} negative scenarios, "
            f"{len(self.steering_questions)} steering questions)"
        )


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise DataFormatError(f"{path}: missing {what}")
    text = read_text(path).strip()
    if not text:
        raise DataFormatError(f"{path}: {what} is empty")
    return text


def read_steering_questions(path: str | Path) -> list[str]:
    """``steering.json``: ``{"questions": [str, ...]}`` or a plain list of strings."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: missing steering.json (held-out evaluation questions)")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        if "questions" not in data:
            raise DataFormatError(
                f"{path}: expected {{'questions': [...]}} (keys: {', '.join(data) or 'none'})"
            )
        data = data["questions"]
    if not isinstance(data, list) or not data:
        raise DataFormatError(f"{path}: 'questions' must be a non-empty list of strings")
    out = []
    for i, q in enumerate(data):
        if isinstance(q, dict) and isinstance(q.get("question"), str):
            q = q["question"]
        if not isinstance(q, str) or not q.strip():
            raise DataFormatError(f"{path}: question {i} must be a non-empty string, got {q!r:.60}")
        out.append(q.strip())
    dup = _first_duplicate(out)
    if dup is not None:
        raise DataFormatError(f"{path}: question {dup!r:.80} appears twice")
    return out


def _normalise(text: str) -> str:
    """Case-, whitespace- and punctuation-insensitive form used to detect overlapping questions."""
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def _first_duplicate(items: list[str]) -> str | None:
    seen: set[str] = set()
    for x in items:
        if x in seen:
            return x
        seen.add(x)
    return None


def _read_instruction(path: Path, polarity: str) -> list[Scenario]:
    f = path / f"{'positive' if polarity == 'pos' else 'negative'}.jsonl"
    if not f.is_file():
        raise DataFormatError(f"{f}: missing (instruction traits need positive.jsonl and negative.jsonl)")
    out = []
    for n, rec in iter_jsonl(f, required=("question",), types={"question": str}):
        system = rec.get("system_prompt", rec.get("system"))
        if system is None:
            raise DataFormatError(f"{f}:{n}: missing key 'system_prompt' (keys: {', '.join(rec)})")
        if not isinstance(system, str) or not system.strip():
            raise DataFormatError(f"{f}:{n}: 'system_prompt' must be a non-empty string")
        if not rec["question"].strip():
            raise DataFormatError(f"{f}:{n}: 'question' is empty")
        out.append(Scenario(rec["question"].strip(), system.strip(), polarity, len(out), f"{f}:{n}"))
    if not out:
        raise DataFormatError(f"{f}: no scenarios (the file is empty)")
    return out


def _read_natural(path: Path, polarity: str) -> list[Scenario]:
    f = path / f"{'positive' if polarity == 'pos' else 'negative'}.txt"
    if not f.is_file():
        raise DataFormatError(f"{f}: missing (natural traits need positive.txt and negative.txt)")
    out = []
    for n, line in iter_lines(f):
        text = line.strip()
        if not text:
            continue
        if text.startswith("{"):
            raise DataFormatError(
                f"{f}:{n}: looks like JSON; natural traits take one plain-text opening per line"
            )
        out.append(Scenario(text, None, polarity, len(out), f"{f}:{n}"))
    if not out:
        raise DataFormatError(f"{f}: no scenarios (the file is empty)")
    return out


def _detect_format(path: Path) -> str:
    if (path / "positive.jsonl").exists() or (path / "negative.jsonl").exists():
        return "instruction"
    if (path / "positive.txt").exists() or (path / "negative.txt").exists():
        return "natural"
    raise DataFormatError(
        f"{path}: not a trait directory (needs positive.jsonl/negative.jsonl for the instruction format "
        "or positive.txt/negative.txt for the natural format)"
    )


def bundled_traits() -> list[str]:
    """Ids of the bundled traits (``instruction/pirate``, ``natural/sycophancy``, …)."""
    root = bundled_path("traits")
    out = []
    for fmt in FORMATS:
        d = root / fmt
        if d.is_dir():
            out.extend(f"{fmt}/{p.name}" for p in sorted(d.iterdir()) if p.is_dir())
    return out


def resolve_trait_path(spec: str | Path) -> Path:
    """A trait directory from a path or a bundled id (``instruction/pirate``, ``pv_natural/pirate``)."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return p
    s = str(spec).strip().strip("/")
    parts = s.split("/")
    if len(parts) >= 2:
        fmt = _ALIASES.get(parts[-2], parts[-2])
        cand = bundled_path("traits", fmt, parts[-1])
        if fmt in FORMATS and cand.is_dir():
            return cand
    raise DataFormatError(
        f"unknown trait '{spec}': not a directory and not a bundled trait (bundled: {', '.join(bundled_traits())})"
    )


def load_trait(spec: str | Path) -> TraitSet:
    """Load and validate a trait dataset by bundled id or directory path."""
    path = resolve_trait_path(spec)
    fmt = _detect_format(path)
    if fmt == "instruction":
        pos, neg = _read_instruction(path, "pos"), _read_instruction(path, "neg")
    else:
        pos, neg = _read_natural(path, "pos"), _read_natural(path, "neg")
    definition = _read_text(path / "definition.txt", "definition.txt (what the trait is)")
    steering = read_steering_questions(path / "steering.json")
    for pol, items in (("positive", pos), ("negative", neg)):
        dup = _first_duplicate([f"{s.system}\x00{s.question}" for s in items])
        if dup is not None:
            first = next(s for s in items if f"{s.system}\x00{s.question}" == dup)
            raise DataFormatError(f"{first.source}: duplicate {pol} scenario {first.question!r:.80}")
    extraction: dict[str, Scenario] = {}
    for s in pos + neg:
        extraction.setdefault(_normalise(s.question), s)
    for i, q in enumerate(steering):
        hit = extraction.get(_normalise(q))
        if hit is not None:
            raise DataFormatError(
                f"{path / 'steering.json'}: steering question {i} {q!r:.80} is also the extraction scenario at "
                f"{hit.source}; steering questions must be held out"
            )
    if fmt == "instruction" and len(pos) == len(neg):
        for a, b in zip(pos, neg):
            if a.question != b.question:
                raise DataFormatError(
                    f"{b.source}: negative scenario {b.index} asks {b.question!r:.60} but positive scenario "
                    f"{a.index} ({a.source}) asks {a.question!r:.60}; instruction traits pair questions line by line"
                )
    name = path.name
    return TraitSet(name, fmt, path, definition, pos, neg, steering)


def steering_combined(traits: list[str], fmt: str = "instruction") -> dict[str, Any]:
    """The trait seed's combined inference prompt set (Phase 4 step 4a).

    Every trait's held-out ``steering.json`` questions, in the order given, numbered from 1:
    ``{"prompts": [{"id": 1, "text": "...", "note": "<trait>"}, ...]}`` (20 sycophancy →
    ids 1–20, 20 evil → 21–40, …). ``traits`` are bare names (``evil``) looked up in ``fmt``
    or full ids / directories. A question that appears under two traits is refused.
    """
    if not traits:
        raise DataFormatError("steering_combined: no traits given")
    prompts: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for spec in traits:
        t = load_trait(spec if "/" in spec or Path(spec).is_dir() else f"{fmt}/{spec}")
        for q in t.steering_questions:
            key = _normalise(q)
            if key in seen:
                raise DataFormatError(
                    f"{t.path / 'steering.json'}: question {q!r:.80} is also a steering question of {seen[key]}"
                )
            seen[key] = t.name
            prompts.append({"id": len(prompts) + 1, "text": q, "note": t.name})
    return {"prompts": prompts, "traits": list(dict.fromkeys(p["note"] for p in prompts))}
