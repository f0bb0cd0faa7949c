"""Small, safe file primitives shared by every artifact writer.

* :func:`atomic_write` / :func:`atomic_path` — write to a temporary file in the same
  directory, fsync, then ``os.replace`` into place: a killed run never leaves a
  half-written artifact under the final name.
* :func:`append_jsonl` — append-only results files; each record is one line written
  with a single ``write`` call and flushed, so a kill loses at most the record in flight.
* :func:`save_tensors` / :func:`load_tensors` — safetensors only (never pickle).
* :func:`provenance` — the metadata block every artifact records.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ._version import __version__

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it into place.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600; give artifacts the usual permissions
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        mode = "wb" if isinstance(data, bytes) else "w"
        with open(tmp, mode, **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays / scalars
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(obj, indent=indent, default=_json_default, ensure_ascii=False)


def write_json(path: PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Atomically write ``obj`` as JSON (tensors and numpy arrays become lists)."""
    return atomic_write(path, to_json(obj, indent=indent) + "\n")


def decode_utf8(data: bytes, path: PathLike, *, line: int | None = None, offset: int = 0) -> str:
    """``data`` decoded as UTF-8, or a :class:`DataFormatError` naming the file, the line and the
    byte offset (from the start of the file: ``offset`` is where ``data`` starts) of the first bad byte."""
    from .errors import DataFormatError

    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = offset + exc.start
        n = line if line is not None else data.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(
            f"{path}:{n}: not valid UTF-8 at byte {at} ({data[exc.start : exc.start + 4]!r}: {exc.reason}); "
            "save the file as UTF-8"
        ) from None


def read_text(path: PathLike) -> str:
    """A whole text file as UTF-8 (a leading byte-order mark is dropped); a missing file or a bad
    byte is a :class:`DataFormatError` naming the file (and the byte offset)."""
    from .errors import DataFormatError

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataFormatError(f"{path}: is a directory, expected a file") from None
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    return decode_utf8(data[bom:], path, offset=bom)


def read_json(path: PathLike) -> Any:
    from .errors import DataFormatError

    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from None


def append_jsonl(path: PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON record as a single line (append-only, flushed and fsynced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = to_json(dict(record), indent=None) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_log(path: PathLike, what: str = "records") -> tuple[list[dict[str, Any]], int]:
    """The records of an append-only JSONL results log, and the number of torn lines.

    A line a killed run cut short is not JSON: such lines are moved, once, to
    ``<name>.torn`` and the log is rewritten without them (atomically — the one exception to
    append-only), so later runs read a clean file and say nothing; their items are recomputed.
    """
    import logging

    path = Path(path)
    if not path.exists():
        return [], 0
    records: list[dict[str, Any]] = []
    torn: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                torn.append(line.rstrip("\n"))
                continue
            if isinstance(rec, dict):
                records.append(rec)
    if torn:
        torn_path = path.with_name(path.name + ".torn")
        with open(torn_path, "a", encoding="utf-8") as fh:
            fh.write("".join(t + "\n" for t in torn))
        bad = set(torn)
        keep = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and ln not in bad]
        atomic_write(path, "".join(ln + "\n" for ln in keep))
        logging.getLogger("deltalens").warning(
            "%s: moved %d unreadable line(s) left by a killed run to %s; those %s are recomputed",
            path,
            len(torn),
            torn_path.name,
            what,
        )
    return records, len(torn)


def append_log(path: PathLike, record: Mapping[str, Any]) -> None:
    """Append one record to a results log, first ending a line a kill cut short."""
    path = Path(path)
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as fh:
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                with open(path, "a", encoding="utf-8") as out:
                    out.write("\n")
    append_jsonl(path, record)


def save_tensors(
    path: PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> Path:
    """Atomically write tensors to a safetensors file.

    ``metadata`` values are stored as strings (non-strings are JSON-encoded) in the
    safetensors header, so the file is self-describing.
    """
    meta = None
    if metadata is not None:
        meta = {k: v if isinstance(v, str) else to_json(v, indent=None) for k, v in metadata.items()}
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(clean, str(tmp), metadata=meta)
    return Path(path)


def load_tensors(path: PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from .errors import DataFormatError

    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: file not found")
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types
        raise DataFormatError(f"not a valid safetensors file: {path} ({exc})") from None


def read_safetensors_metadata(path: PathLike) -> dict[str, Any]:
    """The header metadata of a safetensors file, JSON values decoded where possible."""
    from safetensors import safe_open

    from .errors import DataFormatError

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise DataFormatError(f"not a valid safetensors file: {path} ({exc})") from None
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


def sha256_file(path: PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable short hash of a JSON-able configuration (used to key resumable work)."""
    blob = json.dumps(config, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def provenance(lm: Any = None, **extra: Any) -> dict[str, Any]:
    """The provenance block recorded with every artifact.

    Contains the deltalens version, a UTC timestamp and, when a
    :class:`~deltalens.models.LoadedModel` is given, its spec, name and weights hash.
    Extra keyword arguments (site, positions, method, config…) are added as given.
    """
    prov: dict[str, Any] = {"deltalens_version": __version__, "created": now_iso()}
    if lm is not None:
        prov["model"] = lm.name
        prov["model_spec"] = lm.spec
        prov["weights_hash"] = lm.weights_hash
    prov.update(extra)
    return prov
