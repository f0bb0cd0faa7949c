"""Evolution of SAE latents across an iterative series M0 … Mn.

The SAEs of an iterative series (each fine-tuned from the previous one, latent indices
aligned — e.g. the ``M<i>D<i>`` runs of :mod:`deltalens.sae`) are compared latent by
latent. With decoder rows ``d_i^t`` of iteration ``t``, firing rates ``r_i^t`` (feature
density on an evaluation set, see :mod:`deltalens.features.firing`), the change
threshold ``τ`` (``change_threshold``, default 0.9) and the alive threshold ``ρ``
(``alive_threshold``, default 0 — alive means ``r > ρ``):

* ``alive[t, i] = r_i^t > ρ``;
* **born** at ``t ≥ 1``: ``alive[t, i] ∧ ¬alive[t−1, i]`` (the latent starts existing);
  **died** at ``t ≥ 1``: ``¬alive[t, i] ∧ alive[t−1, i]`` (it becomes dead);
* ``cos_prev[t, i] = cos(d_i^t, d_i^{t−1})``; the latent **changed** at ``t ≥ 1`` when
  ``cos_prev[t, i] < τ``;
* it **changed back** at ``s > t`` after a change at ``t`` when
  ``cos(d_i^s, d_i^{t−1}) ≥ τ``: its direction returned to the one it had before the
  change (the first such ``s`` is reported);
* trajectories ``[T, d_sae]`` of firing rate, JumpReLU threshold, decoder and encoder norm
  and ``cos(d_i^t, d_i^0)``.

Each latent gets one ``status``, the first that applies: ``dead`` (never alive),
``born_then_died`` (first alive after M0, dead at the end), ``born`` (first alive after
M0, alive at the end), ``died`` (alive at M0, dead at the end), ``revived`` (alive at
both ends, dead in between), ``changed_back``, ``changed``, ``stable``. The event columns
(``born_at``, ``died_at``, ``first_change``, ``n_changes``, ``changed_back_at``) keep
everything, so a latent that was born and also changed direction shows both. Without
firing rates only the direction-based statuses are available.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ConfigError, DataFormatError, ShapeError
from ..io import load_tensors, provenance, save_tensors, write_json
from ..sae import SAE, read_sparsity
from ..stage import StageConfig, StageResult, at_least, in_range, option, register_result
from .weights import cosine_rows

STATUSES = ("dead", "born_then_died", "born", "died", "revived", "changed_back", "changed", "stable")


LATENTS_FILE = "latents.parquet"
TRAJECTORIES_FILE = "trajectories.safetensors"
_TENSORS = ("cos_prev", "cos_first", "dec_norm", "enc_norm", "threshold")
_EVENTS = ("born_at", "died_at", "first_change", "n_changes", "changed_back_at")


@dataclass
class EvolutionConfig(StageConfig):
    """Thresholds of :func:`feature_evolution` (see the module docstring)."""

    change_threshold: float = option(
        0.9,
        flag="--change-threshold",
        help="Decoder cosine with the previous iteration below this = changed.",
    )
    alive_threshold: float = option(0.0, flag="--alive-threshold", help="Firing rate above this = alive.")

    def validate(self) -> None:
        in_range(self, "change_threshold", -1.0, 1.0)
        at_least(self, "alive_threshold", 0.0)


@register_result
@dataclass
class Evolution(StageResult):
    """Result of :func:`feature_evolution`; per-iteration tensors are ``[T, d_sae]``.

    Saved in a directory: ``summary.json`` (kind, schema, iterations, config, counts, the
    per-iteration table), ``trajectories.safetensors`` (every tensor, statuses as codes
    into :data:`STATUSES`), ``latents.parquet`` (one row per latent) and optional PNGs."""

    KIND: ClassVar[str] = "feature evolution"
    FILENAME: ClassVar[str] = "summary.json"

    names: list[str]
    config: EvolutionConfig
    cos_prev: torch.Tensor  # [T, d]; row 0 is NaN
    cos_first: torch.Tensor  # [T, d]
    dec_norm: torch.Tensor
    enc_norm: torch.Tensor
    threshold: torch.Tensor
    firing_rate: torch.Tensor | None
    born_at: torch.Tensor  # [d] first t with a birth, -1 if none
    died_at: torch.Tensor
    first_change: torch.Tensor
    n_changes: torch.Tensor
    changed_back_at: torch.Tensor
    status: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_iterations(self) -> int:
        return len(self.names)

    @property
    def d_sae(self) -> int:
        return int(self.dec_norm.shape[1])

    @property
    def alive(self) -> torch.Tensor | None:
        if self.firing_rate is None:
            return None
        return self.firing_rate > self.config.alive_threshold

    def latents_with(self, status: str) -> list[int]:
        if status not in STATUSES:
            raise ConfigError(f"unknown status '{status}'; valid: {', '.join(STATUSES)}")
        return [i for i, s in enumerate(self.status) if s == status]

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for x in self.status if x == s) for s in STATUSES}

    def changed(self) -> torch.Tensor:
        """``[T, d]`` bool: decoder changed w.r.t. the previous iteration (row 0 False)."""
        c = self.cos_prev < self.config.change_threshold
        c[0] = False
        return c

    def to_frame(self) -> Any:
        """One row per latent: status, events and first/last values of the trajectories."""
        import pandas as pd

        T = self.n_iterations

        def iters(idx: torch.Tensor) -> list[Any]:
            return [self.names[int(i)] if i >= 0 else "" for i in idx.tolist()]

        cols: dict[str, Any] = {
            "latent": np.arange(self.d_sae),
            "status": self.status,
            "born_at": iters(self.born_at),
            "died_at": iters(self.died_at),
            "first_change": iters(self.first_change),
            "n_changes": self.n_changes.numpy(),
            "changed_back_at": iters(self.changed_back_at),
            "min_cos_prev": torch.nan_to_num(self.cos_prev[1:], nan=1.0).min(0).values.numpy()
            if T > 1
            else np.ones(self.d_sae),
            "cos_last_vs_first": self.cos_first[-1].numpy(),
            "dec_norm_first": self.dec_norm[0].numpy(),
            "dec_norm_last": self.dec_norm[-1].numpy(),
            "threshold_first": self.threshold[0].numpy(),
            "threshold_last": self.threshold[-1].numpy(),
        }
        if self.firing_rate is not None:
            cols["firing_rate_first"] = self.firing_rate[0].numpy()
            cols["firing_rate_last"] = self.firing_rate[-1].numpy()
        return pd.DataFrame(cols)

    def summary_table(self) -> list[dict[str, Any]]:
        """One row per iteration: alive, born, died, changed, changed back (returning here),
        mean decoder cosine with the previous iteration, mean threshold / norm / firing rate."""
        alive = self.alive
        changed = self.changed()
        rows = []
        for t, name in enumerate(self.names):
            row: dict[str, Any] = {"iteration": name}
            if alive is not None:
                row["alive"] = int(alive[t].sum())
                row["born"] = int((alive[t] & ~alive[t - 1]).sum()) if t else 0
                row["died"] = int((~alive[t] & alive[t - 1]).sum()) if t else 0
            row["changed"] = int(changed[t].sum())
            row["changed_back"] = int((self.changed_back_at == t).sum())
            row["mean_cos_prev"] = float(torch.nanmean(self.cos_prev[t])) if t else float("nan")
            row["mean_dec_norm"] = float(self.dec_norm[t].mean())
            thr = self.threshold[t]
            row["mean_threshold"] = float(thr.mean()) if torch.isfinite(thr).any() else float("nan")
            if self.firing_rate is not None:
                row["mean_firing_rate"] = float(self.firing_rate[t].mean())
            rows.append(row)
        return rows

    # ---- files ------------------------------------------------------------------------------
    def save(self, out_dir: str | Path, figures: bool = True, max_latents_in_figures: int = 12) -> Path:
        """Write ``summary.json``, ``trajectories.safetensors``, ``latents.parquet`` and, with
        ``figures``, PNGs into ``out_dir``; returns the path of ``summary.json``."""
        self.save_all(out_dir, figures, max_latents_in_figures)
        return Path(out_dir) / self.FILENAME

    def save_all(
        self, out_dir: str | Path, figures: bool = True, max_latents_in_figures: int = 12
    ) -> dict[str, Path]:
        """:meth:`save`, returning every file written by name (``latents``, ``trajectories``,
        ``summary``, ``*_png``)."""
        from ..io import atomic_path

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        with atomic_path(out / LATENTS_FILE, ".parquet") as tmp:
            self.to_frame().to_parquet(tmp, index=False)
        paths["latents"] = out / LATENTS_FILE
        tensors = {k: getattr(self, k) for k in _TENSORS + _EVENTS}
        tensors["status_code"] = torch.tensor([STATUSES.index(x) for x in self.status], dtype=torch.int8)
        if self.firing_rate is not None:
            tensors["firing_rate"] = self.firing_rate
        paths["trajectories"] = save_tensors(
            out / TRAJECTORIES_FILE,
            tensors,
            metadata={
                "kind": "deltalens.feature_evolution",
                "iterations": self.names,
                "config": self.config.to_dict(),
            },
        )
        paths["summary"] = write_json(
            out / self.FILENAME,
            {
                "kind": self.KIND,
                "schema": self.SCHEMA,
                "iterations": self.names,
                "config": self.config.to_dict(),
                "status_counts": self.counts(),
                "per_iteration": self.summary_table(),
                "meta": self.meta,
            },
        )
        if figures:
            paths.update(self.figures(out, max_latents_in_figures))
        return paths

    @classmethod
    def load(cls, directory: str | Path) -> Evolution:
        """Read a saved evolution (its directory or its ``summary.json``)."""
        summary = cls.path_in(directory)
        d = cls.read_header(summary)
        traj = cls.companion(summary, TRAJECTORIES_FILE)
        t = load_tensors(traj)
        missing = [k for k in _TENSORS + _EVENTS + ("status_code",) if k not in t]
        if missing:
            raise DataFormatError(f"not a valid {cls.KIND}: {traj} (missing {', '.join(missing)})")
        status = [STATUSES[int(i)] for i in t["status_code"].tolist()]
        return cls(
            list(d["iterations"]),
            EvolutionConfig.from_dict(d["config"], where=str(summary)),
            *(t[k] for k in _TENSORS),
            t.get("firing_rate"),
            *(t[k] for k in _EVENTS),
            status,
            dict(d.get("meta") or {}),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "iterations": self.names,
            "d_sae": self.d_sae,
            "status_counts": self.counts(),
            "config": self.config.to_dict(),
        }

    def figures(self, out: Path, max_latents: int = 12) -> dict[str, Path]:
        """The evolution figures (see :func:`deltalens.plots.evolution_figures`)."""
        from ..plots import evolution_figures

        return evolution_figures(self, out, max_latents)

    def examples(self, n: int) -> list[int]:
        """Up to ``n`` latents, taken in turn from each non-stable, non-dead status (the
        strongest direction change first within a status); stable ones if nothing else."""
        strength = torch.nan_to_num(self.cos_prev, nan=1.0).min(0).values
        groups = []
        for st in ("changed_back", "changed", "born", "died", "born_then_died", "revived"):
            ids = self.latents_with(st)
            ids.sort(key=lambda i: (float(strength[i]), i))
            groups.append(ids)
        out: list[int] = []
        k = 0
        while len(out) < n and any(k < len(g) for g in groups):
            out += [g[k] for g in groups if k < len(g)][: n - len(out)]
            k += 1
        return out or list(range(min(n, self.d_sae)))


def _stack(vals: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([v.detach().float().cpu() for v in vals])


def firing_rates_from_sparsity(paths: Sequence[str | Path]) -> torch.Tensor | None:
    """Firing rates ``[T, d]`` from SAELens ``sparsity.safetensors`` files (``10^sparsity``;
    values at or below 1e-9 — SAELens writes ``log10(density + 1e-10)`` — count as 0).
    ``None`` if any directory lacks the file."""
    out = []
    for p in paths:
        s = read_sparsity(p)
        if s is None:
            return None
        r = torch.pow(10.0, s.double())
        out.append(torch.where(r <= 1e-9, torch.zeros_like(r), r).float())
    return torch.stack(out)


def _classify(
    rates: torch.Tensor | None, cfg: EvolutionConfig, back: torch.Tensor, n_changes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``born_at``, ``died_at`` and the status of every latent (see the module docstring)."""
    d = int(back.shape[0])
    T = 0 if rates is None else int(rates.shape[0])
    born_at = torch.full((d,), -1, dtype=torch.long)
    died_at = torch.full((d,), -1, dtype=torch.long)
    status = ["stable"] * d
    if rates is not None:
        alive = rates > cfg.alive_threshold
        for t in range(1, T):
            b = alive[t] & ~alive[t - 1] & (born_at < 0)
            born_at[b] = t
            dd = ~alive[t] & alive[t - 1] & (died_at < 0)
            died_at[dd] = t
        ever = alive.any(0)
        first_alive = torch.where(ever, alive.float().argmax(0), torch.full((d,), -1))
        for i in range(d):
            if not ever[i]:
                status[i] = "dead"
            elif first_alive[i] > 0:
                status[i] = "born" if alive[-1, i] else "born_then_died"
            elif not alive[-1, i]:
                status[i] = "died"
            elif not alive[:, i].all():
                status[i] = "revived"
    for i in range(d):
        if status[i] == "stable":
            if back[i] >= 0:
                status[i] = "changed_back"
            elif n_changes[i] > 0:
                status[i] = "changed"
    return born_at, died_at, status


@torch.no_grad()
def feature_evolution(
    saes: Sequence[SAE],
    names: Sequence[str] | None = None,
    firing_rates: Sequence[torch.Tensor] | torch.Tensor | None = None,
    config: EvolutionConfig | None = None,
) -> Evolution:
    """Classify every latent of an iterative SAE series (see the module docstring).

    Args:
        saes: the series M0 … Mn, latent indices aligned (same ``d_in``, ``d_sae``).
        names: iteration names (default ``M0``, ``M1``, …).
        firing_rates: per iteration a ``[d_sae]`` firing rate (e.g. ``FiringStats.frac_tokens``
            or :func:`firing_rates_from_sparsity`); without them born/died are not available.
    """
    cfg = config or EvolutionConfig()
    saes = list(saes)
    T = len(saes)
    if T < 2:
        raise ConfigError(f"an evolution needs at least two SAEs (got {T})")
    names = list(names) if names is not None else [f"M{t}" for t in range(T)]
    if len(names) != T:
        raise ConfigError(f"{len(names)} names for {T} SAEs")
    d, d_in = saes[0].d_sae, saes[0].d_in
    for n, s in zip(names, saes):
        if (s.d_sae, s.d_in) != (d, d_in):
            raise ShapeError(
                f"SAE '{n}' has d_in={s.d_in}, d_sae={s.d_sae} but '{names[0]}' has d_in={d_in}, d_sae={d}; "
                "an iterative series keeps the latent indices, so the shapes must match"
            )
    W = [s.W_dec.detach().float().cpu() for s in saes]
    cos_prev = torch.full((T, d), float("nan"))
    for t in range(1, T):
        cos_prev[t] = cosine_rows(W[t], W[t - 1])
    cos_first = torch.stack([cosine_rows(W[t], W[0]) for t in range(T)])
    dec_norm = _stack([w.norm(dim=-1) for w in W])
    enc_norm = _stack([s.W_enc.detach().float().cpu().norm(dim=0) for s in saes])
    thr = _stack([s.threshold if s.threshold is not None else torch.full((d,), float("nan")) for s in saes])

    rates = None
    if firing_rates is not None:
        rates = firing_rates if isinstance(firing_rates, torch.Tensor) else _stack(list(firing_rates))
        rates = rates.float().cpu()
        if tuple(rates.shape) != (T, d):
            raise ShapeError(
                f"firing rates have shape {tuple(rates.shape)}, expected [{T}, {d}] (iterations × latents)"
            )

    changed = cos_prev < cfg.change_threshold
    changed[0] = False
    n_changes = changed.sum(0)
    first_change = torch.where(n_changes > 0, changed.float().argmax(0), torch.full((d,), -1))
    back = torch.full((d,), -1, dtype=torch.long)
    for t in range(1, T):
        for s in range(t + 1, T):
            ret = changed[t] & (back < 0) & (cosine_rows(W[s], W[t - 1]) >= cfg.change_threshold)
            back[ret] = s

    born_at, died_at, status = _classify(rates, cfg, back, n_changes)
    return Evolution(
        names=names,
        config=cfg,
        cos_prev=cos_prev,
        cos_first=cos_first,
        dec_norm=dec_norm,
        enc_norm=enc_norm,
        threshold=thr,
        firing_rate=rates,
        born_at=born_at,
        died_at=died_at,
        first_change=first_change.long(),
        n_changes=n_changes.long(),
        changed_back_at=back,
        status=status,
        meta=provenance(None, sae_sites=[s.site for s in saes]),
    )
