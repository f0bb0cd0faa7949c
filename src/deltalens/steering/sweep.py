"""Batched steering sweeps: many (layer, vector, coefficient) configurations as row
slices of one greedy generation batch.

:func:`generate_sweep` runs ``C`` configurations × ``P`` prompts. Row ``r = c·P + p`` is
prompt ``p`` under configuration ``c``; each configuration is a list of
:class:`~deltalens.steering.Term` (a :class:`~deltalens.steering.Candidate`; ensembles over
several layers are one configuration), applied through :func:`deltalens.intervene` with
per-row ``Add`` interventions (:func:`deltalens.steering.terms.interventions`: one ``Add``
per site, vectors ``[R, d]`` and coefficients ``[R]``). The batch itself — shared prefill,
KV-cache expansion, rows dropped as they finish — is :func:`deltalens.batched.generate_batched`;
configuration by configuration the outputs equal :func:`deltalens.generate` under the same
interventions (tested row for row).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..batched import SweepStats, generate_batched
from ..generate import Generation
from ..models.loading import LoadedModel
from ..positions import Positions
from .terms import Candidate, interventions, needed_norms

__all__ = ["SweepStats", "generate_sweep"]


def generate_sweep(
    lm: LoadedModel,
    prompts: Iterable[Any],
    configs: Sequence[Candidate],
    *,
    norms: dict[int, float] | None = None,
    system: str | Sequence[str | None] | None = None,
    max_new_tokens: int = 64,
    positions: str | Positions = "response",
    max_rows: int = 256,
    chat: bool | str = "auto",
    share_prefill: bool | None = None,
    progress: bool = True,
    stats: SweepStats | None = None,
) -> list[list[Generation]]:
    """Greedy generation of every prompt under every configuration, batched.

    Args:
        prompts: as for :func:`deltalens.generate` (strings, dicts, :class:`~deltalens.Prompt`).
        configs: the configurations (:class:`~deltalens.steering.Candidate`); ``Candidate()``
            is the unsteered baseline.
        norms: reference norms of the layers relative terms steer (default: measured,
            :func:`~deltalens.steering.terms.needed_norms`).
        positions: where the terms are added (position language); ``response`` steers every
            generated token and no prompt token.
        max_rows: upper bound on rows per batch; configurations are split into chunks of
            whole configurations.
        share_prefill: prefill prompts once for all configurations (default: when the
            positions select no prompt token; forcing it otherwise raises).

    Returns:
        ``out[c][p]``: the :class:`~deltalens.Generation` of prompt ``p`` under config ``c``
        (``meta["config"] = c``).
    """
    pos = Positions.parse(positions)
    configs = list(configs)
    if norms is None and configs:
        norms = needed_norms(lm, configs)

    def make(chunk: list[int], row0: list[int], n_items: int) -> list[Any]:
        return interventions([configs[c] for c in chunk], norms or {}, pos, row0=row0, n_prompts=n_items)

    return generate_batched(
        lm,
        prompts,
        len(configs),
        make,
        positions=pos,
        system=system,
        max_new_tokens=max_new_tokens,
        max_rows=max_rows,
        chat=chat,
        share_prefill=share_prefill,
        progress=progress,
        stats=stats,
        desc="steer",
    )
