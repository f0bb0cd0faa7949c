"""SAE files: the SAELens directory format.

A directory holds::

    cfg.json                  SAELens config (architecture, d_in, d_sae, dtype, k, metadata…)
    sae_weights.safetensors   W_enc, b_enc, W_dec, b_dec [, threshold]
    sparsity.safetensors      "sparsity": log10 feature density per latent (optional)

``cfg.json`` follows SAELens 6 (``metadata.hook_name``, ``metadata.model_name``); the
deltalens site and provenance are kept under ``metadata`` too. Reading also accepts the
older SAELens layout with ``hook_name`` / ``model_name`` at the top level.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import DataFormatError
from ..hooks import Site
from ..io import atomic_write, load_tensors, save_tensors
from .base import SAE, SAEConfig

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SPARSITY = "sparsity.safetensors"


def saelens_cfg(sae: SAE) -> dict[str, Any]:
    c = sae.cfg
    meta = dict(c.metadata)
    if c.site is not None:
        meta.setdefault("hook_name", Site.parse(c.site).hook_name)
        meta["deltalens_site"] = str(Site.parse(c.site))
    if c.model_name is not None:
        meta.setdefault("model_name", c.model_name)
    cfg: dict[str, Any] = {
        "architecture": c.architecture,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": c.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": c.normalize_activations,
        "reshape_activations": "none",
        "metadata": meta,
    }
    if c.architecture == "topk":
        cfg["k"] = int(c.k)  # type: ignore[arg-type]
        cfg["rescale_acts_by_decoder_norm"] = False
    return cfg


def save_sae(sae: SAE, path: str | Path, sparsity: torch.Tensor | None = None) -> Path:
    """Write ``sae`` as a SAELens directory at ``path`` (files written atomically)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / WEIGHTS, dict(sae.state_dict()))
    if sparsity is not None:
        save_tensors(path / SPARSITY, {"sparsity": sparsity.detach().float()})
    atomic_write(path / CFG, json.dumps(saelens_cfg(sae), indent=2) + "\n")
    return path


def _site_from_cfg(cfg: dict[str, Any]) -> str | None:
    meta = cfg.get("metadata") or {}
    if meta.get("deltalens_site"):
        return str(meta["deltalens_site"])
    hook = meta.get("hook_name") or cfg.get("hook_name")
    if not hook:
        return None
    try:
        return str(Site.parse(hook))
    except Exception:
        return None


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Read a SAELens-format directory written by deltalens or SAELens."""
    path = Path(path)
    if not (path / CFG).is_file() or not (path / WEIGHTS).is_file():
        raise DataFormatError(f"{path}: not a SAELens SAE directory (needs {CFG} and {WEIGHTS})")
    try:
        cfg = json.loads((path / CFG).read_text())
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path / CFG}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    arch = cfg.get("architecture", "standard")
    if arch not in ("standard", "topk", "jumprelu"):
        raise DataFormatError(f"{path}: SAE architecture '{arch}' is not supported (standard, topk, jumprelu)")
    meta = dict(cfg.get("metadata") or {})
    dtype = str(cfg.get("dtype", "float32")).replace("torch.", "")
    weights = load_tensors(path / WEIGHTS)
    c = SAEConfig(
        d_in=int(cfg["d_in"]),
        d_sae=int(cfg["d_sae"]),
        architecture=arch,
        k=cfg.get("k"),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        site=_site_from_cfg(cfg),
        model_name=meta.get("model_name") or cfg.get("model_name"),
        dtype=dtype if dtype in ("float32", "float16", "bfloat16", "float64") else "float32",
        normalize_activations=cfg.get("normalize_activations", "none"),
        metadata=meta,
    )
    if arch == "jumprelu" and "threshold" not in weights and "log_threshold" in weights:
        weights["threshold"] = weights.pop("log_threshold").exp()
    return SAE.from_weights(c, weights).to(device)


def read_sparsity(path: str | Path) -> torch.Tensor | None:
    p = Path(path) / SPARSITY
    return load_tensors(p)["sparsity"] if p.is_file() else None
