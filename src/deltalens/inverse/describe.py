"""``deltalens info`` for inverse-problem artifacts: importing the stage modules registers their
results (``collect.json``, ``filter.json``, ``cluster.json``, ``select.json``, ``optimize.json``,
``explanations.json``, ``optimize_summary.json``, ``inverse_run.json``)."""

from __future__ import annotations

from . import cluster as _cluster  # noqa: F401
from . import collect as _collect  # noqa: F401
from . import explain as _explain  # noqa: F401
from . import filter as _filter  # noqa: F401
from . import optimize as _optimize  # noqa: F401
from . import pipeline as _pipeline  # noqa: F401
