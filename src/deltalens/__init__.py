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

from ._version import __version__
from .capture import Captured, capture
from .errors import DeltalensError
from .experiment import Experiment
from .generate import Generation, Prompt, generate
from .hooks import Ablate, Add, Read, Replace, Site, Splice, batch_info, intervene
from .models.loading import LoadedModel, load
from .positions import Positions
from .store import ActivationStore

__all__ = [
    "ActivationStore",
    "Ablate",
    "Add",
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
    "__version__",
    "batch_info",
    "capture",
    "generate",
    "intervene",
    "load",
]
