"""The inference-time SAE: encode, decode, metadata.

Every SAE deltalens trains or reads is, at inference, one :class:`SAE` with the
SAELens parameter names and shapes::

    W_enc [d_in, d_sae]   b_enc [d_sae]   W_dec [d_sae, d_in]   b_dec [d_in]
    threshold [d_sae]     (JumpReLU only)

and one of three activation functions (``cfg.architecture``):

* ``standard`` (ReLU; ``relu`` is accepted as another name):  f = ReLU(pre)
* ``topk``:             f = ReLU(TopK_k(pre)) — the k largest pre-activations per token kept
* ``jumprelu``:         f = ReLU(pre) · 1[pre > threshold]  (as SAELens; BatchTopK SAEs are saved this way)

with ``pre = (x − b_dec·apply_b_dec_to_input) @ W_enc + b_enc`` and the decoder
``x̂ = f @ W_dec + b_dec``.

``cfg.site`` (e.g. ``"resid.15"``) and ``cfg.model_name`` record where the SAE belongs;
:class:`deltalens.Splice` refuses an SAE spliced at another site, and its ``d_in`` must
equal the model's width.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ShapeError

ARCHITECTURES = ("standard", "topk", "jumprelu")
#: other names of the same inference architectures (``relu``: the vanilla ReLU + L1 SAE, the
#: name deltalens' trainer used before it took SAELens's ``standard``); read from any cfg.json
ARCH_ALIASES = {"relu": "standard"}


@dataclass
class SAEConfig:
    d_in: int
    d_sae: int
    architecture: str = "standard"
    k: int | None = None
    apply_b_dec_to_input: bool = True
    site: str | None = None
    model_name: str | None = None
    dtype: str = "float32"
    normalize_activations: str = "none"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.architecture = ARCH_ALIASES.get(self.architecture, self.architecture)
        if self.architecture not in ARCHITECTURES:
            raise ShapeError(
                f"unknown SAE architecture '{self.architecture}'; valid: {', '.join(ARCHITECTURES)}"
            )
        if self.architecture == "topk" and not self.k:
            raise ShapeError("a topk SAE needs k")
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ShapeError(f"SAE sizes must be positive (d_in={self.d_in}, d_sae={self.d_sae})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SAE(nn.Module):
    """Inference SAE (see module docstring). Construct from a :class:`SAEConfig`."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        dt = getattr(torch, cfg.dtype)
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, dtype=dt))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dt))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt))
        else:
            self.threshold = None

    # ---- facts -----------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def site(self) -> str | None:
        return self.cfg.site

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def __repr__(self) -> str:
        k = f", k={self.cfg.k}" if self.cfg.k else ""
        return f"SAE({self.cfg.architecture}, d_in={self.d_in}, d_sae={self.d_sae}{k}, site={self.site})"

    # ---- maths -----------------------------------------------------------------------------
    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``(x − b_dec) @ W_enc + b_enc``."""
        if x.shape[-1] != self.d_in:
            raise ShapeError(f"SAE input has width {x.shape[-1]}, expected d_in={self.d_in}")
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        arch = self.cfg.architecture
        if arch == "standard":
            return torch.relu(pre)
        if arch == "topk":
            k = min(int(self.cfg.k), pre.shape[-1])  # type: ignore[arg-type]
            vals, idx = pre.topk(k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        assert self.threshold is not None
        return torch.relu(pre) * (pre > self.threshold)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``f`` (``[..., d_sae]``)."""
        return self.activation(self.encode_pre(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``f @ W_dec + b_dec``."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_weights(cls, cfg: SAEConfig, weights: dict[str, torch.Tensor]) -> SAE:
        """Build from a state dict with SAELens names; shapes are checked."""
        sae = cls(cfg)
        expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
        missing = [k for k in expected if k not in weights]
        if missing:
            raise ShapeError(f"SAE weights lack {', '.join(missing)}")
        for k, shape in expected.items():
            if tuple(weights[k].shape) != shape:
                raise ShapeError(f"SAE weight {k} has shape {tuple(weights[k].shape)}, expected {shape}")
        sae.load_state_dict({k: weights[k].to(getattr(torch, cfg.dtype)) for k in expected})
        return sae

    def save(self, path: Any, sparsity: torch.Tensor | None = None) -> Any:
        """Write a SAELens-compatible directory (see :mod:`deltalens.sae.io`)."""
        from .io import save_sae

        return save_sae(self, path, sparsity=sparsity)

    @classmethod
    def load(cls, path: Any, device: str | torch.device = "cpu") -> SAE:
        from .io import load_sae

        return load_sae(path, device=device)
