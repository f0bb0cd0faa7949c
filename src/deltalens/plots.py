"""Shared plotting helpers (core level): every figure deltalens writes goes through these.

Figures are drawn with matplotlib's Agg backend (no display needed) and written
atomically as PNG next to the JSON they illustrate. Token labels are passed through
:func:`label` so control characters and whitespace stay visible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def label(token: str, width: int = 14) -> str:
    """A printable label for a token string: newlines/tabs shown as \\n/\\t, truncated."""
    s = token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    s = s.replace("$", r"\$")  # matplotlib mathtext
    return s if len(s) <= width else s[: width - 1] + "…"


def new_figure(width: float = 7.0, height: float = 4.0):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    return fig, ax


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a figure as PNG atomically and close it."""
    plt = _plt()
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def lines_by_layer(
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str = "",
    ylabel: str = "",
    layers: Sequence[int] | None = None,
    kind: str = "line",
    xlabel: str = "layer",
    xticklabels: Sequence[str] | None = None,
) -> Path:
    """One line (or grouped bars with ``kind="bar"``) per named series over layers (or any
    other integer axis: pass ``xlabel``, e.g. ``"iteration"``, and ``xticklabels`` to name
    the ticks)."""
    fig, ax = new_figure()
    names = list(series)
    n = max((len(v) for v in series.values()), default=0)
    xs = np.asarray(layers if layers is not None else range(n))
    if kind == "bar":
        w = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            ax.bar(xs + (i - (len(names) - 1) / 2) * w, series[name], width=w, label=name)
    else:
        for name in names:
            ax.plot(xs[: len(series[name])], series[name], marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    if xticklabels is not None:
        ax.set_xticks(xs[: len(xticklabels)])
        ax.set_xticklabels([label(t, 18) for t in xticklabels], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(names) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def means_with_se(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    title: str = "",
    ylabel: str = "",
    xticklabels: Sequence[str] | None = None,
    xlabel: str = "iteration",
) -> Path:
    """One line per named series of ``(means, standard errors)``: the mean with a ±1 SE bar at
    each point (iterations of a DPO series and its control, say)."""
    fig, ax = new_figure(6.0, 3.8)
    for name, (m, se) in series.items():
        ax.errorbar(range(len(m)), m, yerr=se, marker="o", ms=4, capsize=3, label=name)
    ax.set_xlabel(xlabel)
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)))
        ax.set_xticklabels(list(xticklabels))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def heatmap(
    matrix: Any,
    path: str | Path,
    *,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    cmap: str = "RdBu_r",
    center: float | None = 0.0,
    colorbar_label: str = "",
) -> Path:
    """A labelled heatmap; with ``center`` set the colour scale is symmetric around it."""
    m = np.asarray(matrix, dtype=float)
    h, w = m.shape
    fig, ax = new_figure(max(5.0, 0.35 * w + 2), max(3.0, 0.3 * h + 1.5))
    kw: dict[str, Any] = {}
    if center is not None and np.isfinite(m).any():
        lim = float(np.nanmax(np.abs(m - center))) or 1.0
        kw = {"vmin": center - lim, "vmax": center + lim}
    im = ax.imshow(m, aspect="auto", cmap=cmap, interpolation="nearest", **kw)
    cb = fig.colorbar(im, ax=ax)
    if colorbar_label:
        cb.set_label(colorbar_label)
    if xlabels is not None:
        ax.set_xticks(range(w))
        ax.set_xticklabels([label(s) for s in xlabels], rotation=90, fontsize=7)
    if ylabels is not None:
        ax.set_yticks(range(h))
        ax.set_yticklabels([label(s) for s in ylabels], fontsize=7)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return save_figure(fig, path)


def scatter(
    x: Sequence[float],
    y: Sequence[float],
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    diagonal: bool = False,
    annotate: Sequence[str] | None = None,
    hline: float | None = None,
    vline: float | None = None,
) -> Path:
    """A scatter plot (optionally with the y = x line, reference lines y = ``hline`` and
    x = ``vline``, and point labels)."""
    fig, ax = new_figure(5.0, 4.5)
    ax.scatter(x, y, s=12, alpha=0.7)
    if hline is not None:
        ax.axhline(hline, color="grey", lw=1, ls="--")
    if vline is not None:
        ax.axvline(vline, color="grey", lw=1, ls="--")
    if diagonal and len(x):
        lo, hi = float(min(min(x), min(y))), float(max(max(x), max(y)))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    if annotate:
        for xi, yi, s in zip(x, y, annotate):
            ax.annotate(label(s), (xi, yi), fontsize=6)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


# ---- feature evolution ------------------------------------------------------------------------

_STATUS_SHORT = {
    "dead": "dead",
    "born_then_died": "born→died",
    "born": "born",
    "died": "died",
    "revived": "revived",
    "changed_back": "back",
    "changed": "changed",
    "stable": "stable",
}


def evolution_figures(ev: Any, out: str | Path, max_latents: int = 12) -> dict[str, Path]:
    """Figures of a feature evolution (:class:`deltalens.features.Evolution`):
    ``evolution_counts.png`` (alive/born/died/changed/changed back per iteration), a heatmap
    of decoder cosine with the previous iteration and trajectories (firing rate, threshold,
    decoder norm) for a few latents of each non-stable status."""
    import torch

    out = Path(out)
    T = ev.n_iterations
    its = list(range(T))
    rows = ev.summary_table()
    series = {
        k: [r.get(k, 0) for r in rows]
        for k in ("alive", "born", "died", "changed", "changed_back")
        if k in rows[0]
    }
    paths = {
        "counts_png": lines_by_layer(
            series,
            out / "evolution_counts.png",
            layers=its,
            xlabel="iteration",
            xticklabels=ev.names,
            title="latents per iteration",
            ylabel="latents",
        )
    }
    show = ev.examples(max_latents)
    if T > 1:
        m = ev.cos_prev[1:, show].T.numpy()
        paths["cos_png"] = heatmap(
            m,
            out / "evolution_cos_prev.png",
            xlabels=[f"{ev.names[t - 1]}→{ev.names[t]}" for t in range(1, T)],
            ylabels=[f"{i} {_STATUS_SHORT.get(ev.status[i], ev.status[i])}" for i in show],
            title="decoder cosine with the previous iteration",
            cmap="viridis",
            center=None,
            colorbar_label="cos",
        )
    trajectories = {"dec_norm": ev.dec_norm, "threshold": ev.threshold}
    if ev.firing_rate is not None:
        trajectories["firing_rate"] = ev.firing_rate
    few = ev.examples(8)
    for name, t in trajectories.items():
        if not torch.isfinite(t[:, few]).any():
            continue
        s = {f"{i} ({ev.status[i]})": t[:, i].tolist() for i in few}
        paths[f"{name}_png"] = lines_by_layer(
            s,
            out / f"evolution_{name}.png",
            layers=its,
            xlabel="iteration",
            xticklabels=ev.names,
            title=f"{name} of example latents",
            ylabel=name,
        )
    return paths


# ---- causal effects ---------------------------------------------------------------------------


def effects_with_null(
    series: dict[str, list[dict[str, Any]]],
    path: str | Path,
    *,
    x: str,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "effect (Δ mean metric)",
) -> Path:
    """Effects with their 95 % CI per series over ``x`` (an iteration or a coefficient), with each
    series' null band (``null_low`` … ``null_high``) shaded and the zero line.

    ``series[name]`` is a list of rows with keys ``x``, ``effect``, ``ci_low``, ``ci_high``,
    ``null_low``, ``null_high``."""
    fig, ax = new_figure(6.0, 4.0)
    for k, (name, rows) in enumerate(sorted(series.items())):
        rows = sorted((r for r in rows if r.get("effect") is not None), key=lambda r: float(r[x]))
        if not rows:
            continue
        xs = [float(r[x]) + 0.04 * (k - len(series) / 2) for r in rows]
        eff = [float(r["effect"]) for r in rows]
        lo = [float(r["effect"]) - float(r["ci_low"]) for r in rows]
        hi = [float(r["ci_high"]) - float(r["effect"]) for r in rows]
        line = ax.errorbar(xs, eff, yerr=[lo, hi], marker="o", ms=4, capsize=3, label=label(name, 40))
        band = [
            (xx, r["null_low"], r["null_high"]) for xx, r in zip(xs, rows) if r.get("null_low") is not None
        ]
        if band:
            ax.fill_between(
                [b[0] for b in band],
                [b[1] for b in band],
                [b[2] for b in band],
                color=line[0].get_color(),
                alpha=0.15,
                step="mid" if len(band) == 1 else None,
            )
            if len(band) == 1:
                ax.vlines(band[0][0], band[0][1], band[0][2], color=line[0].get_color(), alpha=0.3, lw=8)
    ax.axhline(0, color="grey", lw=1, ls="--")
    ax.set_title(title)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


# ---- inverse problems ------------------------------------------------------------------------


def optimization_progress(
    runs: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | Path,
    *,
    title: str = "",
    references: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """Two panels over optimisation steps, one line per run: ``activation`` (best so far) and
    ``ce`` (cross-entropy of that prompt). ``references[name]`` may give horizontal lines
    (``activation``: e.g. the collection maximum, ``ce``: e.g. its 90th percentile)."""
    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(7.0, 5.5), dpi=110, sharex=True)
    for i, (name, r) in enumerate(runs.items()):
        color = f"C{i % 10}"
        for ax, key in zip(axes, ("activation", "ce")):
            ax.plot(r.get("step", range(len(r[key]))), r[key], color=color, lw=1.2, label=label(name, 24))
            ref = (references or {}).get(name, {}).get(key)
            if ref is not None and np.isfinite(ref):
                ax.axhline(ref, color=color, lw=0.8, ls="--", alpha=0.7)
    axes[0].set_ylabel("activation (best so far)")
    axes[1].set_ylabel("prompt CE (nats/token)")
    axes[1].set_xlabel("step")
    axes[0].set_title(title)
    for ax in axes:
        ax.grid(alpha=0.3)
    if 1 < len(runs) <= 12:
        axes[0].legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def cluster_map(
    xy: Sequence[Sequence[float]],
    labels: Sequence[int],
    path: str | Path,
    *,
    title: str = "",
    annotate: Mapping[int, str] | None = None,
) -> Path:
    """A 2-D map of points coloured by cluster (``−1``, noise, in grey); ``annotate`` labels the
    points at the given indices."""
    fig, ax = new_figure(6.0, 5.0)
    P = np.asarray(xy, dtype=float).reshape(-1, 2)
    lab = np.asarray(labels)
    noise = lab < 0
    if noise.any():
        ax.scatter(P[noise, 0], P[noise, 1], s=10, c="lightgrey", label="noise")
    for c in sorted(set(lab[~noise].tolist())):
        m = lab == c
        ax.scatter(P[m, 0], P[m, 1], s=14, color=f"C{c % 10}", label=f"cluster {c}" if c < 10 else None)
    for j, s in (annotate or {}).items():
        ax.annotate(label(s, 20), (P[j, 0], P[j, 1]), fontsize=6)
    ax.set_title(title)
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    if len(set(lab.tolist())) <= 11:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
