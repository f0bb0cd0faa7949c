"""Shared CLI helpers: consoles, option parsing, tables."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import DeltalensError

console = Console()
err_console = Console(stderr=True)


def split_list(value: str | None) -> list[str]:
    """``"a,b, c"`` → ``["a", "b", "c"]``."""
    if not value:
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_layers(value: str | None, n_layers: int) -> list[int]:
    """``"all"``, ``"6"``, ``"6,12,18"``, ``"9-19"`` (inclusive) or ``"9:20"`` (python range)."""
    if value is None or value.strip() == "":
        return []
    v = value.strip()
    if v == "all":
        return list(range(n_layers))
    out: list[int] = []
    for part in split_list(v):
        rng = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        sl = re.fullmatch(r"(-?\d*)\s*:\s*(-?\d*)", part)
        if rng:
            out.extend(range(int(rng.group(1)), int(rng.group(2)) + 1))
        elif sl:
            out.extend(range(n_layers)[slice(int(sl.group(1)) if sl.group(1) else None, int(sl.group(2)) if sl.group(2) else None)])
        elif re.fullmatch(r"-?\d+", part):
            out.append(int(part))
        else:
            raise DeltalensError(f"cannot read layers '{value}': write e.g. 'all', '6', '6,12,18', '9-19' or '9:20'")
    for layer in out:
        if not -n_layers <= layer < n_layers:
            raise DeltalensError(f"layer {layer} is out of range: the model has {n_layers} layers (valid: 0..{n_layers - 1})")
    return sorted({layer % n_layers for layer in out})


def parse_floats(value: str | None, what: str = "values") -> list[float]:
    try:
        return [float(x) for x in split_list(value)]
    except ValueError:
        raise DeltalensError(f"cannot read {what} '{value}': write comma-separated numbers, e.g. '2,4,8'") from None


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], **kw: Any) -> Table:
    """A rich table; every cell is escaped (model text may contain markup-like brackets)."""
    t = Table(title=title, **kw)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*(escape(_fmt(x)) for x in r))
    return t


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)
