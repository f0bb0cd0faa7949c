"""Patching metrics: one definition each.

Let ``A`` be the clean answer and ``B`` the corrupted answer of a pair, and ``z`` the
logits the model produces at the last prompt token.

* **logit difference** (``logit_diff``) — ``m = z[A₁] − z[B₁]`` with ``A₁``, ``B₁`` the
  **first tokens** of the answers (multi-token answers are scored by their first token
  only; use ``logprob_diff`` to score all of them).
* **log-prob difference** (``logprob_diff``) — ``m = Σₜ log p(Aₜ | prompt, A<ₜ) −
  Σₜ log p(Bₜ | prompt, B<ₜ)``: the **summed log-probability** of every answer token,
  teacher-forced. For single-token answers this equals ``logit_diff`` exactly (the
  softmax normaliser cancels), so the two only differ on multi-token answers.
* **normalised metric** — ``(m − m_corrupt) / (m_clean − m_corrupt)``, where
  ``m_clean``/``m_corrupt`` are the metric on the unpatched clean/corrupted runs. All
  three are first averaged over pairs (normalise the mean, not the per-pair values), so 1
  means "as on the clean run" and 0 "as on the corrupted run" whatever the direction of
  the patch.
"""

from __future__ import annotations

import torch

METRICS = ("logit_diff", "logprob_diff")


def logit_diff(last_logits: torch.Tensor, clean_tok: torch.Tensor, corrupt_tok: torch.Tensor) -> torch.Tensor:
    """``z[A₁] − z[B₁]`` per row: ``last_logits [N, V]``, token ids ``[N]`` → ``[N]``."""
    rows = torch.arange(last_logits.shape[0], device=last_logits.device)
    return last_logits[rows, clean_tok] - last_logits[rows, corrupt_tok]


def answer_logprob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed teacher-forced log-probability of the target tokens per row.

    ``logits [N, K, V]`` where column ``t`` predicts ``targets[:, t]``; ``targets [N, K]``
    with ``-1`` where there is nothing to score. Returns ``Σₜ log softmax(logits[:, t])[targets[:, t]]``.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    valid = targets >= 0
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * valid).sum(-1)


def logprob_diff(lp_clean_answer: torch.Tensor, lp_corrupt_answer: torch.Tensor) -> torch.Tensor:
    """``log p(A | prompt) − log p(B | prompt)`` from the two summed log-probabilities."""
    return lp_clean_answer - lp_corrupt_answer


def normalise(m: torch.Tensor | float, m_clean: float, m_corrupt: float) -> torch.Tensor | float:
    """``(m − m_corrupt) / (m_clean − m_corrupt)``: 1 = clean behaviour, 0 = corrupted.

    Returns NaN where ``m_clean == m_corrupt`` (the task has no signal to normalise by).
    """
    den = m_clean - m_corrupt
    if den == 0:
        return m * float("nan")
    return (m - m_corrupt) / den
