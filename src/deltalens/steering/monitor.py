"""Projection monitoring: how strongly a response's activations point along a trait vector.

``projection = x̄ · v̂`` where ``v̂ = v / ‖v‖`` and ``x̄`` is the activation at the
vector's site, averaged over the response tokens (``positions="response"``,
``reduce="mean"``, the default) or taken at the last prompt token
(``positions="prompt[-1]"``, ``reduce="last"`` — a prediction made before the model
answers). Activations come from a forward pass of the *unsteered* model over the text,
so the number says whether the text itself carries the direction (persona-vector
monitoring), not how hard it was pushed. Responses with no selected token get ``nan``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..capture import capture
from ..hooks import Site

if TYPE_CHECKING:
    from ..models.loading import LoadedModel


@torch.no_grad()
def project(
    lm: LoadedModel,
    items: Sequence[Any],
    vector: torch.Tensor,
    site: Any,
    *,
    positions: str = "response",
    reduce: str = "mean",
    batch_size: int = 16,
) -> torch.Tensor:
    """``[N]`` projections of ``items`` (Generations, prompt/response pairs, dicts) on ``vector``."""
    s = Site.parse(site)
    v = torch.as_tensor(vector).detach().float()
    v = v / v.norm().clamp(min=1e-12)
    if not len(items):
        return torch.zeros(0)
    acts = capture(lm, list(items), [s], positions, reduce=reduce, batch_size=batch_size, progress=False)
    out = torch.full((len(items),), float("nan"))
    sel = acts.n_selected > 0
    out[sel] = acts[s].float() @ v
    return out
