"""pLDDT of ESMFold predictions (transformers ``EsmForProteinFolding``), from local weights only.

``pLDDT(s) = 100 · (1/L) Σ_i p_i`` where ``p_i ∈ [0, 1]`` is the predicted lDDT of residue i's
Cα atom (``outputs.plddt[b, i, 1]``: atom37 order, index 1 = CA) and ``L = |s|``; the 0–100
scale is the one ESMFold and AlphaFold report. Sequences are folded in batches (padded, the
padding masked out by ``EsmForProteinFolding.infer``).

ESMFold (``facebook/esmfold_v1``, 3.5 B parameters) is a GPU-lane scorer: it is loaded from a
local directory or the local Hugging Face cache and never downloaded here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError

DEFAULT_ESMFOLD = "facebook/esmfold_v1"
CA = 1


@dataclass
class Folder:
    """An ESMFold model and where it came from."""

    model: Any
    spec: str
    weights_hash: str

    @torch.no_grad()
    def mean_plddt(self, seqs: Sequence[str], batch_size: int = 8) -> list[float]:
        out = [0.0] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        for k in range(0, len(order), batch_size):
            idx = [i for i in order[k : k + batch_size] if seqs[i]]
            if not idx:
                continue
            res = self.model.infer([seqs[i] for i in idx])
            p = res["plddt"][..., CA].float().cpu()  # [B, L]
            for row, i in enumerate(idx):
                L = len(seqs[i])
                out[i] = float(100.0 * p[row, :L].mean())
        return out


def _hash_params(model: Any) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def load_esmfold(model: Any = None, *, device: str | None = None) -> Folder:
    """A :class:`Folder` from an ``EsmForProteinFolding`` object, a local directory or a hub id in
    the local cache (default ``facebook/esmfold_v1``)."""
    from transformers import EsmForProteinFolding

    if isinstance(model, Folder):
        return model
    if isinstance(model, EsmForProteinFolding):
        return Folder(model.eval(), "<in-memory>", _hash_params(model))
    spec = str(model or DEFAULT_ESMFOLD)
    try:
        m = EsmForProteinFolding.from_pretrained(spec, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"ESMFold weights '{spec}' are not available locally ({str(exc).splitlines()[0][:120]}); pLDDT needs "
            "a local ESMFold directory: give plddt:DIR"
        ) from None
    from ..models.loading import resolve_device

    m = m.to(resolve_device(device)).eval()
    return Folder(m, spec, _files_hash(spec) or _hash_params(m))


def _files_hash(spec: str) -> str | None:
    """Hash of the weight files (memoised by size and mtime) rather than of 3.5 B parameters."""
    from pathlib import Path

    from ..models.loading import _memo_file_hash

    d = Path(spec)
    if not d.is_dir():
        try:
            from huggingface_hub import snapshot_download

            d = Path(snapshot_download(spec, local_files_only=True))
        except Exception:  # noqa: BLE001 - no local snapshot: hash the parameters instead
            return None
    files = sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(_memo_file_hash(f).encode())
    return h.hexdigest()[:16]
