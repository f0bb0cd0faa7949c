"""Terminal output shared by the CLI and the demo: the two consoles and escaped rich tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    no_wrap: Sequence[str] = (),
    **kw: Any,
) -> Table:
    """A rich table; every cell is escaped (model text may contain markup-like brackets).
    Columns named in ``no_wrap`` are never wrapped or cut (names to copy); others fold."""
    t = Table(title=title, **kw)
    for c in columns:
        if c in no_wrap:
            t.add_column(c, no_wrap=True, overflow="fold", min_width=len(c))
        else:
            t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*(escape(_fmt(x)) for x in r))
    return t


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)
