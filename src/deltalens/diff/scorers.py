"""Pluggable scorers for the iterative DPO loop: ``scores = scorer(generations)``.

A scorer is any callable taking a list of :class:`~deltalens.generate.Generation` and
returning one float per generation (higher = preferred), with a ``name`` and a
``config()`` for provenance. Built in:

* :class:`KeywordScorer` — ``score = Σ_w count(w)``: whole-word, case-insensitive
  occurrences of the keywords (a topic the loop should push the model towards);
* :class:`LengthScorer` — ``score = −|n_tokens − target|`` (or ``n_tokens`` without a target);
* :class:`RegexScorer` — ``score = number of matches``.

:func:`load_scorer` builds one from a short spec (the CLI's ``--scorer``):
``keywords:ocean,sea,waves``, ``keywords@ocean_topic`` (a bundled organism card's topic
words), ``length``, ``length:40``, ``regex:PATTERN``, or ``module:function`` /
``path/to/file.py:function`` for your own (e.g. a domain metric such as a protein
fitness oracle, or an LLM judge).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError
from ..generate import Generation


@runtime_checkable
class Scorer(Protocol):
    name: str

    def __call__(self, generations: Sequence[Generation]) -> list[float]: ...

    def config(self) -> dict[str, Any]: ...


class KeywordScorer:
    """``Σ_w`` whole-word, case-insensitive occurrences of the keywords (plurals count)."""

    def __init__(self, words: Sequence[str], name: str = "keywords"):
        words = [w.strip() for w in words if w.strip()]
        if not words:
            raise ConfigError("KeywordScorer needs at least one keyword")
        self.words = words
        self.name = name
        alt = "|".join(sorted({re.escape(w.lower()) for w in words}, key=len, reverse=True))
        self._re = re.compile(rf"\b(?:{alt})(?:s|es)?\b", re.IGNORECASE)

    def __call__(self, generations: Sequence[Generation]) -> list[float]:
        return [float(len(self._re.findall(g.response))) for g in generations]

    def config(self) -> dict[str, Any]:
        return {"type": "keywords", "words": self.words}


class LengthScorer:
    """``−|n_tokens − target|``, or ``n_tokens`` when no target is given."""

    def __init__(self, target: int | None = None):
        self.target = target
        self.name = "length" if target is None else f"length:{target}"

    def __call__(self, generations: Sequence[Generation]) -> list[float]:
        if self.target is None:
            return [float(g.response_len) for g in generations]
        return [-abs(float(g.response_len - self.target)) for g in generations]

    def config(self) -> dict[str, Any]:
        return {"type": "length", "target": self.target}


class RegexScorer:
    """Number of matches of a regular expression in the response."""

    def __init__(self, pattern: str):
        try:
            self._re = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"invalid scorer regex {pattern!r}: {exc}") from None
        self.pattern = pattern
        self.name = "regex"

    def __call__(self, generations: Sequence[Generation]) -> list[float]:
        return [float(len(self._re.findall(g.response))) for g in generations]

    def config(self) -> dict[str, Any]:
        return {"type": "regex", "pattern": self.pattern}


class CallableScorer:
    """Wrap a plain function ``f(generations) -> list[float]`` (or ``f(text) -> float``)."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None, per_text: bool = False):
        self.fn = fn
        self.per_text = per_text
        self.name = name or getattr(fn, "__name__", "custom")

    def __call__(self, generations: Sequence[Generation]) -> list[float]:
        if self.per_text:
            return [float(self.fn(g.response)) for g in generations]
        out = list(self.fn(list(generations)))
        if len(out) != len(generations):
            raise ConfigError(
                f"scorer '{self.name}' returned {len(out)} scores for {len(generations)} generations"
            )
        return [float(x) for x in out]

    def config(self) -> dict[str, Any]:
        return {"type": "callable", "name": self.name, "module": getattr(self.fn, "__module__", None)}


def as_scorer(scorer: Any) -> Any:
    """A scorer object from a spec string, a scorer, or a plain callable."""
    if isinstance(scorer, str):
        return load_scorer(scorer)
    if hasattr(scorer, "config") and hasattr(scorer, "name") and callable(scorer):
        return scorer
    if callable(scorer):
        return CallableScorer(scorer)
    raise ConfigError(f"not a scorer: {scorer!r}")


def load_scorer(spec: str) -> Any:
    """Build a scorer from a spec (see the module docstring)."""
    s = spec.strip()
    if s.startswith("keywords@"):
        from .organisms import load_organism_dataset

        card = load_organism_dataset(s.split("@", 1)[1]).card
        words = card.get("topic_words") or []
        if not words:
            raise ConfigError(f"scorer '{spec}': the dataset card has no topic_words")
        return KeywordScorer(words, name=s)
    if s.startswith("keywords:"):
        return KeywordScorer(s.split(":", 1)[1].split(","), name="keywords")
    if s == "length":
        return LengthScorer()
    if s.startswith("length:"):
        try:
            return LengthScorer(int(s.split(":", 1)[1]))
        except ValueError:
            raise ConfigError(f"scorer '{spec}': write length:<tokens>, e.g. length:40") from None
    if s.startswith("regex:"):
        return RegexScorer(s.split(":", 1)[1])
    if ":" in s:
        mod, _, fn = s.rpartition(":")
        try:
            if mod.endswith(".py"):
                path = Path(mod)
                if not path.is_file():
                    raise ConfigError(f"scorer '{spec}': file {path} not found")
                sp = importlib.util.spec_from_file_location(f"deltalens_user_scorer_{path.stem}", path)
                assert sp is not None and sp.loader is not None
                module = importlib.util.module_from_spec(sp)
                sp.loader.exec_module(module)
            else:
                module = importlib.import_module(mod)
        except ImportError as exc:
            raise ConfigError(f"scorer '{spec}': cannot import {mod} ({exc})") from None
        obj = getattr(module, fn, None)
        if obj is None:
            raise ConfigError(f"scorer '{spec}': {mod} has no attribute '{fn}'")
        return as_scorer(obj() if isinstance(obj, type) else obj)
    raise ConfigError(
        f"unknown scorer '{spec}'; write keywords:w1,w2 | keywords@<organism dataset> | length[:N] | regex:PATTERN | "
        "module:function | file.py:function"
    )
