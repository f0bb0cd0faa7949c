"""Reading line-oriented datasets with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from ..io import decode_utf8


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of every line of a UTF-8 text file.

    Lines end at ``\\n`` only (a trailing ``\\r`` of CRLF files is dropped; a ``\\r`` or U+2028
    inside a line does not split it), so line and column numbers in errors are those an editor
    shows. A leading byte-order mark is skipped; a byte that is not UTF-8 is a
    :class:`DataFormatError` naming the file, the line and the byte offset.
    """
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: file not found")
    offset = 0
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            start = 3 if n == 1 and raw.startswith(b"\xef\xbb\xbf") else 0
            text = decode_utf8(raw[start:], path, line=n, offset=offset + start)
            offset += len(raw)
            if text.endswith("\n"):
                text = text[:-2] if text.endswith("\r\n") else text[:-1]
            yield n, text


def iter_jsonl(
    path: str | Path, required: Sequence[str] = (), types: Mapping[str, type | tuple[type, ...]] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSONL file.

    Raises :class:`DataFormatError` naming ``file:line`` for invalid JSON (with the column), a
    record that is not an object, a missing required key, a value of the wrong type or a byte
    that is not UTF-8.
    """
    path = Path(path)
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{n}: invalid JSON at column {exc.colno} ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise DataFormatError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
        for key in required:
            if key not in rec:
                raise DataFormatError(f"{path}:{n}: missing key '{key}' (keys: {', '.join(rec) or 'none'})")
        for key, typ in (types or {}).items():
            if key in rec and not isinstance(rec[key], typ):
                want = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
                raise DataFormatError(
                    f"{path}:{n}: '{key}' must be {want}, got {type(rec[key]).__name__} ({rec[key]!r:.60})"
                )
        yield n, rec


def read_jsonl(
    path: str | Path, required: Sequence[str] = (), types: Mapping[str, type | tuple[type, ...]] | None = None
) -> list[dict[str, Any]]:
    """All records of a JSONL file (see :func:`iter_jsonl` for validation)."""
    return [rec for _, rec in iter_jsonl(path, required, types)]
