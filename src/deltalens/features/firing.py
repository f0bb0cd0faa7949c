"""Firing statistics of SAE latents over a dataset, streamed in bounded memory.

For every latent ``i`` of an SAE, over the selected tokens ``t`` of a dataset (default:
every real token of every sequence), with activations ``f_i(t)`` and the firing
threshold ``τ`` (``activation_threshold``, default 0 — "fires" means ``f_i(t) > τ``):

* ``fire_tokens[i]      = #{t : f_i(t) > τ}``; **firing rate** (feature density)
  ``frac_tokens[i] = fire_tokens[i] / N_tokens`` (SAELens's ``feature_density``; its
  ``sparsity.safetensors`` stores ``log10`` of it);
* ``frac_sequences[i]   = #{s : ∃ t∈s, f_i(t) > τ} / N_sequences`` — fraction of sequences
  in which the latent fires at least once;
* activation distribution over firing tokens: ``mean = Σ f / fire_tokens``, ``std``, exact
  ``min``/``max``, and a histogram of ``log10 f`` (``n_bins`` equal bins over
  ``log10_range``; values outside are clamped into the end bins). Quantiles are read from
  that histogram with geometric interpolation inside the bin that holds the exact
  quantile (so the relative error is below one bin width, ``10^w − 1`` ≈ 7.5 % with the
  defaults' ``w = 8/256`` decades) and clamped to the exact min/max;
* firing **positions** — the rank of the token within its sequence (0 = first real
  token): a histogram over ranks ``0 … max_position−1`` (the last bin collects every later
  rank), the mean rank and the mean relative rank ``pos / (len − 1)``;
* ``fire_prompt_tokens`` / ``fire_response_tokens`` — firings on prompt vs response
  tokens; **prompt-only** latents fire at least once on a prompt token and never on a
  response token (defined only when the dataset has responses);
* **dead** latents never fire on the dataset (``fire_tokens == 0``);
* the ``top_k`` highest activations per latent with their (sequence, position), from
  which :meth:`FiringStats.top_examples` builds context windows.

Memory is ``O(d_sae · (n_bins + max_position + top_k))`` whatever the dataset size; the
activations of one batch are the only per-token data held.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ConfigError, DataFormatError, ShapeError
from ..io import load_tensors, provenance, read_safetensors_metadata, save_tensors
from ..models.loading import LoadedModel
from ..positions import Positions
from ..sae import SAE
from ..stage import StageConfig, StageResult, at_least, option
from .latents import iter_latents, sae_site

_COUNTERS = ("fire_tokens", "fire_response_tokens", "fire_sequences")
_SUMS = ("act_sum", "act_sq_sum", "pos_sum", "rel_pos_sum")


@dataclass
class FiringConfig(StageConfig):
    """Options of :func:`firing_stats` (see the module docstring for the definitions)."""

    activation_threshold: float = option(
        0.0, flag="--activation-threshold", help="Fires means activation > this."
    )
    n_bins: int = option(256, flag="--bins", help="Bins of the log10 activation histogram.")
    log10_range: tuple[float, float] = option(
        (-4.0, 4.0), flag="--log10-range", help="Histogram range in log10 units."
    )
    top_k: int = option(20, flag="--top-k", help="Top examples kept per latent.")
    max_position: int = option(256, flag="--max-position", help="Bins of the firing-position histogram.")

    def validate(self) -> None:
        at_least(self, "activation_threshold", 0)
        lo, hi = self.log10_range
        if not hi > lo:
            raise ConfigError(f"--log10-range must be increasing, got {tuple(self.log10_range)}")
        at_least(self, "n_bins", 1)
        at_least(self, "top_k", 0)
        at_least(self, "max_position", 1)
        self.log10_range = (float(lo), float(hi))

    @property
    def bin_edges(self) -> torch.Tensor:
        """Activation values at the ``n_bins + 1`` histogram edges (log-spaced)."""
        lo, hi = self.log10_range
        return torch.logspace(lo, hi, self.n_bins + 1, dtype=torch.float64)


@dataclass
class FiringStats(StageResult):
    """Per-latent firing statistics (see the module docstring). Tensors are on the CPU.

    Saved as one safetensors file (all tensors; kind, schema, counts, config and provenance
    in its header) with a ``.parquet`` table of the per-latent scalars beside it."""

    KIND: ClassVar[str] = "SAE firing statistics"
    FILENAME: ClassVar[str] = "firing_stats.safetensors"
    HEADER_KIND: ClassVar[str] = "deltalens.firing_stats"

    config: FiringConfig
    d_sae: int
    n_tokens: int = 0
    n_response_tokens: int = 0
    n_sequences: int = 0
    n_response_sequences: int = 0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def empty(cls, d_sae: int, config: FiringConfig | None = None, device: Any = "cpu") -> FiringStats:
        cfg = config or FiringConfig()

        def z(*shape, dt=torch.int64):
            return torch.zeros(*shape, dtype=dt, device=device)

        t = {name: z(d_sae) for name in _COUNTERS}
        t.update({name: z(d_sae, dt=torch.float64) for name in _SUMS})
        t["act_max"] = z(d_sae, dt=torch.float32)
        t["act_min"] = torch.full((d_sae,), math.inf, dtype=torch.float32, device=device)
        t["hist"] = z(d_sae, cfg.n_bins, dt=torch.int32)
        t["pos_hist"] = z(d_sae, cfg.max_position, dt=torch.int32)
        t["top_values"] = torch.full((cfg.top_k, d_sae), -math.inf, dtype=torch.float32, device=device)
        t["top_seq"] = torch.full((cfg.top_k, d_sae), -1, dtype=torch.int64, device=device)
        t["top_pos"] = torch.full((cfg.top_k, d_sae), -1, dtype=torch.int64, device=device)
        return cls(cfg, d_sae, tensors=t)

    def __getattr__(self, name: str) -> torch.Tensor:
        tensors = self.__dict__.get("tensors", {})
        if name in tensors:
            return tensors[name]
        raise AttributeError(name)

    # ---- the streaming update --------------------------------------------------------------
    @torch.no_grad()
    def update(
        self,
        f: torch.Tensor,
        seq_ids: torch.Tensor,
        positions: torch.Tensor,
        is_response: torch.Tensor,
        seq_lens: torch.Tensor,
        n_sequences: int | None = None,
    ) -> None:
        """Add one batch: latents ``f`` ``[n, d_sae]`` of ``n`` tokens with their sequence ids,
        positions (rank in the sequence), region and sequence lengths."""
        t = self.tensors
        dev = t["fire_tokens"].device
        cfg = self.config
        d = self.d_sae
        if f.shape[-1] != d:
            raise ShapeError(f"latents have width {f.shape[-1]}, these statistics have d_sae={d}")
        f = f.to(dev, torch.float32)
        seq_ids, positions = seq_ids.to(dev), positions.to(dev)
        is_response, seq_lens = is_response.to(dev), seq_lens.to(dev)
        n = f.shape[0]
        uniq, local = torch.unique(seq_ids, return_inverse=True)
        self.n_tokens += n
        self.n_response_tokens += int(is_response.sum())
        self.n_sequences += int(n_sequences if n_sequences is not None else len(uniq))
        self.n_response_sequences += int(torch.unique(seq_ids[is_response]).numel())
        if n == 0:
            return
        row, lat = (f > cfg.activation_threshold).nonzero(as_tuple=True)
        vals = f[row, lat]
        t["fire_tokens"] += torch.bincount(lat, minlength=d)
        resp = is_response[row]
        t["fire_response_tokens"] += torch.bincount(lat[resp], minlength=d)
        v64 = vals.double()
        t["act_sum"] += torch.bincount(lat, weights=v64, minlength=d)
        t["act_sq_sum"] += torch.bincount(lat, weights=v64 * v64, minlength=d)
        t["act_max"].scatter_reduce_(0, lat, vals, "amax")
        t["act_min"].scatter_reduce_(0, lat, vals, "amin")
        lo, hi = cfg.log10_range
        nb = cfg.n_bins
        b = ((torch.log10(vals) - lo) * (nb / (hi - lo))).floor().clamp_(0, nb - 1).long()
        t["hist"] += torch.bincount(lat * nb + b, minlength=d * nb).view(d, nb).to(torch.int32)
        pos = positions[row]
        P = cfg.max_position
        t["pos_hist"] += (
            torch.bincount(lat * P + pos.clamp(max=P - 1), minlength=d * P).view(d, P).to(torch.int32)
        )
        pos64 = pos.double()
        t["pos_sum"] += torch.bincount(lat, weights=pos64, minlength=d)
        rel = pos64 / (seq_lens[row].double() - 1).clamp(min=1)
        t["rel_pos_sum"] += torch.bincount(lat, weights=rel, minlength=d)
        seen = torch.zeros(len(uniq) * d, dtype=torch.bool, device=dev)
        seen[local[row] * d + lat] = True
        t["fire_sequences"] += seen.view(len(uniq), d).sum(0)
        k = cfg.top_k
        if k:
            kk = min(k, n)
            v, idx = f.topk(kk, dim=0)  # [kk, d]
            cand_v = torch.cat([t["top_values"], v], 0)
            cand_s = torch.cat([t["top_seq"], seq_ids[idx]], 0)
            cand_p = torch.cat([t["top_pos"], positions[idx]], 0)
            best_v, best = cand_v.topk(k, dim=0)
            t["top_values"] = best_v
            t["top_seq"] = cand_s.gather(0, best)
            t["top_pos"] = cand_p.gather(0, best)

    def merge(self, other: FiringStats) -> FiringStats:
        """Combine statistics of two disjoint datasets (e.g. shards run in parallel)."""
        if other.d_sae != self.d_sae or asdict(other.config) != asdict(self.config):
            raise ConfigError("can only merge firing statistics with the same d_sae and config")
        out = FiringStats.empty(self.d_sae, self.config)
        for name in (*_COUNTERS, *_SUMS, "hist", "pos_hist"):
            out.tensors[name] = self.tensors[name].cpu() + other.tensors[name].cpu()
        out.tensors["act_max"] = torch.maximum(self.act_max.cpu(), other.act_max.cpu())
        out.tensors["act_min"] = torch.minimum(self.act_min.cpu(), other.act_min.cpu())
        # sequence ids of ``other`` are shifted so examples stay distinguishable
        shift = self.n_sequences
        cand_v = torch.cat([self.top_values.cpu(), other.top_values.cpu()])
        cand_s = torch.cat(
            [self.top_seq.cpu(), torch.where(other.top_seq >= 0, other.top_seq + shift, -1).cpu()]
        )
        cand_p = torch.cat([self.top_pos.cpu(), other.top_pos.cpu()])
        k = self.config.top_k
        if k:
            best_v, best = cand_v.topk(k, dim=0)
            out.tensors.update(
                top_values=best_v, top_seq=cand_s.gather(0, best), top_pos=cand_p.gather(0, best)
            )
        for a in ("n_tokens", "n_response_tokens", "n_sequences", "n_response_sequences"):
            setattr(out, a, getattr(self, a) + getattr(other, a))
        out.meta = dict(self.meta)
        return out

    def to(self, device: Any) -> FiringStats:
        self.tensors = {k: v.to(device) for k, v in self.tensors.items()}
        return self

    # ---- derived metrics -------------------------------------------------------------------
    @property
    def frac_tokens(self) -> torch.Tensor:
        """Firing rate (feature density): ``fire_tokens / n_tokens``."""
        return self.fire_tokens.double() / max(self.n_tokens, 1)

    @property
    def frac_sequences(self) -> torch.Tensor:
        """Fraction of sequences in which the latent fires at least once."""
        return self.fire_sequences.double() / max(self.n_sequences, 1)

    @property
    def fire_prompt_tokens(self) -> torch.Tensor:
        return self.fire_tokens - self.fire_response_tokens

    @property
    def mean_activation(self) -> torch.Tensor:
        """Mean activation over firing tokens (0 for dead latents)."""
        return self.act_sum / self.fire_tokens.clamp(min=1)

    @property
    def std_activation(self) -> torch.Tensor:
        """Population standard deviation over firing tokens."""
        c = self.fire_tokens.clamp(min=1).double()
        var = self.act_sq_sum / c - (self.act_sum / c) ** 2
        return var.clamp(min=0).sqrt()

    @property
    def max_activation(self) -> torch.Tensor:
        return self.act_max

    @property
    def min_activation(self) -> torch.Tensor:
        """Smallest firing activation (0 for dead latents)."""
        return torch.where(torch.isinf(self.act_min), torch.zeros_like(self.act_min), self.act_min)

    @property
    def mean_position(self) -> torch.Tensor:
        """Mean rank (0-based token index in its sequence) of the firing tokens."""
        return self.pos_sum / self.fire_tokens.clamp(min=1)

    @property
    def mean_relative_position(self) -> torch.Tensor:
        """Mean of ``pos / (len − 1)`` over firing tokens (0 = first token, 1 = last)."""
        return self.rel_pos_sum / self.fire_tokens.clamp(min=1)

    @property
    def dead(self) -> torch.Tensor:
        """``[d_sae]`` bool: latents that never fire on this dataset."""
        return self.fire_tokens == 0

    @property
    def has_responses(self) -> bool:
        return self.n_response_tokens > 0

    @property
    def prompt_only(self) -> torch.Tensor:
        """``[d_sae]`` bool: fires on a prompt token at least once and never on a response
        token. Needs a dataset with responses (raises otherwise)."""
        if not self.has_responses:
            raise DataFormatError(
                "prompt-only latents need inputs with responses (generations or prompt/response pairs); "
                "this dataset had no response tokens"
            )
        return (self.fire_prompt_tokens > 0) & (self.fire_response_tokens == 0)

    def quantiles(self, qs: Sequence[float] = (0.5, 0.9, 0.99)) -> torch.Tensor:
        """``[len(qs), d_sae]`` activation quantiles over firing tokens, from the histogram
        (see module docstring; 0 for dead latents)."""
        hist = self.hist.double().cpu()
        cnt = hist.sum(1)
        cum = hist.cumsum(1)
        lo, hi = self.config.log10_range
        w = (hi - lo) / self.config.n_bins
        out = []
        for q in qs:
            if not 0 <= q <= 1:
                raise ConfigError(f"quantile {q} is not in [0, 1]")
            target = (q * cnt).clamp(min=1e-12)
            j = torch.searchsorted(cum, target[:, None]).squeeze(1).clamp(max=self.config.n_bins - 1)
            prev = torch.where(
                j > 0, cum.gather(1, (j - 1).clamp(min=0)[:, None]).squeeze(1), torch.zeros_like(cnt)
            )
            inbin = hist.gather(1, j[:, None]).squeeze(1).clamp(min=1e-12)
            frac = ((target - prev) / inbin).clamp(0, 1)
            val = 10 ** (lo + (j.double() + frac) * w)
            val = torch.minimum(
                torch.maximum(val, self.min_activation.double().cpu()), self.act_max.double().cpu()
            )
            out.append(torch.where(cnt > 0, val, torch.zeros_like(val)))
        return torch.stack(out).float()

    def histogram(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        """``(bin edges [n_bins+1], counts [n_bins])`` of one latent's firing activations."""
        return self.config.bin_edges.numpy(), self.hist[latent].cpu().numpy()

    def position_histogram(self, latent: int) -> np.ndarray:
        return self.pos_hist[latent].cpu().numpy()

    def top(self, latent: int) -> list[tuple[float, int, int]]:
        """``(activation, sequence id, position)`` of the latent's top firings, highest first."""
        v = self.top_values[:, latent].cpu()
        s = self.top_seq[:, latent].cpu()
        p = self.top_pos[:, latent].cpu()
        keep = (v > self.config.activation_threshold) & (s >= 0)
        return [(float(a), int(b), int(c)) for a, b, c in zip(v[keep], s[keep], p[keep])]

    def top_examples(
        self,
        latent: int,
        sequences: Sequence[Sequence[int]],
        tokenizer: Any = None,
        left: int = 12,
        right: int = 4,
    ) -> list[dict[str, Any]]:
        """Context windows of the latent's top firings: ``sequences[s]`` are the token ids of
        input ``s`` (as encoded for the analysis). Each example has ``activation``,
        ``seq_id``, ``position``, ``token_ids`` of the window ``[pos−left, pos+right]``,
        the index of the firing token in it and, with a tokenizer, the token strings."""
        out = []
        for act, s, p in self.top(latent):
            ids = list(sequences[s])
            a, b = max(0, p - left), min(len(ids), p + right + 1)
            ex: dict[str, Any] = {
                "activation": act,
                "seq_id": s,
                "position": p,
                "token_ids": ids[a:b],
                "index_in_window": p - a,
            }
            if tokenizer is not None:
                ex["tokens"] = [tokenizer.decode([i]) for i in ids[a:b]]
            out.append(ex)
        return out

    def to_frame(self) -> Any:
        """One row per latent: the scalar statistics as a pandas DataFrame."""
        import pandas as pd

        q = self.quantiles((0.5, 0.9, 0.99)).cpu().numpy()
        cols: dict[str, Any] = {
            "latent": np.arange(self.d_sae),
            "frac_tokens": self.frac_tokens.cpu().numpy(),
            "frac_sequences": self.frac_sequences.cpu().numpy(),
            "fire_tokens": self.fire_tokens.cpu().numpy(),
            "fire_prompt_tokens": self.fire_prompt_tokens.cpu().numpy(),
            "fire_response_tokens": self.fire_response_tokens.cpu().numpy(),
            "mean_activation": self.mean_activation.cpu().numpy(),
            "std_activation": self.std_activation.cpu().numpy(),
            "min_activation": self.min_activation.cpu().numpy(),
            "max_activation": self.max_activation.cpu().numpy(),
            "p50": q[0],
            "p90": q[1],
            "p99": q[2],
            "mean_position": self.mean_position.cpu().numpy(),
            "mean_relative_position": self.mean_relative_position.cpu().numpy(),
            "dead": self.dead.cpu().numpy(),
        }
        if self.has_responses:
            cols["prompt_only"] = self.prompt_only.cpu().numpy()
        return pd.DataFrame(cols)

    def summary(self) -> dict[str, Any]:
        dead = int(self.dead.sum())
        s: dict[str, Any] = {
            "d_sae": self.d_sae,
            "n_tokens": self.n_tokens,
            "n_sequences": self.n_sequences,
            "n_response_tokens": self.n_response_tokens,
            "dead": dead,
            "alive": self.d_sae - dead,
            "mean_l0": float(self.fire_tokens.sum()) / max(self.n_tokens, 1),
            "activation_threshold": self.config.activation_threshold,
        }
        if self.has_responses:
            s["prompt_only"] = int(self.prompt_only.sum())
        return s

    # ---- files -------------------------------------------------------------------------------
    @classmethod
    def path_in(cls, path: str | Path) -> Path:
        """The statistics file of ``path``: a ``.safetensors`` path as given, else ``<dir>/FILENAME``."""
        p = Path(path)
        return p if p.suffix == ".safetensors" else p / cls.FILENAME

    def save(self, path: str | Path, table: bool = True) -> Path:
        """Write all tensors to one safetensors file (counts, config and provenance in its
        header) and, with ``table``, :meth:`to_frame` as a ``.parquet`` beside it (same stem).
        ``path`` is a ``.safetensors`` file or a directory (``FILENAME`` in it)."""
        from ..io import atomic_path

        path = self.path_in(path)
        meta = {
            "kind": self.HEADER_KIND,
            "schema": self.SCHEMA,
            "config": self.config.to_dict(),
            "d_sae": self.d_sae,
            "n_tokens": self.n_tokens,
            "n_response_tokens": self.n_response_tokens,
            "n_sequences": self.n_sequences,
            "n_response_sequences": self.n_response_sequences,
            "meta": self.meta,
        }
        out = save_tensors(path, {k: v.cpu() for k, v in self.tensors.items()}, metadata=meta)
        if table:
            with atomic_path(path.with_suffix(".parquet"), ".parquet") as tmp:
                self.to_frame().to_parquet(tmp, index=False)
        return out

    @classmethod
    def load(cls, path: str | Path) -> FiringStats:
        path = cls.path_in(path)
        if not path.is_file():
            raise DataFormatError(f"not a valid {cls.KIND}: {path} (no such file)")
        meta = read_safetensors_metadata(path)
        if meta.get("kind") != cls.HEADER_KIND:
            raise DataFormatError(f"not a valid {cls.KIND}: {path} (kind is {meta.get('kind')!r})")
        cfg = dict(meta["config"])
        cfg["log10_range"] = tuple(cfg["log10_range"])
        st = cls(
            FiringConfig(**cfg),
            int(meta["d_sae"]),
            int(meta["n_tokens"]),
            int(meta["n_response_tokens"]),
            int(meta["n_sequences"]),
            int(meta["n_response_sequences"]),
            load_tensors(path),
            meta.get("meta") or {},
        )
        return st


@torch.no_grad()
def firing_stats_many(
    lm: LoadedModel,
    saes: Sequence[SAE],
    data: Iterable[Any],
    *,
    positions: str | Positions = "all",
    config: FiringConfig | None = None,
    sites: Sequence[Any] | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
    dataset_name: str | None = None,
) -> list[FiringStats]:
    """Firing statistics of several SAEs from one pass over ``data`` (one forward per batch)."""
    cfg = config or FiringConfig()
    saes = list(saes)
    stats = [FiringStats.empty(s.d_sae, cfg, device=s.device) for s in saes]
    for lb in iter_latents(
        lm,
        saes,
        data,
        positions,
        sites=sites,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
        desc="firing stats",
    ):
        b = lb.batch
        for st, f in zip(stats, lb.latents):
            st.update(f, b.seq_ids, b.positions, b.is_response, b.seq_lens, n_sequences=len(b.batch_ids))
    for j, (st, sae) in enumerate(zip(stats, saes)):
        st.to("cpu")
        st.meta = provenance(
            lm,
            site=str(sae_site(sae, None if sites is None else sites[j])),
            positions=str(Positions.parse(positions)),
            dataset=dataset_name,
            sae=sae.cfg.metadata.get("name") or repr(sae),
        )
    return stats


def firing_stats(
    lm: LoadedModel,
    sae: SAE,
    data: Iterable[Any],
    *,
    positions: str | Positions = "all",
    config: FiringConfig | None = None,
    site: Any = None,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
    dataset_name: str | None = None,
) -> FiringStats:
    """Firing statistics of one SAE over ``data`` (see the module docstring).

    ``data`` is anything :func:`deltalens.capture` accepts; give generations or
    prompt/response pairs to get prompt-only latents. ``positions`` restricts the tokens
    counted (default every real token).
    """
    return firing_stats_many(
        lm,
        [sae],
        data,
        positions=positions,
        config=config,
        sites=None if site is None else [site],
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
        dataset_name=dataset_name,
    )[0]
