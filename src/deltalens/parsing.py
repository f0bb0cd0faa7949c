"""Option-value grammars shared by the CLI and the library: comma lists, layer lists, numbers.

One definition each, so ``--layers 9-19`` means the same in every command and in every
stage config that takes a layer spec.
"""

from __future__ import annotations

import re

from .errors import ConfigError


def split_list(value: str | None) -> list[str]:
    """``"a,b, c"`` → ``["a", "b", "c"]``."""
    if not value:
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_layers(value: str | None, n_layers: int, flag: str | None = None) -> list[int]:
    """``"all"``, ``"6"``, ``"6,12,18"``, ``"9-19"`` (inclusive), ``"9:20"`` (python range) or
    negative layers counting from the end → sorted, de-duplicated layer indices; ``""``/``None`` → ``[]``.
    Errors name ``flag`` when given."""
    at = f"{flag}: " if flag else ""
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
            lo = int(sl.group(1)) if sl.group(1) else None
            hi = int(sl.group(2)) if sl.group(2) else None
            out.extend(range(n_layers)[slice(lo, hi)])
        elif re.fullmatch(r"-?\d+", part):
            out.append(int(part))
        else:
            raise ConfigError(
                f"{at}cannot read layers '{value}': write e.g. 'all', '6', '6,12,18', '9-19' or '9:20'"
            )
    for layer in out:
        if not -n_layers <= layer < n_layers:
            raise ConfigError(
                f"{at}layer {layer} is out of range: the model has {n_layers} layers "
                f"(valid: 0..{n_layers - 1}, or -{n_layers}..-1 counting from the end)"
            )
    return sorted({layer % n_layers for layer in out})


def parse_floats(value: str | None, what: str = "values") -> list[float]:
    """``"2,4,8"`` → ``[2.0, 4.0, 8.0]``."""
    try:
        return [float(x) for x in split_list(value)]
    except ValueError:
        raise ConfigError(
            f"cannot read {what} '{value}': write comma-separated numbers, e.g. '2,4,8'"
        ) from None


def import_object(mod: str, name: str, spec: str, prefix: str = "deltalens_user") -> object:
    """``name`` from module ``mod`` (a dotted module or a ``.py`` file) for the spec ``spec``;
    any failure is a :class:`ConfigError` naming the spec (no traceback for a typo)."""
    import importlib
    import importlib.util
    from pathlib import Path

    try:
        if mod.endswith(".py"):
            path = Path(mod)
            if not path.is_file():
                raise ConfigError(f"scorer '{spec}': file {path} not found")
            sp = importlib.util.spec_from_file_location(f"{prefix}_{path.stem}", path)
            assert sp is not None and sp.loader is not None
            module = importlib.util.module_from_spec(sp)
            sp.loader.exec_module(module)
        else:
            module = importlib.import_module(mod)
    except ImportError as exc:
        raise ConfigError(f"scorer '{spec}': cannot import {mod} ({exc})") from None
    obj = getattr(module, name, None)
    if obj is None:
        raise ConfigError(f"scorer '{spec}': {mod} has no attribute '{name}'")
    return obj
