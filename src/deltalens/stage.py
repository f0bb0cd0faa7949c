"""The stage convention: a config dataclass → one function → a typed result with save/load.

Every pipeline stage (steering extract/steer/combine, diff weights/activations/outputs/series,
organisms, sae train/eval/iterate, feature analyses, circuits patch/attribute, …) follows it::

    @dataclass
    class PatchConfig(StageConfig):
        layers: list[int] = option(default_factory=list, flag="--layers", help="Layers to patch.")
        batch_size: int = option(16, flag="--batch-size", help="Pairs per forward pass.")

        def validate(self) -> None:
            at_least(self, "batch_size", 1)

    @register_result
    @dataclass
    class PatchResult(StageResult):
        KIND = "activation patching"
        FILENAME = "patching.json"
        effects: list[list[float]]
        config: dict

    def patch(lm, pairs, config: PatchConfig) -> PatchResult: ...

* :class:`StageConfig` validates in ``__post_init__`` (errors are :class:`ConfigError` naming the
  CLI flag and the value), serialises with :meth:`~StageConfig.to_dict` into provenance, hashes
  with :meth:`~StageConfig.hash` for resumable work, and lists the fields that differ from a
  recorded config with :meth:`~StageConfig.differences` (a resume under another config is refused
  naming them).
* :func:`option` declares a field once: its default, its CLI flag and help. The CLI builds its
  ``typer.Option`` from the field (:func:`deltalens.cli._common.config_option`), so defaults are
  defined in one place.
* :class:`StageResult` writes ``FILENAME`` (JSON with ``kind`` and ``schema``) in ``save(dir)``;
  ``load(dir)`` reads it back and refuses another kind with "not a valid <kind>: <path>".
  Results with tensors or tables override ``save``/``load`` and still write the JSON header.
* :func:`register_result` makes ``deltalens info`` recognise the result file.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError, DataFormatError
from .io import config_hash, read_json, write_json

T = TypeVar("T")
C = TypeVar("C", bound="StageConfig")
R = TypeVar("R", bound="StageResult")

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    *,
    flag: str | None = None,
    short: str | None = None,
    help: str = "",
    default_factory: Callable[[], Any] | Any = _MISSING,
) -> Any:
    """A config field with its CLI flag and help (the one place its default is defined)."""
    meta = {"flag": flag, "short": short, "help": help}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(cfg: Any, name: str) -> str:
    """The CLI spelling of field ``name`` (``--batch-size``), for error messages."""
    for f in dataclasses.fields(cfg):
        if f.name == name:
            return f.metadata.get("flag") or "--" + name.replace("_", "-")
    return "--" + name.replace("_", "-")


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to = getattr(value, "to_dict", None)
        return (
            to()
            if callable(to)
            else {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        )
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        seq = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(v) for v in seq]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    return value


# ---- validation helpers (raise ConfigError naming the flag and the value) ---------------------
def at_least(cfg: Any, name: str, lo: float) -> None:
    """``cfg.name ≥ lo`` (``None`` is allowed: "not set")."""
    v = getattr(cfg, name)
    if v is not None and v < lo:
        raise ConfigError(f"{flag_of(cfg, name)} must be ≥ {lo:g}, got {v!r}")


def in_range(cfg: Any, name: str, lo: float, hi: float, *, hi_open: bool = False) -> None:
    """``lo ≤ cfg.name ≤ hi`` (``< hi`` with ``hi_open``)."""
    v = getattr(cfg, name)
    if v is None:
        return
    if not (lo <= v and (v < hi if hi_open else v <= hi)):
        raise ConfigError(
            f"{flag_of(cfg, name)} must be in [{lo:g}, {hi:g}{')' if hi_open else ']'}, got {v!r}"
        )


def one_of(cfg: Any, name: str, valid: Iterable[Any]) -> None:
    """``cfg.name`` is one of ``valid`` (every element, for a list-valued field)."""
    v = getattr(cfg, name)
    valid = tuple(valid)
    for x in v if isinstance(v, (list, tuple)) else [v]:
        if x not in valid:
            raise ConfigError(f"{flag_of(cfg, name)} must be one of {', '.join(map(str, valid))}; got {x!r}")


@dataclasses.dataclass
class StageConfig:
    """Base of every stage config: validated on construction, JSON-serialisable, hashable."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for an invalid value (override; use :func:`at_least` …)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], *, where: str = "") -> C:
        """Build from a mapping; an unknown key is an error naming it (and ``where``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            at = f"{where}: " if where else ""
            raise ConfigError(
                f"{at}unknown {cls.__name__} key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        return cls(**dict(data))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def hash(self, exclude: Iterable[str] = ()) -> str:
        """Stable 16-hex hash of :meth:`to_dict` (minus ``exclude``: fields that do not change results)."""
        d = self.to_dict()
        for k in exclude:
            d.pop(k, None)
        return config_hash(d)

    def differences(self, recorded: Mapping[str, Any], exclude: Iterable[str] = ()) -> list[str]:
        """``"field: recorded → now"`` for every field that differs from a recorded :meth:`to_dict`."""
        now = self.to_dict()
        skip = set(exclude)
        out = []
        for k in sorted(set(now) | set(recorded)):
            if k in skip:
                continue
            if k in recorded and k in now and _jsonable(recorded[k]) != now[k]:
                out.append(f"{k}: {recorded[k]!r} → {now[k]!r}")
            elif (k in recorded) != (k in now):
                out.append(f"{k}: {recorded.get(k)!r} → {now.get(k)!r}")
        return out

    def check_resume(
        self, recorded: Mapping[str, Any] | None, what: str | Path, exclude: Iterable[str] = ()
    ) -> None:
        """Refuse to continue ``what`` (a checkpoint, a store) that was made under another config."""
        if recorded is None:
            return
        diff = self.differences(recorded, exclude)
        if diff:
            raise ConfigError(
                f"{what} was made with another configuration ({'; '.join(diff)}); "
                "use the same settings, another output, or --overwrite"
            )


@dataclasses.dataclass
class StageResult:
    """Base of every stage result: ``save(dir)`` writes ``FILENAME``; ``load(dir)`` reads it back."""

    KIND: ClassVar[str] = "result"
    FILENAME: ClassVar[str] = "result.json"
    SCHEMA: ClassVar[int] = 1
    #: kinds written by older versions that :meth:`load` still reads
    LEGACY_KINDS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        """Default: the dataclass fields by name (override for nested types)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, directory: str | Path) -> Path:
        """Write ``<directory>/FILENAME`` atomically; returns its path."""
        path = Path(directory) / self.FILENAME
        write_json(path, {"kind": self.KIND, "schema": self.SCHEMA, **self.to_dict()})
        return path

    @classmethod
    def path_in(cls, directory: str | Path) -> Path:
        p = Path(directory)
        return p if p.is_file() else p / cls.FILENAME

    @classmethod
    def read_header(cls, path: str | Path) -> dict[str, Any]:
        """The JSON header file at ``path``, checked to exist and to be of this ``KIND``."""
        path = Path(path)
        if not path.is_file():
            raise DataFormatError(f"not a valid {cls.KIND}: {path} (no such file)")
        data = read_json(path)
        got = data.get("kind") if isinstance(data, dict) else type(data).__name__
        if not isinstance(data, dict) or (got != cls.KIND and got not in cls.LEGACY_KINDS):
            raise DataFormatError(f"not a valid {cls.KIND}: {path} (kind is {got!r})")
        return data

    @classmethod
    def companion(cls, header: Path, name: str | Path) -> Path:
        """A file saved beside the header (tensors, a table), checked to exist."""
        p = header.parent / name
        if not p.is_file():
            raise DataFormatError(f"not a valid {cls.KIND}: {header} (its {p.name} is missing)")
        return p

    @classmethod
    def load(cls: type[R], directory: str | Path) -> R:
        """Read a saved result (a directory, or the result file itself)."""
        path = cls.path_in(directory)
        data = cls.read_header(path)
        body = {k: v for k, v in data.items() if k not in ("kind", "schema")}
        try:
            return cls.from_dict(body)
        except (TypeError, KeyError, ValueError) as exc:
            raise DataFormatError(f"not a valid {cls.KIND}: {path} ({exc})") from None

    def summary(self) -> dict[str, Any]:
        """A short description for ``deltalens info`` (override to pick fields)."""
        return {k: v for k, v in self.to_dict().items() if not isinstance(v, (list, dict)) or len(v) <= 8}


RESULT_TYPES: dict[str, type[StageResult]] = {}


def register_result(cls: type[R]) -> type[R]:
    """Register a result type so ``deltalens info`` recognises its file by ``kind``."""
    RESULT_TYPES[cls.KIND] = cls
    return cls


def describe_result(path: Path) -> dict[str, Any] | None:
    """``deltalens info`` of a registered result file (or a directory holding one)."""
    files = (
        [path]
        if path.is_file()
        else [path / c.FILENAME for c in RESULT_TYPES.values()]
        if path.is_dir()
        else []
    )
    for f in files:
        if f.suffix != ".json" or not f.is_file():
            continue
        try:
            kind = read_json(f).get("kind")
        except (DataFormatError, AttributeError):
            continue
        cls = RESULT_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is not None and f.name == cls.FILENAME:
            return {"kind": cls.KIND, "path": str(f), **cls.load(f).summary()}
    return None
