"""Figures of the probe stages (matplotlib Agg through :mod:`deltalens.plots`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def connected_scatter(
    points: Any,
    path: str | Path,
    *,
    x: str = "prevalence",
    y: str = "importance",
    title: str = "",
    max_paths: int = 20,
) -> Path | None:
    """The seed's connected scatterplot: each important latent is a path across thresholds
    (``x`` vs ``y`` at every threshold, arrows from the lowest to the highest threshold)."""
    from ..plots import new_figure, save_figure

    if points is None or len(points) == 0:
        return None
    fig, ax = new_figure(7.0, 4.6)
    for j, (lat, g) in enumerate(points.groupby("latent", sort=False)):
        if j >= max_paths:
            break
        g = g.sort_values("threshold")
        ax.plot(g[x], g[y], "-o", ms=3, lw=1, alpha=0.8, label=f"{lat}")
        ax.annotate(str(lat), (g[x].iloc[0], g[y].iloc[0]), fontsize=7)
    ths = sorted(points["threshold"].unique())
    ax.set_xlabel(f"{x} (per threshold)")
    ax.set_ylabel(y)
    ax.set_title(
        f"{title}: important latents across thresholds {', '.join(f'{t:g}' for t in ths)}", fontsize=9
    )
    if len(points["latent"].unique()) <= 12:
        ax.legend(fontsize=7, ncol=2, title="latent", title_fontsize=7)
    return save_figure(fig, path)


def auroc_bars(probes: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """CV AUROC ± SE per probe: SAE latents, dense baseline, shuffled labels, random latents."""
    from ..plots import new_figure, save_figure

    if not probes:
        return None
    names = [f"{p['metric']}\n{p['method']}" for p in probes]
    series = [
        ("SAE latents", "cv_auroc", "cv_auroc_se"),
        ("dense baseline", "dense_auroc", "dense_auroc_se"),
        ("shuffled labels", "shuffled_auroc", "shuffled_auroc_se"),
        ("random latents", "random_latents_auroc", "random_latents_auroc_se"),
    ]
    fig, ax = new_figure(max(5.0, 1.6 * len(probes) + 2), 3.8)
    w = 0.2
    xs = np.arange(len(probes))
    for j, (lab, key, se) in enumerate(series):
        vals = [p.get(key) for p in probes]
        if all(v is None for v in vals):
            continue
        ax.bar(
            xs + (j - 1.5) * w,
            [v or 0 for v in vals],
            w,
            yerr=[p.get(se) or 0 for p in probes],
            label=lab,
            capsize=2,
        )
    ax.axhline(0.5, color="k", lw=0.6, ls="--")
    ax.set_xticks(xs, names, fontsize=8)
    ax.set_ylim(0.3, 1.02)
    ax.set_ylabel("CV AUROC (± fold SE)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)
