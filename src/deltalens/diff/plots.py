"""Figures of the diffs, drawn with the shared helpers of :mod:`deltalens.plots`."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..plots import heatmap, label, lines_by_layer, new_figure
from ..plots import save_figure as _save_figure


def save_figure(fig, path):
    """:func:`deltalens.plots.save_figure`, quiet about glyphs the font lacks (tokens
    can be any Unicode; they render as boxes)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        return _save_figure(fig, path)


__all__ = ["hbar", "heatmap", "lines", "lines_by_layer", "printable", "token_table"]


def printable(tok: str) -> str:
    """A token as shown in tables and figures: ``repr`` escapes for control characters and
    surrounding whitespace (``' the'`` stays readable as ``' the'``)."""
    if not tok:
        return "''"
    return repr(tok) if (not tok.isprintable() or tok.strip() != tok) else tok


def token_table(
    columns: Mapping[str, Sequence[Any]],
    path: str | Path,
    *,
    title: str = "",
    rows: int = 20,
    highlight: Sequence[str] = (),
) -> Path:
    """A table of token lists, one column per list (entries: strings or ``(token, value)``).

    Tokens matching ``highlight`` (see :func:`deltalens.diff.lens.token_matches`) are shaded.
    """
    from .lens import token_matches

    names = list(columns)
    n = min(rows, max((len(v) for v in columns.values()), default=0))
    cells, colors = [], []
    for r in range(n):
        row, crow = [], []
        for name in names:
            items = columns[name]
            if r < len(items):
                it = items[r]
                tok = it[0] if isinstance(it, (tuple, list)) else str(it)
                row.append(printable(tok))
                crow.append("#ffd27f" if highlight and token_matches(tok, highlight) else "white")
            else:
                row.append("")
                crow.append("white")
        cells.append([label(c, 16) for c in row])
        colors.append(crow)
    fig, ax = new_figure(max(4.0, 1.6 * len(names) + 1), 0.26 * max(n, 1) + 1.2)
    ax.axis("off")
    if n:
        tbl = ax.table(
            cellText=cells, cellColours=colors, colLabels=[label(x, 22) for x in names], loc="center"
        )
        tbl.auto_set_font_size(False)
        tbl.set_fontsize(7)
        tbl.scale(1, 1.1)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def hbar(
    labels: Sequence[str], values: Sequence[float], path: str | Path, *, title: str = "", xlabel: str = ""
) -> Path:
    """Horizontal bars, first label on top."""
    fig, ax = new_figure(6.0, 0.25 * max(len(labels), 1) + 1.2)
    y = np.arange(len(labels))[::-1]
    ax.barh(y, list(values), color="#4c72b0")
    ax.set_yticks(y)
    ax.set_yticklabels([label(printable(s), 18) for s in labels], fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    return save_figure(fig, path)


def lines(
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    x: Sequence[float],
    xticklabels: Sequence[str] | None = None,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
) -> Path:
    """One line per named series over an arbitrary x axis (e.g. checkpoints of a series)."""
    fig, ax = new_figure()
    for name, vals in series.items():
        ax.plot(list(x)[: len(vals)], list(vals), marker="o", ms=4, label=name)
    if xticklabels is not None:
        ax.set_xticks(list(x))
        ax.set_xticklabels([label(s, 10) for s in xticklabels], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
