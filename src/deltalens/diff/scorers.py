"""Pluggable scorers for the iterative DPO loop: ``scores = scorer(generations)``.

A scorer is any callable taking a list of :class:`~deltalens.generate.Generation` and
returning one float per generation (higher = preferred), with a ``name`` and a
``config()`` for provenance. Built in:

* :class:`KeywordScorer` — ``score = Σ_w count(w)``: whole-word, case-insensitive
  occurrences of the keywords (a topic the loop should push the model towards);
* :class:`LengthScorer` — ``score = −|n_tokens − target|`` (or ``n_tokens`` without a target);
* :class:`RegexScorer` — ``score = number of matches``;
* :class:`RandomScorer` — ``score = u(seed, response) ∈ [0, 1)``, a hash of the text: the
  null control of a DPO series (preferences that carry no information about any metric).

:func:`load_scorer` builds one from a short spec (the CLI's ``--scorer``):
``keywords:ocean,sea,waves``, ``keywords@ocean_topic`` (a bundled organism card's topic
words), ``length``, ``length:40``, ``regex:PATTERN``, ``random`` / ``random:SEED``, or ``module:function`` /
``path/to/file.py:function`` for your own (e.g. an LLM judge). The protein key metrics
(:mod:`deltalens.protein.scorers`) have their own specs: ``hmm:FILE_OR_NAME``,
``align:REFS.fasta[@identity|similarity|coverage]``, ``plddt[:DIR]`` and
``oracle:module:function``.

Several scorers combine (:class:`CombinedScorer`, :func:`combine_scorers`): each gives its own
column(s) — recorded per generation — and the selection score that picks DPO pairs is

* ``weighted``: ``s = Σ_k w_k · m_k`` (the weights carry the scales: bits, fractions …);
* ``pareto``: ``s = −front(m)``, the index of the generation's non-dominated front among the
  samples of its prompt (front 0 = not dominated by any sample, for objectives ``sign(w_k)·m_k``,
  so a negative weight minimises), ties within a front broken by the weighted sum scaled
  into ``[0, 0.5)``: the chosen sample is on the first front, the rejected on the last.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError
from ..generate import Generation
from ..parsing import import_object


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


class RandomScorer:
    """``u = int(blake2b(seed ‖ response)[:8]) / 2⁶⁴``: uniform in ``[0, 1)``, the same for the
    same text and seed, independent of anything a metric measures — DPO pairs picked by it are
    random preferences, the null control of a DPO series."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self.name = "random" if self.seed == 0 else f"random:{self.seed}"

    def __call__(self, generations: Sequence[Generation]) -> list[float]:
        import hashlib

        out = []
        for g in generations:
            h = hashlib.blake2b(f"{self.seed}\x00{g.response}".encode(), digest_size=8).digest()
            out.append(int.from_bytes(h, "big") / 2**64)
        return out

    def config(self) -> dict[str, Any]:
        return {"type": "random", "seed": self.seed}


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


class CombinedScorer:
    """Several scorers as columns, one selection score (module docstring for the rules)."""

    RULES = ("weighted", "pareto")

    def __init__(
        self, scorers: Sequence[Any], weights: Sequence[float] | None = None, rule: str = "weighted"
    ):
        self.scorers = [as_scorer(s) for s in scorers]
        if not self.scorers:
            raise ConfigError("combining scorers needs at least one scorer")
        w = [1.0] * len(self.scorers) if not weights else [float(x) for x in weights]
        if len(w) != len(self.scorers):
            raise ConfigError(f"--weights: {len(w)} weights for {len(self.scorers)} scorers")
        if rule not in self.RULES:
            raise ConfigError(f"--select must be one of {', '.join(self.RULES)}, got {rule!r}")
        self.weights, self.rule = w, rule
        self.name = "+".join(s.name for s in self.scorers) + ("" if rule == "weighted" else f" ({rule})")

    def score_columns(self, gens: Sequence[Generation]) -> dict[str, list[float]]:
        """Every scorer's columns (a scorer without ``score_columns`` gives one, named by it)."""
        out: dict[str, list[float]] = {}
        for s in self.scorers:
            cols = (
                s.score_columns(gens)
                if hasattr(s, "score_columns")
                else {s.name: [float(x) for x in s(gens)]}
            )
            out.update(cols)
        return out

    def objectives(self, columns: dict[str, list[float]]) -> list[list[float]]:
        """The primary value of each scorer, per generation: ``[[m_1, m_2, …], …]``."""
        prim = [getattr(s, "primary", s.name) for s in self.scorers]
        n = len(columns[prim[0]]) if prim else 0
        return [[float(columns[p][j]) for p in prim] for j in range(n)]

    def combine(self, columns: dict[str, list[float]], gens: Sequence[Any] | None = None) -> list[float]:
        obj = self.objectives(columns)
        wsum = [sum(w * v for w, v in zip(self.weights, row)) for row in obj]
        if self.rule == "weighted":
            return wsum
        groups: dict[Any, list[int]] = {}
        for j in range(len(obj)):
            key = getattr(gens[j], "index", 0) if gens is not None else 0
            groups.setdefault(key, []).append(j)
        out = [0.0] * len(obj)
        signed = [[(1.0 if w >= 0 else -1.0) * v for w, v in zip(self.weights, row)] for row in obj]
        for js in groups.values():
            fronts = pareto_fronts([signed[j] for j in js])
            lo, hi = min(wsum[j] for j in js), max(wsum[j] for j in js)
            for j, f in zip(js, fronts):
                tie = 0.0 if hi == lo else 0.49 * (wsum[j] - lo) / (hi - lo)
                out[j] = -float(f) + tie
        return out

    def __call__(self, gens: Sequence[Generation]) -> list[float]:
        return self.combine(self.score_columns(gens), gens)

    def config(self) -> dict[str, Any]:
        return {
            "type": "combined",
            "rule": self.rule,
            "weights": self.weights,
            "scorers": [{"name": s.name, **s.config()} for s in self.scorers],
        }


def pareto_fronts(points: Sequence[Sequence[float]]) -> list[int]:
    """Front index of each point under non-dominated sorting (all objectives maximised): front 0
    holds the points no other point dominates (``b`` dominates ``a`` when ``b ≥ a`` everywhere
    and ``b > a`` somewhere), front 1 those dominated only by front 0, and so on."""
    n = len(points)
    left = set(range(n))
    front = [0] * n
    f = 0
    while left:
        cur = [
            i
            for i in left
            if not any(
                all(b >= a for a, b in zip(points[i], points[j]))
                and any(b > a for a, b in zip(points[i], points[j]))
                for j in left
                if j != i
            )
        ]
        for i in cur:
            front[i] = f
        left -= set(cur)
        f += 1
    return front


def combine_scorers(
    specs: Sequence[Any], weights: Sequence[float] | None = None, rule: str = "weighted"
) -> Any:
    """One scorer from several (a single one with default weighting is returned as is)."""
    specs = list(specs)
    if len(specs) == 1 and not weights and rule == "weighted":
        return as_scorer(specs[0])
    return CombinedScorer(specs, weights, rule)


def as_scorer(scorer: Any) -> Any:
    """A scorer object from a spec string, a list of specs (combined), a scorer, or a plain callable."""
    if isinstance(scorer, str):
        return load_scorer(scorer)
    if isinstance(scorer, (list, tuple)):
        return combine_scorers(scorer)
    if hasattr(scorer, "config") and hasattr(scorer, "name") and callable(scorer):
        return scorer
    if callable(scorer):
        return CallableScorer(scorer)
    raise ConfigError(f"not a scorer: {scorer!r}")


def load_scorer(spec: str) -> Any:
    """Build a scorer from a spec (see the module docstring)."""
    s = spec.strip()
    from ..protein.scorers import is_protein_spec

    if is_protein_spec(s):
        from ..protein.scorers import load_protein_scorer

        return load_protein_scorer(s)
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
    if s == "random" or s.startswith("random:"):
        try:
            return RandomScorer(int(s.split(":", 1)[1]) if ":" in s else 0)
        except ValueError:
            raise ConfigError(f"scorer '{spec}': write random or random:<seed>, e.g. random:1") from None
    if ":" in s:
        mod, _, fn = s.rpartition(":")
        obj = import_object(mod, fn, spec, prefix="deltalens_user_scorer")
        return as_scorer(obj() if isinstance(obj, type) else obj)
    raise ConfigError(
        f"unknown scorer '{spec}'; write keywords:w1,w2 | keywords@<organism dataset> | length[:N] | regex:PATTERN | "
        "random[:SEED] | module:function | file.py:function | hmm:NAME | align:REFS.fasta | plddt | oracle:module:function"
    )
