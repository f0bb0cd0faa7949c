"""The feature-analysis stages: a config → one function → a typed result, written into an
experiment (the ``deltalens features …`` commands and the demo call these).

=============================  =========================  ===============================
stage                          config                     result (saved as)
=============================  =========================  ===============================
universal / specific / both    :class:`AnalysisConfig`    :class:`FeatureAnalysis` holding
                                                          :class:`UniversalFeatures`,
                                                          :class:`SpecificFeatures` (CSV,
                                                          JSONL, JSON header)
firing                         :class:`FiringRunConfig`   :class:`FiringRun` of
                                                          :class:`FiringStats`
weights                        :class:`WeightsConfig`     :class:`WeightsRun` of
                                                          :class:`WeightMetrics`
evolution                      :class:`EvolutionRunConfig` :class:`EvolutionRun` of
                                                          :class:`Evolution`
dashboard                      :class:`DashboardConfig`   :class:`DashboardRun`
=============================  =========================  ===============================

Each ``run_*`` validates its inputs (config values, SAE directories, prompt files) before
it writes anything, and returns the result with the rows its summary tables show.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..stage import StageConfig, at_least, in_range, one_of, option
from .evolution import Evolution, EvolutionConfig
from .firing import FiringConfig, FiringStats
from .inputs import ModelCache, NamedSAE, read_inputs, read_prompt_set, read_sae, read_saes
from .universal import SpecificFeatures, UniversalFeatures, check_link_template
from .weights import WeightMetrics

SAE_HELP = (
    "SAE directory (SAELens, sparsify or dictionary_learning trainer_<n>), optionally named: NAME=DIR. "
    "Repeat for several."
)
ANALYSES = ("universal", "specific", "both")


def _experiment(experiment: Any) -> Any:
    from ..experiment import Experiment

    return experiment if isinstance(experiment, Experiment) else Experiment.named(str(experiment))


# ---- universal / specific ----------------------------------------------------------------------


@dataclass
class AnalysisConfig(StageConfig):
    """Options of the universal / specific analysis (see :mod:`deltalens.features.universal`)."""

    analysis: str = option("universal", flag="--analysis", help="universal, specific or both.")
    saes: list[str] = option(default_factory=list, flag="--sae", help=SAE_HELP)
    model: str | None = option(
        None, flag="--model", short="-m", help="Model spec (default: each SAE's cfg model_name)."
    )
    model_alias: str | None = option(
        None,
        flag="--model-alias",
        help="Model part of source names (default: short model name, e.g. smollm2).",
    )
    prompts_path: Path | None = option(
        None,
        flag="--prompts-path",
        help="Prompts: a .jsonl of {content, label} or a directory of them (default: bundled chat_prompts).",
    )
    threshold: float = option(
        0.3,
        flag="--threshold",
        help="Universal: minimum fraction of prompts (0-1) on which a feature is active.",
    )
    activation_threshold: float = option(
        0.01,
        flag="--activation-threshold",
        help="A feature is active on a prompt when its activation exceeds this.",
    )
    features_csv: Path | None = option(
        None, flag="--features-csv", help="Specific: CSV with feature_id, source[, token] columns."
    )
    universal_output: Path | None = option(
        None,
        flag="--universal-output",
        help="Universal features CSV (default: <experiment>/features/universal/universal_features.csv).",
    )
    specific_output: Path | None = option(
        None,
        flag="--specific-output",
        help="Specific analysis CSV (default: <experiment>/features/specific/<features-csv name>.csv).",
    )
    record_prompts: bool = option(
        False,
        flag="--record-prompts",
        help="Write {csv_basename}_activeprompts.jsonl with the prompts that activate each feature.",
    )
    token_types: list[str] = option(
        default_factory=list,
        flag="--token-types",
        help="Comma-separated token types (default: all the chat template has: asst, endheader, newline).",
    )
    annotation_columns: bool = option(
        False,
        flag="--annotation-columns",
        help="Universal CSV with empty chat_desc, pt_desc, type columns for hand annotation.",
    )
    link_template: str | None = option(
        None,
        flag="--link-template",
        help="Link column, e.g. 'https://host/?model={model}&layer={layer}&trainer={trainer}"
        "&fids={feature_id}' (default: Neuronpedia if the SAE names its neuronpedia_id).",
    )
    batch_size: int = option(16, flag="--batch-size", help="Prompts per forward pass.")
    top: int = option(15, flag="--top", help="Rows of the summary table.")
    dtype: str = option("auto", flag="--dtype", help="Model dtype.")
    device: str | None = option(None, flag="--device", help="Model device.")

    def validate(self) -> None:
        one_of(self, "analysis", ANALYSES)
        in_range(self, "threshold", 0.0, 1.0)
        at_least(self, "activation_threshold", 0.0)
        at_least(self, "batch_size", 1)
        at_least(self, "top", 0)
        if self.analysis in ("specific", "both") and self.features_csv is None:
            raise ConfigError(
                f"'features {self.analysis}' needs --features-csv (columns feature_id, source[, token])"
            )
        check_link_template(self.link_template)


@dataclass
class FeatureAnalysis:
    """What :func:`run_feature_analysis` did: the results, where they went, summary rows."""

    universal: UniversalFeatures | None
    specific: SpecificFeatures | None
    sources: list[tuple[str, str, str, int, str]]  # (source, SAE dir, site, d_sae, model)
    n_prompts: int
    prompts_name: str
    seconds: float
    universal_path: Path | None = None
    specific_path: Path | None = None
    universal_top: list[tuple[Any, ...]] = field(default_factory=list)
    universal_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    specific_top: list[tuple[Any, ...]] = field(default_factory=list)


def _universal_top(res: UniversalFeatures, by_src: dict[str, Any], top: int) -> list[tuple[Any, ...]]:
    """(source, token, feature, prompts, mean, max, top logit tokens) of the ``top`` most universal features."""
    from .dashboard import top_logit_tokens

    t = res.table
    shown = t.sort_values(["num_prompts", "activation_mean"], ascending=False).head(top)
    toks: dict[tuple[str, int], list[str]] = {}
    for src_name, grp in shown.groupby("source"):
        s = by_src[src_name]
        for f, tk in top_logit_tokens(s.lm, s.sae, grp.feature_id.tolist(), 4).items():
            toks[(src_name, f)] = tk
    return [
        (
            r.source,
            r.token,
            r.feature_id,
            f"{r.num_prompts}/{res.n_prompts}",
            r.activation_mean,
            r.activation_max,
            " ".join(repr(x) for x in toks.get((r.source, r.feature_id), [])),
        )
        for r in shown.itertuples()
    ]


def _specific_top(res: SpecificFeatures, top: int) -> list[tuple[Any, ...]]:
    """(source, token, feature, active prompts, mean, max) per specific feature, first ``top``."""
    t = res.table
    thr = res.activation_threshold
    summ = t.groupby(["source", "token", "feature_id"]).agg(
        n_active=("activation", lambda a: int((a > thr).sum())),
        mean_act=("activation", "mean"),
        max_act=("activation", "max"),
    )
    return [
        (s, k, f, f"{int(r['n_active'])}/{res.n_prompts}", float(r["mean_act"]), float(r["max_act"]))
        for (s, k, f), r in summ.head(top).iterrows()
    ]


def run_feature_analysis(
    config: AnalysisConfig, experiment: Any = "default", progress: bool = True
) -> FeatureAnalysis:
    """The universal and/or specific analysis of ``config`` (one pass over the prompts), its
    CSV/JSONL/JSON header written to the outputs (default: the experiment's paths)."""
    from ..io import provenance
    from .universal import analyse, make_sources, read_features_csv

    cfg = config
    prompts, pname = read_prompt_set(cfg.prompts_path)
    refs = read_features_csv(cfg.features_csv) if cfg.features_csv is not None else None
    exp = _experiment(experiment)
    saes = read_saes(cfg.saes)
    models = ModelCache(cfg.dtype, cfg.device)
    sources: list[Any] = []
    for s in saes:
        lm = models.for_sae(s, cfg.model)
        sources += make_sources(
            lm,
            [(s.name, s.sae)],
            model_alias=cfg.model_alias,
            link_template=cfg.link_template,
            existing=sources,
        )
    t0 = time.time()
    res = analyse(
        sources,
        prompts,
        universal=cfg.analysis in ("universal", "both"),
        features=refs,
        threshold=cfg.threshold,
        activation_threshold=cfg.activation_threshold,
        token_types=cfg.token_types or None,
        record_prompts=cfg.record_prompts,
        batch_size=cfg.batch_size,
        progress=progress,
    )
    out = FeatureAnalysis(
        res.universal,
        res.specific,
        [(src.name, str(s.path), str(src.site), src.d_sae, src.lm.name) for src, s in zip(sources, saes)],
        len(prompts),
        pname,
        time.time() - t0,
    )
    meta = {
        "config": cfg.to_dict(),
        "provenance": provenance(None, prompts=pname, sources=[s.name for s in sources]),
    }
    if res.universal is not None:
        res.universal.annotation_columns = cfg.annotation_columns
        res.universal.meta = meta
        out.universal_path = Path(cfg.universal_output or exp.universal_features_path())
        res.universal.save(out.universal_path)
        out.universal_top = _universal_top(res.universal, {s.name: s for s in sources}, cfg.top)
        out.universal_counts = {
            k: int(n) for k, n in res.universal.table.groupby(["source", "token"]).size().items()
        }
    if res.specific is not None:
        res.specific.meta = meta
        stem = Path(cfg.features_csv).stem if cfg.features_csv else "specific_features"
        out.specific_path = Path(cfg.specific_output or exp.specific_features_path(stem))
        res.specific.save(out.specific_path)
        out.specific_top = _specific_top(res.specific, cfg.top)
    return out


# ---- firing statistics ---------------------------------------------------------------------------


@dataclass
class FiringRunConfig(StageConfig):
    """Options of ``features firing``: which SAEs, which inputs, and the :class:`FiringConfig`."""

    saes: list[str] = option(default_factory=list, flag="--sae", help=SAE_HELP)
    data: Path | None = option(
        None,
        flag="--data",
        short="-d",
        help="Inputs: .txt/.jsonl texts, prompt/response pairs or generations "
        "(default: bundled chat prompts).",
    )
    model: str | None = option(
        None, flag="--model", short="-m", help="Model spec (default: the SAE's cfg model_name)."
    )
    positions: str = option("all", flag="--positions", help="Tokens counted (position spec).")
    activation_threshold: float = option(
        0.0, flag="--activation-threshold", help="Fires means activation > this."
    )
    top_k: int = option(20, flag="--top-k", help="Top examples kept per latent.")
    batch_size: int = option(16, flag="--batch-size", help="Sequences per forward pass.")
    max_length: int | None = option(None, flag="--max-length", help="Truncate inputs to this many tokens.")
    out: Path | None = option(
        None,
        flag="--out",
        short="-o",
        help="Statistics file (.safetensors; a .parquet table is written beside it).",
    )
    dtype: str = option("auto", flag="--dtype", help="Model dtype.")
    device: str | None = option(None, flag="--device", help="Model device.")

    def validate(self) -> None:
        at_least(self, "activation_threshold", 0.0)
        at_least(self, "top_k", 0)
        at_least(self, "batch_size", 1)
        at_least(self, "max_length", 1)

    def firing_config(self) -> FiringConfig:
        return FiringConfig(activation_threshold=self.activation_threshold, top_k=self.top_k)


@dataclass
class FiringRun:
    """Firing statistics of each SAE (in ``--sae`` order) and where they were written."""

    stats: list[FiringStats]
    names: list[str]
    paths: list[Path]
    dataset: str
    seconds: float

    def rows(self) -> list[tuple[Any, ...]]:
        """(SAE, tokens, mean L0, alive, dead, prompt-only, file) per SAE."""
        out = []
        for name, st, p in zip(self.names, self.stats, self.paths):
            sm = st.summary()
            out.append(
                (
                    name,
                    sm["n_tokens"],
                    f"{sm['mean_l0']:.1f}",
                    sm["alive"],
                    sm["dead"],
                    sm.get("prompt_only", "n/a (no responses)"),
                    str(p),
                )
            )
        return out

    def most_frequent(self, n: int = 10) -> list[tuple[Any, ...]]:
        """(latent, frac tokens, frac seqs, mean act, p50, p99, max, mean rank) of the first SAE's most frequent latents."""
        st = self.stats[0]
        fr = st.frac_tokens
        q = st.quantiles((0.5, 0.99))
        return [
            (
                i,
                float(fr[i]),
                float(st.frac_sequences[i]),
                float(st.mean_activation[i]),
                float(q[0, i]),
                float(q[1, i]),
                float(st.max_activation[i]),
                float(st.mean_position[i]),
            )
            for i in fr.argsort(descending=True)[:n].tolist()
        ]


def run_firing(config: FiringRunConfig, experiment: Any = "default", progress: bool = True) -> FiringRun:
    """Firing statistics of every SAE of ``config`` from one pass over the inputs."""
    from .firing import firing_stats_many

    cfg = config
    saes = read_saes(cfg.saes)
    inputs, dname = read_inputs(cfg.data)
    models = ModelCache(cfg.dtype, cfg.device)
    lms = [models.for_sae(s, cfg.model) for s in saes]
    if len({id(x) for x in lms}) > 1:
        raise ConfigError(
            "firing statistics run SAEs of one model per call; pass --model or SAEs of the same model"
        )
    exp = _experiment(experiment)
    t0 = time.time()
    stats = firing_stats_many(
        lms[0],
        [s.sae for s in saes],
        inputs,
        positions=cfg.positions,
        config=cfg.firing_config(),
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        progress=progress,
        dataset_name=dname,
    )
    dt = time.time() - t0
    paths = []
    for s, st in zip(saes, stats):
        st.meta["config"] = cfg.to_dict()
        target = (
            cfg.out if (cfg.out is not None and len(saes) == 1) else exp.firing_stats_path(s.label, dname)
        )
        paths.append(st.save(target))
    return FiringRun(stats, [s.label for s in saes], paths, dname, dt)


# ---- weight metrics ------------------------------------------------------------------------------


@dataclass
class WeightsConfig(StageConfig):
    """Options of ``features weights``."""

    sae: str = option("", flag="--sae", help="SAE directory (NAME=DIR to name it).")
    reference: str | None = option(
        None, flag="--reference", short="-r", help="Reference SAE (base / parent) with aligned latents."
    )
    out: Path | None = option(
        None, flag="--out", short="-o", help="Per-latent table (.parquet; header .json beside it)."
    )
    pairwise: bool = option(
        True,
        flag="--pairwise/--no-pairwise",
        help="Search the max cosine with another latent (--no-pairwise skips it).",
    )

    def validate(self) -> None:
        if not self.sae:
            raise ConfigError("no SAE given: pass --sae DIR")


@dataclass
class WeightsRun:
    metrics: WeightMetrics
    sae: NamedSAE
    path: Path

    def rows(self) -> list[tuple[Any, ...]]:
        """(metric, mean, p5, median, p95) of every metric."""
        return [
            (k, v["mean"], v["p5"], v["median"], v["p95"])
            for k, v in self.metrics.summary().items()
            if isinstance(v, dict)
        ]

    def similar_pairs(self, n: int = 5) -> list[tuple[int, int, float]]:
        m = self.metrics
        if m.dec_max_cos is None or m.dec_partner is None:
            return []
        return [
            (i, int(m.dec_partner[i]), float(m.dec_max_cos[i]))
            for i in m.dec_max_cos.argsort(descending=True)[:n].tolist()
        ]


def run_weight_metrics(config: WeightsConfig, experiment: Any = "default") -> WeightsRun:
    """Weight metrics of one SAE (optionally against a reference), saved as table + header."""
    from ..io import provenance
    from .weights import weight_metrics

    s = read_sae(config.sae)
    ref = read_sae(config.reference) if config.reference else None
    m = weight_metrics(s.sae, ref.sae if ref else None, pairwise=config.pairwise)
    m.meta = {"config": config.to_dict(), "provenance": provenance(None, sae=str(s.path))}
    target = config.out or _experiment(experiment).weight_metrics_path(s.label)
    m.save(target)
    return WeightsRun(m, s, WeightMetrics.paths(target)[0])


# ---- evolution -----------------------------------------------------------------------------------


@dataclass
class EvolutionRunConfig(StageConfig):
    """Options of ``features evolution``: the series, where firing rates come from, the thresholds."""

    saes: list[str] = option(
        default_factory=list,
        flag="--sae",
        help="The series in order, NAME=DIR (e.g. M0D0=saes/m0 M1D1=saes/m1).",
    )
    models: list[str] = option(
        default_factory=list,
        flag="--model",
        short="-m",
        help="Model(s) for firing rates: one for all SAEs, or one per SAE in order.",
    )
    data: Path | None = option(
        None, flag="--data", short="-d", help="Inputs for firing rates (default: bundled chat prompts)."
    )
    from_sparsity: bool = option(
        False,
        flag="--from-sparsity",
        help="Firing rates from each SAE's sparsity.safetensors instead of running a model.",
    )
    change_threshold: float = option(
        0.9,
        flag="--change-threshold",
        help="Decoder cosine with the previous iteration below this = changed.",
    )
    alive_threshold: float = option(0.0, flag="--alive-threshold", help="Firing rate above this = alive.")
    batch_size: int = option(16, flag="--batch-size", help="Sequences per forward pass.")
    name: str = option("series", flag="--name", help="Series name (output directory).")
    out: Path | None = option(
        None,
        flag="--out",
        short="-o",
        help="Output directory (default: <experiment>/features/evolution/<name>).",
    )
    dtype: str = option("auto", flag="--dtype", help="Model dtype.")
    device: str | None = option(None, flag="--device", help="Model device.")

    def validate(self) -> None:
        EvolutionConfig(self.change_threshold, self.alive_threshold)
        at_least(self, "batch_size", 1)
        n = len(self.saes)
        if self.models and len(self.models) not in (1, n):
            raise ConfigError(f"--model: give one model or one per SAE ({n}), got {len(self.models)}")


@dataclass
class EvolutionRun:
    evolution: Evolution
    paths: dict[str, Path]

    def rows(self) -> tuple[list[str], list[tuple[Any, ...]]]:
        """(columns, rows) of the per-iteration table."""
        table = self.evolution.summary_table()
        return list(table[0].keys()), [tuple(r.values()) for r in table]

    def status_rows(self) -> list[tuple[str, int, str]]:
        ev = self.evolution
        return [(k, v, ", ".join(map(str, ev.latents_with(k)[:8]))) for k, v in ev.counts().items() if v]


def run_evolution(
    config: EvolutionRunConfig, experiment: Any = "default", progress: bool = True
) -> EvolutionRun:
    """Born / died / changed latents over the series (firing rates from a model or from sparsity files)."""
    from .evolution import feature_evolution, firing_rates_from_sparsity
    from .firing import firing_stats

    cfg = config
    saes = read_saes(cfg.saes)
    if cfg.from_sparsity:
        rates = firing_rates_from_sparsity([s.path for s in saes])
        if rates is None:
            raise ConfigError("--from-sparsity: every SAE directory needs a sparsity.safetensors")
    else:
        models = ModelCache(cfg.dtype, cfg.device)
        inputs, _ = read_inputs(cfg.data)
        rs = []
        for j, s in enumerate(saes):
            spec = cfg.models[j] if len(cfg.models) == len(saes) else (cfg.models[0] if cfg.models else None)
            lm = models.for_sae(s, spec)
            rs.append(
                firing_stats(
                    lm, s.sae, inputs, config=None, batch_size=cfg.batch_size, progress=progress
                ).frac_tokens.float()
            )
        rates = rs
    ev = feature_evolution(
        [s.sae for s in saes],
        [s.label for s in saes],
        rates,
        EvolutionConfig(cfg.change_threshold, cfg.alive_threshold),
    )
    ev.meta["config"] = cfg.to_dict()
    target = cfg.out or _experiment(experiment).evolution_dir(cfg.name)
    return EvolutionRun(ev, ev.save_all(target))


# ---- dashboards ----------------------------------------------------------------------------------


@dataclass
class DashboardConfig(StageConfig):
    """Options of ``features dashboard``."""

    sae: str = option("", flag="--sae", help="SAE directory (NAME=DIR to name it).")
    data: Path | None = option(
        None, flag="--data", short="-d", help="Inputs (default: bundled chat prompts)."
    )
    model: str | None = option(
        None, flag="--model", short="-m", help="Model spec (default: the SAE's cfg model_name)."
    )
    features: list[int] = option(
        default_factory=list,
        flag="--features",
        help="Comma-separated latent ids (default: every latent that fires).",
    )
    n_examples: int = option(20, flag="--examples", help="Top examples per latent.")
    context: list[int] = option(
        default_factory=lambda: [12, 4],
        flag="--context",
        help="Tokens before,after the firing token in each example.",
    )
    batch_size: int = option(16, flag="--batch-size", help="Sequences per forward pass.")
    out: Path | None = option(
        None,
        flag="--out",
        short="-o",
        help="Output directory (default: <experiment>/features/dashboards/<sae>/<data>).",
    )
    dtype: str = option("auto", flag="--dtype", help="Model dtype.")
    device: str | None = option(None, flag="--device", help="Model device.")

    def validate(self) -> None:
        if not self.sae:
            raise ConfigError("no SAE given: pass --sae DIR")
        if len(self.context) != 2 or min(self.context) < 0:
            raise ConfigError(f"--context must be two integers 'before,after' ≥ 0, got {self.context!r}")
        at_least(self, "n_examples", 1)
        at_least(self, "batch_size", 1)


@dataclass
class DashboardRun:
    dashboards: Any  # FeatureDashboards
    stats: FiringStats
    index: Path
    seconds: float

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.dashboards.records

    def rows(self, n: int = 10) -> list[tuple[Any, ...]]:
        """(latent, frac tokens, max, top logit tokens, top example) of the ``n`` most frequent latents."""
        return [
            (
                r["index"],
                r["frac_nonzero"],
                r["maxActApprox"],
                " ".join(repr(t) for t in r["pos_str"][:4]),
                "".join(r["activations"][0]["tokens"]).replace("\n", "⏎")[-40:] if r["activations"] else "",
            )
            for r in sorted(self.records, key=lambda r: -r["frac_nonzero"])[:n]
        ]


def run_dashboards(
    config: DashboardConfig, experiment: Any = "default", progress: bool = True
) -> DashboardRun:
    """Per-latent dashboard JSON for the SAE of ``config``."""
    from ..io import provenance
    from .dashboard import FeatureDashboards, build_dashboards

    s = read_sae(config.sae)
    lm = ModelCache(config.dtype, config.device).for_sae(s, config.model)
    inputs, dname = read_inputs(config.data)
    t0 = time.time()
    left, right = config.context
    recs, stats = build_dashboards(
        lm,
        s.sae,
        inputs,
        config.features or None,
        n_examples=config.n_examples,
        left=left,
        right=right,
        batch_size=config.batch_size,
        dataset_name=dname,
        progress=progress,
    )
    target = config.out or _experiment(experiment).dashboard_dir(s.label, dname)
    dash = FeatureDashboards(recs, provenance(lm, sae=str(s.path), dataset=dname, config=config.to_dict()))
    return DashboardRun(dash, stats, dash.save(target), time.time() - t0)
