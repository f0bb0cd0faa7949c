"""Bundled study files (``deltalens run --preset NAME``): each a YAML file in ``presets/`` to copy
and edit."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import ConfigError
from ..io import atomic_write

PRESETS = ("diff-study", "demo", "trait-study", "inverse", "circuit", "protein-study")


def preset_path(name: str) -> Path:
    """The bundled study file of preset ``name``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; valid: {', '.join(PRESETS)}")
    return Path(str(resources.files("deltalens.study") / "presets" / f"{name}.yaml"))


def write_preset(name: str, dest: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """Copy preset ``name`` to ``dest`` (default ``./<name>.yaml``) to edit; an existing file is
    kept (it is the user's edited copy) unless ``overwrite``."""
    src = preset_path(name)
    out = Path(dest) if dest is not None else Path(f"{name}.yaml")
    if out.exists() and not overwrite:
        return out
    atomic_write(out, src.read_text(encoding="utf-8"))
    return out
