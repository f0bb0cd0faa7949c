"""Inputs of the feature analyses: SAE directories (any format), the models they belong to,
prompt sets and capture inputs.

An SAE is given as ``DIR`` or ``NAME=DIR``; ``DIR`` is anything
:func:`deltalens.sae.load_any` reads — a deltalens / SAELens directory, a sparsify
directory, or a ``dictionary_learning`` trainer directory (``trainer_<n>/ae.pt`` +
``config.json``; ``ae.pt`` is read with ``weights_only=True``). For a
``dictionary_learning`` trainer the ``<n>`` of ``trainer_<n>`` becomes the SAE's
``metadata["trainer"]``, so its source name is ``{model}_trainer{n}_layer{L}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataFormatError
from ..sae import SAE

TRAINER_DIR_RE = re.compile(r"^trainer_(\d+)$")


@dataclass
class NamedSAE:
    """An SAE read from ``path``, with the name the user gave it (``NAME=DIR``) if any."""

    name: str | None
    path: Path
    sae: SAE

    @property
    def label(self) -> str:
        """The given name, else the directory name."""
        return self.name or self.path.resolve().name


def split_named(value: str) -> tuple[str | None, str]:
    """``"NAME=DIR"`` → ``("NAME", "DIR")``; a plain path (or one that exists as given) → ``(None, value)``."""
    name, sep, path = value.partition("=")
    if sep and name and "/" not in name and not Path(value).exists():
        return name.strip(), path.strip()
    return None, value


def trainer_index(path: str | Path) -> int | None:
    """``n`` of the nearest ``trainer_<n>`` directory of ``path`` (the directory itself, or the
    one holding ``ae.pt``), else None."""
    p = Path(path)
    for part in [p, *p.parents][:2] if p.suffix else [p]:
        m = TRAINER_DIR_RE.match(part.name)
        if m:
            return int(m.group(1))
    return None


def read_sae(value: str, device: Any = "cpu") -> NamedSAE:
    """Read one ``DIR`` / ``NAME=DIR`` (see the module docstring)."""
    from ..sae import load_any

    name, raw = split_named(value)
    path = Path(raw)
    if not path.exists():
        raise DataFormatError(f"{path}: no such SAE directory")
    sae = load_any(path, device=device)
    n = trainer_index(path)
    if n is not None and sae.cfg.metadata.get("trainer") is None:
        sae.cfg.metadata["trainer"] = n
    return NamedSAE(name, path, sae)


def read_saes(values: Sequence[str] | None, device: Any = "cpu") -> list[NamedSAE]:
    """Read every ``--sae`` value; none given is an error."""
    if not values:
        raise ConfigError(
            "no SAE given: pass --sae DIR (an SAE directory: SAELens, sparsify or dictionary_learning), repeatable"
        )
    return [read_sae(v, device) for v in values]


class ModelCache:
    """Loads each model spec once."""

    def __init__(self, dtype: str = "auto", device: str | None = None):
        self.dtype, self.device = dtype, device
        self.cache: dict[str, Any] = {}

    def get(self, spec: str) -> Any:
        from ..models import load

        if spec not in self.cache:
            self.cache[spec] = load(spec, dtype=self.dtype, device=self.device)
        return self.cache[spec]

    def for_sae(self, s: NamedSAE, model: str | None) -> Any:
        """``model`` if given, else the model the SAE names (``cfg.model_name``)."""
        spec = model or s.sae.cfg.model_name
        if not spec:
            raise ConfigError(
                f"{s.path}: the SAE does not name its model (cfg model_name / lm_name); pass --model"
            )
        return self.get(spec)


def _not_utf8(path: Path) -> DataFormatError:
    """The error for a text input that is not UTF-8: the file (of a directory) and byte offset."""
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    for f in files:
        try:
            f.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            return DataFormatError(
                f"{f}: not valid UTF-8 at byte {exc.start} ({exc.reason}); save the file as UTF-8"
            )
        except OSError:
            continue
    return DataFormatError(f"{path}: not valid UTF-8; save the file as UTF-8")


def read_prompt_set(path: str | Path | None) -> tuple[list[Any], str]:
    """A prompt set (``.jsonl`` of ``{content, label}`` or a directory of them) and its name;
    the bundled ``chat_prompts`` when ``path`` is None."""
    from ..data import bundled_prompts, read_prompts

    if path is None:
        return bundled_prompts("chat_prompts"), "chat_prompts"
    try:
        return read_prompts(Path(path)), Path(path).stem
    except UnicodeDecodeError:
        raise _not_utf8(Path(path)) from None


def read_inputs(path: str | Path | None) -> tuple[list[Any], str]:
    """Capture inputs: a file (texts, prompt/response pairs, generations) or the bundled chat prompts."""
    from ..data import read_capture_inputs
    from .universal import prompt_inputs

    if path is None:
        prompts, name = read_prompt_set(None)
        return prompt_inputs(prompts), name
    path = Path(path)
    if path.suffix in (".jsonl", ".txt"):
        try:
            return read_capture_inputs(path), path.stem
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
    prompts, name = read_prompt_set(path)
    return prompt_inputs(prompts), name
