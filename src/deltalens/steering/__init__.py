"""Steering: batched sweeps, steered evaluation, coefficient search, combinations and
projection monitoring.

* :func:`generate_sweep` — many (layer, vector, coefficient) configurations as row slices
  of one greedy generation batch (:mod:`.sweep`);
* :func:`extract` — trait-vector extraction from a trait dataset (:mod:`.extraction`);
* :func:`deltalens.steering.evaluate.evaluate` — generate, judge and append results for
  candidate configurations (the module keeps its name; import the function from it);
* :func:`adaptive_search`, :func:`grid_search`, :func:`checkpoint_summary` (:mod:`.search`);
* :func:`combination_candidates`, :func:`comparison_table` — Phase 2 (:mod:`.combine`);
* :func:`project` — projection monitoring (:mod:`.monitor`);
* :func:`run_steering`, :func:`run_combinations` — what the CLI runs (:mod:`.pipeline`).
"""

from .combine import Source, combination_candidates, comparison_table
from .evaluate import Candidate, EvalSettings, Monitor, Term
from .extraction import extract, load_vector_set
from .monitor import project
from .results import ResultsLog
from .search import adaptive_search, checkpoint_summary, grid_search, per_layer_table
from .sweep import SteerConfig, SteerTerm, SweepStats, generate_sweep

__all__ = [
    "Candidate",
    "EvalSettings",
    "Monitor",
    "ResultsLog",
    "Source",
    "SteerConfig",
    "SteerTerm",
    "SweepStats",
    "Term",
    "adaptive_search",
    "checkpoint_summary",
    "combination_candidates",
    "comparison_table",
    "extract",
    "generate_sweep",
    "grid_search",
    "load_vector_set",
    "per_layer_table",
    "project",
]
