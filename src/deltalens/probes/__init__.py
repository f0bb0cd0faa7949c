"""Probes for key metrics: which SAE latents predict high vs low values of a metric.

* :mod:`.table` — sequence × latent tables (max / mean / fraction firing per sequence, sparse
  CSR, with the mean residual for the dense baseline), built in one streamed pass;
* :mod:`.metrics` — metrics tables (Parquet / CSV / JSONL) joined by sequence id or text, with
  unmatched keys, NaNs and constant metrics reported; high/low labels by quantiles or thresholds;
* :mod:`.fit` — :func:`fit_probe`: L1 logistic regression along a regularisation path, k-sparse
  probes, difference-in-means probes, all with stratified k-fold CV (scikit-learn);
* :mod:`.stages` — the stages ``fit`` (with dense baseline and controls), ``annotate``
  (iterative: zero the top latents and refit), ``correlate`` (importance vs latent properties
  at several activity thresholds, connected scatterplot) and ``compare`` (:mod:`.compare`:
  intra-/inter-stage, inter-metric, along a series).
"""

from . import describe as _describe  # noqa: F401  (registers `deltalens info` describers)
from .fit import METHODS, Probe, class_stats, fit_probe, random_latents_control
from .metrics import Labels, MetricsJoin, join_metrics, make_labels, read_table_file
from .stages import (
    AnnotateConfig,
    AnnotationResult,
    CompareConfig,
    CompareResult,
    CorrelateConfig,
    CorrelationResult,
    ProbeFitConfig,
    ProbeFitResult,
    annotate,
    correlate,
    fit_table,
    latent_properties,
    run_annotate,
    run_compare,
    run_correlate,
    run_probe_fit,
)
from .table import LatentTable, Sequences, as_sequences, build_latent_table, read_sequences, table_from_arrays

__all__ = [
    "METHODS",
    "AnnotateConfig",
    "AnnotationResult",
    "CompareConfig",
    "CompareResult",
    "CorrelateConfig",
    "CorrelationResult",
    "Labels",
    "LatentTable",
    "MetricsJoin",
    "Probe",
    "ProbeFitConfig",
    "ProbeFitResult",
    "Sequences",
    "annotate",
    "as_sequences",
    "build_latent_table",
    "class_stats",
    "correlate",
    "fit_probe",
    "fit_table",
    "join_metrics",
    "latent_properties",
    "make_labels",
    "random_latents_control",
    "read_sequences",
    "read_table_file",
    "run_annotate",
    "run_compare",
    "run_correlate",
    "run_probe_fit",
    "table_from_arrays",
]
