"""``deltalens info`` of a study directory: what ran, what was cached, what is stale now."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..info import register_describer


@register_describer
def _study(path: Path) -> dict[str, Any] | None:
    if not path.is_dir():
        return None
    from .runner import study_status

    return study_status(path)
