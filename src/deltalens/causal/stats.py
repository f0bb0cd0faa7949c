"""Effect statistics of a causal cell against its control and its null groups.

A cell and its control generate the same items (prompt ``p``, rollout ``r``) with the same
random numbers, so their scores pair up: ``d_i = y_i(cell) − y_i(control)``.

* **effect** ``Δ = mean_i d_i`` — the change of the mean metric.
* **bootstrap CI** — percentile interval of ``mean(d*)`` over ``B`` resamples of the pairs
  with replacement (95 %: the 2.5 and 97.5 percentiles).
* **permutation p** — paired sign-flip test: under "the intervention changes nothing" the two
  members of a pair are exchangeable, so ``p = (1 + #{b : |mean(s_b · d)| ≥ |Δ|}) / (1 + n)``
  over ``n`` random sign vectors ``s_b ∈ {±1}^N`` (two-sided).
* **null** — the effects ``e_1 … e_K`` of ``K`` random latent groups of the same size and
  matched firing rate: ``z = (Δ − mean(e)) / sd(e)`` (``sd`` with ``K − 1``), the band
  ``mean(e) ± 1.96·sd(e)`` (``z`` is None when every null effect is equal and ``Δ``
  differs), and ``p_null = (1 + #{k : |e_k − mean(e)| ≥ |Δ − mean(e)|}) / (1 + K)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def paired_effect(
    treated: Sequence[float],
    control: Sequence[float],
    *,
    bootstrap: int = 2000,
    permutations: int = 5000,
    seed: int = 0,
) -> dict[str, Any]:
    """``effect``, ``ci_low``/``ci_high`` (95 % bootstrap), ``p`` (sign-flip), means and ``n``."""
    t = np.asarray(treated, dtype=np.float64)
    c = np.asarray(control, dtype=np.float64)
    if t.shape != c.shape:
        raise ValueError(f"paired scores of unequal length: {t.shape} vs {c.shape}")
    n = len(t)
    if n == 0:
        return {
            "effect": None,
            "ci_low": None,
            "ci_high": None,
            "p": None,
            "mean": None,
            "control_mean": None,
            "n": 0,
        }
    d = t - c
    eff = float(d.mean())
    rng = np.random.default_rng(seed)
    if bootstrap > 0:
        boots = d[rng.integers(0, n, size=(bootstrap, n))].mean(1)
        lo, hi = (float(x) for x in np.percentile(boots, [2.5, 97.5]))
    else:
        lo = hi = eff
    if permutations > 0:
        signs = rng.choice(np.array([-1.0, 1.0]), size=(permutations, n))
        perm = np.abs((signs * d).mean(1))
        p = float((1 + np.sum(perm >= abs(eff) - 1e-12)) / (1 + permutations))
    else:
        p = None
    return {
        "effect": eff,
        "ci_low": lo,
        "ci_high": hi,
        "p": p,
        "mean": float(t.mean()),
        "control_mean": float(c.mean()),
        "n": n,
    }


def null_comparison(effect: float | None, null_effects: Sequence[float]) -> dict[str, Any]:
    """``null_mean``, ``null_sd``, ``null_low``/``null_high`` (mean ± 1.96 sd), ``z``, ``p_null``,
    ``outside_null`` and ``n_null`` (module docstring)."""
    e = np.asarray([x for x in null_effects if x is not None], dtype=np.float64)
    out: dict[str, Any] = {
        "n_null": len(e),
        "null_mean": None,
        "null_sd": None,
        "null_low": None,
        "null_high": None,
        "z": None,
        "p_null": None,
        "outside_null": None,
    }
    if effect is None or len(e) == 0:
        return out
    mu = float(e.mean())
    out["null_mean"] = mu
    out["p_null"] = float((1 + np.sum(np.abs(e - mu) >= abs(effect - mu) - 1e-12)) / (1 + len(e)))
    if len(e) >= 2:
        sd = float(e.std(ddof=1))
        out["null_sd"] = sd
        out["null_low"], out["null_high"] = mu - 1.96 * sd, mu + 1.96 * sd
        if sd > 0:
            out["z"] = (effect - mu) / sd
        elif effect == mu:
            out["z"] = 0.0  # (sd = 0 and effect ≠ mean: z is undefined, left None; the band is a point)
        out["outside_null"] = bool(effect < out["null_low"] or effect > out["null_high"])
    return out
