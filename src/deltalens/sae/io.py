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

from ..errors import DataFormatError, ShapeError
from ..hooks import Site
from ..io import atomic_write, load_tensors, save_tensors
from .base import ARCH_ALIASES, ARCHITECTURES, SAE, SAEConfig

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SPARSITY = "sparsity.safetensors"


def saelens_cfg(sae: SAE) -> dict[str, Any]:
    c = sae.cfg
    meta = dict(c.metadata)
    # SAELens reads a config without a version as the pre-6.0 layout (and drops metadata);
    # this one is written in the 6.x layout.
    meta.setdefault("sae_lens_version", "6.0.0")
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


def _invalid(path: Path, reason: str) -> DataFormatError:
    return DataFormatError(f"not a valid SAE: {path} ({reason})")


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Read a SAELens-format directory written by deltalens or SAELens. A directory that is not
    one (missing or unreadable files, unknown architecture, wrong shapes) is refused with
    :class:`DataFormatError` "not a valid SAE: <path> (<reason>)"."""
    path = Path(path)
    if not (path / CFG).is_file() or not (path / WEIGHTS).is_file():
        raise _invalid(path, f"not a SAELens SAE directory: needs {CFG} and {WEIGHTS}")
    try:
        cfg = json.loads((path / CFG).read_text())
    except json.JSONDecodeError as exc:
        raise _invalid(path / CFG, f"line {exc.lineno}: invalid JSON, {exc.msg}") from None
    if not isinstance(cfg, dict):
        raise _invalid(path / CFG, f"expected a JSON object, got {type(cfg).__name__}")
    arch = ARCH_ALIASES.get(str(cfg.get("architecture", "standard")), str(cfg.get("architecture")))
    if arch not in ARCHITECTURES:
        raise _invalid(
            path,
            f"SAE architecture '{cfg.get('architecture')}' is not supported ({', '.join(ARCHITECTURES)})",
        )
    meta = dict(cfg.get("metadata") or {})
    dtype = str(cfg.get("dtype", "float32")).replace("torch.", "")
    try:
        weights = load_tensors(path / WEIGHTS)
    except DataFormatError as exc:
        raise _invalid(path / WEIGHTS, str(exc).split(": ", 1)[-1]) from None
    try:
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
    except KeyError as exc:
        raise _invalid(path / CFG, f"no {exc.args[0]!r}") from None
    except (ShapeError, TypeError, ValueError) as exc:
        raise _invalid(path, str(exc)) from None


def read_sparsity(path: str | Path) -> torch.Tensor | None:
    p = Path(path) / SPARSITY
    return load_tensors(p)["sparsity"] if p.is_file() else None


# ---- other ecosystems' checkpoints ------------------------------------------------------------


def _site_guess(name: str | None) -> str | None:
    """``layers.6`` / ``model.layers.6`` (sparsify hookpoints), ``resid_post_layer_6``
    (dictionary_learning) → ``resid.6``; None when unknown."""
    import re

    if not name:
        return None
    m = re.search(r"layers\.(\d+)$", name) or re.search(r"resid_post_layer_(\d+)$", name)
    if m:
        return f"resid.{int(m.group(1))}"
    m = re.search(r"layers\.(\d+)\.mlp$", name)
    if m:
        return f"mlp_out.{int(m.group(1))}"
    try:
        return str(Site.parse(name))
    except Exception:
        return None


def read_sparsify(path: str | Path, device: str | torch.device = "cpu", site: str | None = None) -> SAE:
    """Read an EleutherAI ``sparsify`` SAE directory (``cfg.json`` + ``sae.safetensors`` with
    ``encoder.weight [n, d]``, ``encoder.bias``, ``W_dec [n, d]``, ``b_dec``): a TopK SAE with
    ``f = TopK(ReLU((x − b_dec) W_encᵀ + b_enc))``. Transcoders and skip connections are refused."""
    path = Path(path)
    try:
        cfg = json.loads((path / "cfg.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{path / 'cfg.json'}: cannot read the sparsify config ({exc})") from None
    if cfg.get("transcode") or cfg.get("skip_connection"):
        raise DataFormatError(
            f"{path}: sparsify transcoders / skip connections are not SAEs deltalens can load"
        )
    w = load_tensors(path / "sae.safetensors")
    if "encoder.weight" not in w or "W_dec" not in w:
        raise DataFormatError(
            f"{path / 'sae.safetensors'}: expected encoder.weight and W_dec (found {', '.join(w)})"
        )
    n, d = w["encoder.weight"].shape
    k = int(cfg.get("k") or 0)
    if not k:
        raise DataFormatError(f"{path / 'cfg.json'}: no k")
    c = SAEConfig(
        d_in=int(d),
        d_sae=int(n),
        architecture="topk",
        k=k,
        site=site or _site_guess(path.name),
        metadata={"converted_from": "sparsify", "source_path": str(path)},
    )
    weights = {
        "W_enc": w["encoder.weight"].float().t().contiguous(),
        "b_enc": w["encoder.bias"].float(),
        "W_dec": w["W_dec"].float(),
        "b_dec": w["b_dec"].float(),
    }
    return SAE.from_weights(c, weights).to(device)


def read_dictionary_learning(
    path: str | Path, device: str | torch.device = "cpu", site: str | None = None
) -> SAE:
    """Read a ``dictionary_learning`` checkpoint directory (``ae.pt`` + ``config.json``).

    Supported ``dict_class``: ``AutoEncoder`` (ReLU; ``bias`` is the decoder bias subtracted
    from the input), ``AutoEncoderTopK``, ``BatchTopKSAE`` (→ JumpReLU with its scalar
    threshold, as its own inference mode) and ``JumpReluAutoEncoder``. ``ae.pt`` is read with
    ``torch.load(weights_only=True)`` (no code runs)."""
    path = Path(path)
    ae = path / "ae.pt" if path.is_dir() else path
    conf = ae.parent / "config.json"
    cfg = json.loads(conf.read_text()) if conf.is_file() else {}
    trainer = cfg.get("trainer", cfg)
    try:
        sd = torch.load(ae, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataFormatError(
            f"{ae}: cannot read the dictionary_learning checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    cls = str(trainer.get("dict_class", ""))
    site = (
        site
        or _site_guess(str(trainer.get("submodule_name") or ""))
        or (f"resid.{int(trainer['layer'])}" if trainer.get("layer") is not None else None)
    )
    meta = {"converted_from": f"dictionary_learning:{cls or 'unknown'}", "source_path": str(ae)}
    model_name = trainer.get("lm_name")
    if "W_enc" in sd and "threshold" in sd and sd["threshold"].dim() == 1:  # JumpReluAutoEncoder
        d, n = sd["W_enc"].shape
        c = SAEConfig(
            int(d),
            int(n),
            "jumprelu",
            apply_b_dec_to_input=bool(trainer.get("apply_b_dec_to_input", False)),
            site=site,
            model_name=model_name,
            metadata=meta,
        )
        weights = {k: sd[k].float() for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
        return SAE.from_weights(c, weights).to(device)
    if "encoder.weight" not in sd or "decoder.weight" not in sd:
        raise DataFormatError(f"{ae}: not a dictionary_learning SAE (keys: {', '.join(sd)})")
    n, d = sd["encoder.weight"].shape
    b_dec = sd.get("b_dec", sd.get("bias"))
    if b_dec is None:
        raise DataFormatError(f"{ae}: no decoder bias (b_dec / bias)")
    weights = {
        "W_enc": sd["encoder.weight"].float().t().contiguous(),
        "b_enc": sd["encoder.bias"].float(),
        "W_dec": sd["decoder.weight"].float().t().contiguous(),
        "b_dec": b_dec.float(),
    }
    k = int(sd["k"]) if "k" in sd else trainer.get("k")
    th = sd.get("threshold")
    if "BatchTopK" in cls or (
        th is not None
        and th.dim() == 0
        and float(th) >= 0
        and k
        and "TopK" not in cls.replace("BatchTopK", "")
    ):
        if th is None or float(th) < 0:
            raise DataFormatError(
                f"{ae}: BatchTopK SAE without a learned threshold (train it longer or use TopK)"
            )
        weights["threshold"] = torch.full((int(n),), float(th))
        c = SAEConfig(int(d), int(n), "jumprelu", site=site, model_name=model_name, metadata=meta)
    elif k:
        c = SAEConfig(int(d), int(n), "topk", k=int(k), site=site, model_name=model_name, metadata=meta)
    else:
        c = SAEConfig(int(d), int(n), "standard", site=site, model_name=model_name, metadata=meta)
    return SAE.from_weights(c, weights).to(device)


def detect_format(path: str | Path) -> str:
    """``saelens``, ``sparsify`` or ``dictionary_learning`` (or raise)."""
    path = Path(path)
    if (path / CFG).is_file() and (path / WEIGHTS).is_file():
        return "saelens"
    if (path / "cfg.json").is_file() and (path / "sae.safetensors").is_file():
        return "sparsify"
    if (path.is_dir() and (path / "ae.pt").is_file()) or path.suffix == ".pt":
        return "dictionary_learning"
    raise _invalid(
        path,
        "not an SAE directory; SAELens: cfg.json + sae_weights.safetensors, sparsify: cfg.json + "
        "sae.safetensors, dictionary_learning: ae.pt + config.json",
    )


def load_any(path: str | Path, device: str | torch.device = "cpu", site: str | None = None) -> SAE:
    """Load an SAE written by deltalens/SAELens, sparsify or dictionary_learning."""
    fmt = detect_format(path)
    if fmt == "saelens":
        sae = load_sae(path, device=device)
        if site is not None:
            sae.cfg.site = str(Site.parse(site))
        return sae
    if fmt == "sparsify":
        return read_sparsify(path, device=device, site=site)
    return read_dictionary_learning(path, device=device, site=site)


def describe(path: str | Path) -> dict[str, Any] | None:
    """``deltalens info`` for SAE directories (any supported format) and crosscoders: the
    config plus training and evaluation summaries when present."""
    path = Path(path)
    if (path / "cfg.json").is_file() and (path / "crosscoder_weights.safetensors").is_file():
        cfg = json.loads((path / "cfg.json").read_text())
        out: dict[str, Any] = {"kind": "crosscoder", "path": str(path), "cfg": cfg}
    else:
        if not path.is_dir():
            return None
        try:
            fmt = detect_format(path)
            sae = load_any(path)
        except Exception:
            return None
        out = {
            "kind": f"SAE ({fmt} format)",
            "path": str(path),
            "architecture": sae.cfg.architecture,
            "d_in": sae.d_in,
            "d_sae": sae.d_sae,
            "k": sae.cfg.k,
            "site": sae.site,
            "model": sae.cfg.model_name,
        }
    tj = path / "training.json"
    if tj.is_file():
        t = json.loads(tj.read_text())
        out["training"] = {
            k: t.get(k)
            for k in (
                "tokens",
                "steps",
                "seconds",
                "tokens_per_second",
                "dead_fraction",
                "dead_window_tokens",
                "final",
                "classes",
            )
            if k in t
        }
    ej = path / "eval" / "eval.json"
    if ej.is_file():
        e = json.loads(ej.read_text())
        r, loss = e.get("reconstruction") or {}, e.get("loss") or {}
        out["eval"] = {k: v for k, v in {**r, **loss}.items() if isinstance(v, (int, float, str))}
    return out


def convert(src: str | Path, out: str | Path, site: str | None = None) -> tuple[str, SAE]:
    """Read an SAE in any supported format and write it as a SAELens directory; returns the
    source format and the SAE."""
    fmt = detect_format(src)
    sae = load_any(src, site=site)
    save_sae(sae, out)
    return fmt, sae
