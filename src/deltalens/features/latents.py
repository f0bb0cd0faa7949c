"""Streaming SAE latents over a dataset: the one forward loop every feature analysis uses.

:func:`iter_latents` runs :func:`deltalens.capture.iter_capture` at the sites of one or
more SAEs (one forward per batch for all of them, early exit after the deepest site)
and encodes each batch with every SAE. Nothing is accumulated: callers reduce each
:class:`LatentBatch` on the fly, so memory does not grow with the dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..capture import CaptureBatch, iter_capture
from ..errors import ConfigError, ShapeError, SiteError
from ..hooks import Site
from ..models.loading import LoadedModel
from ..positions import Positions
from ..sae import SAE


def sae_site(sae: SAE, site: Any = None) -> Site:
    """The site an SAE reads: ``site`` if given, else the SAE's own ``cfg.site``."""
    if site is not None:
        return Site.parse(site)
    if sae.site is None:
        raise SiteError(
            f"{sae!r} does not record its site (cfg.site); pass the site explicitly, e.g. 'resid.15'"
        )
    return Site.parse(sae.site)


def check_sae_fits(lm: LoadedModel, sae: SAE, site: Site) -> None:
    """Refuse an SAE whose width or layer does not fit the model, naming both."""
    if sae.d_in != lm.d_model:
        raise ShapeError(
            f"SAE at {site} has d_in={sae.d_in} but {lm.name} has d_model={lm.d_model}; "
            "it was trained on another model"
        )
    if site.component != "embed":
        lm.arch.check_layer(site.layer)


@dataclass
class LatentBatch:
    """Latents of one batch: ``latents[j]`` is ``[n, d_sae_j]`` for the j-th SAE; the token
    metadata (``seq_ids``, ``positions``, ``token_ids``, ``is_response``, ``prompt_lens``,
    ``seq_lens``) is in ``batch`` (a :class:`~deltalens.capture.CaptureBatch`)."""

    latents: list[torch.Tensor]
    batch: CaptureBatch

    @property
    def n(self) -> int:
        return int(self.batch.seq_ids.shape[0])


@torch.no_grad()
def iter_latents(
    lm: LoadedModel,
    saes: Sequence[SAE],
    data: Iterable[Any],
    positions: str | Positions = "all",
    *,
    sites: Sequence[Any] | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "SAE latents",
) -> Iterator[LatentBatch]:
    """Yield the SAE latents of every selected token, one batch at a time.

    Args:
        lm: the model the SAEs belong to.
        saes: one or more SAEs; each reads its ``cfg.site`` unless ``sites`` is given.
        data: anything :func:`deltalens.capture` accepts (texts, Generations, dicts).
        positions: position spec of the tokens to encode (``all``, ``response``, ``asst|newline``…).
    """
    saes = list(saes)
    if not saes:
        raise ConfigError("iter_latents needs at least one SAE")
    site_list = [sae_site(s, None if sites is None else sites[j]) for j, s in enumerate(saes)]
    for sae, site in zip(saes, site_list):
        check_sae_fits(lm, sae, site)
    unique = list(dict.fromkeys(site_list))
    for b in iter_capture(
        lm,
        data,
        unique,
        positions,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
        desc=desc,
    ):
        lat = []
        for sae, site in zip(saes, site_list):
            x = b[site]
            lat.append(sae.encode(x.to(sae.device, sae.dtype)).float())
        yield LatentBatch(lat, b)
