"""Trainable SAE architectures.

All share the parameters (training layout; the inference :class:`~deltalens.sae.SAE`
gets the SAELens layout at export)::

    W_enc [d_sae, d_in]   b_enc [d_sae]   W_dec [d_sae, d_in]   b_dec [d_in]

with ``pre = (x − b_dec) W_encᵀ + b_enc`` and ``x̂ = f W_dec + b_dec``; the reconstruction
loss is ``L_rec = E_batch ‖x − x̂‖²`` (squared error summed over the ``d_in`` dimensions,
averaged over tokens — SAELens's convention). Per architecture:

``standard`` (ReLU + L1, SAELens's name; ``relu`` is accepted as another name; Anthropic,
"Towards Monosemanticity" with the April 2024 update)
    ``f = ReLU(pre)``; ``L = L_rec + λ · E_batch Σ_i f_i ‖W_dec,i‖`` (L1 weighted by the
    decoder norms, so the decoder norm is not constrained); decoder rows start at norm
    ``decoder_init_norm`` (0.1), ``W_enc = W_decᵀ``.
``topk`` (Gao et al. 2024, "Scaling and evaluating sparse autoencoders")
    ``f = ReLU(TopK_k(pre))``; ``L = L_rec + α · min(n_dead / k_aux, 1) · E‖e − ê‖²`` where
    ``e = x − x̂`` (detached) and ``ê`` is decoded (without ``b_dec``) from the ``k_aux``
    largest pre-activations of the *dead* latents only (AuxK; ``k_aux = d_in / 2``,
    ``α = 1/32``). Decoder rows are kept at unit norm (the gradient component along each
    row is removed before the step and rows are renormalised after it).
``batchtopk`` (Bussmann et al. 2024)
    as ``topk`` but the ``B·k`` largest ``ReLU(pre)`` of the whole batch are kept, so the
    number of active latents varies per token with mean ``k``. A threshold θ is tracked as
    the running mean (momentum 0.01) of the smallest kept activation per batch; at export
    the SAE becomes a ``jumprelu`` SAE with threshold θ for every latent.
``jumprelu`` (Rajamanoharan et al. 2024, "Jumping ahead")
    ``f = pre · H(pre − θ)`` with a learned per-latent threshold ``θ = exp(log θ)``;
    gradients reach θ through the straight-through estimator with a rectangle kernel of
    width ε (``jumprelu_bandwidth``). Sparsity loss on the L0 estimated the same way:
    ``λ · (L0 / L0_target − 1)²`` when ``target_l0`` is set (target-L0 variant), else
    ``λ · L0``. Unit-norm decoder rows.

Activation-norm scaling (``scale``: training sees ``s·x``) is folded into the exported
weights: ``W_enc ← s·W_enc``, ``W_dec ← W_dec / s``, ``b_dec ← b_dec / s`` (latents and
thresholds are unchanged), so the exported SAE takes raw activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import SAE, SAEConfig
from .kernels import Pattern, sparse_decode, sparse_encode

TRAIN_ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")
_ALIASES = {
    "standard": "standard",
    "relu": "standard",
    "topk": "topk",
    "batchtopk": "batchtopk",
    "batch_topk": "batchtopk",
    "jumprelu": "jumprelu",
}


def canonical_architecture(name: str) -> str:
    key = str(name).lower().replace("-", "")
    if key not in _ALIASES:
        raise ConfigError(f"unknown SAE architecture '{name}'; valid: {', '.join(TRAIN_ARCHITECTURES)}")
    return _ALIASES[key]


@dataclass
class StepOutput:
    """What one training step reports (all floats are batch means)."""

    loss: torch.Tensor
    mse: float  # E‖x − x̂‖² (training space)
    fvu: float  # mse / E‖x − E_batch x‖²
    l0: float
    aux: float = 0.0
    sparsity: float = 0.0
    fired: torch.Tensor | None = None  # [d_sae] activation counts in this batch
    extra: dict[str, float] = field(default_factory=dict)


class TrainingSAE(nn.Module):
    """Base class; see the module docstring for the architectures."""

    architecture = "base"
    unit_norm_decoder = True
    #: subtract ``b_dec`` from the input before encoding (False for transcoders, whose
    #: decoder writes another space than the encoder reads)
    b_dec_to_input = True

    def __init__(
        self, d_in: int, d_sae: int, *, k: int | None = None, dtype: torch.dtype = torch.float32, **opts: Any
    ):
        super().__init__()
        self.d_in = int(d_in)
        self.d_sae = int(d_sae)
        self.k = k
        self.opts = dict(opts)
        self.W_enc = nn.Parameter(torch.zeros(d_sae, d_in, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))

    # ---- initialisation ----------------------------------------------------------------------
    @torch.no_grad()
    def initialize(
        self, generator: torch.Generator | None = None, decoder_init_norm: float | None = None
    ) -> None:
        w = torch.randn(self.d_sae, self.d_in, generator=generator, dtype=torch.float32)
        w = w / w.norm(dim=1, keepdim=True)
        norm = (
            decoder_init_norm if decoder_init_norm is not None else (1.0 if self.unit_norm_decoder else 0.1)
        )
        self.W_dec.copy_(w * norm)
        self.W_enc.copy_(self.W_dec)
        self.b_enc.zero_()

    @torch.no_grad()
    def init_b_dec(self, sample: torch.Tensor, method: str = "median") -> None:
        """``b_dec`` ← the mean, the geometric median (Weiszfeld iterations) or zero of a sample."""
        x = sample.to(torch.float64)
        if method == "zeros":
            self.b_dec.zero_()
            return
        m = x.mean(0)
        if method == "median":
            for _ in range(50):
                dist = (x - m).norm(dim=1).clamp(min=1e-8)
                w = 1.0 / dist
                new = (w[:, None] * x).sum(0) / w.sum()
                if (new - m).norm() < 1e-6 * (m.norm() + 1e-12):
                    m = new
                    break
                m = new
        elif method != "mean":
            raise ConfigError(f"unknown b_dec init '{method}' (mean, median, zeros)")
        self.b_dec.copy_(m.to(self.b_dec.dtype))

    # ---- decoder norm handling ---------------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        if not self.unit_norm_decoder or self.W_dec.grad is None:
            return
        w, g = self.W_dec, self.W_dec.grad
        g -= (g * w).sum(1, keepdim=True) * w

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-8)

    # ---- the loss ------------------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x - self.b_dec if self.b_dec_to_input else x, self.W_enc, self.b_enc)

    def step_loss(
        self,
        x: torch.Tensor,
        *,
        dead: torch.Tensor | None = None,
        sparsity_scale: float = 1.0,
        target: torch.Tensor | None = None,
    ) -> StepOutput:
        """The loss on a batch: reconstruct ``x`` (an SAE) or ``target`` from ``x`` (a transcoder)."""
        raise NotImplementedError

    @staticmethod
    def _stats(x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        err = (x_hat - x).pow(2).sum(-1)
        mse = err.mean()
        with torch.no_grad():
            var = (x - x.mean(0)).pow(2).sum(-1).mean()
            m = float(mse.detach())
            fvu = m / max(float(var), 1e-12)
        return mse, m, fvu

    # ---- export --------------------------------------------------------------------------------
    def inference_architecture(self) -> str:
        return {"standard": "standard", "topk": "topk"}.get(self.architecture, "jumprelu")

    def inference_threshold(self) -> torch.Tensor | None:
        return None

    @torch.no_grad()
    def to_inference(self, scale: float = 1.0, **cfg_kw: Any) -> SAE:
        """The inference :class:`SAE` on *raw* activations (normalisation ``scale`` folded in)."""
        arch = self.inference_architecture()
        meta = dict(cfg_kw.pop("metadata", {}) or {})
        meta.setdefault("deltalens_training_architecture", self.architecture)
        meta["deltalens_norm_scale"] = float(scale)
        cfg = SAEConfig(
            self.d_in, self.d_sae, arch, k=self.k if arch == "topk" else None, metadata=meta, **cfg_kw
        )
        weights = {
            "W_enc": (self.W_enc.detach().float() * scale).t().contiguous(),
            "b_enc": self.b_enc.detach().float().clone(),
            "W_dec": (self.W_dec.detach().float() / scale).contiguous(),
            "b_dec": (self.b_dec.detach().float() / scale).contiguous(),
        }
        if arch == "jumprelu":
            th = self.inference_threshold()
            assert th is not None
            weights["threshold"] = th.detach().float().clone()
        return SAE.from_weights(cfg, weights)

    @torch.no_grad()
    def load_inference(self, sae: SAE, scale: float = 1.0) -> None:
        """Initialise from an inference SAE (inverse of :meth:`to_inference`), e.g. to
        fine-tune it: latent ``i`` stays latent ``i``."""
        if sae.d_in != self.d_in or sae.d_sae != self.d_sae:
            raise ConfigError(
                f"cannot initialise a d_in={self.d_in}, d_sae={self.d_sae} SAE from one with d_in={sae.d_in}, d_sae={sae.d_sae}"
            )
        dt = self.W_enc.dtype
        self.W_enc.copy_((sae.W_enc.detach().t() / scale).to(dt))
        self.b_enc.copy_(sae.b_enc.detach().to(dt))
        self.W_dec.copy_((sae.W_dec.detach() * scale).to(dt))
        self.b_dec.copy_((sae.b_dec.detach() * scale).to(dt))
        if sae.threshold is not None:
            self.set_threshold(sae.threshold.detach().to(dt))

    def set_threshold(self, threshold: torch.Tensor) -> None:
        pass


class ReLUSAE(TrainingSAE):
    architecture = "standard"
    unit_norm_decoder = False

    def step_loss(self, x, *, dead=None, sparsity_scale=1.0, target=None):
        f = torch.relu(self.pre_acts(x))
        x_hat = f @ self.W_dec + self.b_dec
        mse_t, mse, fvu = self._stats(x if target is None else target, x_hat)
        l1 = (f * self.W_dec.norm(dim=1)).sum(-1).mean()
        lam = float(self.opts.get("l1_coefficient", 5.0)) * sparsity_scale
        loss = mse_t + lam * l1
        with torch.no_grad():
            active = f > 0
            l0 = float(active.sum(-1).float().mean())
            fired = active.sum(0)
        return StepOutput(loss, mse, fvu, l0, sparsity=float(l1.detach()), fired=fired)


class TopKSAE(TrainingSAE):
    architecture = "topk"

    def _select(self, pre: torch.Tensor) -> tuple[Pattern, torch.Tensor]:
        vals, idx = pre.topk(int(self.k), dim=-1, sorted=False)  # type: ignore[arg-type]
        pattern, order = Pattern.from_topk(idx, self.d_sae)
        return pattern, vals.gather(1, order).reshape(-1)

    def _aux(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        xin: torch.Tensor,
        pre: torch.Tensor,
        dead: torch.Tensor | None,
    ) -> torch.Tensor | None:
        if dead is None:
            return None
        dead_idx = dead.nonzero().flatten()
        n_dead = int(dead_idx.numel())
        if n_dead == 0:
            return None
        k_full = int(self.opts.get("aux_k") or max(1, self.d_in // 2))
        k_aux = min(k_full, n_dead)
        scale = min(n_dead / k_full, 1.0)
        with torch.no_grad():
            vals, j = pre[:, dead_idx].topk(k_aux, dim=-1, sorted=False)
            pattern, order = Pattern.from_topk(dead_idx[j], self.d_sae)
            vals = vals.gather(1, order).reshape(-1)
        v = sparse_encode(xin, self.W_enc, self.b_enc, vals, pattern)
        e_hat = sparse_decode(v, self.W_dec, pattern)
        e = (x - x_hat).detach()
        aux = (e_hat - e).pow(2).sum(-1).mean()
        return float(self.opts.get("aux_coefficient", 1 / 32)) * scale * aux

    def step_loss(self, x, *, dead=None, sparsity_scale=1.0, target=None):
        xin = x - self.b_dec if self.b_dec_to_input else x
        y = x if target is None else target
        with torch.no_grad():
            pre = F.linear(xin, self.W_enc, self.b_enc)
            pattern, vals = self._select(pre)
        v = torch.relu(sparse_encode(xin, self.W_enc, self.b_enc, vals, pattern))
        x_hat = sparse_decode(v, self.W_dec, pattern) + self.b_dec
        mse_t, mse, fvu = self._stats(y, x_hat)
        aux = self._aux(y, x_hat, xin, pre, dead)
        loss = mse_t if aux is None else mse_t + aux
        with torch.no_grad():
            pos = (v > 0).to(x.dtype)
            fired = torch.zeros(self.d_sae, dtype=x.dtype, device=x.device).index_add_(0, pattern.col, pos)
            l0 = float(pos.sum()) / x.shape[0]
        self._last = (pattern, v.detach())
        return StepOutput(loss, mse, fvu, l0, aux=0.0 if aux is None else float(aux.detach()), fired=fired)


class BatchTopKSAE(TopKSAE):
    architecture = "batchtopk"

    def __init__(self, d_in, d_sae, **kw):
        super().__init__(d_in, d_sae, **kw)
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float64))

    def _select(self, pre: torch.Tensor) -> tuple[Pattern, torch.Tensor]:
        B = pre.shape[0]
        n = min(int(self.k) * B, pre.numel())  # type: ignore[arg-type]
        flat = torch.relu(pre).flatten()
        vals, idx = flat.topk(n, sorted=False)
        keep = vals > 0
        vals, idx = vals[keep], idx[keep]
        idx, order = idx.sort()
        vals = vals[order]
        rows, cols = idx // self.d_sae, idx % self.d_sae
        if self.training and len(vals):
            m = float(self.opts.get("threshold_momentum", 0.01))
            low = float(vals.min())
            th = float(self.threshold)
            self.threshold.fill_(low if th < 0 else (1 - m) * th + m * low)
        return Pattern.from_rows_cols(rows, cols, B, self.d_sae), pre.flatten()[idx]

    def inference_threshold(self) -> torch.Tensor:
        th = max(float(self.threshold), 0.0)
        return torch.full((self.d_sae,), th)

    @torch.no_grad()
    def calibrate_threshold(self, x: torch.Tensor) -> None:
        """θ ← the (k·n)-th largest ReLU(pre) over ``n`` rows of ``x`` (training space), so that
        the exported JumpReLU SAE has mean L0 ≈ k on such data. Replaces the running mean,
        which lags behind in short runs."""
        pre = torch.relu(self.pre_acts(x[:8192]))
        n = min(int(self.k) * pre.shape[0], pre.numel())  # type: ignore[arg-type]
        vals = pre.flatten().topk(n, sorted=False).values
        vals = vals[vals > 0]
        if len(vals):
            self.threshold.fill_(float(vals.min()))

    def set_threshold(self, threshold: torch.Tensor) -> None:
        self.threshold.fill_(float(threshold.float().mean()))


class _JumpReLU(torch.autograd.Function):
    """``z · H(z − θ)`` with straight-through gradients for θ (rectangle kernel, width ε)."""

    @staticmethod
    def forward(ctx, z, theta, eps):  # type: ignore[override]
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        gz = g * (z > theta)
        kern = ((z - theta).abs() < eps / 2).to(g.dtype) / eps
        gtheta = (-(theta / 1.0) * kern * g).sum(0)
        return gz, gtheta, None


class _Step(torch.autograd.Function):
    """``H(z − θ)`` with straight-through gradient for θ only."""

    @staticmethod
    def forward(ctx, z, theta, eps):  # type: ignore[override]
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        kern = ((z - theta).abs() < eps / 2).to(g.dtype) / eps
        return None, (-kern * g).sum(0), None


class JumpReLUSAE(TrainingSAE):
    architecture = "jumprelu"

    def __init__(self, d_in, d_sae, **kw):
        super().__init__(d_in, d_sae, **kw)
        init = float(self.opts.get("jumprelu_init_threshold", 0.1))
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(init), dtype=self.W_enc.dtype))

    @property
    def theta(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def step_loss(self, x, *, dead=None, sparsity_scale=1.0, target=None):
        eps = float(self.opts.get("jumprelu_bandwidth", 0.05))
        pre = self.pre_acts(x)
        theta = self.theta
        f = _JumpReLU.apply(pre, theta, eps)
        x_hat = f @ self.W_dec + self.b_dec
        mse_t, mse, fvu = self._stats(x if target is None else target, x_hat)
        l0_t = _Step.apply(pre, theta, eps).sum(-1).mean()
        lam = float(self.opts.get("l0_coefficient", 1.0)) * sparsity_scale
        target = self.opts.get("target_l0")
        sp = (l0_t / float(target) - 1.0) ** 2 if target else l0_t
        loss = mse_t + lam * sp
        with torch.no_grad():
            active = f != 0
            fired = active.sum(0).to(x.dtype)
        return StepOutput(loss, mse, fvu, float(l0_t.detach()), sparsity=float(sp.detach()), fired=fired)

    def inference_threshold(self) -> torch.Tensor:
        return self.theta.detach()

    @torch.no_grad()
    def init_threshold_from(self, x: torch.Tensor) -> None:
        """With a target L0, start each threshold at the ``1 − L0_target/d_sae`` quantile of its
        pre-activations on ``x``, so that training starts near the target L0."""
        target = self.opts.get("target_l0")
        if not target:
            return
        pre = self.pre_acts(x[:4096])
        q = max(0.0, min(1.0, 1.0 - float(target) / self.d_sae))
        th = torch.quantile(pre.float(), q, dim=0).clamp(min=1e-3)
        self.log_threshold.copy_(th.log().to(self.log_threshold.dtype))

    @torch.no_grad()
    def set_threshold(self, threshold: torch.Tensor) -> None:
        self.log_threshold.copy_(threshold.clamp(min=1e-6).log())


MODULES: dict[str, type[TrainingSAE]] = {
    "standard": ReLUSAE,
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "jumprelu": JumpReLUSAE,
}


def make_training_sae(
    architecture: str, d_in: int, d_sae: int, k: int | None = None, **opts: Any
) -> TrainingSAE:
    arch = canonical_architecture(architecture)
    if arch in ("topk", "batchtopk") and not k:
        raise ConfigError(f"a {arch} SAE needs k (active latents per token)")
    return MODULES[arch](d_in, d_sae, k=k, **opts)
