"""Weight metrics of SAE latents (no data needed).

For latent ``i`` with decoder row ``d_i = W_dec[i]`` (``[d_in]``) and encoder column
``e_i = W_enc[:, i]``, and optionally a reference SAE (the base / parent of an iterative
series, latent indices aligned) with ``d'_i``, ``e'_i``:

* ``dec_norm[i] = ‖d_i‖₂``, ``enc_norm[i] = ‖e_i‖₂``;
* ``dec_cos_ref[i] = cos(d_i, d'_i)``, ``enc_cos_ref[i] = cos(e_i, e'_i)`` — cosine with the
  *same* latent of the reference (``cos(a, b) = a·b / (‖a‖‖b‖)``, 0 when a norm is 0);
* pairwise structure: ``dec_max_cos[i] = max_{j≠i} cos(d_i, d_j)`` (signed: the most
  similar other latent, the usual sign of feature splitting / duplication) and
  ``dec_partner[i]`` = that ``j``; the same for encoders (``enc_max_cos``, ``enc_partner``).
  Computed in blocks of rows, so memory is ``O(block · d_sae)`` rather than ``d_sae²``;
* ``threshold[i]`` — the JumpReLU threshold where the SAE has one (NaN otherwise);
* ``b_enc[i]`` — the encoder bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataFormatError, ShapeError
from ..io import write_json
from ..sae import SAE
from ..stage import StageResult, register_result

TENSOR_COLUMNS = (
    "dec_norm",
    "enc_norm",
    "b_enc",
    "threshold",
    "dec_cos_ref",
    "enc_cos_ref",
    "dec_max_cos",
    "dec_partner",
    "enc_max_cos",
    "enc_partner",
)


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two ``[n, d]`` matrices (0 where a row has norm 0)."""
    if a.shape != b.shape:
        raise ShapeError(f"cannot compare weights of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.double(), b.double()
    num = (a * b).sum(-1)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num)).float()


@torch.no_grad()
def max_cosine_partner(rows: torch.Tensor, block_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row ``i`` of ``rows`` (``[n, d]``): ``max_{j≠i} cos(r_i, r_j)`` and the ``j``.

    Blocked: ``block_size × n`` similarities at a time. With ``n == 1`` the result is
    ``(-inf, -1)``."""
    n = rows.shape[0]
    unit = F.normalize(rows.float(), dim=-1)
    best = torch.full((n,), -float("inf"))
    partner = torch.full((n,), -1, dtype=torch.long)
    for a in range(0, n, block_size):
        b = min(n, a + block_size)
        sims = unit[a:b] @ unit.T  # [blk, n]
        idx = torch.arange(a, b, device=sims.device)
        sims[idx - a, idx] = -float("inf")
        v, j = sims.max(1)
        best[a:b] = v.cpu()
        partner[a:b] = j.cpu()
    if n == 1:
        partner[:] = -1
    return best, partner


@register_result
@dataclass
class WeightMetrics(StageResult):
    """Per-latent weight metrics (see the module docstring); tensors ``[d_sae]``.

    Saved as a ``.parquet`` table (one row per latent) and a JSON header with the same stem
    (kind, schema, the summary and provenance)."""

    KIND: ClassVar[str] = "SAE weight metrics"
    FILENAME: ClassVar[str] = "weight_metrics.json"

    dec_norm: torch.Tensor
    enc_norm: torch.Tensor
    b_enc: torch.Tensor
    threshold: torch.Tensor
    dec_cos_ref: torch.Tensor | None = None
    enc_cos_ref: torch.Tensor | None = None
    dec_max_cos: torch.Tensor | None = None
    dec_partner: torch.Tensor | None = None
    enc_max_cos: torch.Tensor | None = None
    enc_partner: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def d_sae(self) -> int:
        return int(self.dec_norm.shape[0])

    def columns(self) -> dict[str, np.ndarray]:
        cols: dict[str, np.ndarray] = {"latent": np.arange(self.d_sae)}
        for name in TENSOR_COLUMNS:
            v = getattr(self, name)
            if v is not None:
                cols[name] = v.detach().cpu().numpy()
        return cols

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.columns())

    def summary(self) -> dict[str, Any]:
        def stats(t: torch.Tensor | None) -> dict[str, float] | None:
            if t is None:
                return None
            t = t.double()
            t = t[torch.isfinite(t)]
            if not len(t):
                return None
            q = torch.quantile(t, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
            return {"mean": float(t.mean()), "p5": float(q[0]), "median": float(q[1]), "p95": float(q[2])}

        return {
            "d_sae": self.d_sae,
            "dec_norm": stats(self.dec_norm),
            "enc_norm": stats(self.enc_norm),
            "dec_cos_ref": stats(self.dec_cos_ref),
            "enc_cos_ref": stats(self.enc_cos_ref),
            "dec_max_cos": stats(self.dec_max_cos),
            "threshold": stats(self.threshold),
        }

    @classmethod
    def paths(cls, path: str | Path) -> tuple[Path, Path]:
        """``(parquet, header json)`` for a ``.parquet`` / ``.json`` path or a directory."""
        p = Path(path)
        if p.suffix in (".parquet", ".json"):
            return p.with_suffix(".parquet"), p.with_suffix(".json")
        if p.suffix:
            raise ConfigError(
                f"{p}: weight metrics are written as .parquet (header .json beside it), not '{p.suffix}'"
            )
        return (p / cls.FILENAME).with_suffix(".parquet"), p / cls.FILENAME

    @classmethod
    def path_in(cls, directory: str | Path) -> Path:
        return cls.paths(directory)[1]

    def save(self, path: str | Path) -> Path:
        """Write the table and its header; returns the header's path."""
        from ..io import atomic_path

        table, header = self.paths(path)
        with atomic_path(table, ".parquet") as tmp:
            self.to_frame().to_parquet(tmp, index=False)
        return write_json(
            header,
            {
                "kind": self.KIND,
                "schema": self.SCHEMA,
                "table": table.name,
                "summary": self.summary(),
                "meta": self.meta,
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> WeightMetrics:
        import pandas as pd

        table, header = cls.paths(path)
        d = cls.read_header(header)
        table = cls.companion(header, table.name)
        frame = pd.read_parquet(table)
        cols = {c: torch.from_numpy(frame[c].to_numpy().copy()) for c in TENSOR_COLUMNS if c in frame.columns}
        missing = [c for c in ("dec_norm", "enc_norm", "b_enc", "threshold") if c not in cols]
        if missing:
            raise DataFormatError(f"not a valid {cls.KIND}: {table} (missing column(s) {', '.join(missing)})")
        return cls(**cols, meta=dict(d.get("meta") or {}))


def _check_pair(sae: SAE, ref: SAE) -> None:
    if (sae.d_in, sae.d_sae) != (ref.d_in, ref.d_sae):
        raise ShapeError(
            f"reference SAE has d_in={ref.d_in}, d_sae={ref.d_sae} but the SAE has d_in={sae.d_in}, "
            f"d_sae={sae.d_sae}; latents must be aligned (same shapes) to compare them"
        )


@torch.no_grad()
def weight_metrics(
    sae: SAE,
    reference: SAE | None = None,
    *,
    pairwise: bool = True,
    block_size: int = 2048,
) -> WeightMetrics:
    """Weight metrics of every latent of ``sae`` (see the module docstring).

    Args:
        sae: the SAE.
        reference: an SAE with aligned latents (same ``d_in`` and ``d_sae``) to compare with.
        pairwise: also compute the max cosine with any other latent and its partner.
    """
    W_dec = sae.W_dec.detach().float().cpu()
    W_enc_rows = sae.W_enc.detach().float().cpu().T  # [d_sae, d_in]
    thr = (
        sae.threshold.detach().float().cpu()
        if sae.threshold is not None
        else torch.full((sae.d_sae,), float("nan"))
    )
    m = WeightMetrics(
        dec_norm=W_dec.norm(dim=-1),
        enc_norm=W_enc_rows.norm(dim=-1),
        b_enc=sae.b_enc.detach().float().cpu(),
        threshold=thr,
    )
    if reference is not None:
        _check_pair(sae, reference)
        m.dec_cos_ref = cosine_rows(W_dec, reference.W_dec.detach().float().cpu())
        m.enc_cos_ref = cosine_rows(W_enc_rows, reference.W_enc.detach().float().cpu().T)
    if pairwise:
        m.dec_max_cos, m.dec_partner = max_cosine_partner(W_dec, block_size)
        m.enc_max_cos, m.enc_partner = max_cosine_partner(W_enc_rows, block_size)
    return m
