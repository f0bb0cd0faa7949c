"""Shared helpers of the activation and output diffs: loading a pair, token ids, names."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from ..generate import Generation
from ..models.loading import LoadedModel, load
from .files import check_compatible


def load_pair(base: Any, ft: Any) -> tuple[LoadedModel, LoadedModel]:
    """Load (or pass through) both models and refuse incompatible pairs."""
    b = base if isinstance(base, LoadedModel) else load(base)
    f = ft if isinstance(ft, LoadedModel) else (b if ft is base else load(ft))
    check_compatible(b, f, (f"base '{b.name}'", f"fine-tuned '{f.name}'"))
    return b, f


def vocab_size(lm: LoadedModel) -> int:
    return lm.vocab_size


def model_info(lm: LoadedModel) -> dict[str, Any]:
    return {"name": lm.name, "spec": lm.spec, "weights_hash": lm.weights_hash}


def pair_name(base: Any, ft: Any) -> str:
    """``<ft>_vs_<base>`` from names or paths (for default output directories)."""

    def nm(x: Any) -> str:
        if isinstance(x, LoadedModel):
            return x.name
        p = Path(str(x))
        return p.name if p.exists() else str(x).replace("/", "_")

    return f"{nm(ft)}_vs_{nm(base)}"


def as_id_items(lm: LoadedModel, data: Iterable[Any]) -> list[tuple[list[int], int]]:
    """Token ids and prompt length of each input, with ``lm``'s tokenizer (see
    :func:`deltalens.capture.encode_item` for the accepted forms)."""
    from ..capture import encode_item

    return [encode_item(lm, it, i) for i, it in enumerate(data)]


def check_ids(items: Sequence[tuple[list[int], int]], limit: int, what: str) -> list[int]:
    """Indices of items whose ids all fall below ``limit`` (the smaller vocabulary)."""
    keep = [i for i, (ids, _) in enumerate(items) if ids and max(ids) < limit]
    if not keep:
        raise DataFormatError(f"{what}: no input can be fed to both models (token ids beyond the shared vocabulary of {limit})")
    return keep


def generations_from(data: Iterable[Any]) -> list[Generation]:
    """Generations from Generation objects or their dicts (``generate --out`` JSONL records)."""
    out = []
    for i, g in enumerate(data):
        if isinstance(g, Generation):
            out.append(g)
        elif isinstance(g, dict) and "prompt_ids" in g and "response_ids" in g:
            out.append(Generation.from_dict({"index": i, "rollout": 0, "question": "", "system": None, "prompt": "",
                                             "response": "", "finished": True, **g}))
        else:
            raise DataFormatError(f"response {i}: expected a Generation or a dict with prompt_ids and response_ids")
    return out
