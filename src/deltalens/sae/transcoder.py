"""Per-layer MLP transcoders: an SAE whose encoder reads the MLP's input and whose decoder
writes the MLP's output (Dunefsky et al. 2024, "Transcoders find interpretable LLM feature
circuits"; Ameisen et al. 2025 use them to build attribution graphs).

* **input** ``x`` = what the MLP module reads (the normalised residual stream, after the
  pre-MLP norm); **target** ``y`` = what it writes (``mlp_out`` of the layer; behind
  Gemma's post-MLP norm, the MLP module's own output);
* ``ŷ = decode(encode(x)) + x @ W_skip`` — the skip connection is optional; when asked for,
  ``W_skip`` is fitted first and the sparse part is trained on ``y − x W_skip``. Two fits:
  ``"jacobian"`` (default), the MLP's mean input–output Jacobian over a sample of rows,
  ``W_skip = (1/n) Σ_i J(x_i)ᵀ`` with ``J(x) = ∂mlp(x)/∂x`` (:func:`mean_jacobian`) — the
  first-order part of the MLP around the data, so a linearised graph passes an input
  through the skip with the gain the model has; or ``"lstsq"``, the least-squares map
  ``x → y`` (ridge ``r·tr(XᵀX)/d``, :func:`fit_skip`), which explains more variance but
  whose gains along low-variance directions reach 10× the Jacobian's (SmolLM2: spectral
  norm 1206 vs 102 at layer 28) and compound over layers in a graph;
* trained with the SAE trainer (:class:`deltalens.sae.train.Trainer` with a target), saved
  in the SAELens layout (``cfg.json`` with ``metadata.hook_name`` = the input hook
  ``blocks.L.ln2.hook_normalized`` and ``metadata.hook_name_out`` = ``blocks.L.hook_mlp_out``;
  ``W_skip`` inside ``sae_weights.safetensors`` as SAELens's skip transcoders store it);
* **normalised MSE** (fraction of variance unexplained) ``‖y − ŷ‖² / ‖y − ȳ‖²`` summed over
  rows and dimensions (:func:`transcoder_nmse`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ConfigError, DataFormatError
from ..io import atomic_write, load_tensors
from .base import SAE, SAEConfig
from .io import CFG, WEIGHTS, load_sae, saelens_cfg, save_sae

if TYPE_CHECKING:
    from ..models.loading import LoadedModel
    from .train import SAETrainConfig


class Transcoder(SAE):
    """An SAE-layout transcoder with an optional skip connection ``W_skip [d_in, d_in]``."""

    def __init__(self, cfg: SAEConfig, skip: bool = False):
        super().__init__(cfg)
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_in, dtype=self.W_enc.dtype)) if skip else None

    @property
    def layer(self) -> int:
        return int(str(self.cfg.site).rpartition(".")[2])

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W_skip`` (zeros without a skip connection)."""
        if self.W_skip is None:
            return torch.zeros_like(x)
        return x @ self.W_skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)) + self.skip(x)

    @classmethod
    def from_sae(cls, sae: SAE, w_skip: torch.Tensor | None = None) -> Transcoder:
        tc = cls(sae.cfg, skip=w_skip is not None)
        state = {k: v for k, v in sae.state_dict().items() if k != "W_skip"}
        if w_skip is not None:
            state["W_skip"] = w_skip.to(tc.W_enc.dtype)
        tc.load_state_dict(state)
        return tc

    def save(self, path: Any, sparsity: torch.Tensor | None = None) -> Any:
        return save_transcoder(self, path, sparsity)

    def __repr__(self) -> str:
        return f"Transcoder({self.cfg.architecture}, d_in={self.d_in}, d_sae={self.d_sae}, layer={self.layer}, skip={self.W_skip is not None})"  # noqa: E501


def _metadata(layer: int, skip: bool) -> dict[str, Any]:
    return {
        "transcoder": True,
        "hook_name": f"blocks.{layer}.ln2.hook_normalized",
        "hook_name_out": f"blocks.{layer}.hook_mlp_out",
        "skip_connection": skip,
        "deltalens_input": "MLP module input (after the pre-MLP norm)",
    }


def save_transcoder(tc: Transcoder, path: str | Path, sparsity: torch.Tensor | None = None) -> Path:
    """Write a SAELens directory (``W_skip`` among the weights when present)."""
    tc.cfg.metadata.update(_metadata(tc.layer, tc.W_skip is not None))
    tc.cfg.metadata["d_out"] = tc.d_in
    save_sae(tc, path, sparsity)
    cfg = saelens_cfg(tc)
    cfg["d_out"] = tc.d_in
    atomic_write(Path(path) / CFG, json.dumps(cfg, indent=2) + "\n")
    return Path(path)


def load_transcoder(path: str | Path, device: str | torch.device = "cpu") -> Transcoder:
    """Read a transcoder directory written by :func:`save_transcoder` (or a SAELens transcoder
    whose ``cfg.json`` names ``hook_name_out``)."""
    sae = load_sae(path, device=device)
    meta = sae.cfg.metadata
    if not meta.get("transcoder") and not meta.get("hook_name_out"):
        raise DataFormatError(f"not a valid transcoder: {path} (cfg.json names no output hook)")
    w = load_tensors(Path(path) / WEIGHTS).get("W_skip")
    return Transcoder.from_sae(sae, w).to(device)


def transcoder_pairs(
    lm: LoadedModel,
    windows: Sequence[Any],
    layers: Sequence[int],
    batch_size: int = 8,
    drop_first: bool = False,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """``{layer: (x [n, d], y [n, d])}``: MLP inputs and outputs on every real token of
    ``windows`` (token-id lists or ``{"prompt_ids": [...]}`` records), one forward per batch;
    ``drop_first`` leaves out each window's first token (the attention sink, whose
    activations are orders of magnitude larger and which attribution graphs hold constant)."""
    from ..generate import position_ids
    from ..hooks import MLPRead, intervene

    seqs = [list(w["prompt_ids"]) if isinstance(w, dict) else list(w) for w in windows]
    if not seqs:
        raise ConfigError("no token windows to collect transcoder training pairs from")
    out: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {layer: ([], []) for layer in layers}
    pad = (
        lm.tokenizer.pad_token_id if lm.tokenizer is not None and lm.tokenizer.pad_token_id is not None else 0
    )
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i : i + batch_size]
        T = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), T), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, s in enumerate(chunk):
            ids[j, T - len(s) :] = torch.tensor(s)
            mask[j, T - len(s) :] = 1
        reads = [MLPRead(layer, "all[1:]" if drop_first else "all") for layer in layers]
        with torch.no_grad(), intervene(lm, reads):
            lm.model(
                input_ids=ids.to(lm.device),
                attention_mask=mask.to(lm.device),
                position_ids=position_ids(mask).to(lm.device),
                use_cache=False,
            )
        for layer, r in zip(layers, reads):
            x, y = r.pairs[-1]
            out[layer][0].append(x.float().cpu())
            out[layer][1].append(y.float().cpu())
    return {layer: (torch.cat(xs), torch.cat(ys)) for layer, (xs, ys) in out.items()}


def fit_skip(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """Least-squares ``W [d, d]`` with ``y ≈ x W`` (ridge ``ridge·tr(XᵀX)/d``)."""
    x64, y64 = x.double(), y.double()
    g = x64.T @ x64
    lam = ridge * float(torch.trace(g)) / g.shape[0]
    return torch.linalg.solve(g + lam * torch.eye(g.shape[0], dtype=g.dtype), x64.T @ y64).float()


def mean_jacobian(
    mlp: nn.Module, x: torch.Tensor, n_rows: int = 256, chunk: int = 16, seed: int = 0
) -> torch.Tensor:
    """``W [d_in, d_out]`` with ``W = (1/n) Σ_i J(x_i)ᵀ``, ``J(x) = ∂mlp(x)/∂x`` the MLP's
    Jacobian at ``n = min(n_rows, len(x))`` rows drawn (seeded) from ``x``, so that
    ``x @ W`` is the MLP's mean first-order response. Computed with ``torch.func``
    (``vmap`` of ``jacrev``) ``chunk`` rows at a time, in float32 on the MLP's device."""
    from torch.func import functional_call, jacrev, vmap

    g = torch.Generator().manual_seed(seed)
    rows = x[torch.randperm(len(x), generator=g)[: max(1, min(n_rows, len(x)))]]
    p0 = next(mlp.parameters())
    params = {k: v.detach().float() for k, v in mlp.named_parameters()}
    buffers = {k: v.float() for k, v in mlp.named_buffers()}

    def f(v: torch.Tensor) -> torch.Tensor:
        return functional_call(mlp, (params, buffers), (v[None, None],))[0, 0]

    total: torch.Tensor | None = None
    for i in range(0, len(rows), chunk):
        jac = vmap(jacrev(f))(rows[i : i + chunk].to(p0.device, torch.float32))  # [c, d_out, d_in]
        part = jac.double().sum(0).cpu()
        total = part if total is None else total + part
    assert total is not None
    return (total / len(rows)).T.contiguous().float()


def transcoder_nmse(tc: Transcoder, x: torch.Tensor, y: torch.Tensor) -> float:
    """Normalised MSE ``Σ‖y − ŷ‖² / Σ‖y − ȳ‖²`` (fraction of variance unexplained)."""
    with torch.no_grad():
        y_hat = tc(x.to(tc.dtype)).float()
    y = y.float()
    return float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp(min=1e-12))


def train_transcoder(
    x: torch.Tensor,
    y: torch.Tensor,
    layer: int,
    config: SAETrainConfig,
    out: str | Path | None = None,
    skip: bool = False,
    model_name: str | None = None,
    progress: bool = False,
    skip_ridge: float = 1e-4,
    w_skip: torch.Tensor | None = None,
) -> Transcoder:
    """Train one transcoder on pairs ``(x, y)`` with the SAE trainer (module docstring):
    shuffled mini-batches of ``config.batch_size`` rows for ``config.total_tokens`` rows.
    With ``skip``, ``w_skip`` (e.g. :func:`mean_jacobian`) is the skip connection; without
    it, the least-squares fit (:func:`fit_skip`)."""
    from tqdm.auto import tqdm

    from .train import Trainer

    if x.shape != y.shape or x.dim() != 2:
        raise ConfigError(
            f"transcoder pairs must be two [n, d] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if not skip:
        w_skip = None
    elif w_skip is None:
        w_skip = fit_skip(x, y, skip_ridge)
    elif tuple(w_skip.shape) != (x.shape[1], y.shape[1]):
        raise ConfigError(f"w_skip must be [{x.shape[1]}, {y.shape[1]}], got {tuple(w_skip.shape)}")
    target = y if w_skip is None else y - x @ w_skip
    # train on the target rescaled to the input's mean norm (an MLP's output can be far smaller
    # than its input, and the trainer scales both sides by the input's scale); the decoder is
    # linear, so dividing W_dec and b_dec by the factor afterwards undoes it exactly
    t_scale = float(x.norm(dim=-1).mean() / target.norm(dim=-1).mean().clamp(min=1e-12))
    target = target * t_scale
    trainer = Trainer(config, x.shape[1], site=f"mlp_out.{layer}", model_name=model_name, out=out)
    trainer.module.b_dec_to_input = False
    g = torch.Generator().manual_seed(config.seed)
    sample = torch.randperm(len(x), generator=g)[: config.norm_sample_tokens]
    trainer.initialize(x[sample], target[sample])
    n, bs = len(x), config.batch_size
    perm = torch.randperm(n, generator=g)
    pos = 0
    bar = tqdm(total=config.total_steps, desc=f"transcoder {layer}", disable=not progress, leave=False)
    while not trainer.done:
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos : pos + bs]
        pos += bs
        trainer.step(x[idx], target=target[idx])
        bar.update(1)
    bar.close()
    res = trainer.save()
    assert res.sae is not None
    with torch.no_grad():
        res.sae.W_dec.div_(t_scale)
        res.sae.b_dec.div_(t_scale)
    tc = Transcoder.from_sae(res.sae, w_skip)
    tc.cfg.metadata.update(_metadata(layer, skip))
    if out is not None:
        save_transcoder(tc, out, res.sparsity)
    return tc
