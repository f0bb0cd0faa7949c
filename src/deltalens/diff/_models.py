"""Shared helpers of the diffs: loading a pair, token ids, names, the base of the diff results."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..errors import DataFormatError
from ..generate import Generation
from ..models.loading import LoadedModel, load
from ..stage import StageResult
from .files import check_compatible

R = TypeVar("R", bound="DiffResult")


def prompt_set(spec: str | None) -> list[Any]:
    """Prompts for the diffs from a file, or a bundled set: ``organism_eval`` (the default, the
    held-out organism questions) or a prompt-set name."""
    from ..data import bundled_prompts, read_prompts
    from .organisms import organism_eval_questions

    if spec is None or spec == "organism_eval":
        return organism_eval_questions()
    if Path(spec).exists():
        return [r.as_prompt() for r in read_prompts(spec)]
    return [r.as_prompt() for r in bundled_prompts(spec)]


def text_set(spec: str | None) -> list[Any]:
    """Texts for the output diff / difference lens: a file (``.txt``/``.jsonl``), or the bundled
    unrelated text (``unrelated``, the default)."""
    from ..data import read_capture_inputs
    from .activations import unrelated_texts

    if spec is None or spec == "unrelated":
        return unrelated_texts()
    return read_capture_inputs(spec)


def _lacks_tokenizer(spec: Any) -> bool:
    from ..models.loading import has_tokenizer_files

    p = Path(str(spec)).expanduser()
    return not isinstance(spec, LoadedModel) and p.is_dir() and not has_tokenizer_files(p)


def load_pair(base: Any, ft: Any, tokenizer: Any = None) -> tuple[LoadedModel, LoadedModel]:
    """Load (or pass through) both models and refuse incompatible pairs.

    A checkpoint directory without tokenizer files reads with ``tokenizer`` (a spec or
    directory) when given, else with the other model's tokenizer."""
    if tokenizer is None and _lacks_tokenizer(base) and not _lacks_tokenizer(ft):
        f = ft if isinstance(ft, LoadedModel) else load(ft)
        b = load(base, tokenizer=f.tokenizer)
    else:
        b = base if isinstance(base, LoadedModel) else load(base, tokenizer=tokenizer)
        f = (
            ft
            if isinstance(ft, LoadedModel)
            else (
                b
                if ft is base
                else load(
                    ft,
                    tokenizer=tokenizer if tokenizer is not None or not _lacks_tokenizer(ft) else b.tokenizer,
                )
            )
        )
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
        raise DataFormatError(
            f"{what}: no input can be fed to both models (token ids beyond the shared vocabulary of {limit})"
        )
    return keep


def generations_from(data: Iterable[Any]) -> list[Generation]:
    """Generations from Generation objects or their dicts (``generate --out`` JSONL records)."""
    out = []
    for i, g in enumerate(data):
        if isinstance(g, Generation):
            out.append(g)
        elif isinstance(g, dict) and "prompt_ids" in g and "response_ids" in g:
            out.append(
                Generation.from_dict(
                    {
                        "index": i,
                        "rollout": 0,
                        "question": "",
                        "system": None,
                        "prompt": "",
                        "response": "",
                        "finished": True,
                        **g,
                    }
                )
            )
        else:
            raise DataFormatError(
                f"response {i}: expected a Generation or a dict with prompt_ids and response_ids"
            )
    return out


class DiffResult(StageResult):
    """Base of the diff results: JSON files whose fields keep the layout of the former dict
    results (``r.summary`` and ``r["summary"]`` both read a field), and that also load files
    written before the results were typed (their ``kind`` is one of ``LEGACY_KINDS``)."""

    #: JSON key → attribute, for keys that would shadow a method (``summary``)
    RENAMED: ClassVar[dict[str, str]] = {"summary": "overview"}

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, self.RENAMED.get(key, key))
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, self.RENAMED.get(key, key), default)

    def __contains__(self, key: str) -> bool:
        return hasattr(self, self.RENAMED.get(key, key))

    def to_dict(self) -> dict[str, Any]:
        back = {v: k for k, v in self.RENAMED.items()}
        return {back.get(k, k): v for k, v in super().to_dict().items()}

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        return super().from_dict({cls.RENAMED.get(k, k): v for k, v in data.items()})  # type: ignore[misc]
