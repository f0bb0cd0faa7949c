"""Study files: parse, validate as a whole, resolve references, order by dependencies, hash.

A study file is YAML::

    study: diff-study                 # name (default: the file's stem)
    dir: experiments/diff-study       # study directory (relative to the file; default
                                      #   the experiment named like the study)
    models: {base: smollm2-135m-instruct}
    data: {questions: organism_eval}
    stages:                           # in order; each key is the stage's name
      organism:
        stage: organism.train         # its type (default: the name); `deltalens run --list`
        data: ocean_topic             # the fields of its CLI command
        epochs: 1
      weights:
        stage: diff.weights
        base: ${models.base}
        ft: ${organism.model}         # another stage's output: an implicit `needs`
      report:
        needs: [weights]

References are ``${models.NAME}``, ``${data.NAME}``, ``${study.dir}`` (substituted when the
file is read) and ``${STAGE.OUTPUT}`` (an output of an earlier stage, substituted when that
stage has run). A value that is only a reference takes the referenced value as is; a reference
inside a longer string is interpolated.

:func:`load_study` checks everything before anything runs — unknown stage types and fields, a
value of the wrong type, a config its dataclass refuses, a reference to a missing stage or
output, a cycle in ``needs`` — and raises :class:`~deltalens.errors.ConfigError` naming the file,
line and key. The cache key of a stage (:func:`stage_hashes`) is the hash of its stage type,
its normalised fields (defaults filled in; stage references kept as written) and the keys of
the stages it needs, so an unchanged stage with unchanged inputs has an unchanged key.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, DeltalensError
from ..io import config_hash, read_text
from ..stage import _jsonable
from .registry import FieldSpec, StageType, stage_type

__all__ = ["REF", "StageSpec", "Study", "load_study", "parse_study", "stage_hashes"]

REF = re.compile(r"\$\{([A-Za-z_][\w-]*)\.([A-Za-z_][\w-]*)\}")
TOP_KEYS = ("study", "dir", "models", "data", "stages", "report", "description")
STAGE_KEYS = ("stage", "needs")
STATIC = ("models", "data", "study")


class _Map(dict):
    """A mapping that remembers the line of each key (1-based) and its own."""

    lines: dict[str, int]
    line: int


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    m = _Map()
    m.lines = {}
    m.line = node.start_mark.line + 1
    for k_node, v_node in node.value:
        key = loader.construct_object(k_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        if key in m:
            raise _at(loader.name, k_node.start_mark.line + 1, key, "duplicate key")
        m[key] = loader.construct_object(v_node, deep=True)
        m.lines[key] = k_node.start_mark.line + 1
    return m


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _at(file: Any, line: int | None, key: str, msg: str) -> ConfigError:
    where = f"{file}:{line}" if line else f"{file}"
    return ConfigError(f"{where}: {key}: {msg}")


@dataclass
class StageSpec:
    """One stage of a study: name, type, given fields (static references substituted), needs."""

    name: str
    type: StageType
    fields: dict[str, Any]
    needs: list[str]
    line: int
    lines: dict[str, int] = field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        """Every field of the stage type: the given value or the default (JSON form)."""
        out = {n: _jsonable(f.default) for n, f in self.type.fields.items()}
        out.update({k: _jsonable(v) for k, v in self.fields.items()})
        return out

    def refs(self) -> list[tuple[str, str, str]]:
        """``(field, stage, output)`` for every ``${stage.output}`` in the fields."""
        out = []
        for k, v in self.fields.items():
            for s in _strings(v):
                out.extend((k, m.group(1), m.group(2)) for m in REF.finditer(s))
        return out


@dataclass
class Study:
    """A validated study: its file, name, directory, models, data and stages in run order."""

    path: Path
    name: str
    dir: Path
    models: dict[str, Any]
    data: dict[str, Any]
    stages: dict[str, StageSpec]
    order: list[str]
    text: str
    description: str = ""

    def dependents(self, name: str) -> list[str]:
        """``name`` and every stage that needs it, directly or not (in run order)."""
        hit = {name}
        for s in self.order:
            if any(n in hit for n in self.stages[s].needs):
                hit.add(s)
        return [s for s in self.order if s in hit]

    def upstream(self, name: str) -> list[str]:
        """Every stage ``name`` needs, directly or not (in run order), without ``name``."""
        hit: set[str] = set()
        todo = list(self.stages[name].needs)
        while todo:
            n = todo.pop()
            if n not in hit:
                hit.add(n)
                todo.extend(self.stages[n].needs)
        return [s for s in self.order if s in hit]


def _strings(v: Any):
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from _strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from _strings(x)


def _substitute(v: Any, lookup, *, keep_unknown: bool = True) -> Any:
    """Replace ``${a.b}`` where ``lookup(a, b)`` gives a value (``KeyError``: leave it, or raise)."""
    if isinstance(v, str):
        m = REF.fullmatch(v)
        if m:
            try:
                return lookup(m.group(1), m.group(2))
            except KeyError:
                if keep_unknown:
                    return v
                raise

        def rep(mm: re.Match) -> str:
            try:
                return str(lookup(mm.group(1), mm.group(2)))
            except KeyError:
                if keep_unknown:
                    return mm.group(0)
                raise

        return REF.sub(rep, v)
    if isinstance(v, dict):
        return {k: _substitute(x, lookup, keep_unknown=keep_unknown) for k, x in v.items()}
    if isinstance(v, list):
        return [_substitute(x, lookup, keep_unknown=keep_unknown) for x in v]
    return v


# ---- type checking ------------------------------------------------------------------------------
def _type_name(t: Any) -> str:
    if t is type(None):
        return "null"
    if isinstance(t, type):
        return t.__name__
    return str(t).replace("typing.", "")


def _coerce(value: Any, t: Any) -> tuple[bool, Any]:
    """``(ok, value)``: ``value`` checked against annotation ``t`` (a comma-separated string is
    accepted for a list, as on the command line; an int for a float)."""
    if t is Any or t is object:
        return True, value
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(t):
            ok, v = _coerce(value, a)
            if ok:
                return True, v
        return False, value
    if t is type(None):
        return value is None, value
    if origin in (list, tuple, set, frozenset) or t in (list, tuple):
        args = typing.get_args(t)
        inner = args[0] if args else Any
        if isinstance(value, str):
            value = [x.strip() for x in value.split(",") if x.strip()]
        if not isinstance(value, list):
            return False, value
        out = []
        for x in value:
            ok, v = _coerce(x, inner)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if origin is dict or t is dict:
        return isinstance(value, dict), value
    if typing.get_origin(t) is typing.Literal:
        return value in typing.get_args(t), value
    if t is bool:
        return isinstance(value, bool), value
    if t is int:
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return True, int(value)
        return isinstance(value, int) and not isinstance(value, bool), value
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if t is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        return isinstance(value, str), value
    if t is Path:
        return isinstance(value, str), value
    if isinstance(t, type):
        return isinstance(value, t) or isinstance(value, (str, dict, list)), value
    return True, value


def _check_field(fs: FieldSpec, value: Any) -> Any:
    if isinstance(value, str) and REF.search(value):
        return value  # a stage output: checked when it is known
    ok, v = _coerce(value, fs.annotation)
    if not ok:
        raise ValueError(f"expected {_type_name(fs.annotation)}, got {value!r}")
    return v


# ---- parsing -------------------------------------------------------------------------------------
def parse_study(text: str, path: str | Path = "<study>") -> Study:
    """Parse and validate a study file's text (see the module docstring)."""
    path = Path(path)
    try:
        loader = _Loader(text)
        loader.name = str(path)
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except DeltalensError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _at(path, line, "yaml", f"not valid YAML ({problem})") from None
    if not isinstance(raw, _Map):
        raise _at(path, 1, "study", "a study file is a mapping with a 'stages' key")
    for k in raw:
        if k not in TOP_KEYS:
            raise _at(path, raw.lines[k], k, f"unknown key; valid: {', '.join(TOP_KEYS)}")
    name = str(raw.get("study") or path.stem)
    models = raw.get("models") or {}
    data = raw.get("data") or {}
    for key, m in (("models", models), ("data", data)):
        if not isinstance(m, dict):
            raise _at(path, raw.lines.get(key), key, "must be a mapping of names to values")
    from ..experiment import Experiment

    if raw.get("dir"):
        d = Path(str(raw["dir"])).expanduser()
        sdir = d if d.is_absolute() else (path.parent / d)
    else:
        sdir = Experiment.named(name).root
    sdir = sdir.resolve()  # outputs recorded in stage records are absolute paths
    static = {"models": dict(models), "data": dict(data), "study": {"dir": str(sdir), "name": name}}

    def lookup_static(a: str, b: str) -> Any:
        if a in static and b in static[a]:
            return static[a][b]
        raise KeyError(a)

    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, _Map) or not stages_raw:
        raise _at(path, raw.lines.get("stages", 1), "stages", "give a mapping of stage names to configs")
    specs: dict[str, StageSpec] = {}
    for sname, body in stages_raw.items():
        sline = stages_raw.lines[sname]
        key = f"stages.{sname}"
        if sname in STATIC:
            raise _at(path, sline, key, f"'{sname}' is reserved (used in references); rename the stage")
        if not re.fullmatch(r"[A-Za-z_][\w-]*", sname):
            raise _at(path, sline, key, "a stage name is letters, digits, '_' or '-'")
        if body is None:
            body = _Map()
            body.lines, body.line = {}, sline
        if not isinstance(body, _Map):
            raise _at(path, sline, key, f"expected a mapping of fields, got {body!r}")
        tname = str(body.get("stage", sname))
        st = stage_type(tname)
        if st is None:
            from .registry import STAGE_TYPES

            raise _at(
                path,
                body.lines.get("stage", sline),
                f"{key}.stage",
                f"unknown stage '{tname}'; valid: {', '.join(sorted(STAGE_TYPES))}",
            )
        needs = body.get("needs", [])
        if isinstance(needs, str):
            needs = [x.strip() for x in needs.split(",") if x.strip()]
        if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
            raise _at(path, body.lines.get("needs", sline), f"{key}.needs", "a list of stage names")
        fspecs = st.fields
        values: dict[str, Any] = {}
        for k, v in body.items():
            if k in STAGE_KEYS:
                continue
            line = body.lines.get(k, sline)
            if k not in fspecs:
                raise _at(
                    path,
                    line,
                    f"{key}.{k}",
                    f"unknown field of {tname}; valid: {', '.join(sorted([*fspecs, *STAGE_KEYS]))}",
                )
            try:
                v = _substitute(v, lookup_static, keep_unknown=True)
            except KeyError:  # pragma: no cover - keep_unknown
                pass
            for s in _strings(v):
                for m in REF.finditer(s):
                    if m.group(1) in STATIC:
                        raise _at(
                            path,
                            line,
                            f"{key}.{k}",
                            f"unresolved reference {m.group(0)} (no {m.group(1)}.{m.group(2)} in the file)",
                        )
            try:
                values[k] = _check_field(fspecs[k], v)
            except ValueError as exc:
                raise _at(path, line, f"{key}.{k}", str(exc)) from None
        missing = [n for n, f in fspecs.items() if f.required and n not in values]
        if missing:
            raise _at(path, sline, key, f"{tname} needs field(s) {', '.join(missing)}")
        specs[sname] = StageSpec(sname, st, values, list(needs), sline, dict(body.lines))

    # references and needs
    for s in specs.values():
        for k, ref_stage, out in s.refs():
            line = s.lines.get(k, s.line)
            ref = f"${{{ref_stage}.{out}}}"
            if ref_stage not in specs:
                raise _at(
                    path, line, f"stages.{s.name}.{k}", f"unresolved reference {ref}: no stage '{ref_stage}'"
                )
            outs = specs[ref_stage].type.outputs
            if out not in outs:
                raise _at(
                    path,
                    line,
                    f"stages.{s.name}.{k}",
                    f"unresolved reference {ref}: stage '{ref_stage}' ({specs[ref_stage].type.name}) has outputs "
                    f"{', '.join(outs)}",
                )
            if ref_stage == s.name:
                raise _at(path, line, f"stages.{s.name}.{k}", f"{ref} refers to the stage itself")
            if ref_stage not in s.needs:
                s.needs.append(ref_stage)
        for n in s.needs:
            if n not in specs:
                raise _at(path, s.lines.get("needs", s.line), f"stages.{s.name}.needs", f"no stage '{n}'")
            if n == s.name:
                raise _at(
                    path, s.lines.get("needs", s.line), f"stages.{s.name}.needs", "a stage cannot need itself"
                )
    order = _order(specs, path)

    if raw.get("report", True) and not any(s.type.name == "report" for s in specs.values()):
        st = stage_type("report")
        assert st is not None
        specs["report"] = StageSpec("report", st, {}, list(order), raw.line)
        order.append("report")

    # configs without stage references are built now: their own checks run before any stage
    for s in specs.values():
        if any(isinstance(v, str) and REF.search(v) for v in _strings(s.fields)):
            continue
        try:
            s.type.build(s.values())
        except DeltalensError as exc:
            bad, key = _field_named(s, str(exc))
            raise _at(
                path,
                s.lines.get(bad, s.line) if bad else s.line,
                f"stages.{s.name}" + (f".{key}" if key else ""),
                str(exc),
            ) from None
        except (TypeError, ValueError) as exc:
            raise _at(path, s.line, f"stages.{s.name}", str(exc)) from None
    return Study(
        path=path,
        name=name,
        dir=sdir,
        models=dict(models),
        data=dict(data),
        stages=specs,
        order=order,
        text=text,
        description=str(raw.get("description") or ""),
    )


def _mentions(message: str, flag: str) -> bool:
    return any(
        re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", message)
        for f in flag.split("/")
        if f.startswith("-")
    )


def _field_named(s: StageSpec, message: str) -> tuple[str | None, str | None]:
    """The given field a config error names by its flag (``--lora-r``), and its key path
    (``train.lora_r`` inside a nested config); ``(None, None)`` when none is recognisable."""
    fs = s.type.fields
    for k in s.fields:
        if k in fs and _mentions(message, fs[k].flag):
            return k, k
    for k, v in s.fields.items():
        if isinstance(v, dict):
            for sub in v:
                if _mentions(message, "--" + str(sub).replace("_", "-")):
                    return k, f"{k}.{sub}"
    return None, None


def _order(specs: dict[str, StageSpec], path: Path) -> list[str]:
    """Stages in dependency order, ties in file order; a cycle is an error naming it."""
    order: list[str] = []
    done: set[str] = set()
    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cyc = trail[trail.index(n) :] + [n]
            s = specs[cyc[0]]
            raise _at(
                path,
                s.lines.get("needs", s.line),
                f"stages.{cyc[0]}.needs",
                "cycle in needs: " + " → ".join(cyc),
            )
        state[n] = 1
        for m in specs[n].needs:
            visit(m, [*trail, n])
        state[n] = 2
        if n not in done:
            done.add(n)
            order.append(n)

    for n in specs:
        visit(n, [])
    return order


def load_study(path: str | Path) -> Study:
    """Read and validate a study file (:func:`parse_study`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such study file")
    return parse_study(read_text(p), p)


def stage_hashes(study: Study) -> dict[str, str]:
    """The cache key of every stage: hash of its type, normalised fields and its needs' keys."""
    out: dict[str, str] = {}
    for n in study.order:
        s = study.stages[n]
        out[n] = config_hash(
            {
                "stage": s.type.name,
                "version": s.type.version,
                "fields": s.values(),
                "needs": {m: out[m] for m in sorted(s.needs)},
            }
        )
    return out


def resolve(spec: StageSpec, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The stage's field values with ``${stage.output}`` replaced by the outputs of finished stages."""

    def lookup(a: str, b: str) -> Any:
        return outputs[a][b]

    return _substitute(spec.values(), lookup, keep_unknown=False)
