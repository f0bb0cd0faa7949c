"""Judges: score responses for a trait (0–100) and for coherence (0–100).

One protocol (:class:`Judge`), three backends and a shared on-disk cache:

* :class:`OpenAIJudge` — an LLM behind any OpenAI-compatible endpoint (logprob-weighted
  scores; key from the environment only);
* :class:`LocalJudge` — any model deltalens loads, scoring from its probabilities over
  candidate scores;
* :class:`OfflineJudge` — no API: a MiniLM-embedding classifier for the trait and a
  reference-model likelihood with a repetition penalty for coherence.

:func:`score` runs a judge through a :class:`JudgeCache` keyed by (judge, prompt, response).
"""

from .base import KINDS, Judge, JudgeCache, Score, TraitInfo, cache_key, render_prompt, score
from .http import JudgeAuthError, OpenAIJudge
from .local import LocalJudge
from .offline import CoherenceScorer, OfflineJudge, TraitClassifier

__all__ = [
    "KINDS",
    "CoherenceScorer",
    "Judge",
    "JudgeAuthError",
    "JudgeCache",
    "LocalJudge",
    "OfflineJudge",
    "OpenAIJudge",
    "Score",
    "TraitClassifier",
    "TraitInfo",
    "cache_key",
    "render_prompt",
    "score",
]
