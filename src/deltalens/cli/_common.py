"""Shared CLI helpers: consoles, the ``--experiment`` option, options built from config fields,
option parsing, tables."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer

from ..console import console, err_console, table
from ..errors import DeltalensError
from ..parsing import parse_floats, parse_layers, split_list

__all__ = [
    "EXPERIMENT_HELP",
    "config_option",
    "console",
    "err_console",
    "experiment_option",
    "output_dir",
    "parse_assignments",
    "parse_floats",
    "parse_layers",
    "split_list",
    "table",
]

EXPERIMENT_HELP = "Experiment name (under $DELTALENS_EXPERIMENTS or ./experiments) or directory."


def experiment_option(default: str = "default", help: str = EXPERIMENT_HELP) -> Any:
    """The one ``--experiment/-e`` option every command that writes into an experiment takes."""
    return typer.Option(default, "--experiment", "-e", help=help)


def output_dir(out: Path | None, default: Path) -> Path:
    """``--out`` when given, else the experiment path the library chose (``default``)."""
    return Path(out) if out is not None else Path(default)


def config_option(config_cls: type, name: str, *flags: str, override: bool = False, **kw: Any) -> Any:
    """A ``typer.Option`` for field ``name`` of a stage config: default, flag and help come from the
    field (:func:`deltalens.stage.option`), so they are defined once. Extra ``flags`` (aliases)
    and keyword arguments are passed on. ``override=True``: the option defaults to ``None`` (it
    overrides a config file only when given) and its help names the config's default."""
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
    if override:
        if default not in (None, ..., {}, []):
            kw["help"] = f"{kw['help'] or ''} [default: {default}]".strip()
        default = None
    return typer.Option(default, *names, **kw)


def parse_assignments(items: Iterable[str] | None, flag: str, example: str) -> dict[str, str]:
    """Repeatable ``NAME=VALUE`` options: ``["a=x", "b=y"]`` → ``{"a": "x", "b": "y"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DeltalensError(f"{flag} '{item}': write {example}")
        out[key] = value
    return out
