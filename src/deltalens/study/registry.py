"""The stage registry: each study stage type is an adapter over one existing stage function.

A :class:`StageType` names the fields a study file may set for it — the fields of the stage's
config dataclass (``config``) plus the command's other arguments (``inputs``: the models, the
data, the output name), so a stage in a study has exactly the options of its CLI command — the
outputs later stages may reference (``${name.dir}``), and ``run``: build the config, call the
stage function once, return the outputs. ``check`` tells the runner whether a saved result is
still there and loadable (a cached stage whose result was deleted is recomputed).

Adapters live in :mod:`deltalens.study.stages`; :func:`register_stage` adds one.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from ..experiment import Experiment
from ..stage import StageConfig

__all__ = ["STAGE_TYPES", "FieldSpec", "StageContext", "StageType", "register_stage", "stage_type"]


@dataclass(frozen=True)
class FieldSpec:
    """One settable field of a stage type: its name, type annotation, default and help."""

    name: str
    annotation: Any
    default: Any
    required: bool
    help: str = ""
    in_config: bool = False
    flag: str = ""


@dataclass
class StageContext:
    """What a stage adapter gets besides its fields: the study's experiment directory, the
    stage's name (used to name its outputs), a console, a cache of loaded models and whether to
    replace an earlier result (``replace``; otherwise the stage functions resume their items)."""

    exp: Experiment
    name: str
    console: Console
    progress: bool = True
    models: dict[str, Any] = field(default_factory=dict)
    #: the stage reruns over a result made under another config or other inputs (or is forced):
    #: the adapter replaces what its output holds instead of resuming it
    replace: bool = False

    def model(self, spec: str) -> Any:
        """The loaded model for ``spec`` (loaded once per study run)."""
        from ..models import load

        if spec not in self.models:
            self.models[spec] = load(spec)
        return self.models[spec]


def _fields_of(cls: type | None, *, in_config: bool) -> list[FieldSpec]:
    if cls is None:
        return []
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name.startswith("_") or f.metadata.get("runtime"):
            continue
        if f.default is not dataclasses.MISSING:
            default, required = f.default, False
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default, required = f.default_factory(), False  # type: ignore[misc]
        else:
            default, required = None, True
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        out.append(
            FieldSpec(
                f.name, hints.get(f.name, Any), default, required, f.metadata.get("help", ""), in_config, flag
            )
        )
    return out


@dataclass
class StageType:
    """A study stage type (``diff.weights``): fields, outputs and the adapter calling the stage.

    ``run(ctx, inputs, config) -> outputs``: ``inputs`` is an instance of the ``inputs``
    dataclass (the command's arguments), ``config`` one of ``config`` (the stage's
    :class:`~deltalens.stage.StageConfig`) or ``None``. ``outputs`` maps each name in
    :attr:`outputs` to a JSON value (mostly paths)."""

    name: str
    run: Callable[[StageContext, Any, Any], dict[str, Any]]
    outputs: tuple[str, ...]
    inputs: type | None = None
    config: type[StageConfig] | None = None
    command: str = ""
    description: str = ""
    check: Callable[[dict[str, Any]], None] | None = None
    #: bumped when the adapter changes what it computes (part of the cache key)
    version: int = 1

    def __post_init__(self) -> None:
        names = [f.name for f in _fields_of(self.inputs, in_config=False)]
        clash = set(names) & {f.name for f in _fields_of(self.config, in_config=True)}
        if clash:
            raise ValueError(f"stage type {self.name}: inputs and config both define {sorted(clash)}")
        if "dir" not in self.outputs:
            raise ValueError(f"stage type {self.name}: every stage has a 'dir' output")

    @property
    def fields(self) -> dict[str, FieldSpec]:
        out = {f.name: f for f in _fields_of(self.inputs, in_config=False)}
        out.update({f.name: f for f in _fields_of(self.config, in_config=True)})
        return out

    def build(self, values: dict[str, Any]) -> tuple[Any, Any]:
        """``(inputs, config)`` from resolved field values (the config validates itself)."""
        fs = self.fields
        values = {k: _typed(fs[k].annotation, v) for k, v in values.items() if k in fs}
        ins = {k: v for k, v in values.items() if not fs[k].in_config}
        cfg = {k: v for k, v in values.items() if fs[k].in_config}
        inputs = self.inputs(**ins) if self.inputs is not None else None
        config = self.config(**cfg) if self.config is not None else None
        return inputs, config


def _typed(annotation: Any, value: Any) -> Any:
    """YAML values as the field's type: a nested config given as a mapping becomes its dataclass
    (``train: {epochs: 1}``), a string for a ``Path`` field a ``Path``, a list for a tuple a tuple."""
    cands = [annotation, *typing.get_args(annotation)]
    if isinstance(value, str) and Path in cands:
        return Path(value)
    if isinstance(value, list) and any(c is tuple or typing.get_origin(c) is tuple for c in cands):
        return tuple(value)
    if isinstance(value, dict):
        for c in cands:
            if isinstance(c, type) and dataclasses.is_dataclass(c):
                from_dict = getattr(c, "from_dict", None)
                return from_dict(value) if callable(from_dict) else c(**value)
    return value


STAGE_TYPES: dict[str, StageType] = {}


def register_stage(st: StageType) -> StageType:
    """Add a stage type to the registry (a later registration of the same name replaces it)."""
    STAGE_TYPES[st.name] = st
    return st


def stage_type(name: str) -> StageType | None:
    """The registered stage type ``name`` (the built-in adapters are loaded on first use)."""
    from . import stages  # noqa: F401  (registers the built-in adapters)

    return STAGE_TYPES.get(name)


def out_path(value: Any) -> str:
    """A path output as a string (outputs are JSON)."""
    return str(Path(value))
