"""Reading directions through the unembedding (logit lens), trait vectors, cosines.

The one module for the logit-lens readings of the diffs (formulas in each docstring):

* :func:`stream_logit_lens` — ``W_U · norm_f(v)`` from a model's files on disk (weight diff);
* :func:`model_logit_lens` — the same through a loaded model (``lm.logits``);
* :func:`difference_lens` — the activation-difference lens (Minder et al. 2025):
  ``δ_{L,p} = mean_i (x^ft_{i,L,p} − x^base_{i,L,p})`` read as ``W_U · norm_f(±δ)``.

Logit lens of a residual-stream direction ``v`` (the variant the trait seed's
``vector_to_vocab(..., apply_norm=True)`` uses)::

    logits(v) = W_U · norm_f(v)

with ``norm_f`` the model's final norm: RMSNorm ``v / sqrt(mean(v²) + ε) ⊙ w`` (Gemma:
``⊙ (1 + w)``), LayerNorm ``(v − mean(v)) / sqrt(var(v) + ε) ⊙ w`` — the bias is left out,
since a direction (a difference of activations or weights) carries no offset. The top
tokens of ``+v`` are the largest logits, those of ``−v`` the smallest (``norm_f`` is odd
without the bias). Gemma 2's final logit soft-capping is monotonic and does not change
the ranking, so it is skipped.

:func:`stream_logit_lens` computes this for many directions at once while reading the
unembedding in row blocks from disk (memory: one block, not the matrix).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import DataFormatError, ShapeError
from .files import ModelFiles, SafetensorsFile


def final_norm(v: torch.Tensor, family: str, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Apply a model's final norm (scale only, see the module docstring) to rows of ``v``."""
    v = v.to(torch.float32)
    if family in ("gpt2", "gpt_neox"):
        c = v - v.mean(-1, keepdim=True)
        out = c / torch.sqrt(c.pow(2).mean(-1, keepdim=True) + eps)
    else:
        out = v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        w = weight.to(torch.float32)
        out = out * ((1.0 + w) if family == "gemma" else w)
    return out


def _merge_topk(
    best_v: torch.Tensor | None, best_i: torch.Tensor | None, vals: torch.Tensor, ids: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if best_v is None or best_i is None:
        allv, alli = vals, ids
    else:
        allv, alli = torch.cat([best_v, vals], 1), torch.cat([best_i, ids], 1)
    kk = min(k, allv.shape[1])
    v, j = allv.topk(kk, dim=1)
    return v, alli.gather(1, j)


def stream_logit_lens(
    model: ModelFiles,
    directions: torch.Tensor,
    k: int = 20,
    block_rows: int = 8192,
) -> dict[str, Any]:
    """Top-``k`` tokens of ``+v`` and ``−v`` for each row of ``directions`` ``[n, d]``.

    The unembedding is read from ``model``'s files in blocks of ``block_rows`` rows.
    Zero directions get empty lists. Returns ``{"pos": [[(token, logit), …], …], "neg": …}``
    (``neg`` logits are those of ``−v``).
    """
    directions = torch.as_tensor(directions, dtype=torch.float32)
    if directions.dim() == 1:
        directions = directions[None]
    if directions.shape[1] != model.d_model:
        raise ShapeError(
            f"directions have width {directions.shape[1]} but {model.name} has d_model {model.d_model}"
        )
    key = model.unembed_key
    if key is None:
        raise DataFormatError(f"{model.dir}: no unembedding or embedding tensor found")
    w = model.read(model.final_norm_key) if model.final_norm_key else None
    normed = final_norm(directions, model.arch.family, w, model.norm_eps)  # [n, d]
    zero = directions.abs().amax(1) == 0
    pv = pi = nv = ni = None
    for rows in model.row_blocks(key, block_rows * model.d_model):
        W = model.read(key, rows)  # [r, d]
        logits = (W @ normed.T).T  # [n, r]
        ids = torch.arange(rows.start, rows.stop).expand(logits.shape[0], -1)
        pv, pi = _merge_topk(pv, pi, logits, ids, k)
        nv, ni = _merge_topk(nv, ni, -logits, ids, k)
    return _lists(model.token_str, pv, pi, nv, ni, zero)


def _lists(token_str, pv, pi, nv, ni, zero) -> dict[str, Any]:
    pos, neg = [], []
    for r in range(pv.shape[0]):
        if bool(zero[r]):
            pos.append([])
            neg.append([])
            continue
        pos.append([[t, round(float(x), 4)] for t, x in zip(token_str(pi[r].tolist()), pv[r].tolist())])
        neg.append([[t, round(float(x), 4)] for t, x in zip(token_str(ni[r].tolist()), nv[r].tolist())])
    return {"pos": pos, "neg": neg}


@torch.no_grad()
def model_logit_lens(lm: Any, directions: torch.Tensor, k: int = 20) -> dict[str, Any]:
    """:func:`stream_logit_lens` for a loaded model: ``logits(v) = W_U · norm_f(v)`` through
    ``lm.logits`` (the model's own final norm, bias included there); top-``k`` of ``±v``."""
    directions = torch.as_tensor(directions, dtype=torch.float32)
    if directions.dim() == 1:
        directions = directions[None]
    zero = directions.abs().amax(1) == 0
    logits = lm.logits(directions.to(lm.device, lm.dtype)).float().cpu()
    kk = min(k, logits.shape[1])
    pv, pi = logits.topk(kk, dim=1)
    nv, ni = (-logits).topk(kk, dim=1)
    return _lists(lm.token_str, pv, pi, nv, ni, zero)


def difference_lens(
    lm: Any,
    pairs: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    positions: torch.Tensor,
    n_positions: int = 5,
    k: int = 20,
) -> dict[str, Any]:
    """The activation-difference lens of captured activations, per layer.

    ``pairs[L] = (x_base, x_ft)``, both ``[tokens, d]`` on the same token ids; ``positions``
    ``[tokens]`` the position of each token in its text. For each layer::

        δ_all     = mean over all tokens of (x_ft − x_base)
        δ_first_k = mean over tokens at positions p < n_positions
        δ_p       = mean over tokens at position p (p < n_positions)
        rel_norm  = ‖δ‖ / mean_tokens ‖x_base‖

    each read through ``lm``'s logit lens ``W_U · norm_f(±δ)`` (:func:`model_logit_lens`).
    Returns ``{str(L): {"all": rec, "first_k": rec, "positions": {str(p): rec}}}`` with
    ``rec = {"pos", "neg", "norm", "rel_norm"}``."""
    labels, vecs, base_norm = [], [], {}
    for L, (xb, xf) in pairs.items():
        d = xf.double() - xb.double()
        first = positions < n_positions
        entry = {
            "all": d.mean(0),
            "first_k": d[first].mean(0) if first.any() else torch.zeros(d.shape[1], dtype=torch.float64),
        }
        for p in range(n_positions):
            m = positions == p
            if m.any():
                entry[str(p)] = d[m].mean(0)
        base_norm[L] = float(xb.double().norm(dim=-1).mean())
        for key, v in entry.items():
            labels.append((L, key))
            vecs.append(v.float())
    lens = model_logit_lens(lm, torch.stack(vecs), k=k)
    out: dict[str, Any] = {}
    for (L, key), v, p, ng in zip(labels, vecs, lens["pos"], lens["neg"]):
        e = out.setdefault(str(L), {"positions": {}})
        rec = {
            "pos": p,
            "neg": ng,
            "norm": float(v.norm()),
            "rel_norm": float(v.norm()) / base_norm[L] if base_norm[L] else 0.0,
        }
        if key in ("all", "first_k"):
            e[key] = rec
        else:
            e["positions"][key] = rec
    return out


# ---- trait vectors ---------------------------------------------------------------------------


def _layer_of(name: str) -> int | None:
    """``layer6``, ``layer_6``, ``layers.6``, ``direction.6``, ``blocks.6…`` or ``6`` → 6."""
    m = re.search(r"(?:layers?|direction|blocks?)[._-]?(\d+)", name, re.IGNORECASE)
    if m:
        return int(m.group(1))
    return int(name) if name.isdigit() else None


def _vectors_from_file(path: Path, d_model: int | None) -> dict[int, torch.Tensor]:
    f = SafetensorsFile(path)
    tensors = {k: f.read(k).to(torch.float32) for k in f}
    if not tensors:
        raise DataFormatError(f"{path}: holds no tensors")
    meta_layer = f.metadata.get("layer")
    file_layer = _layer_of(path.stem)
    out: dict[int, torch.Tensor] = {}
    if len(tensors) == 1:
        ((name, t),) = tensors.items()
        if t.dim() == 2:  # [n_layers, d]
            return {i: t[i] for i in range(t.shape[0])}
        t = t.flatten()
        layer = (
            int(meta_layer)
            if meta_layer is not None and str(meta_layer).lstrip("-").isdigit()
            else file_layer
        )
        if layer is None:
            layer = _layer_of(name)
        if layer is None:
            raise DataFormatError(
                f"{path}: cannot tell which layer the vector belongs to (name the file layer<L>.safetensors, "
                "or store 'layer' in its metadata)"
            )
        out[layer] = t
    else:
        for name, t in tensors.items():
            if t.dim() != 1:
                continue
            layer = _layer_of(name)
            if layer is not None:
                out[layer] = t
        if not out and "vector" in tensors:
            out[file_layer or 0] = tensors["vector"]
        if not out:
            raise DataFormatError(
                f"{path}: tensors {', '.join(list(tensors)[:6])} are not named by layer (e.g. 'layer.6', 'direction.6')"
            )
    if d_model is not None:
        for layer, t in out.items():
            if t.numel() != d_model:
                raise ShapeError(
                    f"{path}: vector for layer {layer} has width {t.numel()}, the model's d_model is {d_model}"
                )
    return out


def load_trait_vectors(path: str | Path, d_model: int | None = None) -> dict[int, torch.Tensor]:
    """Per-layer trait vectors ``{layer: [d]}`` from a file or a directory.

    Accepted: a directory of ``layer<L>.safetensors`` files (the layout of
    :meth:`deltalens.Experiment.vector_path`; searched recursively if the directory has
    none at its top); a single ``layer<L>.safetensors`` file (one tensor, or the layer in
    the metadata); a file with one ``[n_layers, d]`` tensor; or a file with 1-D tensors
    named by layer (``layer.6``, ``layers.6``, ``direction.6`` — the GGUF control-vector
    naming). Only safetensors is read (never pickle).
    """
    p = Path(path)
    if not p.exists():
        raise DataFormatError(f"{p}: trait vector file or directory not found")
    if p.is_dir():
        files = sorted(p.glob("*.safetensors")) or sorted(p.rglob("layer*.safetensors"))
        if not files:
            raise DataFormatError(f"{p}: no .safetensors vector files in this directory")
        out: dict[int, torch.Tensor] = {}
        for f in files:
            out.update(_vectors_from_file(f, d_model))
        return dict(sorted(out.items()))
    if p.suffix != ".safetensors":
        raise DataFormatError(f"{p}: trait vectors must be .safetensors files (or a directory of them)")
    return dict(sorted(_vectors_from_file(p, d_model).items()))


def resolve_traits(
    traits: None | str | Path | Mapping[str, Any] | Sequence[str | Path], d_model: int | None = None
) -> dict[str, dict[int, torch.Tensor]]:
    """Normalise the ``traits=`` argument of the diffs: a path, a list of paths, or a mapping
    ``name → path | {layer: vector}``. Names default to the path's stem."""
    if traits is None:
        return {}
    if isinstance(traits, (str, Path)):
        traits = [traits]
    out: dict[str, dict[int, torch.Tensor]] = {}
    if isinstance(traits, Mapping):
        for name, v in traits.items():
            if isinstance(v, Mapping):
                out[str(name)] = {
                    int(k): torch.as_tensor(x, dtype=torch.float32).flatten() for k, x in v.items()
                }
            else:
                out[str(name)] = load_trait_vectors(v, d_model)
        return out
    for t in traits:
        p = Path(t)
        name = p.name if p.is_dir() else p.stem
        if name in out:
            name = str(p)
        out[name] = load_trait_vectors(p, d_model)
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """``a·b / (‖a‖ ‖b‖)`` in float64; 0 when either vector is zero."""
    a64, b64 = a.double().flatten(), b.double().flatten()
    na, nb = a64.norm(), b64.norm()
    if na == 0 or nb == 0:
        return 0.0
    return float((a64 @ b64) / (na * nb))


# ---- topic words -----------------------------------------------------------------------------


def token_matches(token: str, words: Iterable[str]) -> bool:
    """Whether a token string is one of ``words`` (case-insensitive, surrounding spaces and
    punctuation ignored; a word's plural/inflection or a ≥4-letter prefix of it counts)."""
    t = re.sub(r"[^\w]", "", token.strip().lower())
    if len(t) < 3:
        return False
    for w in words:
        w = w.lower()
        if t == w or (t.startswith(w) and len(t) - len(w) <= 3) or (len(t) >= 4 and w.startswith(t)):
            return True
    return False


def topic_hits(tokens: Iterable[Any], words: Iterable[str]) -> list[str]:
    """The entries of a token list (strings or ``(token, value)`` pairs) that match ``words``."""
    words = list(words)
    out = []
    for t in tokens:
        s = t[0] if isinstance(t, (tuple, list)) else str(t)
        if token_matches(s, words):
            out.append(s)
    return out
