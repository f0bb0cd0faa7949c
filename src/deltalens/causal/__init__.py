"""Causal experiments with SAE latents: do the latents that predict a key metric cause it?

* **Ablation** — while the fine-tuned model ``M_i`` of an iteration generates, set a group of
  latents to zero (or their mean) and keep the SAE's error term:
  ``x ← x − Σ_j (f_j − a_j) d_j`` (:class:`deltalens.hooks.EditLatents`; an empty edit changes
  nothing, bit for bit).
* **Steering** — while the base model generates, add the group's decoder directions:
  ``x ← x + c · Σ_j s_j d_j`` (``s_j`` the latent's typical activation, or 1 with ``raw``).
* **Grid** — ``{ablation, steering} × latent groups × iterations × branches × key metrics``
  (:class:`CausalConfig`, a YAML/JSON grid file or CLI flags); groups from probe fits, a CSV
  or lists.
* **Controls** — every cell generates the same items with the same random numbers as the
  unmodified model (paired effect, bootstrap CI, sign-flip p) and is compared with random
  latent groups of the same size and matched firing rate (null band, z).

:func:`run_causal` runs a grid (cells sharing a model run as rows of one batch; one results
line per cell, resumable); :class:`CausalResult` is its summary (``causal.json``,
``summary.csv``, figures).
"""

from .config import CausalConfig
from .grid import Cell, Group, LatentStats, latent_stats, null_groups
from .results import CausalResult, summarize, summarize_dir
from .run import plan_grid, run_causal
from .stats import null_comparison, paired_effect

__all__ = [
    "CausalConfig",
    "CausalResult",
    "Cell",
    "Group",
    "LatentStats",
    "latent_stats",
    "null_comparison",
    "null_groups",
    "paired_effect",
    "plan_grid",
    "run_causal",
    "summarize",
    "summarize_dir",
]
