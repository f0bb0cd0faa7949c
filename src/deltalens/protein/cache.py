"""A score cache: ``(scorer key, sequence, column) → value`` in SQLite, committed per batch.

The scorer key hashes everything the value depends on (the scorer type, its settings and the
sha256 of its input files: the HMM, the reference FASTA, the oracle), so a cached value is
reused only for the same computation. A killed scoring run keeps every committed batch; a
re-run scores only the sequences that are missing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

SCHEMA = "CREATE TABLE IF NOT EXISTS scores (key TEXT, seq TEXT, col TEXT, value REAL, PRIMARY KEY (key, seq, col))"


class ScoreCache:
    """SQLite-backed score cache (``path=None``: in memory only, for one process)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path) if self.path else ":memory:", check_same_thread=False)
        self._db.execute(SCHEMA)
        self._db.commit()
        self._lock = threading.Lock()

    def get(self, key: str, seqs: Sequence[str], cols: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{sequence: {column: value}}`` for the sequences that have every column cached."""
        out: dict[str, dict[str, float]] = {}
        uniq = list(dict.fromkeys(seqs))
        with self._lock:
            for k in range(0, len(uniq), 500):
                chunk = uniq[k : k + 500]
                q = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT seq, col, value FROM scores WHERE key = ? AND seq IN ({q})", [key, *chunk]
                ).fetchall()
                for s, c, v in rows:
                    out.setdefault(s, {})[c] = float(v)
        need = set(cols)
        return {s: v for s, v in out.items() if need <= set(v)}

    def put(self, key: str, values: Mapping[str, Mapping[str, float]]) -> None:
        """Store ``{sequence: {column: value}}`` and commit (one transaction)."""
        rows = [(key, s, c, float(v)) for s, cv in values.items() for c, v in cv.items()]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)", rows)
            self._db.commit()

    def count(self, key: str | None = None) -> int:
        with self._lock:
            if key is None:
                return int(self._db.execute("SELECT COUNT(DISTINCT key || seq) FROM scores").fetchone()[0])
            return int(
                self._db.execute("SELECT COUNT(DISTINCT seq) FROM scores WHERE key = ?", [key]).fetchone()[0]
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


def default_cache_path() -> Path:
    """``$DELTALENS_CACHE/protein/scores.sqlite``."""
    from ..models.loading import cache_root

    return cache_root() / "protein" / "scores.sqlite"


_OPEN: dict[str, ScoreCache] = {}


def open_cache(path: str | Path | bool | None) -> ScoreCache | None:
    """A shared :class:`ScoreCache` per path; ``True`` → the default path; ``None``/``False`` → none."""
    if path is None or path is False:
        return None
    p = default_cache_path() if path is True else Path(path)
    key = str(p.resolve()) if p.exists() else str(p)
    if key not in _OPEN:
        _OPEN[key] = ScoreCache(p)
    return _OPEN[key]


def missing(seqs: Iterable[str], have: Mapping[str, object]) -> list[str]:
    """Unique sequences of ``seqs`` not in ``have``, in first-seen order."""
    return [s for s in dict.fromkeys(seqs) if s not in have]
