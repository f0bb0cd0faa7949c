"""Token helpers of the optimisers: the searchable vocabulary, re-tokenisation, embeddings.

A prompt found as token ids ``x`` **survives re-tokenisation** when
``encode(decode(x)) == x`` (``encode`` without added special tokens). The optimisers search only
over *clean* tokens — not special, and ``encode(decode([v])) == [v]`` — and reject every candidate
that does not survive, so each reported prompt is a text that means exactly the scored tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

_ALLOWED: dict[int, torch.Tensor] = {}


def encode_plain(lm: Any, text: str) -> list[int]:
    """Token ids of ``text`` without added special tokens."""
    return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def allowed_tokens(lm: Any) -> torch.Tensor:
    """``[V]`` bool: clean tokens (module docstring), memoised per tokenizer."""
    tok = lm.tokenizer
    key = id(tok)
    if key in _ALLOWED:
        return _ALLOWED[key]
    V = int(lm.vocab_size)
    n_tok = len(tok)
    special = set(tok.all_special_ids)
    texts = tok.batch_decode([[i] for i in range(n_tok)])
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    ok = torch.zeros(V, dtype=torch.bool)
    for i, (t, e) in enumerate(zip(texts, enc)):
        if i not in special and t.strip() != "" and list(e) == [i] and t.isprintable():
            ok[i] = True
    _ALLOWED[key] = ok
    return ok


def retokenize(
    lm: Any, ids: torch.Tensor | Sequence[Sequence[int]]
) -> tuple[list[str], list[list[int]], list[bool]]:
    """Texts of the rows of ``ids``, their re-tokenised ids and whether each row survives."""
    rows = [list(map(int, r)) for r in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    texts = lm.tokenizer.batch_decode(rows)
    enc = lm.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    back = [list(e) for e in enc]
    return texts, back, [a == b for a, b in zip(rows, back)]


def embedding_matrix(lm: Any) -> tuple[torch.Tensor, float]:
    """The input embedding ``[V, d]`` and the scale the embedding module applies (Gemma: √d)."""
    emb = lm.arch.embed
    scale = getattr(emb, "embed_scale", 1.0)
    return emb.weight, float(scale if not isinstance(scale, torch.Tensor) else scale.item())
