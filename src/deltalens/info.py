"""``describe(path)``: what an artifact is, its shapes and provenance (``deltalens info``).

Recognised: activation stores, safetensors files (vectors, SAE weights…), SAELens SAE
directories, Hugging Face model directories, experiment directories, every registered stage
result (:func:`deltalens.stage.register_result`), JSON and JSONL files.

Feature packages add recognisers with :func:`register_describer` in a ``describe`` module of
their own (``deltalens/<package>/describe.py``); :func:`describe` imports every such module
first, so the Python API sees the same kinds as ``deltalens info`` — no import of the CLI needed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import DataFormatError

Describer = Callable[[Path], "dict[str, Any] | None"]
_DESCRIBERS: list[Describer] = []


def register_describer(fn: Describer) -> Describer:
    """Add a recogniser: returns a description dict, or None if the path is not its kind."""
    _DESCRIBERS.insert(0, fn)
    return fn


def _safetensors(path: Path) -> dict[str, Any] | None:
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    from .io import read_safetensors_metadata

    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise DataFormatError(f"not a valid safetensors file: {path} ({exc})") from None
    return {
        "kind": "safetensors",
        "path": str(path),
        "tensors": tensors,
        "metadata": read_safetensors_metadata(path),
        "size_mb": round(path.stat().st_size / 2**20, 2),
    }


def _store(path: Path) -> dict[str, Any] | None:
    if not (path / "store.json").is_file():
        return None
    from .store import ActivationStore

    return {"kind": "activation store", **ActivationStore(path).summary()}


def _sae_dir(path: Path) -> dict[str, Any] | None:
    if not ((path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file()):
        return None
    cfg = json.loads((path / "cfg.json").read_text())
    return {"kind": "SAE (SAELens format)", "path": str(path), "cfg": cfg}


def _hf_model(path: Path) -> dict[str, Any] | None:
    if not (path / "config.json").is_file():
        return None
    cfg = json.loads((path / "config.json").read_text())
    out = {
        "kind": "Hugging Face model directory",
        "path": str(path),
        "model_type": cfg.get("model_type"),
        "layers": cfg.get("num_hidden_layers", cfg.get("n_layer")),
        "d_model": cfg.get("hidden_size", cfg.get("n_embd")),
        "vocab_size": cfg.get("vocab_size"),
        "files": sorted(p.name for p in path.iterdir()),
    }
    for prov in ("provenance.json", "deltalens.json"):
        if (path / prov).is_file():
            out[prov.removesuffix(".json")] = json.loads((path / prov).read_text())
    return out


def _experiment(path: Path) -> dict[str, Any] | None:
    if not (path / "config.yaml").is_file() or not path.is_dir():
        return None
    from .experiment import Experiment

    exp = Experiment(path)
    counts = {}
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        counts[sub.name] = sum(1 for f in sub.rglob("*") if f.is_file())
    return {"kind": "experiment", "path": str(path), "config": exp.load_config(), "files_by_dir": counts}


def _json(path: Path) -> dict[str, Any] | None:
    if path.suffix == ".jsonl" and path.is_file():
        from .data.jsonl import read_jsonl

        recs = read_jsonl(path)
        keys = sorted({k for r in recs for k in r})
        return {"kind": "JSONL", "path": str(path), "records": len(recs), "keys": keys}
    if path.suffix == ".json" and path.is_file():
        from .io import read_json

        data = read_json(path)
        summary: Any = (
            sorted(data)[:30]
            if isinstance(data, dict)
            else f"list of {len(data)}"
            if isinstance(data, list)
            else type(data).__name__
        )
        return {"kind": "JSON", "path": str(path), "top_level": summary}
    return None


def _result(path: Path) -> dict[str, Any] | None:
    from .stage import describe_result

    return describe_result(path)


_DESCRIBERS.extend([_store, _sae_dir, _hf_model, _experiment, _result, _safetensors, _json])
_plugins_loaded = False


def load_describers() -> None:
    """Import ``deltalens.<package>.describe`` for every feature package that has one.

    Discovery by module name keeps the arrows pointing down: this core module names no
    feature package.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    import importlib
    import pkgutil

    import deltalens

    for mod in pkgutil.iter_modules(deltalens.__path__):
        if not mod.ispkg or mod.name in ("cli", "demo"):
            continue
        spec_name = f"deltalens.{mod.name}.describe"
        try:
            importlib.import_module(spec_name)
        except ModuleNotFoundError as exc:
            if exc.name != spec_name:
                raise
    _plugins_loaded = True


def describe(path: str | Path) -> dict[str, Any]:
    """Describe an artifact; raises :class:`DataFormatError` if the path is unknown."""
    p = Path(path)
    if not p.exists():
        raise DataFormatError(f"{p}: no such file or directory")
    load_describers()
    for fn in _DESCRIBERS:
        out = fn(p)
        if out is not None:
            return out
    if p.is_dir():
        return {"kind": "directory", "path": str(p), "entries": sorted(x.name for x in p.iterdir())[:50]}
    raise DataFormatError(
        f"{p}: not a deltalens artifact (store, safetensors, SAE, model, experiment, JSON/JSONL)"
    )
