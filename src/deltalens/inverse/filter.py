"""Filter latents by activation entropy and sparsity (a firing-rate band).

For latent ``i`` of a collection (:mod:`.collect`) with ``n`` prompts:

* prompt entropy: ``p_s = max[s, i] / Σ_s' max[s', i]``, ``H_prompt(i) = −Σ_s p_s log p_s``, reported
  normalised ``H_prompt(i) / log n`` ∈ [0, 1] (0: one prompt carries all the activation; 1: all
  prompts equally);
* token entropy: ``q_v = M[v, i] / Σ_v' M[v', i]`` over token ids ``v`` (``M`` = activation mass per
  token id), ``H_token(i) = −Σ_v q_v log q_v``, normalised by ``log V_seen`` (``V_seen`` distinct
  token ids in the collection; 0: fires on one token type only);
* sparsity: ``firing_rate_prompts(i) = #{s : max[s, i] > τ} / n``.

A latent is kept when it fires at all and every value lies inside its band from the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, DataFormatError
from ..stage import StageConfig, StageResult, in_range, option, register_result

FILTER_JSON = "filter.json"


def _band(cfg: Any, lo: str, hi: str) -> None:
    in_range(cfg, lo, 0, 1)
    in_range(cfg, hi, 0, 1)
    if getattr(cfg, lo) > getattr(cfg, hi):
        raise ConfigError(
            f"--{lo.replace('_', '-')} {getattr(cfg, lo):g} is above --{hi.replace('_', '-')} {getattr(cfg, hi):g}"
        )


@dataclass
class FilterConfig(StageConfig):
    """The bands a latent must fall in to be kept."""

    entropy_low: float = option(0.0, flag="--entropy-low", help="Minimum normalised prompt entropy.")
    entropy_high: float = option(1.0, flag="--entropy-high", help="Maximum normalised prompt entropy.")
    token_entropy_low: float = option(
        0.0, flag="--token-entropy-low", help="Minimum normalised token entropy."
    )
    token_entropy_high: float = option(
        1.0, flag="--token-entropy-high", help="Maximum normalised token entropy."
    )
    sparsity_min: float = option(
        0.01, flag="--sparsity-min", help="Minimum fraction of prompts a latent fires on."
    )
    sparsity_max: float = option(
        0.5, flag="--sparsity-max", help="Maximum fraction of prompts a latent fires on."
    )

    def validate(self) -> None:
        _band(self, "entropy_low", "entropy_high")
        _band(self, "token_entropy_low", "token_entropy_high")
        _band(self, "sparsity_min", "sparsity_max")


def _entropy(P: Any, axis: int) -> np.ndarray:
    """Entropy (nats) of every column (``axis=0``) of a non-negative sparse matrix."""
    import scipy.sparse as sp

    X = sp.csc_matrix(P, dtype=np.float64)
    tot = np.asarray(X.sum(axis=axis)).ravel()
    out = np.zeros(X.shape[1])
    for j in range(X.shape[1]):
        v = X.data[X.indptr[j] : X.indptr[j + 1]]
        v = v[v > 0]
        if tot[j] > 0 and len(v):
            p = v / tot[j]
            out[j] = float(-(p * np.log(p)).sum())
    return out


def latent_entropies(coll: Any) -> tuple[np.ndarray, np.ndarray]:
    """Normalised prompt and token entropies ``[d_sae]`` of a collection (module docstring)."""
    hp = _entropy(coll.max, 0) / max(np.log(max(coll.n_prompts, 2)), 1e-12)
    seen = int((np.asarray(coll.token_mass.sum(axis=1)).ravel() > 0).sum())
    ht = _entropy(coll.token_mass, 0) / max(np.log(max(seen, 2)), 1e-12)
    return hp, ht


@register_result
@dataclass
class FilterResult(StageResult):
    """Kept latents (``kept``, original SAE ids) and per-latent statistics (``stats.parquet``)."""

    KIND: ClassVar[str] = "inverse filter"
    FILENAME: ClassVar[str] = FILTER_JSON

    kept: list[int]
    d_sae: int
    counts: dict[str, int]
    config: dict[str, Any]
    stats: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        from ..stage import _jsonable

        return {k: _jsonable(getattr(self, k)) for k in ("kept", "d_sae", "counts", "config")}

    def save(self, directory: str | Path) -> Path:
        from ..io import atomic_path

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / "filter_stats.parquet", ".parquet") as tmp:
            self.stats.to_parquet(tmp)
        return super().save(d)

    @classmethod
    def load(cls, directory: str | Path) -> FilterResult:
        import pandas as pd

        res = super().load(directory)
        p = cls.companion(cls.path_in(directory), "filter_stats.parquet")
        try:
            res.stats = pd.read_parquet(p)
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"not a valid {cls.KIND}: {p} ({exc})") from None
        return res

    def summary(self) -> dict[str, Any]:
        return {"d_sae": self.d_sae, "kept": len(self.kept), **self.counts}


def filter_latents(coll: Any, config: FilterConfig | None = None) -> FilterResult:
    """Keep the latents of ``coll`` whose entropies and firing rate lie in the bands of ``config``."""
    import pandas as pd

    cfg = config or FilterConfig()
    hp, ht = latent_entropies(coll)
    fr = coll.firing_rate_prompts()
    alive = fr > 0
    ok_e = (hp >= cfg.entropy_low) & (hp <= cfg.entropy_high)
    ok_t = (ht >= cfg.token_entropy_low) & (ht <= cfg.token_entropy_high)
    ok_s = (fr >= cfg.sparsity_min) & (fr <= cfg.sparsity_max)
    keep = alive & ok_e & ok_t & ok_s
    stats = pd.DataFrame(
        {
            "latent": np.arange(coll.d_sae),
            "prompt_entropy": hp,
            "token_entropy": ht,
            "firing_rate_prompts": fr,
            "firing_rate_tokens": np.asarray(coll.firing_rate_tokens),
            "max_activation": coll.max_activation,
            "kept": keep,
        }
    )
    counts = {
        "dead": int((~alive).sum()),
        "outside_entropy": int((alive & ~ok_e).sum()),
        "outside_token_entropy": int((alive & ~ok_t).sum()),
        "outside_sparsity": int((alive & ~ok_s).sum()),
    }
    return FilterResult(np.flatnonzero(keep).tolist(), int(coll.d_sae), counts, cfg.to_dict(), stats)
