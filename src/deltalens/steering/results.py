"""``results.jsonl``: the append-only log of steering evaluations.

One JSON record per evaluated configuration (see :func:`deltalens.steering.evaluate.evaluate`
for the fields). The file is never rewritten: a re-run appends, and readers take the
latest record per configuration key. A line cut short by a killed run is skipped when
reading (and the next append starts on a fresh line), so a kill loses at most the
records in flight.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..io import append_jsonl


class ResultsLog:
    """Read and append steering records; look them up by configuration key."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self.skipped_lines = 0
        self.appended = 0  # records appended by this process
        self._by_key: dict[str, list[dict[str, Any]]] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        self.skipped_lines += 1
                        continue
                    if isinstance(rec, dict) and "key" in rec:
                        self._add(rec)
            if self.skipped_lines:
                warnings.warn(
                    f"{self.path}: skipped {self.skipped_lines} unreadable line(s) (a run killed mid-write); "
                    "those configurations are recomputed",
                    stacklevel=2,
                )

    def _add(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        self._by_key.setdefault(rec["key"], []).append(rec)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def latest(self, key: str) -> dict[str, Any] | None:
        recs = self._by_key.get(key)
        return recs[-1] if recs else None

    def complete(self, key: str, judge_id: str) -> dict[str, Any] | None:
        """The latest record for ``key`` scored by ``judge_id`` with no scoring errors."""
        for rec in reversed(self._by_key.get(key, [])):
            if rec.get("judge") == judge_id and not rec.get("n_errors"):
                return rec
        return None

    def with_responses(self, key: str) -> dict[str, Any] | None:
        """The latest record for ``key`` that holds its responses (for re-scoring)."""
        for rec in reversed(self._by_key.get(key, [])):
            if rec.get("responses"):
                return rec
        return None

    def latest_per_key(self, judge_id: str | None = None) -> list[dict[str, Any]]:
        """The latest record of every key (optionally only records of one judge), in first-seen order."""
        out = []
        for recs in self._by_key.values():
            cand = [r for r in recs if judge_id is None or r.get("judge") == judge_id]
            if cand:
                out.append(cand[-1])
        return out

    def append(self, record: dict[str, Any]) -> None:
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as fh:
                fh.seek(-1, 2)
                if fh.read(1) != b"\n":  # a line cut short by a kill: start a fresh line
                    with open(self.path, "a", encoding="utf-8") as out:
                        out.write("\n")
        append_jsonl(self.path, record)
        self.appended += 1
        self._add(json.loads(json.dumps(record, default=str)))
