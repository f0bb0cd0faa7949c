"""``deltalens info`` for SAE directories and crosscoders (registered on import;
:func:`deltalens.info.describe` imports this module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..info import register_describer


@register_describer
def describe_sae(path: Path) -> dict[str, Any] | None:
    """The SAE or crosscoder at ``path`` (any supported format), else ``None``."""
    from .io import describe

    return describe(path)
