"""Prompt sets: the inputs of generation, capture and feature analyses.

Accepted files:

* ``.jsonl`` — one object per line with the text under ``content`` (the feature-analysis
  seed's format), ``question``, ``prompt`` or ``text``; optional ``label``, ``system``
  (or ``system_prompt``) and ``id``;
* ``.json`` — a list of such objects or strings, or ``{"prompts": [...]}`` (the
  inference prompt-set format of the trait seed);
* ``.txt`` — one prompt per non-blank line;
* a directory — every ``.jsonl`` file in it, in name order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from ..io import read_json
from .jsonl import iter_jsonl, iter_lines

TEXT_KEYS = ("content", "question", "prompt", "text")


@dataclass
class PromptRecord:
    text: str
    label: str | None = None
    system: str | None = None
    id: Any = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def as_prompt(self) -> dict[str, Any]:
        """The dict form accepted by :func:`deltalens.generate`."""
        return {"question": self.text, "system": self.system, "label": self.label, "id": self.id}


def _record(obj: Any, where: str) -> PromptRecord:
    if isinstance(obj, str):
        return PromptRecord(obj, source=where)
    if not isinstance(obj, dict):
        raise DataFormatError(f"{where}: expected an object or a string, got {type(obj).__name__}")
    key = next((k for k in TEXT_KEYS if k in obj), None)
    if key is None:
        raise DataFormatError(
            f"{where}: needs one of the keys {', '.join(TEXT_KEYS)} (keys: {', '.join(obj) or 'none'})"
        )
    if not isinstance(obj[key], str) or not obj[key].strip():
        raise DataFormatError(f"{where}: '{key}' must be a non-empty string")
    system = obj.get("system", obj.get("system_prompt"))
    meta = {k: v for k, v in obj.items() if k not in (*TEXT_KEYS, "label", "system", "system_prompt", "id")}
    label = obj.get("label", obj.get("note"))
    return PromptRecord(obj[key], None if label is None else str(label), system, obj.get("id"), where, meta)


def read_prompts(path: str | Path) -> list[PromptRecord]:
    """Read a prompt set (see module docstring); raises on an empty set."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise DataFormatError(f"{path}: directory has no .jsonl prompt files")
        out = [r for f in files for r in read_prompts(f)]
    elif not path.exists():
        raise DataFormatError(f"{path}: file not found")
    elif path.suffix == ".jsonl":
        out = [_record(rec, f"{path}:{n}") for n, rec in iter_jsonl(path)]
    elif path.suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict) and "prompts" in data:
            data = data["prompts"]
        if not isinstance(data, list):
            raise DataFormatError(f"{path}: expected a list of prompts or {{'prompts': [...]}}")
        out = [_record(obj, f"{path}[{i}]") for i, obj in enumerate(data)]
    elif path.suffix == ".txt":
        out = [
            PromptRecord(line.strip(), source=f"{path}:{n}") for n, line in iter_lines(path) if line.strip()
        ]
    else:
        raise DataFormatError(
            f"{path}: unsupported prompt file type '{path.suffix}' (use .jsonl, .json or .txt)"
        )
    if not out:
        raise DataFormatError(f"{path}: no prompts found (the file is empty)")
    return out


def bundled_path(*parts: str) -> Path:
    """Path of a file shipped in ``deltalens/data/bundled``."""
    return Path(str(resources.files("deltalens.data").joinpath("bundled", *parts)))


def bundled_prompts(name: str = "demo_questions") -> list[PromptRecord]:
    """A bundled prompt set by name (``demo_questions``, ``chat_prompts``)."""
    p = bundled_path("prompts", f"{name}.jsonl")
    if not p.exists():
        have = sorted(f.stem for f in bundled_path("prompts").glob("*.jsonl"))
        raise DataFormatError(f"no bundled prompt set '{name}'; available: {', '.join(have)}")
    return read_prompts(p)
