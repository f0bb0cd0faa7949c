"""SAE feature analysis: weight metrics, firing statistics, universal/specific features at
chat token types, evolution across iterative SAE series, dashboards.

* :mod:`.weights` — decoder/encoder cosine with a reference SAE, norms, max cosine with any
  other latent and its partner, JumpReLU thresholds (no data needed);
* :mod:`.firing` — streamed firing statistics over a dataset (rates, distributions,
  positions, prompt-only and dead latents, top examples) in bounded memory;
* :mod:`.universal` — the universal / specific analysis at ``asst`` / ``endheader`` /
  ``newline`` tokens with the seed's CSV and JSONL schemas;
* :mod:`.evolution` — born / died / changed / changed-back latents over M0 … Mn;
* :mod:`.dashboard` — per-latent JSON (top examples, histograms, logit effects);
* :mod:`.pipeline` — the stages (config → run → result) the CLI and the demo call.
"""

from . import describe as _describe  # noqa: F401  (registers `deltalens info` describers)
from .dashboard import FeatureDashboards, build_dashboards, logit_effects, top_logit_tokens, write_dashboards
from .evolution import Evolution, EvolutionConfig, feature_evolution, firing_rates_from_sparsity
from .firing import FiringConfig, FiringStats, firing_stats, firing_stats_many
from .inputs import NamedSAE, read_sae, read_saes
from .latents import LatentBatch, iter_latents
from .pipeline import (
    AnalysisConfig,
    DashboardConfig,
    EvolutionRunConfig,
    FiringRunConfig,
    WeightsConfig,
    run_dashboards,
    run_evolution,
    run_feature_analysis,
    run_firing,
    run_weight_metrics,
)
from .universal import (
    RECORD_KEYS,
    SPECIFIC_COLUMNS,
    UNIVERSAL_COLUMNS,
    UNIVERSAL_COLUMNS_ANNOTATED,
    FeatureRef,
    FeatureSource,
    SpecificFeatures,
    UniversalFeatures,
    analyse,
    make_sources,
    read_features_csv,
    specific_features,
    universal_features,
)
from .weights import WeightMetrics, weight_metrics

__all__ = [
    "AnalysisConfig",
    "DashboardConfig",
    "EvolutionRunConfig",
    "FiringRunConfig",
    "NamedSAE",
    "SpecificFeatures",
    "UniversalFeatures",
    "WeightsConfig",
    "read_sae",
    "read_saes",
    "run_dashboards",
    "run_evolution",
    "run_feature_analysis",
    "run_firing",
    "run_weight_metrics",
    "RECORD_KEYS",
    "SPECIFIC_COLUMNS",
    "UNIVERSAL_COLUMNS",
    "UNIVERSAL_COLUMNS_ANNOTATED",
    "Evolution",
    "FeatureDashboards",
    "EvolutionConfig",
    "FeatureRef",
    "FeatureSource",
    "FiringConfig",
    "FiringStats",
    "LatentBatch",
    "WeightMetrics",
    "analyse",
    "build_dashboards",
    "feature_evolution",
    "firing_rates_from_sparsity",
    "firing_stats",
    "firing_stats_many",
    "iter_latents",
    "logit_effects",
    "make_sources",
    "read_features_csv",
    "specific_features",
    "top_logit_tokens",
    "universal_features",
    "weight_metrics",
    "write_dashboards",
]
