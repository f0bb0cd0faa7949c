"""Studies: one YAML file lists the stages of a whole study; ``deltalens run STUDY.yaml`` runs
them in dependency order, loads every stage whose config and inputs are unchanged from its saved
result, and ends with the report.

* :mod:`.spec` — parse and validate a study file (file, line and key in every error), references
  ``${stage.output}``, dependency order, cache keys;
* :mod:`.registry` / :mod:`.stages` — the stage types: adapters over the existing stage functions;
* :mod:`.runner` — run, cache, provenance, ``deltalens info`` of a study directory;
* :mod:`.presets` — bundled study files (``deltalens run --preset diff-study``).
"""

from __future__ import annotations

from .presets import PRESETS, preset_path, write_preset
from .registry import STAGE_TYPES, StageContext, StageType, register_stage, stage_type
from .runner import CALLS, StageOutcome, plan, run_study, study_status
from .spec import Study, load_study, parse_study, stage_hashes

__all__ = [
    "CALLS",
    "PRESETS",
    "STAGE_TYPES",
    "StageContext",
    "StageOutcome",
    "StageType",
    "Study",
    "load_study",
    "parse_study",
    "plan",
    "preset_path",
    "register_stage",
    "run_study",
    "stage_hashes",
    "stage_type",
    "study_status",
    "write_preset",
]
