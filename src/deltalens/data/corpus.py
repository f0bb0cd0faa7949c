"""Text corpora for SAE training and evaluation: read documents, cut them into token windows.

Sources (:func:`read_texts`):

* a ``.txt``, ``.md`` or ``.rst`` file — the whole file is one document;
* a ``.jsonl`` file — one document per line, under ``text`` (or ``--text-key``);
* a ``.parquet`` file — the ``text`` column;
* a directory — every such file below it, recursively, in path order;
* ``hf:NAME[:CONFIG][@SPLIT]`` — a Hugging Face dataset (``datasets.load_dataset``; streamed,
  so only what is used is read; needs the files locally or network access);
* a directory written by ``datasets.Dataset.save_to_disk``.

:func:`token_windows` concatenates the documents' tokens (documents separated by the
tokenizer's EOS token) and cuts the stream into windows of ``context_len`` tokens, each
optionally starting with a BOS token — the usual way SAE training data is built
(SAELens, sparsify). A window is a dict ``{"prompt_ids": [...], "response_ids": []}``
that :func:`deltalens.capture` accepts as is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from .jsonl import iter_jsonl

DOC_SUFFIXES = (".txt", ".md", ".rst")
FILE_SUFFIXES = (*DOC_SUFFIXES, ".jsonl", ".parquet")


def _iter_file(path: Path, text_key: str) -> Iterator[str]:
    name = path.name.lower()
    if name.endswith(DOC_SUFFIXES):
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield text
    elif name.endswith(".jsonl"):
        for n, rec in iter_jsonl(path):
            if text_key not in rec:
                raise DataFormatError(f"{path}:{n}: no '{text_key}' key (keys: {', '.join(rec) or 'none'})")
            if not isinstance(rec[text_key], str):
                raise DataFormatError(f"{path}:{n}: '{text_key}' must be a string")
            if rec[text_key].strip():
                yield rec[text_key]
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_key not in table.column_names:
            raise DataFormatError(
                f"{path}: no '{text_key}' column (columns: {', '.join(table.column_names)})"
            )
        for t in table.column(text_key).to_pylist():
            if isinstance(t, str) and t.strip():
                yield t
    else:
        raise DataFormatError(f"{path}: unsupported text file type (use {', '.join(FILE_SUFFIXES)})")


def _iter_hf(spec: str, text_key: str) -> Iterator[str]:
    rest = spec[3:]
    split = "train"
    if "@" in rest:
        rest, split = rest.rsplit("@", 1)
    name, _, config = rest.partition(":")
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataFormatError("reading hf: datasets needs the 'datasets' package") from None
    try:
        ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
    except Exception as exc:
        raise DataFormatError(
            f"{spec}: cannot load the Hugging Face dataset ({type(exc).__name__}: {exc})"
        ) from None
    for i, rec in enumerate(ds):
        if text_key not in rec:
            raise DataFormatError(f"{spec}: row {i} has no '{text_key}' field (fields: {', '.join(rec)})")
        t = rec[text_key]
        if isinstance(t, str) and t.strip():
            yield t


def read_texts(source: str | Path | Iterable[str], text_key: str = "text") -> Iterator[str]:
    """Documents of a corpus (see the module docstring), lazily; a list of strings passes through."""
    if not isinstance(source, (str, Path)):
        for t in source:
            if not isinstance(t, str):
                raise DataFormatError(f"text corpus: expected strings, got {type(t).__name__}")
            yield t
        return
    s = str(source)
    if s.startswith("hf:"):
        yield from _iter_hf(s, text_key)
        return
    path = Path(s)
    if not path.exists():
        raise DataFormatError(
            f"{path}: file not found (give a text/JSONL/Parquet file, a directory or hf:NAME)"
        )
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            import datasets

            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train"] if "train" in ds else next(iter(ds.values()))
            if text_key not in ds.column_names:
                raise DataFormatError(
                    f"{path}: no '{text_key}' column (columns: {', '.join(ds.column_names)})"
                )
            for t in ds[text_key]:
                if isinstance(t, str) and t.strip():
                    yield t
            return
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(FILE_SUFFIXES))
        if not files:
            raise DataFormatError(f"{path}: no {', '.join(FILE_SUFFIXES)} files in this directory")
        for f in files:
            yield from _iter_file(f, text_key)
        return
    yield from _iter_file(path, text_key)


def token_windows(
    tokenizer: Any,
    texts: Iterable[str],
    context_len: int = 128,
    *,
    bos: int | None | str = "auto",
    separator: int | None | str = "eos",
    max_tokens: int | None = None,
    max_windows: int | None = None,
) -> Iterator[dict[str, list[int]]]:
    """Cut a stream of documents into windows of exactly ``context_len`` token ids.

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: documents (e.g. from :func:`read_texts`).
        context_len: tokens per window (including the BOS token when one is prepended).
        bos: token id put at the start of every window; ``"auto"`` uses the tokenizer's BOS
            token only if the tokenizer itself adds one when encoding (Llama 3, Gemma), so
            windows look like the model's ordinary inputs; ``None`` prepends nothing.
        separator: token between documents (``"eos"``: the tokenizer's EOS; ``None``: none).
        max_tokens: stop after this many tokens in total.
        max_windows: stop after this many windows.

    Yields:
        ``{"prompt_ids": ids, "response_ids": []}`` (the form :func:`deltalens.capture` accepts).
    """
    if context_len < 2:
        raise DataFormatError(f"context_len must be at least 2, got {context_len}")
    if bos == "auto":
        probe = tokenizer("a")["input_ids"]
        bos = (
            tokenizer.bos_token_id
            if (tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id)
            else None
        )
    if separator == "eos":
        separator = tokenizer.eos_token_id
    body = context_len - (1 if bos is not None else 0)
    buf: list[int] = []
    n_windows = 0
    n_tokens = 0
    for doc in texts:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        buf.extend(ids)
        if separator is not None:
            buf.append(int(separator))
        while len(buf) >= body:
            chunk, buf = buf[:body], buf[body:]
            window = ([int(bos)] if bos is not None else []) + chunk
            yield {"prompt_ids": window, "response_ids": []}
            n_windows += 1
            n_tokens += len(window)
            if (max_windows is not None and n_windows >= max_windows) or (
                max_tokens is not None and n_tokens >= max_tokens
            ):
                return
