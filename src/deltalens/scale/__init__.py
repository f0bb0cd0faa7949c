"""Running deltalens stages on more than one process or machine, on engines researchers run.

- :mod:`deltalens.scale.dist` — rank and world size from the ``torch.distributed`` environment
  (``torchrun``), gloo on CPU and NCCL on CUDA, the collectives the stages need.
- :mod:`deltalens.scale.capture` — capture sharded by input: one store part per rank, merged.
- SAE training data-parallel: :class:`deltalens.sae.Trainer` takes a ``world`` (all-reduced
  gradients, rank-0 checkpoints).
- :mod:`deltalens.scale.backends` — independent work units (steering configurations, …) run
  locally, on Ray, or as SLURM job arrays through submitit; results are appended as each
  finishes, so a re-run computes only what is missing.

Nothing here schedules work itself; the submodules are imported lazily.
"""

from __future__ import annotations

from typing import Any

__all__ = ["World", "capture_sharded", "init", "world_from_env"]


def __getattr__(name: str) -> Any:
    if name in ("World", "init", "world_from_env"):
        from . import dist

        return getattr(dist, name)
    if name == "capture_sharded":
        from .capture import capture_sharded

        return capture_sharded
    raise AttributeError(name)
