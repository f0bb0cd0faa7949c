"""Steering: trait-vector extraction, batched sweeps, steered evaluation, coefficient search,
combinations and projection monitoring.

Stages (config → function → typed result, :mod:`deltalens.stage`):

* :class:`ExtractConfig` → :func:`extract` → :class:`ExtractionResult` (:mod:`.extraction`);
* :class:`SteerRunConfig` → :func:`run_steering` → :class:`SteeringRun` (:mod:`.runs`);
* :class:`CombineConfig` → :func:`run_combinations` → :class:`CombinationResult` (:mod:`.runs`).

Building blocks:

* :class:`Term` / :class:`Candidate` — the one steering configuration, compiled to
  ``hooks.Add`` by :func:`~deltalens.steering.terms.interventions` (:mod:`.terms`);
* :func:`generate_sweep` — many configurations as row slices of one greedy batch (:mod:`.sweep`);
* :func:`evaluate_candidates` — generate, judge and append :class:`SteeringRecord` s to
  ``results.jsonl`` (:class:`ResultsLog`) (:mod:`.evaluate`, :mod:`.results`);
* :func:`adaptive_search`, :func:`grid_search`, :func:`checkpoint_summary` (:mod:`.search`);
* :func:`combination_candidates`, :func:`comparison_table` — Phase 2 (:mod:`.combine`);
* :func:`project` — projection monitoring (:mod:`.monitor`);
* :func:`export_control_vector`, :func:`import_control_vector` — llama.cpp control vectors (:mod:`.control`).
"""

from .combine import Source, combination_candidates, comparison_table
from .control import export_control_vector, import_control_vector
from .crosscheck import CrossCheck, cross_check
from .evaluate import EvalSettings, Monitor, evaluate_candidates
from .extraction import ExtractConfig, ExtractionResult, extract, load_vector_set
from .monitor import project
from .results import ResultsLog, SteeringRecord
from .runs import (
    CombinationResult,
    CombineConfig,
    SteeringRun,
    SteerRunConfig,
    run_combinations,
    run_steering,
)
from .search import adaptive_search, checkpoint_summary, grid_search, per_layer_table
from .study import SummaryConfig, TraitSummary, summarize_trait
from .sweep import SweepStats, generate_sweep
from .terms import Candidate, Term

__all__ = [
    "Candidate",
    "CombinationResult",
    "CombineConfig",
    "CrossCheck",
    "EvalSettings",
    "ExtractConfig",
    "ExtractionResult",
    "Monitor",
    "ResultsLog",
    "Source",
    "SteerRunConfig",
    "SteeringRecord",
    "SteeringRun",
    "SummaryConfig",
    "SweepStats",
    "Term",
    "TraitSummary",
    "adaptive_search",
    "checkpoint_summary",
    "combination_candidates",
    "comparison_table",
    "cross_check",
    "evaluate_candidates",
    "export_control_vector",
    "extract",
    "generate_sweep",
    "grid_search",
    "import_control_vector",
    "load_vector_set",
    "per_layer_table",
    "project",
    "run_combinations",
    "run_steering",
    "summarize_trait",
]
