"""ZymCTRL-style protein LMs as ordinary causal LMs: tags, prompts, generation, residue positions.

A protein LM reads ``TAG<sep><start>`` and writes the sequence, one residue per token, until
``<end>`` (ZymCTRL's format, :class:`~.records.ProteinFormat`). Any such GPT-2 checkpoint loads
with :func:`deltalens.load` (a local directory or a hub id in the local cache); a model directory
may describe its format and its known tags in ``protein_lm.json`` (the testbed does).

Because the prompt ends with ``<start>`` and each residue is one token, the position language
addresses residues directly: ``response[:10]`` are the first 10 residues, ``response[-1]`` the
last (:func:`residue_positions_ok` checks a tokenizer for it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataFormatError
from ..io import read_json
from .records import STANDARD, ZYMCTRL, ProteinFormat

PROTEIN_JSON = "protein_lm.json"


def protein_meta(lm: Any) -> dict[str, Any]:
    """The ``protein_lm.json`` of a model's directory (``{}`` when it has none)."""
    d = getattr(lm, "source_dir", None)
    if d is None and isinstance(lm, (str, Path)) and Path(lm).is_dir():
        d = Path(lm)
    if d is not None and (Path(d) / PROTEIN_JSON).is_file():
        data = read_json(Path(d) / PROTEIN_JSON)
        return data if isinstance(data, dict) else {}
    return {}


def protein_format(lm: Any) -> ProteinFormat:
    """The model's record format (``protein_lm.json``), ZymCTRL's by default."""
    f = protein_meta(lm).get("format")
    return ProteinFormat(**f) if isinstance(f, dict) else ZYMCTRL


def known_tags(lm: Any) -> list[str] | None:
    """The control tags the model was trained with, when its directory lists them."""
    tags = protein_meta(lm).get("tags")
    return [str(t) for t in tags] if isinstance(tags, list) else None


def check_tag(lm: Any, tag: str, where: str = "--tag") -> str:
    """``tag`` if the model's tokenizer can write it: a listed tag (``protein_lm.json``), or for
    tokenizers without a list (ZymCTRL's EC numbers, written character by character) a tag whose
    every token is known. Otherwise a :class:`DataFormatError` naming ``where`` and the tag."""
    t = str(tag).strip()
    if not t:
        raise DataFormatError(f"{where}: empty tag")
    tags = known_tags(lm)
    name = getattr(lm, "name", str(lm))
    if tags is not None:
        if t not in tags:
            shown = ", ".join(tags[:12]) + (" …" if len(tags) > 12 else "")
            raise DataFormatError(f"{where}: tag {t!r} is not in the tokenizer of {name} (tags: {shown})")
        return t
    tok = lm.tokenizer
    ids = tok(t, add_special_tokens=False)["input_ids"]
    unk = tok.unk_token_id
    if not ids or (unk is not None and unk in ids):
        raise DataFormatError(
            f"{where}: tag {t!r} is not in the tokenizer of {name} (it encodes to unknown tokens)"
        )
    return t


def read_tags(path: str | Path) -> list[str]:
    """Tags from a text file, one per line (blank lines and ``#`` comments skipped)."""
    from ..data.jsonl import iter_lines

    out = [ln.strip() for _, ln in iter_lines(path) if ln.strip() and not ln.strip().startswith("#")]
    if not out:
        raise DataFormatError(f"{path}: no tags")
    return out


def check_tags(lm: Any, tags: Iterable[str], source: str | None = None) -> list[str]:
    """Every tag checked (:func:`check_tag`); errors name the file and line when ``source`` is a file."""
    out = []
    for i, t in enumerate(tags):
        where = f"{source}:{i + 1}" if source else "--tag"
        out.append(check_tag(lm, t, where))
    return out


def tag_prompts(lm: Any, tags: Sequence[str]) -> list[str]:
    """The generation prompt ``TAG<sep><start>`` of each tag (checked)."""
    fmt = protein_format(lm)
    return [fmt.prompt(t) for t in check_tags(lm, tags)]


def residue_positions_ok(lm: Any, sample: str = STANDARD) -> bool:
    """Whether each residue is one token (so ``response[:k]`` = the first k residues)."""
    ids = lm.tokenizer(sample, add_special_tokens=False)["input_ids"]
    return len(ids) == len(sample)


def end_token_ids(lm: Any) -> list[int]:
    """Token ids that end a sequence: ``<end>`` and the tokenizer's eos (those that exist)."""
    fmt = protein_format(lm)
    tok = lm.tokenizer
    out = []
    for t in (fmt.end, fmt.eos):
        tid = tok.convert_tokens_to_ids(t)
        if isinstance(tid, int) and tid >= 0 and tid != tok.unk_token_id:
            out.append(tid)
    if tok.eos_token_id is not None:
        out.append(int(tok.eos_token_id))
    return sorted(set(out))


def load_protein_lm(spec: Any, **kw: Any) -> Any:
    """:func:`deltalens.load` plus generation that stops at ``<end>`` (added to the model's
    ``generation_config.eos_token_id``; the testbed and its DPO checkpoints save it)."""
    from ..models.loading import load

    lm = load(spec, **kw)
    ids = end_token_ids(lm)
    gc = getattr(lm.model, "generation_config", None)
    if gc is not None and ids:
        have = gc.eos_token_id
        have = [have] if isinstance(have, int) else list(have or [])
        gc.eos_token_id = sorted(set(have) | set(ids))
    return lm


def generate_proteins(
    lm: Any,
    tags: Sequence[str],
    *,
    n: int = 4,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> list[Any]:
    """``n`` sampled sequences per tag (:func:`deltalens.generate` on ``TAG<sep><start>`` prompts,
    no chat template); each :class:`~deltalens.generate.Generation`'s ``response`` is the sequence."""
    from ..generate import generate

    if n < 1:
        raise ConfigError(f"--n must be ≥ 1, got {n}")
    prompts = tag_prompts(lm, tags)
    return generate(
        lm,
        prompts,
        max_new_tokens=max_new_tokens,
        n=n,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
        chat=False,
        progress=progress,
    )
