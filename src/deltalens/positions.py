"""The position language: which tokens of a sequence an operation applies to.

Grammar (whitespace ignored)::

    spec     := term ('|' term)*            union of terms
    term     := region [ '[' select ']' ]
    region   := 'all' | 'prompt' | 'response' | TOKEN_TYPE
    select   := INT | [INT] ':' [INT]        python indexing; negative counts from the end

Examples: ``all``, ``prompt``, ``prompt[-1]``, ``response``, ``response[:5]``,
``response[:]``, ``response[2:10]``, ``all[-1]``, ``asst``, ``asst|newline``.

Token types (``asst``, ``endheader``, ``newline``) are the tokens of the chat
template's *generation prompt* — the header the template appends before the
assistant's answer (``<|start_header_id|>assistant<|end_header_id|>\\n\\n`` for Llama 3,
``<|im_start|>assistant\\n`` for ChatML models such as SmolLM2 and Qwen). They are
resolved per model (:func:`deltalens.models.LoadedModel.token_types`) as offsets from
the end of the prompt, so ``asst`` is shorthand for ``prompt[-k]`` with the model's k.

Conventions, stated once:

* Indices count **real tokens only**: padding is never selected, so a spec means the
  same thing under left padding, right padding or none.
* ``prompt`` is the first ``prompt_len`` real tokens of a row, ``response`` everything
  after. During KV-cached generation the prompt is what the first (prefill) forward saw,
  and every generated token is a response token; ``response[i]`` is the i-th generated
  token whatever the step.
* Negative indices count from the end of what exists so far: in a single forward over
  a prompt/response pair that is the end of the response; during generation it is the
  newest token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .errors import PositionSpecError

REGIONS = ("all", "prompt", "response")
TOKEN_TYPES = ("asst", "endheader", "newline")


@dataclass(frozen=True)
class Select:
    """An index (``start`` only, ``is_slice`` False) or a slice ``[start:stop]``."""

    start: int | None = None
    stop: int | None = None
    is_slice: bool = True

    def __str__(self) -> str:
        if not self.is_slice:
            return f"[{self.start}]"
        a = "" if self.start is None else str(self.start)
        b = "" if self.stop is None else str(self.stop)
        return f"[{a}:{b}]"


@dataclass(frozen=True)
class Term:
    region: str
    select: Select | None = None

    def __str__(self) -> str:
        return self.region + (str(self.select) if self.select is not None else "")


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.i = 0

    def fail(self, msg: str, at: int | None = None) -> PositionSpecError:
        at = self.i if at is None else at
        pointer = " " * (len("invalid position spec '") + at) + "^"
        return PositionSpecError(f"invalid position spec '{self.text}'\n{pointer} {msg}")

    def skip_ws(self) -> None:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.i] if self.i < len(self.text) else ""

    def parse(self) -> tuple[Term, ...]:
        if not self.text.strip():
            raise self.fail("empty spec; expected e.g. 'all', 'prompt[-1]', 'response[:5]'", 0)
        terms = [self.term()]
        while self.peek() == "|":
            self.i += 1
            terms.append(self.term())
        if self.peek():
            raise self.fail(f"unexpected '{self.peek()}'; terms are joined with '|'")
        return tuple(terms)

    def term(self) -> Term:
        self.skip_ws()
        start = self.i
        while self.i < len(self.text) and (self.text[self.i].isalnum() or self.text[self.i] == "_"):
            self.i += 1
        name = self.text[start : self.i]
        if not name:
            raise self.fail(
                "expected a region: 'all', 'prompt', 'response' or a token type ("
                + ", ".join(TOKEN_TYPES)
                + ")"
            )
        if name not in REGIONS and name not in TOKEN_TYPES:
            raise self.fail(
                f"unknown region '{name}'; expected 'all', 'prompt', 'response' or a token type ("
                + ", ".join(TOKEN_TYPES)
                + ")",
                start,
            )
        select = None
        if self.peek() == "[":
            if name in TOKEN_TYPES:
                raise self.fail(f"token type '{name}' names one token and takes no index")
            self.i += 1
            select = self.select()
            if self.peek() != "]":
                raise self.fail("expected ']'")
            self.i += 1
        return Term(name, select)

    def integer(self) -> int | None:
        self.skip_ws()
        start = self.i
        if self.i < len(self.text) and self.text[self.i] in "+-":
            self.i += 1
        digits = self.i
        while self.i < len(self.text) and self.text[self.i].isdigit():
            self.i += 1
        if self.i == digits:
            self.i = start
            return None
        return int(self.text[start : self.i])

    def select(self) -> Select:
        a = self.integer()
        if self.peek() == ":":
            self.i += 1
            b = self.integer()
            if self.peek() == ":":
                raise self.fail("slice steps are not supported")
            if self.peek() != "]":
                raise self.fail("expected an integer or ']'")
            return Select(a, b, True)
        if a is None:
            raise self.fail("expected an integer, ':' or ']'")
        if self.peek() != "]":
            raise self.fail("expected ':' or ']'")
        return Select(a, None, False)


@dataclass(frozen=True)
class Geometry:
    """Where the tokens of one forward call sit in their full sequences.

    Attributes:
        start: absolute index (in the padded full sequence) of this forward's first column;
            0 for a prefill, the cache length for a KV-cached step.
        width: number of columns in this forward (``T``).
        real: ``[B, T]`` bool, True where the column is a real (non-padding) token.
        rel: ``[B, T]`` long, index of the column among the row's real tokens (-1 on padding).
        n_real: ``[B]`` real tokens in each row so far (including this forward).
        prompt_len: ``[B]`` real prompt tokens in each row.
    """

    start: int
    width: int
    real: torch.Tensor
    rel: torch.Tensor
    n_real: torch.Tensor
    prompt_len: torch.Tensor

    @classmethod
    def from_mask(
        cls, full_mask: torch.Tensor, width: int, prompt_len: torch.Tensor | None = None
    ) -> Geometry:
        """Build the geometry of the last ``width`` columns of a ``[B, L]`` attention mask."""
        full_mask = full_mask.to(torch.long)
        start = full_mask.shape[1] - width
        cum = full_mask.cumsum(1)
        rel_full = torch.where(full_mask.bool(), cum - 1, torch.full_like(cum, -1))
        rel = rel_full[:, start:]
        real = full_mask[:, start:].bool()
        n_real = cum[:, -1]
        if prompt_len is None:
            prompt_len = n_real.clone()
        return cls(start, width, real, rel, n_real, prompt_len.to(full_mask.device))


def _bounds(sel: Select, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row [lo, hi) of a selection given the per-row length ``n`` (python semantics)."""
    if not sel.is_slice:
        k = torch.as_tensor(sel.start, device=n.device)
        idx = torch.where(k < 0, n + k, k.expand_as(n))
        # an index outside [0, n) selects nothing
        ok = (idx >= 0) & (idx < n)
        lo = torch.where(ok, idx, torch.zeros_like(idx))
        hi = torch.where(ok, idx + 1, torch.zeros_like(idx))
        return lo, hi

    def norm(v: int | None, default: torch.Tensor) -> torch.Tensor:
        if v is None:
            return default
        t = torch.full_like(n, v)
        if v < 0:
            t = n + v
        return t.clamp(min=0)

    lo = norm(sel.start, torch.zeros_like(n))
    hi = torch.minimum(norm(sel.stop, n), n)
    return lo, hi


@dataclass(frozen=True)
class Positions:
    """A parsed position spec. Build with :func:`parse_positions` or ``Positions.parse``."""

    text: str
    terms: tuple[Term, ...] = field(repr=False)

    @classmethod
    def parse(cls, spec: str | Positions) -> Positions:
        if isinstance(spec, Positions):
            return spec
        if not isinstance(spec, str):
            raise PositionSpecError(f"position spec must be a string, got {type(spec).__name__}: {spec!r}")
        terms = _Parser(spec).parse()
        return cls(spec.strip(), terms)

    def __str__(self) -> str:
        return "|".join(str(t) for t in self.terms)

    @property
    def slug(self) -> str:
        """Directory-safe name, following the seeds' layout.

        ``response[:5]`` → ``response__5``, ``response[:]`` → ``response_all``,
        ``prompt[-1]`` → ``prompt_-1``, ``asst|newline`` → ``asst+newline``.
        """
        parts = []
        for t in self.terms:
            s = str(t)
            if s.endswith("[:]"):
                s = s[:-3] + "_all"
            s = s.replace("[", "_").replace("]", "").replace(":", "_")
            parts.append(s)
        return "+".join(parts)

    @property
    def token_types(self) -> tuple[str, ...]:
        return tuple(t.region for t in self.terms if t.region in TOKEN_TYPES)

    def check_token_types(self, available: Mapping[str, int] | None) -> None:
        for name in self.token_types:
            if available is None or name not in available:
                have = ", ".join(sorted(available)) if available else "none: the model has no chat template"
                raise PositionSpecError(
                    f"position '{self.text}': token type '{name}' is not in this model's chat template "
                    f"(available: {have})"
                )

    def mask(self, geom: Geometry, token_types: Mapping[str, int] | None = None) -> torch.Tensor:
        """``[B, T]`` bool mask of the selected columns of one forward call."""
        self.check_token_types(token_types)
        out = torch.zeros_like(geom.real)
        rel = geom.rel
        for t in self.terms:
            if t.region in TOKEN_TYPES:
                t = Term("prompt", Select(int(token_types[t.region]), None, False))  # type: ignore[index]
            if t.region == "all":
                idx, n = rel, geom.n_real
            elif t.region == "prompt":
                idx, n = rel, torch.minimum(geom.prompt_len, geom.n_real)
            else:  # response
                idx = rel - geom.prompt_len[:, None]
                n = (geom.n_real - geom.prompt_len).clamp(min=0)
            sel = t.select or Select(None, None, True)
            lo, hi = _bounds(sel, n)
            out |= (idx >= lo[:, None]) & (idx < hi[:, None]) & (idx >= 0)
        return out & geom.real

    def mask_for_lengths(
        self,
        lengths: torch.Tensor | list[int],
        prompt_lens: torch.Tensor | list[int] | None = None,
        token_types: Mapping[str, int] | None = None,
    ) -> torch.Tensor:
        """Mask for unpadded sequences of the given lengths, right-aligned to ``max(lengths)``
        columns as if left-padded. Convenience for tests and offline selection."""
        lengths = torch.as_tensor(lengths, dtype=torch.long)
        L = int(lengths.max()) if len(lengths) else 0
        cols = torch.arange(L)[None, :]
        full = (cols >= (L - lengths)[:, None]).long()
        pl = None if prompt_lens is None else torch.as_tensor(prompt_lens, dtype=torch.long)
        return self.mask(Geometry.from_mask(full, L, pl), token_types)


def parse_positions(spec: str | Positions) -> Positions:
    """Parse a position spec; raises :class:`PositionSpecError` pointing at the bad character."""
    return Positions.parse(spec)
