"""ActivationStore: sharded safetensors per site plus a Parquet token index.

Layout of a store directory::

    store.json                       manifest (the commit point; rewritten atomically)
    shards/<site>/000000.safetensors one tensor "acts" [n_rows, d] per shard and site
    index/000000.parquet             one row per activation row of the shard

Token index columns: ``seq_id`` (int64, input order), ``position`` (int32, index among the
sequence's real tokens; -1 for per-sequence reductions), ``token_id`` (int32; -1 for
reductions), ``region`` (int8: 0 prompt, 1 response), ``token_type`` (string: ``asst`` /
``endheader`` / ``newline`` / ``""``), ``split`` (``train`` / ``val``).

Appends are bounded in memory: rows are buffered until a shard is full (whole
sequences only), then every site's shard and the index shard are written and the
manifest is replaced. A killed capture therefore keeps every complete shard, and
re-running it continues after the last committed sequence (temporary files of the
interrupted shard write are removed first). Reads are memory-mapped.

A store belongs to one model (weights hash), one set of sites, one position spec, one
reduction, one capture configuration and one dataset (a fingerprint of the inputs' token
ids, plus the file's sha256 when captured from a file); resuming under anything else is
refused, naming what differs, before anything is written. A store is single-writer: the
writer holds an exclusive ``flock`` on ``.writer.lock`` (the kernel drops it when the
writer exits or is killed), and a second writer is refused naming the holder's pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .errors import ConfigError, DataFormatError, StoreBusyError, StoreMismatchError
from .hooks import Site, SiteLike
from .io import atomic_path, now_iso, write_json

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no writer lock
    fcntl = None  # type: ignore[assignment]

FORMAT_VERSION = 1
MANIFEST = "store.json"
LOCK = ".writer.lock"
#: per-rank stores of a sharded capture (merged into the store, then removed)
PARTS = "parts"
#: capture settings that may change on resume (they do not change what a row holds)
RESUMABLE_FIELDS = ("batch_size", "shard_mb")
_REQUIRED = ("sites", "d_model", "dtype", "shard_rows", "shards", "n_rows", "n_sequences")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the store at ``path`` (``{}`` if there is none); a manifest that is not
    valid JSON or misses fields is a :class:`DataFormatError` ("not a valid activation store")."""
    path = Path(path)
    f = path / MANIFEST
    if not f.is_file():
        return {}
    try:
        m = json.loads(f.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"not a valid activation store: {path} ({MANIFEST} is not UTF-8: {exc.reason})"
        ) from None
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            f"not a valid activation store: {path} ({MANIFEST}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(m, dict):
        raise DataFormatError(
            f"not a valid activation store: {path} ({MANIFEST} holds a {type(m).__name__}, not an object)"
        )
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise DataFormatError(f"not a valid activation store: {path} ({MANIFEST} lacks {', '.join(missing)})")
    return m


def check_writable(path: str | Path) -> None:
    """Refuse (:class:`ConfigError`) a store path that cannot be created or written, before any work."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"cannot write an activation store to {p}: it is a file, not a directory")
    q = p
    while not q.exists() and q != q.parent:
        q = q.parent
    if not q.is_dir():
        raise ConfigError(f"cannot write an activation store to {p}: {q} is not a directory")
    if not os.access(q, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write an activation store to {p}: {q} is not writable")


def _foreign_entries(path: Path) -> list[str]:
    """Entries of a directory without a manifest that no capture would have written."""
    own = {LOCK, MANIFEST, "shards", "index", PARTS}
    return [e.name for e in path.iterdir() if e.name not in own and not e.name.startswith(f".{MANIFEST}.")]


def _describe_data(d: Mapping[str, Any]) -> str:
    what = d.get("source") or "inputs"
    digest = (
        f"sha256 {d['sha256'][:12]}…"
        if d.get("sha256")
        else f"token fingerprint {str(d.get('fingerprint'))[:12]}…"
    )
    return f"{what} ({d.get('n_inputs')} inputs, {digest})"


_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
_TORCH_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_TORCH_DTYPES = {v: k for k, v in _TORCH_NAMES.items()}


def mmap_safetensor(path: Path, name: str = "acts") -> torch.Tensor:
    """Memory-map one tensor of a safetensors file (copy-on-write; no data is read up front)."""
    try:
        with open(path, "rb") as fh:
            (hlen,) = struct.unpack("<Q", fh.read(8))
            if hlen > 100 * 2**20:
                raise ValueError(f"header length {hlen} is implausible")
            header = json.loads(fh.read(hlen))
        info = header[name]
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        np_dtype = _NP_DTYPES[info["dtype"]]
        if 8 + hlen + end > path.stat().st_size:
            raise ValueError("the file is truncated")
    except FileNotFoundError:
        raise DataFormatError(f"not a valid safetensors file: {path} (no such file)") from None
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"not a valid safetensors file: {path} ({type(exc).__name__}: {exc})") from None
    if end == start:
        t = torch.from_numpy(np.zeros(shape, dtype=np_dtype))
    else:
        arr = np.memmap(path, dtype=np_dtype, mode="c", offset=8 + hlen + start, shape=shape)
        t = torch.from_numpy(arr)
    if info["dtype"] == "BF16":
        t = t.view(torch.bfloat16)
    return t


def split_of(seq_id: int, val_fraction: float) -> str:
    """Deterministic train/val assignment of a sequence (Knuth multiplicative hash)."""
    if val_fraction <= 0:
        return "train"
    return "val" if ((seq_id * 2654435761) % 2**32) / 2**32 < val_fraction else "train"


class ActivationStore:
    """A directory of captured activations; see the module docstring for the layout."""

    def __init__(self, path: str | Path, *, strict: bool = True):
        """Open (or prepare to create) the store at ``path``; an invalid manifest is a
        :class:`DataFormatError` unless ``strict=False`` (then it reads as no manifest)."""
        self.path = Path(path)
        try:
            self.manifest: dict[str, Any] = read_manifest(self.path)
        except DataFormatError:
            if strict:
                raise
            self.manifest = {}
        self._buf: dict[Site, list[torch.Tensor]] = {}
        self._buf_index: list[dict[str, np.ndarray]] = []
        self._buf_rows = 0
        self._buf_seqs = 0
        self._lock_fd: int | None = None

    # ---- creation and compatibility -------------------------------------------------------
    @property
    def exists(self) -> bool:
        return bool(self.manifest)

    @classmethod
    def open(cls, path: str | Path) -> ActivationStore:
        store = cls(path)
        if not store.exists:
            raise StoreMismatchError(f"{path}: not an activation store (no {MANIFEST})")
        return store

    @staticmethod
    def wanted(
        *,
        model: Mapping[str, Any],
        sites: Sequence[SiteLike],
        d_model: int,
        positions: str,
        reduce: str | None,
        dtype: torch.dtype = torch.float32,
        val_fraction: float = 0.0,
    ) -> dict[str, Any]:
        """The manifest fields a capture fixes (compared on resume)."""
        return {
            "model": dict(model),
            "sites": [str(Site.parse(s)) for s in sites],
            "d_model": int(d_model),
            "positions": positions,
            "reduce": reduce,
            "dtype": _TORCH_NAMES[dtype],
            "val_fraction": float(val_fraction),
        }

    def mismatch(
        self,
        want: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Why this (existing) store cannot take a capture of ``want`` / ``config`` / ``data``, or None.

        Reads only. Fields recorded before a store kept its config or data fingerprint are not
        compared."""
        if not self.exists:
            return None
        m = self.manifest
        diffs = []
        if m.get("model", {}).get("weights_hash") != want["model"].get("weights_hash"):
            diffs.append(
                f"model {m.get('model', {}).get('name')} ({m.get('model', {}).get('weights_hash')}) vs "
                f"{want['model'].get('name')} ({want['model'].get('weights_hash')})"
            )
        for key in ("sites", "d_model", "positions", "reduce", "dtype", "val_fraction"):
            if m.get(key) != want[key]:
                diffs.append(f"{key} {m.get(key)!r} vs {want[key]!r}")
        old = m.get("data")
        if data is not None and isinstance(old, dict) and old.get("fingerprint") != data.get("fingerprint"):
            diffs.append(f"data fingerprint differs: {_describe_data(old)} vs {_describe_data(data)}")
        recorded = m.get("config")
        if config is not None and isinstance(recorded, dict):
            checked = {"sites", "positions", "reduce", "dtype", "val_fraction", *RESUMABLE_FIELDS}
            for k in sorted((set(config) | set(recorded)) - checked):
                if recorded.get(k) != config.get(k):
                    diffs.append(f"{k} {recorded.get(k)!r} vs {config.get(k)!r}")
        if diffs:
            return (
                f"{self.path} holds a different capture ({'; '.join(diffs)}); use the same data and settings, "
                "a new directory or --overwrite — nothing was overwritten"
            )
        return None

    def init(
        self,
        *,
        model: Mapping[str, Any],
        sites: Sequence[SiteLike],
        d_model: int,
        positions: str,
        reduce: str | None,
        dtype: torch.dtype = torch.float32,
        val_fraction: float = 0.0,
        shard_mb: float = 64.0,
        dataset: str | None = None,
        extra: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Create the manifest, or check that an existing store matches (never overwrites).

        Takes the store's writer lock (released by :meth:`finish` or :meth:`close`, and by the
        kernel when the process dies): a second writer is refused with :class:`StoreBusyError`.
        ``config`` (the capture settings) and ``data`` (the inputs' fingerprint) are recorded
        and compared on resume."""
        want = self.wanted(
            model=model,
            sites=sites,
            d_model=d_model,
            positions=positions,
            reduce=reduce,
            dtype=dtype,
            val_fraction=val_fraction,
        )
        why = self.mismatch(want, config, data)  # before touching anything
        if why:
            raise StoreMismatchError(why)
        if self.exists and self.complete:
            return  # nothing to write: no lock needed
        if not self.exists and self.path.exists() and _foreign_entries(self.path):
            raise StoreMismatchError(
                f"{self.path} exists and is not an activation store; nothing was overwritten"
            )
        self.lock()
        self.manifest = read_manifest(self.path)  # another writer may have finished meanwhile
        why = self.mismatch(want, config, data)
        if why:
            self.close()
            raise StoreMismatchError(why)
        if self.exists:
            if not self.complete:
                self.clean_strays()
            if self.n_sequences == 0:  # nothing captured yet: record what this capture is
                for key, value in (("config", config), ("data", data)):
                    if value is not None and key not in self.manifest:
                        self.manifest[key] = dict(value)
                self._commit()
            return
        self.clean_strays()
        row_bytes = d_model * torch.finfo(dtype).bits // 8
        self.manifest = {
            "format_version": FORMAT_VERSION,
            "deltalens_version": __version__,
            "created": now_iso(),
            **want,
            "dataset": dataset,
            "shard_rows": max(1, int(shard_mb * 2**20 // row_bytes)),
            "shards": [],
            "n_rows": 0,
            "n_sequences": 0,
            "complete": False,
            **({"config": dict(config)} if config is not None else {}),
            **({"data": dict(data)} if data is not None else {}),
            **({"extra": dict(extra)} if extra else {}),
        }
        self._commit()

    # ---- the writer lock ------------------------------------------------------------------
    def lock(self) -> None:
        """Take the exclusive writer lock (``flock`` on ``.writer.lock`` in the store directory).

        Refused with :class:`StoreBusyError` naming the holder's pid while another process (or
        another ActivationStore object) writes the store. The kernel drops the lock when the
        holder exits or is killed, so a dead writer never blocks a resume."""
        if self._lock_fd is not None or fcntl is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StoreBusyError(
                f"{self.path} is being written by process {pid}; stores are single-writer"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        """Release the writer lock (buffered rows that were not flushed are dropped)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # ---- what is on disk ------------------------------------------------------------------
    def listed_files(self) -> list[Path]:
        """Every file the manifest commits to (manifest, shards of every site, index shards)."""
        names = self.shard_names()
        out = [self.path / MANIFEST]
        for s in self.manifest.get("sites", []):
            out.extend(self.path / "shards" / s / f"{n}.safetensors" for n in names)
        out.extend(self.path / "index" / f"{n}.parquet" for n in names)
        return out

    def stray_files(self) -> list[Path]:
        """Files in the store that the manifest does not list: temporary files of an interrupted
        shard write, shards written after the last commit."""
        if not self.path.is_dir():
            return []
        listed = set(self.listed_files())
        parts = self.path / PARTS  # per-rank stores of a sharded capture in progress are their own
        return sorted(
            p
            for p in self.path.rglob("*")
            if p.is_file() and p.name != LOCK and p not in listed and parts not in p.parents
        )

    def clean_strays(self) -> int:
        """Delete :meth:`stray_files` (a resume rewrites them); returns how many. Needs the lock."""
        strays = self.stray_files()
        for p in strays:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        return len(strays)

    def _commit(self) -> None:
        write_json(self.path / MANIFEST, self.manifest)

    # ---- facts ----------------------------------------------------------------------------
    @property
    def sites(self) -> list[Site]:
        return [Site.parse(s) for s in self.manifest.get("sites", [])]

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def n_rows(self) -> int:
        return int(self.manifest.get("n_rows", 0))

    @property
    def n_sequences(self) -> int:
        """Sequences committed so far (capture resumes after these)."""
        return int(self.manifest.get("n_sequences", 0))

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"ActivationStore({str(self.path)!r}, model={m.get('model', {}).get('name')}, sites={m.get('sites')}, "
            f"rows={self.n_rows}, sequences={self.n_sequences}, shards={len(m.get('shards', []))}, "
            f"complete={self.complete})"
        )

    def _site_key(self, site: SiteLike) -> Site:
        s = Site.parse(site)
        if s not in self.sites:
            raise StoreMismatchError(
                f"{self.path} has no site {s}; it holds {', '.join(map(str, self.sites))}"
            )
        return s

    # ---- writing --------------------------------------------------------------------------
    def append(
        self, acts: Mapping[Site, torch.Tensor], index: Mapping[str, np.ndarray], n_sequences: int
    ) -> None:
        """Buffer rows of whole sequences; flushes a shard when the buffer is full."""
        n = len(next(iter(index.values())))
        for s in self.sites:
            t = acts[s]
            if t.shape[0] != n or t.shape[-1] != self.d_model:
                raise StoreMismatchError(
                    f"append to {self.path}: {s} has shape {tuple(t.shape)}, expected [{n}, {self.d_model}]"
                )
            self._buf.setdefault(s, []).append(t.detach().to("cpu", _TORCH_DTYPES[self.manifest["dtype"]]))
        self._buf_index.append({k: np.asarray(v) for k, v in index.items()})
        self._buf_rows += n
        self._buf_seqs += n_sequences
        if self._buf_rows >= self.manifest["shard_rows"]:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows as one shard per site and commit the manifest."""
        if self._buf_seqs == 0:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq
        from safetensors.torch import save_file

        shard_id = len(self.manifest["shards"])
        name = f"{shard_id:06d}"
        for s in self.sites:
            rows = torch.cat(self._buf[s], 0) if self._buf.get(s) else torch.zeros(0, self.d_model)
            path = self.path / "shards" / str(s) / f"{name}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, ".safetensors") as tmp:
                save_file({"acts": rows.contiguous()}, str(tmp))
        cols = (
            {k: np.concatenate([b[k] for b in self._buf_index]) for k in self._buf_index[0]}
            if self._buf_index
            else {}
        )
        table = pa.table(cols)
        ipath = self.path / "index" / f"{name}.parquet"
        ipath.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(ipath, ".parquet") as tmp:
            pq.write_table(table, tmp)
        self.manifest["shards"].append(
            {"name": name, "n_rows": self._buf_rows, "n_sequences": self._buf_seqs}
        )
        self.manifest["n_rows"] += self._buf_rows
        self.manifest["n_sequences"] += self._buf_seqs
        self._commit()
        self._buf.clear()
        self._buf_index.clear()
        self._buf_rows = 0
        self._buf_seqs = 0

    def adopt(self, other: ActivationStore) -> int:
        """Append every committed shard of ``other`` (a store of the same sites, width and dtype,
        e.g. one rank's part of a sharded capture) after this store's shards; returns the rows.

        Files are hard-linked (copied where links are not possible) under this store's next
        shard names, then the manifest is committed once: a kill before the commit leaves only
        stray files, which the next :meth:`init` removes. Needs the writer lock."""
        import shutil

        for key in ("sites", "d_model", "dtype", "reduce", "positions"):
            if other.manifest.get(key) != self.manifest.get(key):
                raise StoreMismatchError(
                    f"{other.path} cannot be merged into {self.path}: {key} "
                    f"{other.manifest.get(key)!r} vs {self.manifest.get(key)!r}"
                )
        if self._buf_seqs:
            self.flush()
        added = 0
        for entry in other.manifest.get("shards", []):
            name = f"{len(self.manifest['shards']):06d}"
            pairs = [
                (
                    other.path / "shards" / s / f"{entry['name']}.safetensors",
                    self.path / "shards" / s / f"{name}.safetensors",
                )
                for s in self.manifest["sites"]
            ]
            pairs.append(
                (other.path / "index" / f"{entry['name']}.parquet", self.path / "index" / f"{name}.parquet")
            )
            for src, dst in pairs:
                if not src.is_file():
                    raise DataFormatError(f"cannot merge {other.path}: {src} is missing")
                dst.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    dst.unlink()
                try:
                    os.link(src, dst)
                except OSError:
                    with atomic_path(dst, dst.suffix) as tmp:
                        shutil.copyfile(src, tmp)
            self.manifest["shards"].append(
                {"name": name, "n_rows": int(entry["n_rows"]), "n_sequences": int(entry["n_sequences"])}
            )
            self.manifest["n_rows"] += int(entry["n_rows"])
            self.manifest["n_sequences"] += int(entry["n_sequences"])
            added += int(entry["n_rows"])
        return added

    def finish(self) -> None:
        """Flush, mark the store complete and release the writer lock."""
        self.flush()
        self.manifest["complete"] = True
        self._commit()
        self.close()

    # ---- reading --------------------------------------------------------------------------
    def shard_names(self) -> list[str]:
        return [s["name"] for s in self.manifest.get("shards", [])]

    def shard(self, site: SiteLike, i: int) -> torch.Tensor:
        """Shard ``i`` of a site, memory-mapped ``[n_rows, d]``."""
        s = self._site_key(site)
        return mmap_safetensor(self.path / "shards" / str(s) / f"{self.shard_names()[i]}.safetensors")

    def read(self, site: SiteLike, split: str | None = None) -> torch.Tensor:
        """All rows of a site (optionally one split) as one tensor (this copies into memory)."""
        parts = []
        for i in range(len(self.shard_names())):
            t = self.shard(site, i)
            if split is not None:
                keep = torch.from_numpy(self._split_mask(i, split))
                t = t[keep]
            parts.append(t)
        if not parts:
            return torch.zeros(0, self.d_model)
        return torch.cat(parts, 0)

    def _split_mask(self, i: int, split: str) -> np.ndarray:
        import pyarrow.parquet as pq

        col = pq.read_table(self.path / "index" / f"{self.shard_names()[i]}.parquet", columns=["split"])[
            "split"
        ]
        return np.asarray(col.to_numpy(zero_copy_only=False) == split)

    def index(self, columns: Sequence[str] | None = None) -> Any:
        """The token index as a pandas DataFrame (row order matches :meth:`read`)."""
        import pandas as pd
        import pyarrow.parquet as pq

        frames = [
            pq.read_table(
                self.path / "index" / f"{n}.parquet", columns=list(columns) if columns else None
            ).to_pandas()
            for n in self.shard_names()
        ]
        if not frames:
            return pd.DataFrame(
                columns=list(columns or ["seq_id", "position", "token_id", "region", "token_type", "split"])
            )
        return pd.concat(frames, ignore_index=True)

    def stream(
        self,
        site: SiteLike,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        split: str | None = None,
        buffer_shards: int = 4,
        epochs: int | None = 1,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> Iterator[torch.Tensor]:
        """Batches ``[batch_size, d]`` of a site.

        With ``shuffle``, shards are visited in random order and rows are shuffled within a
        window of ``buffer_shards`` shards, so memory stays bounded by that window.
        ``epochs=None`` repeats forever (each epoch reshuffled).
        """
        s = self._site_key(site)
        n_shards = len(self.shard_names())
        if n_shards == 0:
            return
        gen = torch.Generator().manual_seed(seed)
        epoch = 0
        carry: torch.Tensor | None = None
        while epochs is None or epoch < epochs:
            order = torch.randperm(n_shards, generator=gen).tolist() if shuffle else list(range(n_shards))
            for w in range(0, n_shards, buffer_shards):
                parts = []
                for i in order[w : w + buffer_shards]:
                    t = self.shard(s, i)
                    if split is not None:
                        t = t[torch.from_numpy(self._split_mask(i, split))]
                    parts.append(t.to(dtype) if dtype is not None else t.clone())
                if carry is not None:
                    parts.insert(0, carry)
                window = torch.cat(parts, 0)
                if shuffle:
                    window = window[torch.randperm(len(window), generator=gen)]
                full = (len(window) // batch_size) * batch_size
                for k in range(0, full, batch_size):
                    yield window[k : k + batch_size].to(device, non_blocking=True)
                carry = window[full:] if full < len(window) else None
            epoch += 1
        if carry is not None and len(carry) and not drop_last:
            yield carry.to(device)

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "path": str(self.path),
            "model": m.get("model"),
            "sites": m.get("sites"),
            "positions": m.get("positions"),
            "reduce": m.get("reduce"),
            "dtype": m.get("dtype"),
            "rows": self.n_rows,
            "sequences": self.n_sequences,
            "shards": len(m.get("shards", [])),
            "complete": self.complete,
            **({"data": m["data"]} if "data" in m else {}),
            "size_mb": round(sum(f.stat().st_size for f in self.listed_files() if f.is_file()) / 2**20, 1),
            **({"stray_files": n} if (n := len(self.stray_files())) else {}),
            **({"missing_files": n} if (n := sum(not f.is_file() for f in self.listed_files())) else {}),
        }
