"""What deltalens needs of an SAE: :class:`SAELike`.

Splicing (:class:`deltalens.hooks.Splice`), SAE attribution
(:mod:`deltalens.circuits.sae_attribution`) and evaluation take any object with this
interface — :class:`deltalens.sae.SAE`, a SAELens ``SAE``, a wrapper of your own::

    d_in: int         width of the activations it reads
    d_sae: int        number of latents
    site: str | None  where it belongs ("resid.6"); None when it does not say
    W_dec             [d_sae, d_in] decoder directions (latent i writes W_dec[i])
    encode(x)         [..., d_in] → [..., d_sae] latents
    decode(f)         [..., d_sae] → [..., d_in] reconstruction

This module imports nothing at run time, so the core can name the type without importing
the SAE package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@runtime_checkable
class SAELike(Protocol):
    """The SAE interface (module docstring)."""

    @property
    def d_in(self) -> int: ...

    @property
    def d_sae(self) -> int: ...

    @property
    def site(self) -> str | None: ...

    @property
    def W_dec(self) -> torch.Tensor: ...

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, f: torch.Tensor) -> torch.Tensor: ...
