"""``deltalens info`` for the protein artifacts: importing the modules registers their results
(``testbed.json``, ``datasets.json``, ``study.json``), which are then described by their own
``summary()``."""

from __future__ import annotations

from . import datasets, study, testbed  # noqa: F401 - registers the result types
