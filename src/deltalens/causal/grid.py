"""The cells of a causal grid: latent groups, cells, matched null groups and latent statistics.

* A **group** is a set of latent ids of one SAE (or of every SAE), from a probe fit (the top-k
  latents of one metric and probe method), from a CSV, or listed explicitly.
* A **cell** is one generation run: ``(type, iteration, branch, group, coefficient)`` — its
  model is ``M_i`` for ablation and ``M_0`` for steering, its SAE ``M<i>D<i>`` (branch ``MD``) or
  ``M0D<i>`` (branch ``M0D``). The **control** of a model is the same items generated with no
  intervention.
* A **null group** of a group ``G`` of size ``k`` draws, for every ``j ∈ G``, a random latent
  outside ``G`` from the same firing-rate bin as ``j`` (``null_bins`` quantile bins over the
  live latents; dead latents form their own bin), so the null has the same size and matched
  firing rates.
* **Latent statistics** of SAE ``M<m>D<d>`` are measured on its own distribution: model ``M_m``
  reading the control generations of ``M_d``, at the cell positions: firing rate
  ``P(f_j > 0)``, mean ``E[f_j]`` (the mean-ablation value) and typical activation
  ``E[f_j | f_j > 0]`` (the unit of relative steering).
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataFormatError


def sae_name(kind: str, iteration: int, branch: str) -> str:
    """The SAE of a cell: ``M<i>D<i>`` on branch ``MD``, ``M0D<i>`` on ``M0D``."""
    return f"M{iteration}D{iteration}" if branch == "MD" else f"M0D{iteration}"


def model_of(kind: str, iteration: int) -> int:
    """Ablation runs the fine-tuned model of the iteration, steering the base model."""
    return iteration if kind == "ablation" else 0


@dataclass(frozen=True)
class Group:
    name: str
    latents: tuple[int, ...]
    sae: str | None = None  # the SAE run the ids belong to (None: every SAE)
    metric: str | None = None  # the metric the group predicts (probe groups)
    source: str = "explicit"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "latents": list(self.latents),
            "sae": self.sae,
            "metric": self.metric,
            "source": self.source,
        }


@dataclass(frozen=True)
class Cell:
    type: str  # "ablation" | "steering" | "control"
    model: int
    iteration: int | None = None
    branch: str | None = None
    sae: str | None = None
    group: str | None = None
    latents: tuple[int, ...] = ()
    coef: float | None = None
    null_of: str | None = None  # the real group this is a null draw of
    null_index: int | None = None
    metric: str | None = None

    @property
    def key(self) -> str:
        if self.type == "control":
            return f"control|M{self.model}"
        c = "" if self.coef is None else f"|c={self.coef:g}"
        g = self.group if self.null_of is None else f"{self.null_of}|null{self.null_index}"
        return f"{self.type}|i={self.iteration}|{self.branch}|{self.sae}|{g}{c}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "type": self.type,
            "model": self.model,
            "iteration": self.iteration,
            "branch": self.branch,
            "sae": self.sae,
            "group": self.group,
            "latents": list(self.latents),
            "coef": self.coef,
            "null_of": self.null_of,
            "null_index": self.null_index,
            "metric": self.metric,
        }


# ---- groups ----------------------------------------------------------------------------------


def _ids(value: Any, where: str) -> tuple[int, ...]:
    items = value.split(",") if isinstance(value, str) else value
    try:
        ids = tuple(int(x) for x in items if str(x).strip() != "")
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: latent ids must be integers, got {value!r}") from None
    if not ids:
        raise ConfigError(f"{where}: a group needs at least one latent")
    if any(i < 0 for i in ids):
        raise ConfigError(f"{where}: latent ids must be ≥ 0, got {value!r}")
    return ids


def explicit_groups(specs: Sequence[dict[str, Any]]) -> list[Group]:
    return [
        Group(
            str(g["name"]),
            _ids(g["latents"], f"group {g['name']!r}"),
            sae=g.get("sae"),
            metric=g.get("metric"),
        )
        for g in specs
    ]


def csv_groups(path: str | Path) -> list[Group]:
    """``group, latent[, sae, metric]`` rows (one latent per row) → groups."""
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"{p}: groups CSV not found")
    acc: dict[tuple[str, str | None, str | None], list[int]] = {}
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"group", "latent"} - set(reader.fieldnames or [])
        if missing:
            raise DataFormatError(
                f"{p}: missing column(s) {', '.join(sorted(missing))} (have {reader.fieldnames})"
            )
        for n, row in enumerate(reader, start=2):
            try:
                lat = int(row["latent"])
            except (TypeError, ValueError):
                raise DataFormatError(f"{p}:{n}: latent must be an integer, got {row['latent']!r}") from None
            key = (row["group"], row.get("sae") or None, row.get("metric") or None)
            acc.setdefault(key, []).append(lat)
    if not acc:
        raise DataFormatError(f"{p}: no groups (the file has no rows)")
    return [Group(g, tuple(ids), sae=s, metric=m, source=f"csv:{p.name}") for (g, s, m), ids in acc.items()]


def probe_groups(sae: str, probe_dir: str | Path, top_k: int, method: str, direction: str) -> list[Group]:
    """The top-``k`` latents of every metric's ``method`` probe in a probe fit (its
    ``importance.csv``), keeping those that predict ``direction`` values of the metric."""
    from ..probes import ProbeFitResult

    fit = ProbeFitResult.load(probe_dir)
    imp = fit.importance
    if imp is None:
        raise DataFormatError(f"{probe_dir}: the probe fit has no importance.csv")
    sub = imp[imp["method"] == method]
    if sub.empty:
        have = ", ".join(sorted(set(imp["method"])))
        raise ConfigError(f"{probe_dir}: no '{method}' probe (have {have}); set --probe-method")
    out = []
    for metric, rows in sub.groupby("metric", sort=True):
        rows = rows[rows["importance"] > 0]
        if direction != "any":
            rows = rows[rows["direction"] == direction]
        rows = rows.sort_values("rank").head(top_k)
        if len(rows):
            out.append(
                Group(
                    f"{metric}:{method}:top{len(rows)}",
                    tuple(int(x) for x in rows["latent"]),
                    sae=sae,
                    metric=str(metric),
                    source=f"probes:{Path(probe_dir).name}",
                )
            )
    return out


# ---- null groups -----------------------------------------------------------------------------


def firing_bins(rate: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of every latent: ``-1`` for dead latents, else its quantile bin ``0 … n_bins − 1``
    among the live latents."""
    rate = np.asarray(rate, dtype=np.float64)
    bins = np.full(len(rate), -1, dtype=np.int64)
    live = rate > 0
    if live.any():
        qs = np.quantile(rate[live], np.linspace(0, 1, n_bins + 1)[1:-1])
        bins[live] = np.searchsorted(qs, rate[live], side="right")
    return bins


def null_groups(
    group: Sequence[int], rate: np.ndarray, n: int, n_bins: int, seed: str
) -> list[tuple[int, ...]]:
    """``n`` random groups matched to ``group`` by firing-rate bin (module docstring), seeded by
    the string ``seed``; a bin without a free latent borrows from the nearest bins."""
    bins = firing_bins(rate, n_bins)
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    own = set(int(j) for j in group)
    out = []
    for _ in range(n):
        taken = set(own)
        draw = []
        for j in group:
            b = bins[int(j)]
            order = [b] + [x for d in range(1, n_bins + 2) for x in (b - d, b + d)]
            pick = None
            for bb in order:
                pool = [int(i) for i in np.flatnonzero(bins == bb) if int(i) not in taken]
                if pool:
                    pick = int(rng.choice(pool))
                    break
            if pick is None:
                raise ConfigError(f"not enough latents to draw a null group of size {len(group)}")
            taken.add(pick)
            draw.append(pick)
        out.append(tuple(draw))
    return out


# ---- latent statistics ----------------------------------------------------------------------


@dataclass
class LatentStats:
    """Per-latent statistics of one SAE on its own distribution (module docstring)."""

    firing_rate: torch.Tensor  # [d_sae]  P(f_j > 0)
    mean: torch.Tensor  # [d_sae]  E[f_j]
    typical: torch.Tensor  # [d_sae]  E[f_j | f_j > 0] (0 where the latent never fires)
    tokens: int

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"firing_rate": self.firing_rate, "mean": self.mean, "typical": self.typical}


@torch.no_grad()
def latent_stats(
    lm: Any, sae: Any, site: str, gens: Sequence[Any], positions: str, batch_size: int = 16
) -> LatentStats:
    """:class:`LatentStats` of ``sae`` at ``site`` over ``gens`` (prompt + response token ids) read by ``lm``."""
    from ..capture import capture

    items = [{"prompt_ids": list(g.prompt_ids), "response_ids": list(g.response_ids)} for g in gens]
    d_sae = int(sae.W_dec.shape[0])
    acts = capture(lm, items, [site], positions, batch_size=batch_size, progress=False)
    x = acts[site]
    fire = torch.zeros(d_sae, dtype=torch.float64)
    total = torch.zeros(d_sae, dtype=torch.float64)
    dt = getattr(sae, "dtype", torch.float32)
    for k in range(0, len(x), 4096):
        f = sae.encode(x[k : k + 4096].to(dt)).double()
        fire += (f > 0).sum(0)
        total += f.sum(0)
    n = max(len(x), 1)
    typical = torch.where(fire > 0, total / fire.clamp(min=1), torch.zeros_like(total))
    return LatentStats((fire / n).float(), (total / n).float(), typical.float(), int(len(x)))
