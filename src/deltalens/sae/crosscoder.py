"""Crosscoders for model diffing: one set of latents shared by two or more models.

An acausal crosscoder (Lindsey et al. 2024, "Sparse crosscoders for cross-layer features
and model diffing") reads the same site of ``M`` models on the same tokens::

    pre   = Σ_m x_m W_enc[m] + b_enc                       W_enc [M, d, S], b_enc [S]
    f     = BatchTopK(ReLU(pre) ⊙ Σ_m ‖W_dec[:, m]‖)         (selection weighted by decoder norms)
    x̂_m   = f W_dec[:, m] + b_dec[m]                        W_dec [S, M, d], b_dec [M, d]
    L     = E_batch Σ_m ‖x_m − x̂_m‖²

BatchTopK (Bussmann et al. 2024; Minder et al. 2025, "Overcoming sparsity artifacts in
crosscoders") keeps the ``B·k`` largest weighted activations of a batch; the decoder norms
are left free, since their ratio between models is the quantity of interest. At inference
a latent fires when its weighted activation exceeds the threshold θ calibrated at the end
of training (θ = the (k·n)-th largest weighted activation over n calibration tokens).

Latent classes from the relative decoder norm of model ``b`` (fine-tuned) vs ``a`` (base),
``r_i = ‖W_dec[i, b]‖ / (‖W_dec[i, a]‖ + ‖W_dec[i, b]‖)``:

* ``base-only`` r < 0.1;  ``ft-only`` r > 0.9;  ``shared`` 0.4 ≤ r ≤ 0.6;  ``other`` otherwise

(the bands of Lindsey et al.; change them with ``bands=``). Shared latents also report the
cosine between their two decoder vectors.

Files: ``cfg.json`` (``architecture: "crosscoder"``) + ``crosscoder_weights.safetensors``
(``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``threshold``) — the layout of
dictionary_learning's ``CrossCoder``; per-model normalisation scales are folded in.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, DataFormatError, ShapeError
from ..io import atomic_write, load_tensors, read_json, save_tensors
from ..stage import StageResult, _jsonable, register_result
from .train import SAETrainConfig, TrainingDiverged, _lr_factor

WEIGHTS = "crosscoder_weights.safetensors"
CLASSES = ("base-only", "ft-only", "shared", "other")


@dataclass
class CrosscoderConfig:
    d_in: int
    d_sae: int
    n_models: int = 2
    k: int = 32
    site: str | None = None
    model_names: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


class Crosscoder(nn.Module):
    """See the module docstring. Inputs are ``[batch, n_models, d_in]``."""

    def __init__(self, cfg: CrosscoderConfig):
        super().__init__()
        if cfg.n_models < 2:
            raise ConfigError("a crosscoder needs at least two models")
        self.cfg = cfg
        M, d, S = cfg.n_models, cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.zeros(M, d, S))
        self.b_enc = nn.Parameter(torch.zeros(S))
        self.W_dec = nn.Parameter(torch.zeros(S, M, d))
        self.b_dec = nn.Parameter(torch.zeros(M, d))
        self.register_buffer("threshold", torch.full((S,), -1.0))  # per latent, in score units

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != self.cfg.n_models or x.shape[2] != self.cfg.d_in:
            raise ShapeError(
                f"crosscoder input must be [batch, {self.cfg.n_models} models, {self.cfg.d_in}], got {tuple(x.shape)}"
            )

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return torch.einsum("bmd,mds->bs", x, self.W_enc) + self.b_enc

    def decoder_norms(self) -> torch.Tensor:
        """``[d_sae, n_models]`` norms of each latent's decoder vector per model."""
        return self.W_dec.norm(dim=-1)

    def select(self, pre: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """BatchTopK mask over the batch on ``ReLU(pre) · Σ_m ‖W_dec‖``."""
        score = torch.relu(pre) * self.decoder_norms().sum(-1)
        n = min(int(k or self.cfg.k) * pre.shape[0], pre.numel())
        thr = score.flatten().topk(n, sorted=False).values.min()
        return (score >= thr) & (score > 0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents at inference: ``ReLU(pre)`` where the weighted activation exceeds θ."""
        pre = self.pre_acts(x)
        if float(self.threshold.min()) < 0:  # not calibrated yet: batch selection
            return torch.relu(pre) * self.select(pre)
        score = torch.relu(pre) * self.decoder_norms().sum(-1)
        return torch.relu(pre) * (score > self.threshold)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bs,smd->bmd", f, self.W_dec) + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # ---- analysis --------------------------------------------------------------------------------
    @torch.no_grad()
    def relative_norms(self, base: int = 0, ft: int = 1) -> torch.Tensor:
        """``r = ‖W_dec[:, ft]‖ / (‖W_dec[:, base]‖ + ‖W_dec[:, ft]‖)`` in the normalised space the
        crosscoder was trained in (each model's activations scaled to E‖x‖ = √d), so that a
        model with larger activations does not look "more important"."""
        n = self.decoder_norms()
        scales = self.cfg.metadata.get("norm_scales")
        if scales:
            n = n * torch.as_tensor(scales, dtype=n.dtype)[None, :]
        return n[:, ft] / (n[:, base] + n[:, ft]).clamp(min=1e-12)

    @torch.no_grad()
    def classify(
        self,
        base: int = 0,
        ft: int = 1,
        bands: tuple[float, float, float, float] = (0.1, 0.4, 0.6, 0.9),
        alive: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Latent classes (module docstring): ``labels`` per latent, ``counts``, ``relative_norm``
        and the decoder cosine between the two models (``cosine``)."""
        lo, sh_lo, sh_hi, hi = bands
        r = self.relative_norms(base, ft)
        labels = []
        for v in r.tolist():
            labels.append(
                "base-only"
                if v < lo
                else "ft-only"
                if v > hi
                else "shared"
                if sh_lo <= v <= sh_hi
                else "other"
            )
        if alive is not None:
            labels = [lab if bool(a) else "dead" for lab, a in zip(labels, alive.tolist())]
        cos = F.cosine_similarity(self.W_dec[:, base], self.W_dec[:, ft], dim=-1)
        counts = {c: labels.count(c) for c in (*CLASSES, "dead") if c in labels or c != "dead"}
        return {"labels": labels, "counts": counts, "relative_norm": r, "cosine": cos, "bands": list(bands)}

    # ---- files ------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_tensors(path / WEIGHTS, {k: v.detach().float() for k, v in self.state_dict().items()})
        c = self.cfg
        cfg = {
            "architecture": "crosscoder",
            "d_in": c.d_in,
            "d_sae": c.d_sae,
            "n_models": c.n_models,
            "k": c.k,
            "site": c.site,
            "model_names": c.model_names,
            "metadata": c.metadata,
        }
        atomic_write(path / "cfg.json", json.dumps(cfg, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Crosscoder:
        path = Path(path)
        try:
            cfg = json.loads((path / "cfg.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataFormatError(f"{path / 'cfg.json'}: cannot read the crosscoder config ({exc})") from None
        if cfg.get("architecture") != "crosscoder":
            raise DataFormatError(f"{path}: not a crosscoder (architecture {cfg.get('architecture')!r})")
        cc = cls(
            CrosscoderConfig(
                int(cfg["d_in"]),
                int(cfg["d_sae"]),
                int(cfg["n_models"]),
                int(cfg["k"]),
                cfg.get("site"),
                list(cfg.get("model_names") or []),
                dict(cfg.get("metadata") or {}),
            )
        )
        cc.load_state_dict(load_tensors(path / WEIGHTS))
        return cc


@register_result
@dataclass
class CrosscoderResult(StageResult):
    """A trained crosscoder: ``training.json`` (config, history, latent classes) beside its
    weights; ``crosscoder`` and ``path`` are not in the JSON (:meth:`load` reads the crosscoder
    from the directory). ``classes`` holds ``counts``, ``labels``, ``bands`` and, as tensors,
    ``relative_norm`` and ``cosine``."""

    KIND: ClassVar[str] = "crosscoder training"
    FILENAME: ClassVar[str] = "training.json"

    config: SAETrainConfig
    history: list[dict[str, float]]
    tokens: int
    seconds: float
    classes: dict[str, Any]
    crosscoder: Crosscoder | None = field(default=None, repr=False, compare=False, metadata={"runtime": True})
    path: Path | None = field(default=None, compare=False, metadata={"runtime": True})

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if not f.metadata.get("runtime")
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrosscoderResult:
        classes = dict(data.get("classes") or {})
        if "counts" not in classes and classes:  # written before results had a kind: the counts only
            classes = {"counts": classes}
        for k in ("relative_norm", "cosine"):
            if k in classes:
                classes[k] = torch.as_tensor(classes[k], dtype=torch.float32)
        return cls(
            config=SAETrainConfig.from_dict(dict(data.get("config") or {})),
            history=list(data.get("history") or []),
            tokens=int(data["tokens"]),
            seconds=float(data["seconds"]),
            classes=classes,
        )

    @classmethod
    def load(cls, directory: str | Path) -> CrosscoderResult:
        path = cls.path_in(directory)
        data = read_json(path) if path.is_file() else None
        if isinstance(data, dict) and "kind" not in data and "classes" in data and "config" in data:
            res = cls.from_dict(data)  # written before results had a kind
        else:
            res = super().load(directory)
        if (path.parent / WEIGHTS).is_file():
            res.crosscoder = Crosscoder.load(path.parent)
        res.path = path.parent
        return res

    def summary(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "seconds": self.seconds,
            "classes": self.classes.get("counts"),
            "k": self.config.k,
            "final": self.history[-1] if self.history else None,
        }


def train_crosscoder(
    source: Any,
    config: SAETrainConfig | None = None,
    *,
    site: str | None = None,
    model_names: list[str] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    world: Any = None,
) -> CrosscoderResult:
    """Train a BatchTopK crosscoder on paired activations: a
    :class:`~deltalens.sae.sources.StoreSource` over several stores of the same tokens (one per
    model), or a tensor ``[n, n_models, d]``. Uses ``config``'s ``k``, ``expansion``/``d_sae``,
    ``total_tokens``, ``batch_size``, ``lr`` (default 4e-4), schedules and ``seed``.
    (One function on purpose: initialisation, the loop and the final calibration and scale
    folding share the per-model scales, the optimiser and the calibration batch.)

    ``world`` (:class:`deltalens.scale.dist.World`) trains data-parallel: every rank is given
    the global batch and encodes its block of rows; the BatchTopK threshold is the ``k·B``-th
    largest score over *all* ranks (each rank's top ``k·B`` scores are gathered), so the
    selection is the one-process selection; gradients and metrics are averaged, the alive
    latents OR-ed, and only rank 0 saves."""
    from .sources import StoreSource

    cfg = config or SAETrainConfig(architecture="batchtopk")
    if world is not None and not world.distributed:
        world = None
    if world is not None:
        world.span(cfg.batch_size, "rows of a batch (--batch-size)")
    if isinstance(source, torch.Tensor):
        x_all = source
        if x_all.dim() != 3:
            raise ShapeError(f"paired activations must be [n, n_models, d], got {tuple(x_all.shape)}")
        M, d = x_all.shape[1], x_all.shape[2]
        g = torch.Generator().manual_seed(cfg.seed)

        def stream():
            while True:
                perm = torch.randperm(len(x_all), generator=g)
                for i in range(0, len(perm) - cfg.batch_size + 1, cfg.batch_size):
                    yield x_all[perm[i : i + cfg.batch_size]]

        batches = stream()
        names = model_names or [f"model{i}" for i in range(M)]
    elif isinstance(source, StoreSource) and source.many:
        M, d = len(source.stores), source.d_in
        batches = (torch.stack(b, 1) for b in source.batches(cfg.batch_size, seed=cfg.seed))
        names = model_names or [n or f"model{i}" for i, n in enumerate(source.model_names)]
        site = site or source.site
    else:
        raise ShapeError(
            "a crosscoder trains on paired activations: StoreSource([store_a, store_b, ...]) or [n, M, d]"
        )
    S = cfg.resolved_d_sae(d)
    cc = Crosscoder(CrosscoderConfig(d, S, M, cfg.k, site, names))
    first = next(batches).float()
    scales = (
        (math.sqrt(d) / first.norm(dim=-1).mean(0)).clamp(max=1e6)
        if cfg.normalize == "expected_norm"
        else torch.ones(M)
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        w = torch.randn(S, d, generator=gen)
        w = w / w.norm(dim=1, keepdim=True) * 0.1
        cc.W_dec.copy_(w[:, None, :].expand(S, M, d))
        cc.W_enc.copy_(w.t()[None].expand(M, d, S) / M)
        cc.b_dec.copy_((first * scales[None, :, None]).mean(0))
    lr = cfg.lr if cfg.lr is not None else 4e-4
    opt = torch.optim.Adam(cc.parameters(), lr=lr, betas=cfg.adam_betas)
    total = cfg.total_steps
    history: list[dict[str, float]] = []
    tokens = 0
    fired = torch.zeros(S, dtype=torch.bool)
    calib = first * scales[None, :, None]
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc="train crosscoder", unit="step", disable=not progress, leave=False)
    batch = first
    for step in range(total):
        if step > 0:
            batch = next(batches).float()
        x = batch * scales[None, :, None]
        if world is not None:
            lo, hi = world.span(len(x), "rows of a batch (--batch-size)")
            x = x[lo:hi]
        for gp in opt.param_groups:
            gp["lr"] = lr * _lr_factor(step, total, cfg.lr_warmup, cfg.lr_decay)
        pre = cc.pre_acts(x)
        with torch.no_grad():
            mask = cc.select(pre) if world is None else _select_global(cc, pre, len(batch), world)
        f = torch.relu(pre) * mask
        x_hat = cc.decode(f)
        mse = (x_hat - x).pow(2).sum(-1).sum(-1).mean()
        if world is not None:
            mse.backward()
            mse = _reduce_step(cc, mse, world)
        if not torch.isfinite(mse):
            raise TrainingDiverged(
                f"crosscoder training stopped: loss is {float(mse)} at step {step + 1}; lower the learning rate"
            )
        if world is None:
            opt.zero_grad(set_to_none=True)
            mse.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(cc.parameters(), cfg.grad_clip)
        opt.step()
        if world is not None:
            opt.zero_grad(set_to_none=True)
        tokens += len(batch)
        alive = mask.any(0)
        if world is not None:
            from ..scale.dist import all_reduce_sum_

            n_alive = alive.float()
            all_reduce_sum_([n_alive], world)
            alive = n_alive > 0
        fired |= alive
        if (step + 1) % max(1, cfg.log_every) == 0 or step + 1 == total:
            with torch.no_grad():
                var = (x - x.mean(0)).pow(2).sum(-1).sum(-1).mean()
                stats = torch.tensor(
                    [float(mse.detach() / var), float(mask.sum(1).float().mean())], dtype=torch.float64
                )
                if world is not None:
                    from ..scale.dist import all_reduce_mean_

                    all_reduce_mean_([stats], world)
            history.append(
                {
                    "step": step + 1,
                    "tokens": tokens,
                    "mse": float(mse.detach()),
                    "fvu": float(stats[0]),
                    "l0": float(stats[1]),
                }
            )
            bar.set_postfix(
                {"L0": f"{history[-1]['l0']:.1f}", "fvu": f"{history[-1]['fvu']:.3f}"}, refresh=False
            )
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        # calibrate θ on the weighted activations, then fold the per-model scales into the weights
        score = torch.relu(cc.pre_acts(calib)) * cc.decoder_norms().sum(-1)
        n = min(cfg.k * len(calib), score.numel())
        vals = score.flatten().topk(n).values
        cc.threshold.fill_(float(vals[vals > 0].min()) if (vals > 0).any() else 0.0)
        classes = cc.classify(alive=fired)
        # raw inputs: pre = Σ_m (s_m x_m) W_enc[m] → W_enc[m] ← s_m W_enc[m]; outputs x̂_m / s_m
        # the threshold acts on ReLU(pre)·Σ‖W_dec‖, so keep the score unchanged by rescaling θ
        old_norm_sum = cc.decoder_norms().sum(-1)
        cc.W_enc.mul_(scales[:, None, None])
        cc.W_dec.div_(scales[None, :, None])
        cc.b_dec.div_(scales[:, None])
        new_norm_sum = cc.decoder_norms().sum(-1)
        # per-latent factor differs, so store θ per latent in score units of the raw model
        cc.threshold.mul_(new_norm_sum / old_norm_sum.clamp(min=1e-12))
    cc.cfg.metadata.update({"norm_scales": scales.tolist(), "tokens": tokens, "k": cfg.k})
    res = CrosscoderResult(
        cfg, history, tokens, seconds, classes, crosscoder=cc, path=None if out is None else Path(out)
    )
    if out is not None and (world is None or world.is_main):
        cc.save(out)
        res.save(out)
    if world is not None:
        from ..scale.dist import barrier

        barrier(world)
    return res


def _select_global(cc: Crosscoder, pre: torch.Tensor, global_rows: int, world: Any) -> torch.Tensor:
    """BatchTopK over the global batch when each rank holds a block of its rows: the threshold
    is the ``k·B``-th largest score among every rank's ``k·B`` largest (gathered)."""
    score = torch.relu(pre) * cc.decoder_norms().sum(-1)
    n = min(int(cc.cfg.k) * global_rows, score.numel() * world.size)
    local = score.flatten().topk(min(n, score.numel()), sorted=False).values
    parts = [torch.empty_like(local) for _ in range(world.size)]
    torch.distributed.all_gather(parts, local.contiguous())
    thr = torch.cat(parts).topk(n, sorted=False).values.min()
    return (score >= thr) & (score > 0)


def _reduce_step(cc: Crosscoder, mse: torch.Tensor, world: Any) -> torch.Tensor:
    """Average the gradients (already computed) and the loss over the ranks."""
    from ..scale.dist import all_reduce_mean_

    params = list(cc.parameters())
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    loss = mse.detach().reshape(1).clone()
    all_reduce_mean_([p.grad for p in params], world)
    all_reduce_mean_([loss], world)
    return loss[0]


def train_crosscoder_on_stores(
    stores: Any,
    config: SAETrainConfig,
    *,
    site: str | None = None,
    out: str | Path | None = None,
    experiment: str | Path | None = None,
    name: str = "crosscoder",
    progress: bool = True,
    world: Any = None,
) -> CrosscoderResult:
    """``deltalens sae crosscoder``: a crosscoder on the ``train`` rows of two or more stores of
    the same tokens (base first), saved to ``out`` (default ``Experiment(experiment).crosscoder_dir(name)``)."""
    from ..experiment import Experiment
    from .sources import StoreSource

    stores = [str(s) for s in stores]
    if len(stores) < 2:
        raise ConfigError("a crosscoder needs at least two --store (one per model, same inputs)")
    src = StoreSource(stores, site, split="train")
    dest = (
        Path(out) if out is not None else Experiment.named(str(experiment or "default")).crosscoder_dir(name)
    )
    return train_crosscoder(src, config, out=dest, progress=progress, world=world)
