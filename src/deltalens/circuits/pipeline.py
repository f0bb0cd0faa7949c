"""Run-and-save workflows shared by the CLI (``deltalens patch`` / ``attribute``) and the
demo: each runs a method, writes its JSON and figures into one directory, and returns
the results for printing.

Files written (all atomically)::

    patching_<direction>/results.json, <component>.png          exact activation patching
    attribution_<direction>/results.json, <component>.png       attribution patching or IG
        exact.json, exact_vs_attribution.png, correlation.json   with compare_exact
        faithfulness.json, faithfulness.png                      with faithfulness
    sae_<site>_<mode>_<direction>/attribution.json, top_latents.json, scores.safetensors,
        latent_heatmap.png, error_positions.png, faithfulness.json/png

plus ``top_sites.csv`` / ``top_latents.csv`` (the largest effects, for the HTML report).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..io import atomic_write, provenance, write_json
from .attribution import attribution_patching, integrated_gradients
from .faithfulness import FaithfulnessCurve, faithfulness_curve
from .patching import activation_patching
from .results import PatchingResult, pearson
from .sae_attribution import SAEAttribution, sae_attribution
from .task import PairTask

if TYPE_CHECKING:
    from ..models.loading import LoadedModel


def run_patch(
    lm: LoadedModel,
    task: PairTask,
    out_dir: str | Path,
    components: Sequence[str] = ("resid",),
    layers: Sequence[int] | None = None,
    direction: str = "denoising",
    batch_tokens: int = 4096,
    progress: bool = True,
) -> tuple[PatchingResult, list[Path]]:
    """Exact activation patching → ``results.json`` + one heatmap per component."""
    out_dir = Path(out_dir)
    res = activation_patching(lm, task, components, layers, direction, batch_tokens=batch_tokens, progress=progress)
    res.meta["provenance"] = provenance(lm, method=res.method, direction=direction)
    res.save(out_dir / "results.json")
    write_csv(out_dir / "top_sites.csv", res.top(20))
    return res, res.heatmaps(out_dir)


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Rows of dicts as CSV (atomically); floats with 5 significant digits."""
    import csv
    import io

    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: f"{v:.5g}" if isinstance(v, float) else v for k, v in r.items()})
    return atomic_write(path, buf.getvalue())


def correlation_figure(exact: PatchingResult, approx: PatchingResult, path: str | Path,
                       components: Sequence[str] = ("attn_out", "mlp_out")) -> dict[str, Any]:
    """Scatter of exact vs estimated normalised effects, with Pearson r per component and
    over all of them; returns the r values."""
    from ..plots import scatter

    comps = [c for c in components if c in exact.components and c in approx.components]
    ex = torch.stack([exact.component(c) for c in comps])
    ap = torch.stack([approx.component(c) for c in comps])
    r = {"all": pearson(ex, ap), **{c: pearson(exact.component(c), approx.component(c)) for c in comps}}
    # cells at or after the first differing token (earlier cells are exactly 0 in both)
    skipped = set(exact.meta.get("skipped_identical_prefix_columns", []))
    keep = torch.tensor([c not in skipped for c in exact.positions])
    if keep.any() and not keep.all():
        r["all_differing_positions"] = pearson(ex[..., keep], ap[..., keep])
    scatter(ex.flatten().tolist(), ap.flatten().tolist(), path, diagonal=True,
            title=f"{approx.method.replace('_', ' ')} vs exact patching\n{', '.join(comps)}: Pearson r = {r['all']:.3f}",
            xlabel="exact patching (normalised)", ylabel=f"{approx.method} (normalised)")
    return r


def run_attribute(
    lm: LoadedModel,
    task: PairTask,
    out_dir: str | Path,
    components: Sequence[str] = ("attn_out", "mlp_out"),
    layers: Sequence[int] | None = None,
    direction: str = "denoising",
    method: str = "attribution",
    steps: int = 8,
    compare_exact: bool = False,
    faithfulness: bool = False,
    ks: Sequence[int] | None = None,
    batch_tokens: int = 4096,
    progress: bool = True,
) -> dict[str, Any]:
    """Attribution patching (``method="attribution"``) or integrated gradients (``"ig"``) of
    components × layers × positions; optionally against exact patching (r, scatter) and
    with a faithfulness curve of the circuits it ranks."""
    out_dir = Path(out_dir)
    if method == "ig":
        res = integrated_gradients(lm, task, components, layers, direction, steps, batch_tokens=batch_tokens,
                                   progress=progress)
    elif method == "attribution":
        res = attribution_patching(lm, task, components, layers, direction)
    else:
        from ..errors import ConfigError

        raise ConfigError(f"unknown attribution method '{method}'; valid: attribution, ig")
    res.meta["provenance"] = provenance(lm, method=res.method, direction=direction)
    res.save(out_dir / "results.json")
    write_csv(out_dir / "top_sites.csv", res.top(20))
    out: dict[str, Any] = {"result": res, "figures": res.heatmaps(out_dir), "dir": out_dir}
    if compare_exact:
        exact = activation_patching(lm, task, components, layers, direction, batch_tokens=batch_tokens,
                                    progress=progress)
        exact.save(out_dir / "exact.json")
        fig = out_dir / "exact_vs_attribution.png"
        r = correlation_figure(exact, res, fig, components)
        write_json(out_dir / "correlation.json", {
            "pearson_r": r, "seconds_exact": exact.seconds, "seconds_estimate": res.seconds,
            "speedup": exact.seconds / max(res.seconds, 1e-9), "method": res.method,
        })
        out.update(exact=exact, r=r, figures=out["figures"] + exact.heatmaps(out_dir, prefix="exact_") + [fig])
    if faithfulness:
        curve = faithfulness_curve(lm, task, res, ks=ks, batch_tokens=batch_tokens)
        curve.meta["provenance"] = provenance(lm, method="faithfulness")
        curve.save(out_dir / "faithfulness.json")
        out["faithfulness"] = curve
        out["figures"].append(curve.plot(out_dir / "faithfulness.png"))
    return out


def run_sae_attribute(
    lm: LoadedModel,
    task: PairTask,
    sae: Any,
    out_dir: str | Path,
    site: Any | None = None,
    direction: str = "denoising",
    mode: str = "indirect",
    keep_error: bool = True,
    top_k: int = 25,
    latents: Sequence[int] | None = None,
    faithfulness: bool = False,
    ks: Sequence[int] | None = None,
    batch_tokens: int = 4096,
    force_site: bool = False,
) -> dict[str, Any]:
    """SAE-latent attribution at one site: error-term table, top-k latents JSON, latent
    activation heatmaps (clean and corrupted), error-node scores by position, and
    optionally a faithfulness curve over SAE nodes."""
    out_dir = Path(out_dir)
    res: SAEAttribution = sae_attribution(lm, task, sae, site, direction, mode, keep_error,
                                           force_site=force_site)
    res.meta["provenance"] = provenance(lm, method="sae_attribution", site=str(res.site), mode=mode)
    paths = res.save(out_dir, k=top_k)
    write_csv(out_dir / "top_latents.csv", res.top(top_k, include_error=True))
    lat = list(latents) if latents else None
    figs = [
        res.latent_heatmap(out_dir / "latent_heatmap.png", lat, run="clean"),
        res.latent_heatmap(out_dir / "latent_heatmap_corrupted.png", lat, run="corrupted"),
    ]
    if res.error_scores is not None:
        figs.append(_error_figure(res, out_dir / "error_positions.png"))
    # the seed's per-position heatmaps: latents × pairs at each named position
    named = task.names[0] if task.names else {}
    pair_labels = [str(r.id if r.id is not None else i) for i, r in enumerate(task.records)]
    for name, col in named.items():
        if col in res.positions and all(nm.get(name) == col for nm in task.names):
            figs.append(res.latent_heatmap_at(out_dir / f"latent_heatmap_{name}.png", col, run="clean",
                                              pair_labels=pair_labels))
    out: dict[str, Any] = {"result": res, "files": paths, "figures": figs, "dir": out_dir}
    if faithfulness:
        curve: FaithfulnessCurve = faithfulness_curve(lm, task, res, ks=ks, sae=sae, batch_tokens=batch_tokens)
        curve.meta["provenance"] = provenance(lm, method="faithfulness")
        curve.save(out_dir / "faithfulness.json")
        out["faithfulness"] = curve
        figs.append(curve.plot(out_dir / "faithfulness.png"))
    return out


def _error_figure(res: SAEAttribution, path: Path) -> Path:
    from ..plots import label, new_figure, save_figure

    fig, ax = new_figure(max(5.0, 0.4 * len(res.positions) + 2), 3.5)
    xs = range(len(res.positions))
    lat = res.scores.sum(1).tolist()
    err = res.error_scores.tolist() if res.error_scores is not None else [0.0] * len(lat)
    ax.bar([x - 0.2 for x in xs], lat, width=0.4, label="Σ latent scores")
    ax.bar([x + 0.2 for x in xs], err, width=0.4, label="error node")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([label(s) for s in res.labels], rotation=90, fontsize=7)
    ax.set_ylabel("attribution (metric units)")
    ax.set_title(f"SAE nodes at {res.site} by position ({res.mode}, {res.direction})")
    ax.axhline(0, color="grey", lw=0.8)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
