"""Circuit discovery: clean/corrupted pairs, patching metrics, exact activation patching,
attribution patching and integrated gradients, SAE-latent attribution with the error
term, and faithfulness of the circuits they find.

Typical use::

    from deltalens.circuits import build_task, activation_patching, attribution_patching
    from deltalens.data.pairs import bundled_pairs

    task = build_task(lm, bundled_pairs("capitals"), metric="logit_diff")
    exact = activation_patching(lm, task, components=["resid"])        # layers × positions
    approx = attribution_patching(lm, task, components=["attn_out", "mlp_out"])
    latents = sae_attribution(lm, task, sae)                            # SAE at its own site
    curve = faithfulness_curve(lm, task, approx, ks=[1, 5, 20])
"""

from .attribution import attribution_patching, integrated_gradients
from .faithfulness import FaithfulnessCurve, faithfulness_curve
from .metrics import METRICS, answer_logprob, logit_diff, logprob_diff, normalise
from .patching import PATCH_COMPONENTS, activation_patching, cache_run, run_patches
from .results import PatchingResult, pearson
from .sae_attribution import SAEAttribution, error_term_table, sae_attribution
from .task import PairTask, build_task

__all__ = [
    "PATCH_COMPONENTS",
    "METRICS",
    "FaithfulnessCurve",
    "PairTask",
    "PatchingResult",
    "SAEAttribution",
    "activation_patching",
    "answer_logprob",
    "attribution_patching",
    "build_task",
    "cache_run",
    "error_term_table",
    "faithfulness_curve",
    "integrated_gradients",
    "logit_diff",
    "logprob_diff",
    "normalise",
    "pearson",
    "run_patches",
    "sae_attribution",
]
