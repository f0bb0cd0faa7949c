"""Inverse problems: inputs that maximise a feature.

Stages (each a config → one function → a typed result with save/load, :mod:`deltalens.stage`):

* :mod:`.collect` — prompts × latents max/mean activation (sparse CSR, streamed), per-latent stats;
* :mod:`.filter` — keep latents by prompt/token entropy and a firing-rate band;
* :mod:`.cluster` — UMAP + DBSCAN/HDBSCAN over activation profiles or decoder directions, cluster
  analysis, and selection of representative latents;
* :mod:`.optimize` — discrete EPO with GCG-style swaps and continuous soft prompts, every result
  re-tokenised and re-scored as text (:mod:`.score` targets: SAE latents, directions, crosscoder
  latents, logit differences);
* :mod:`.explain` — offline explanations (top contexts, tokens, n-grams, logit effects),
  simulation scoring, optional LLM explanations through the judge client;
* :mod:`.viz` — cluster map (interactive HTML), optimisation progress, token heatmaps;
* :mod:`.pipeline` — notebook-style stage functions and the batch ``run_experiment(config)``.
"""

from . import describe as _describe  # noqa: F401
from .cluster import (
    AnalyzeConfig,
    ClusterAnalysis,
    ClusterConfig,
    ClusterResult,
    SelectConfig,
    Selection,
    cluster_latents,
)
from .collect import CollectConfig, CollectResult, collect, load_prompts
from .explain import ExplainConfig, ExplainResult, apply_to_dashboards, explain_latents, write_for_sae
from .filter import FilterConfig, FilterResult, filter_latents
from .optimize import OptimizeConfig, OptimizeResult, epo, optimize, soft_prompt
from .pipeline import (
    ExperimentResults,
    InverseRun,
    OptimizeSummary,
    analyze_clusters,
    collect_and_filter_data,
    generate_explanations,
    get_default_config,
    load_experiment_models,
    optimize_feature,
    run_clustering,
    run_experiment,
    select_features,
    update_config,
    visualize_results,
)
from .score import CrosscoderTarget, DirectionTarget, LatentTarget, LogitDiffTarget, Target

__all__ = [
    "ExperimentResults",
    "InverseRun",
    "OptimizeSummary",
    "collect_and_filter_data",
    "generate_explanations",
    "get_default_config",
    "load_experiment_models",
    "optimize_feature",
    "run_clustering",
    "run_experiment",
    "update_config",
    "visualize_results",
    "ExplainConfig",
    "ExplainResult",
    "apply_to_dashboards",
    "explain_latents",
    "write_for_sae",
    "AnalyzeConfig",
    "ClusterAnalysis",
    "ClusterConfig",
    "ClusterResult",
    "SelectConfig",
    "Selection",
    "analyze_clusters",
    "cluster_latents",
    "select_features",
    "CollectConfig",
    "CollectResult",
    "CrosscoderTarget",
    "DirectionTarget",
    "FilterConfig",
    "FilterResult",
    "LatentTarget",
    "LogitDiffTarget",
    "OptimizeConfig",
    "OptimizeResult",
    "Target",
    "collect",
    "epo",
    "filter_latents",
    "load_prompts",
    "optimize",
    "soft_prompt",
]
