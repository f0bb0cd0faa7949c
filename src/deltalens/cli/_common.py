"""Shared CLI helpers: consoles, the ``--experiment`` option, options built from config fields,
option parsing, tables."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import typer

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import DeltalensError

console = Console()
err_console = Console(stderr=True)

EXPERIMENT_HELP = "Experiment name (under $DELTALENS_EXPERIMENTS or ./experiments) or directory."


def experiment_option(default: str = "default", help: str = EXPERIMENT_HELP) -> Any:
    """The one ``--experiment/-e`` option every command that writes into an experiment takes."""
    return typer.Option(default, "--experiment", "-e", help=help)


def output_dir(out: Path | None, default: Path) -> Path:
    """``--out`` when given, else the experiment path the library chose (``default``)."""
    return Path(out) if out is not None else Path(default)


def config_option(config_cls: type, name: str, *flags: str, **kw: Any) -> Any:
    """A ``typer.Option`` for field ``name`` of a stage config: default, flag and help come from the
    field (:func:`deltalens.stage.option`), so they are defined once. Extra ``flags`` (aliases)
    and keyword arguments are passed on."""
    f = next((f for f in dataclasses.fields(config_cls) if f.name == name), None)
    if f is None:
        raise AttributeError(f"{config_cls.__name__} has no field {name!r}")
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
    else:
        default = ...
    names = [f.metadata.get("flag") or "--" + name.replace("_", "-")]
    if f.metadata.get("short"):
        names.append(f.metadata["short"])
    names.extend(flags)
    kw.setdefault("help", f.metadata.get("help") or None)
    if isinstance(default, (list, tuple)):  # list fields are comma-separated strings on the CLI
        default = ",".join(map(str, default)) if default else None
    return typer.Option(default, *names, **kw)


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


def table(
    title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, no_wrap: Sequence[str] = (), **kw: Any
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


def parse_assignments(items: Iterable[str] | None, flag: str, example: str) -> dict[str, str]:
    """Repeatable ``NAME=VALUE`` options: ``["a=x", "b=y"]`` → ``{"a": "x", "b": "y"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DeltalensError(f"{flag} '{item}': write {example}")
        out[key] = value
    return out
