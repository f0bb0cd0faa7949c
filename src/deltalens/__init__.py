"""deltalens — model diffing and mechanistic interpretability for Hugging Face causal LMs.

The core API::

    import deltalens
    lm = deltalens.load("smollm2-135m-instruct")
    acts = deltalens.capture(lm, texts, sites=[(6, "resid")], positions="all")
    with deltalens.intervene(lm, [deltalens.Add((6, "resid"), v, coef=4.0, positions="response")]):
        out = deltalens.generate(lm, prompts, max_new_tokens=64)

transformers is imported on first use (loading a model), so ``import deltalens`` only pays for torch.
"""

from __future__ import annotations

import os as _os

# torch's OpenMP workers busy-wait between parallel regions by default. With more busy
# threads than cores (two processes on a 2-core machine, a test runner next to a job)
# every op then waits for a time slice; measured here: generation went from 13 tok/s to
# 1 tok/s. Passive waiting avoids that; it must be set before torch loads OpenMP, and a
# value the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._version import __version__  # noqa: E402
from .capture import CaptureConfig, Captured, capture  # noqa: E402
from .errors import DeltalensError  # noqa: E402
from .experiment import Experiment  # noqa: E402
from .generate import Generation, Prompt, generate  # noqa: E402
from .hooks import Ablate, Add, EditLatents, Read, Replace, Site, Splice, batch_info, intervene  # noqa: E402
from .models.loading import LoadedModel, load  # noqa: E402
from .positions import Positions  # noqa: E402
from .store import ActivationStore  # noqa: E402

__all__ = [
    "ActivationStore",
    "Ablate",
    "Add",
    "CaptureConfig",
    "Captured",
    "DeltalensError",
    "Experiment",
    "Generation",
    "LoadedModel",
    "Positions",
    "Prompt",
    "Read",
    "Replace",
    "Site",
    "Splice",
    "EditLatents",
    "__version__",
    "batch_info",
    "capture",
    "generate",
    "intervene",
    "load",
]
