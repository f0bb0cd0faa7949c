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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError
from ..io import atomic_write, provenance, write_json
from ..stage import StageConfig, at_least, one_of, option
from .attribution import attribution_patching, integrated_gradients
from .descriptions import latent_descriptions
from .faithfulness import FaithfulnessCurve, faithfulness_curve
from .patching import activation_patching
from .results import PatchingResult, pearson
from .sae_attribution import SAEAttribution, sae_attribution
from .task import PairTask

if TYPE_CHECKING:
    from ..models.loading import LoadedModel

TOP_SITES_FILE = "top_sites.csv"
TOP_LATENTS_FILE = "top_latents.csv"
EXACT_FILE = "exact.json"
CORRELATION_FILE = "correlation.json"
EXACT_FIGURE = "exact_vs_attribution.png"
FAITHFULNESS_FIGURE = "faithfulness.png"


def run_patch(
    lm: LoadedModel,
    task: PairTask,
    out_dir: str | Path,
    components: Sequence[str] = ("resid",),
    layers: Sequence[int] | None = None,
    direction: str = "denoising",
    batch_tokens: int = 4096,
    progress: bool = True,
    config: dict[str, Any] | None = None,
) -> tuple[PatchingResult, list[Path]]:
    """Exact activation patching → ``results.json`` + one heatmap per component (``config``:
    the stage config recorded in the result's provenance)."""
    out_dir = Path(out_dir)
    res = activation_patching(
        lm, task, components, layers, direction, batch_tokens=batch_tokens, progress=progress
    )
    res.meta["provenance"] = provenance(lm, method=res.method, direction=direction, config=config)
    res.save(out_dir)
    write_csv(out_dir / TOP_SITES_FILE, res.top(20))
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


def correlation_figure(
    exact: PatchingResult,
    approx: PatchingResult,
    path: str | Path,
    components: Sequence[str] = ("attn_out", "mlp_out"),
) -> dict[str, Any]:
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
    scatter(
        ex.flatten().tolist(),
        ap.flatten().tolist(),
        path,
        diagonal=True,
        title=f"{approx.method.replace('_', ' ')} vs exact patching\n{', '.join(comps)}: Pearson r = {r['all']:.3f}",
        xlabel="exact patching (normalised)",
        ylabel=f"{approx.method} (normalised)",
    )
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
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Attribution patching (``method="attribution"``) or integrated gradients (``"ig"``) of
    components × layers × positions; optionally against exact patching (r, scatter) and
    with a faithfulness curve of the circuits it ranks."""
    out_dir = Path(out_dir)
    if method == "ig":
        res = integrated_gradients(
            lm, task, components, layers, direction, steps, batch_tokens=batch_tokens, progress=progress
        )
    elif method == "attribution":
        res = attribution_patching(lm, task, components, layers, direction)
    else:
        raise ConfigError(f"unknown attribution method '{method}'; valid: attribution, ig")
    res.meta["provenance"] = provenance(lm, method=res.method, direction=direction, config=config)
    res.save(out_dir)
    write_csv(out_dir / TOP_SITES_FILE, res.top(20))
    out: dict[str, Any] = {"result": res, "figures": res.heatmaps(out_dir), "dir": out_dir}
    if compare_exact:
        exact = activation_patching(
            lm, task, components, layers, direction, batch_tokens=batch_tokens, progress=progress
        )
        exact.save(out_dir / EXACT_FILE)
        fig = out_dir / EXACT_FIGURE
        r = correlation_figure(exact, res, fig, components)
        write_json(
            out_dir / CORRELATION_FILE,
            {
                "pearson_r": r,
                "seconds_exact": exact.seconds,
                "seconds_estimate": res.seconds,
                "speedup": exact.seconds / max(res.seconds, 1e-9),
                "method": res.method,
            },
        )
        out.update(
            exact=exact, r=r, figures=out["figures"] + exact.heatmaps(out_dir, prefix="exact_") + [fig]
        )
    if faithfulness:
        curve = faithfulness_curve(lm, task, res, ks=ks, batch_tokens=batch_tokens)
        curve.meta["provenance"] = provenance(lm, method="faithfulness")
        curve.save(out_dir)
        out["faithfulness"] = curve
        out["figures"].append(curve.plot(out_dir / FAITHFULNESS_FIGURE))
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
    config: dict[str, Any] | None = None,
    descriptions: dict[int, str] | None = None,
) -> dict[str, Any]:
    """SAE-latent attribution at one site: error-term table, top-k latents JSON (``description``
    from ``descriptions``: explanations or dashboards, :mod:`.descriptions`), latent
    activation heatmaps (clean and corrupted), error-node scores by position, and
    optionally a faithfulness curve over SAE nodes."""
    out_dir = Path(out_dir)
    res: SAEAttribution = sae_attribution(
        lm, task, sae, site, direction, mode, keep_error, force_site=force_site
    )
    res.meta["provenance"] = provenance(
        lm, method="sae_attribution", site=str(res.site), mode=mode, config=config
    )
    paths = res.save_all(out_dir, k=top_k, descriptions=descriptions)
    write_csv(out_dir / TOP_LATENTS_FILE, res.top(top_k, include_error=True, descriptions=descriptions))
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
            figs.append(
                res.latent_heatmap_at(
                    out_dir / f"latent_heatmap_{name}.png", col, run="clean", pair_labels=pair_labels
                )
            )
    out: dict[str, Any] = {"result": res, "files": paths, "figures": figs, "dir": out_dir}
    if faithfulness:
        curve: FaithfulnessCurve = faithfulness_curve(
            lm, task, res, ks=ks, sae=sae, batch_tokens=batch_tokens
        )
        curve.meta["provenance"] = provenance(lm, method="faithfulness")
        curve.save(out_dir)
        out["faithfulness"] = curve
        figs.append(curve.plot(out_dir / FAITHFULNESS_FIGURE))
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


# ---- the stages: config → one call → result (``deltalens patch`` / ``attribute``) ------------------

PAIRS_HELP = "Pairs: a bundled set (capitals, error_types) or a JSONL file of clean/corrupted pairs."
LAYERS_HELP = "'all', '6', '6,12', '9-19' or '9:20'."


def layer_list(spec: str | None, n_layers: int) -> list[int]:
    """Layers of a spec (``all`` when empty; grammar of :func:`deltalens.parsing.parse_layers`)."""
    from ..parsing import parse_layers

    return parse_layers(spec or "all", n_layers, flag="--layers")


@dataclass
class TaskConfig(StageConfig):
    """The pair task and model shared by ``patch`` and ``attribute``."""

    pairs: str = option("capitals", flag="--pairs", short="-p", help=PAIRS_HELP)
    model: str = option("smollm2-135m-instruct", flag="--model", short="-m", help="Model spec.")
    metric: str = option(
        "logit_diff", flag="--metric", help="logit_diff (first answer token) or logprob_diff (summed)."
    )
    chat: bool = option(
        False, flag="--chat/--raw", help="Wrap prompts in the chat template (default: raw text)."
    )
    single_token: bool = option(False, flag="--single-token", help="Refuse multi-token answers.")
    limit: int | None = option(None, flag="--limit", help="Use only the first N pairs.")
    out: Path | None = option(
        None, flag="--out", short="-o", help="Write here instead of the experiment directory."
    )
    batch_tokens: int = option(4096, flag="--batch-tokens", help="Tokens per batched forward.")
    dtype: str = option("auto", flag="--dtype", help="Model dtype.")
    device: str | None = option(None, flag="--device", help="Model device.")

    def validate(self) -> None:
        from .metrics import METRICS

        one_of(self, "metric", METRICS)
        at_least(self, "limit", 1)
        at_least(self, "batch_tokens", 1)


@dataclass
class PatchConfig(TaskConfig):
    """Options of exact activation patching (``deltalens patch``)."""

    components: list[str] = option(
        default_factory=lambda: ["resid"],
        flag="--components",
        short="-c",
        help="Comma list of resid, attn_out, mlp_out.",
    )
    layers: str = option("all", flag="--layers", short="-l", help=LAYERS_HELP)
    direction: str = option(
        "denoising",
        flag="--direction",
        short="-d",
        help="denoising (clean → corrupted run) or noising (corrupted → clean run).",
    )

    def validate(self) -> None:
        from .patching import PATCH_COMPONENTS
        from .results import DIRECTIONS

        super().validate()
        if not self.components:
            raise ConfigError("--components: give at least one of resid, attn_out, mlp_out")
        one_of(self, "components", PATCH_COMPONENTS)
        one_of(self, "direction", DIRECTIONS)


ATTRIBUTION_METHODS = ("attribution", "ig")


@dataclass
class AttributeConfig(TaskConfig):
    """Options of attribution patching / integrated gradients and SAE-latent attribution
    (``deltalens attribute``)."""

    components: list[str] = option(
        default_factory=lambda: ["attn_out", "mlp_out"],
        flag="--components",
        short="-c",
        help="Comma list of resid, attn_out, mlp_out ('none' for SAE only).",
    )
    layers: str = option("all", flag="--layers", short="-l", help=LAYERS_HELP)
    direction: str = option(
        "denoising",
        flag="--direction",
        short="-d",
        help="denoising (clean → corrupted run) or noising (corrupted → clean run).",
    )
    method: str = option(
        "attribution",
        flag="--method",
        help="attribution (2 forwards + 1 backward) or ig (integrated gradients).",
    )
    steps: int = option(8, flag="--steps", help="Integrated-gradients steps (1 = plain attribution).")
    compare_exact: bool = option(
        False, flag="--compare-exact", help="Also run exact patching: Pearson r + scatter."
    )
    faithfulness: bool = option(
        False, flag="--faithfulness", help="Faithfulness/completeness curve of top-k circuits."
    )
    ks: list[int] = option(
        default_factory=list, flag="--k", help="k values for the faithfulness curve, e.g. '1,5,10,50'."
    )
    sae: Path | None = option(
        None,
        flag="--sae",
        help="SAE directory (SAELens, sparsify or dictionary_learning) for latent attribution.",
    )
    sae_site: str | None = option(
        None, flag="--sae-site", help="Site of an SAE that does not record one (default: its own)."
    )
    force_site: bool = option(
        False, flag="--force-site", help="Splice the SAE at --sae-site even if it was trained elsewhere."
    )
    mode: str = option(
        "indirect", flag="--mode", help="SAE attribution: indirect (all paths) or direct (to logits)."
    )
    keep_error: bool = option(True, flag="--error/--no-error", help="Keep the SAE error term in the splice.")
    top_k: int = option(25, flag="--top-k", help="Latents in top_latents.json.")
    latents: list[int] = option(
        default_factory=list, flag="--latents", help="Latents for the activation heatmap (default: top)."
    )

    def validate(self) -> None:
        from .patching import PATCH_COMPONENTS
        from .results import DIRECTIONS
        from .sae_attribution import MODES

        super().validate()
        self.components = [c for c in self.components if c != "none"]
        one_of(self, "components", PATCH_COMPONENTS)
        one_of(self, "direction", DIRECTIONS)
        one_of(self, "method", ATTRIBUTION_METHODS)
        one_of(self, "mode", MODES)
        at_least(self, "steps", 1)
        at_least(self, "top_k", 1)
        for k in self.ks:
            if k < 1:
                raise ConfigError(f"--k: k values must be ≥ 1, got {k}")
        if not self.components and self.sae is None:
            raise ConfigError("nothing to attribute: give --components or an --sae")


@dataclass
class CircuitRun:
    """What a circuits stage did: the task summary, the results and where they went."""

    task_rows: list[tuple[Any, ...]]
    task_title: str
    pair0: str
    mean_clean: float
    mean_corrupted: float
    result: PatchingResult | None = None
    out_dir: Path | None = None
    figures: list[Path] = field(default_factory=list)
    exact: PatchingResult | None = None
    r: dict[str, Any] | None = None
    faithfulness: FaithfulnessCurve | None = None
    sae: dict[str, Any] | None = None  # run_sae_attribute's output (result, faithfulness, figures, dir)


def _load_task(cfg: TaskConfig) -> tuple[Any, PairTask, str]:
    from ..data.pairs import load_pairs
    from ..models import load
    from .task import build_task

    records = load_pairs(cfg.pairs)
    lm = load(cfg.model, dtype=cfg.dtype, device=cfg.device)
    task = build_task(
        lm, records, metric=cfg.metric, chat=cfg.chat, single_token=cfg.single_token, limit=cfg.limit
    )
    return lm, task, Path(cfg.pairs).stem


def _task_summary(lm: Any, task: PairTask) -> CircuitRun:
    m_clean = task.run_metric(lm, "clean")
    m_corr = task.run_metric(lm, "corrupted")
    rows = [
        (
            r.id if r.id is not None else i,
            f"{r.clean_answer!r} / {r.corrupted_answer!r}",
            float(m_clean[i]),
            float(m_corr[i]),
        )
        for i, r in enumerate(task.records[:12])
    ]
    r0 = task.records[0]
    what = "first answer token" if task.metric_name == "logit_diff" else "summed answer log-prob"
    title = f"{task.n_pairs} pairs, metric {task.metric_name} ({what})" + (
        ", first 12 shown" if task.n_pairs > 12 else ""
    )
    pair0 = f"pair 0: clean {r0.clean!r} → {r0.clean_answer!r}; corrupted {r0.corrupted!r} → {r0.corrupted_answer!r}"
    return CircuitRun(rows, title, pair0, float(m_clean.mean()), float(m_corr.mean()))


def _dir(cfg: TaskConfig, experiment: Any, task_name: str, kind: str) -> Path:
    from ..experiment import Experiment

    if cfg.out is not None:
        return Path(cfg.out)
    exp = experiment if isinstance(experiment, Experiment) else Experiment.named(str(experiment))
    return exp.circuits_dir(task_name, kind)


def run_patching(config: PatchConfig, experiment: Any = "default", progress: bool = True) -> CircuitRun:
    """Exact activation patching of ``config`` (loads the model and the pairs), written to
    ``<experiment>/circuits/<pairs>/patching_<direction>/`` or ``--out``."""
    lm, task, name = _load_task(config)
    run = _task_summary(lm, task)
    run.out_dir = _dir(config, experiment, name, f"patching_{config.direction}")
    run.result, run.figures = run_patch(
        lm,
        task,
        run.out_dir,
        config.components,
        layer_list(config.layers, lm.n_layers),
        config.direction,
        batch_tokens=config.batch_tokens,
        progress=progress,
        config=config.to_dict(),
    )
    return run


def run_attribution(
    config: AttributeConfig, experiment: Any = "default", progress: bool = True
) -> CircuitRun:
    """Attribution patching / IG of ``config``'s components and, with an SAE, SAE-latent
    attribution (the SAE is checked against the model before any work)."""
    from ..errors import DataFormatError

    cfg = config
    if cfg.sae is not None and not Path(cfg.sae).exists():
        raise DataFormatError(f"{cfg.sae}: no such SAE directory")
    lm, task, name = _load_task(cfg)
    sae_obj = site = None
    if cfg.sae is not None:
        from ..sae import load_any
        from .sae_attribution import sae_site

        sae_obj = load_any(cfg.sae, device=lm.device)
        site = sae_site(lm, sae_obj, cfg.sae_site, cfg.force_site)
    run = _task_summary(lm, task)
    ks = cfg.ks or None
    if cfg.components:
        run.out_dir = _dir(cfg, experiment, name, f"{cfg.method}_{cfg.direction}")
        res = run_attribute(
            lm,
            task,
            run.out_dir,
            cfg.components,
            layer_list(cfg.layers, lm.n_layers),
            cfg.direction,
            cfg.method,
            cfg.steps,
            cfg.compare_exact,
            cfg.faithfulness,
            ks,
            cfg.batch_tokens,
            progress,
            config=cfg.to_dict(),
        )
        run.result, run.figures = res["result"], res["figures"]
        run.exact, run.r, run.faithfulness = res.get("exact"), res.get("r"), res.get("faithfulness")
    if sae_obj is not None:
        assert site is not None
        sub = f"sae_{site.component}{site.layer}_{cfg.mode}_{cfg.direction}" + (
            "" if cfg.keep_error else "_no_error"
        )
        out_dir = Path(cfg.out) / sub if cfg.out is not None else _dir(cfg, experiment, name, sub)
        run.sae = run_sae_attribute(
            lm,
            task,
            sae_obj,
            out_dir,
            site,
            cfg.direction,
            cfg.mode,
            cfg.keep_error,
            cfg.top_k,
            cfg.latents or None,
            cfg.faithfulness,
            ks,
            cfg.batch_tokens,
            force_site=cfg.force_site,
            config=cfg.to_dict(),
            descriptions=latent_descriptions(cfg.sae),
        )
    return run
