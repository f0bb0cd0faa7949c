"""SAE training: one config dataclass, one trainer, a loop that several SAEs can share.

::

    from deltalens.sae import SAETrainConfig, train_sae
    result = train_sae(store_dir, SAETrainConfig(architecture="topk", k=32, expansion=8,
                                              total_tokens=1_000_000), out="saes/l15")
    result.sae            # inference SAE (SAELens layout, normalisation folded in)

What the loop does, in order:

1. **Normalisation** (``normalize="expected_norm"``): a scale ``s = √d_in / E‖x‖`` is
   estimated from ``norm_sample_tokens`` rows; training sees ``s·x``; at save the scale is
   folded into the weights (see :mod:`deltalens.sae.modules`), the file records it as
   ``metadata.deltalens_norm_scale`` and takes raw activations (``normalize_activations``
   is ``"none"`` in ``cfg.json``).
2. **Initialisation**: decoder rows random unit vectors (``standard``: norm 0.1), ``W_enc =
   W_decᵀ``, ``b_enc = 0``, ``b_dec`` = geometric median of a sample (``b_dec_init``).
   Fine-tuning (``init_from``) starts from an existing SAE instead, keeping latent indices.
3. **Steps**: Adam; learning rate linear warm-up over ``lr_warmup`` of the steps, constant,
   linear decay to 0 over the last ``lr_decay``; sparsity coefficient (``standard`` L1,
   ``jumprelu`` L0) linear warm-up over ``sparsity_warmup``; gradient-norm clipping;
   unit-norm decoder rows where the architecture asks for them.
4. **Dead latents**: a latent is dead when it has not fired in the last
   ``dead_window_tokens`` training tokens (TopK/BatchTopK feed these to AuxK).
5. **Checkpoints** every ``checkpoint_every_tokens`` under ``<out>/checkpoints/``; a run
   given the same ``out`` resumes from the newest one: the data stream is replayed with the
   same seed and the batches the checkpoint had consumed are skipped, so a killed and resumed
   run ends with the same weights as an uninterrupted one (skipping re-reads that data once).
   A non-finite loss or gradient stops the run with
   :class:`TrainingDiverged`, naming the step and the last good checkpoint, which is kept.
6. **Save**: ``<out>/`` becomes a SAELens directory (``cfg.json``,
   ``sae_weights.safetensors``, ``sparsity.safetensors`` with log10 firing densities over
   the last ``dead_window_tokens``) plus ``training.json`` (config, history, timing).
"""

from __future__ import annotations

import itertools
import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, DataFormatError, DeltalensError, ShapeError
from ..hooks import Site
from ..io import load_tensors, read_json, save_tensors, write_json
from ..stage import (
    StageConfig,
    StageResult,
    _jsonable,
    at_least,
    flag_of,
    in_range,
    one_of,
    option,
    register_result,
)
from .base import SAE
from .io import CFG as SAE_CFG
from .io import save_sae
from .modules import StepOutput, TrainingSAE, canonical_architecture, make_training_sae
from .sources import ActivationSource, as_source

if TYPE_CHECKING:
    from ..scale.dist import World

TRAINING_JSON = "training.json"
CHECKPOINTS = "checkpoints"


class TrainingDiverged(DeltalensError):
    """Loss or gradients became NaN/inf; the message names the step and the last good checkpoint."""


@dataclass
class SAETrainConfig(StageConfig):
    """Everything that defines a training run (saved in ``training.json`` and with every
    checkpoint; a resume under another config is refused naming the differing fields)."""

    architecture: str = option(
        "topk", flag="--arch", help="standard (ReLU + L1; alias relu), topk, batchtopk or jumprelu."
    )
    expansion: int = option(8, flag="--expansion", help="d_sae = expansion × d_in.")
    d_sae: int | None = option(None, flag="--d-sae", help="Number of latents (overrides --expansion).")
    k: int = option(32, flag="--k", help="Active latents per token (topk/batchtopk).")
    total_tokens: int = option(1_000_000, flag="--tokens", help="Training tokens.")
    batch_size: int = option(1024, flag="--batch-size", help="Tokens per training step.")
    lr: float | None = option(
        None,
        flag="--lr",
        help="Learning rate (default: 2e-4·sqrt(2^14/d_sae) for topk/batchtopk, 4e-4 otherwise).",
    )
    lr_warmup: float = option(
        0.02, flag="--lr-warmup", help="Fraction of the steps with a linear learning-rate warm-up."
    )
    lr_decay: float = option(
        0.2, flag="--lr-decay", help="Fraction of the steps, at the end, decaying linearly to 0."
    )
    adam_betas: tuple[float, float] = option((0.9, 0.999), flag="--adam-betas", help="Adam betas.")
    grad_clip: float | None = option(1.0, flag="--grad-clip", help="Gradient-norm clipping (None: off).")
    # sparsity
    l1_coefficient: float = option(5.0, flag="--l1", help="L1 coefficient (standard).")
    target_l0: float | None = option(None, flag="--target-l0", help="Target L0 (jumprelu).")
    l0_coefficient: float = option(1.0, flag="--l0-coefficient", help="L0 coefficient (jumprelu).")
    jumprelu_bandwidth: float = option(
        0.05, flag="--jumprelu-bandwidth", help="Straight-through kernel width (jumprelu)."
    )
    jumprelu_init_threshold: float = option(
        0.1, flag="--jumprelu-init-threshold", help="Initial threshold (jumprelu)."
    )
    sparsity_warmup: float = option(
        0.05, flag="--sparsity-warmup", help="Fraction of the steps with a sparsity warm-up."
    )
    aux_k: int | None = option(None, flag="--aux-k", help="AuxK latents (None: d_in // 2).")
    aux_coefficient: float = option(1 / 32, flag="--aux-coefficient", help="AuxK loss coefficient.")
    threshold_momentum: float = option(
        0.01, flag="--threshold-momentum", help="Threshold running-mean momentum (batchtopk)."
    )
    threshold_lr_scale: float = option(
        10.0, flag="--threshold-lr-scale", help="Learning-rate multiplier of log θ (jumprelu)."
    )
    dead_window_tokens: int | None = option(
        None,
        flag="--dead-window",
        help="Tokens without firing after which a latent counts as dead (default: min(1M, tokens/4)).",
    )
    # data
    normalize: str = option(
        "expected_norm", flag="--normalize", help="expected_norm (scale to E‖x‖ = √d_in) or none."
    )
    norm_sample_tokens: int = option(
        32768, flag="--norm-sample-tokens", help="Rows for the norm scale and b_dec initialisation."
    )
    b_dec_init: str = option("median", flag="--b-dec-init", help="median, mean or zeros.")
    decoder_init_norm: float | None = option(
        None, flag="--decoder-init-norm", help="Initial decoder row norm."
    )
    # bookkeeping
    seed: int = option(0, flag="--seed", help="Random seed.")
    device: str = option("cpu", flag="--device", help="Training device.")
    checkpoint_every_tokens: int | None = option(
        None, flag="--checkpoint-every", help="Checkpoint every N tokens."
    )
    keep_checkpoints: int = option(2, flag="--keep-checkpoints", help="Checkpoints kept on disk.")
    log_every: int = option(10, flag="--log-every", help="Steps between history records.")

    #: fields that do not change the trained SAE (a resume may change them)
    RESUME_EXEMPT: ClassVar[tuple[str, ...]] = (
        "device",
        "checkpoint_every_tokens",
        "keep_checkpoints",
        "log_every",
    )

    def __post_init__(self) -> None:
        if isinstance(self.architecture, str):
            try:
                self.architecture = canonical_architecture(self.architecture)
            except ConfigError as exc:
                raise ConfigError(f"--arch: {exc}") from None
        if isinstance(self.adam_betas, list):
            self.adam_betas = tuple(self.adam_betas)  # type: ignore[assignment]
        super().__post_init__()

    def validate(self) -> None:
        for name in (
            "expansion",
            "d_sae",
            "k",
            "total_tokens",
            "batch_size",
            "aux_k",
            "dead_window_tokens",
            "norm_sample_tokens",
            "checkpoint_every_tokens",
            "keep_checkpoints",
            "log_every",
        ):
            at_least(self, name, 1)
        for name in ("lr", "grad_clip", "target_l0", "jumprelu_bandwidth", "threshold_lr_scale"):
            positive(self, name)
        for name in ("l1_coefficient", "l0_coefficient", "aux_coefficient", "jumprelu_init_threshold"):
            at_least(self, name, 0)
        for name in ("lr_warmup", "lr_decay", "sparsity_warmup", "threshold_momentum"):
            in_range(self, name, 0, 1)
        one_of(self, "normalize", ("expected_norm", "none"))
        one_of(self, "b_dec_init", ("median", "mean", "zeros"))
        if len(tuple(self.adam_betas)) != 2:
            raise ConfigError(f"--adam-betas must be two numbers, got {self.adam_betas!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "") -> SAETrainConfig:
        return super().from_dict(data, where=where or "SAE training config")

    def resolved_d_sae(self, d_in: int) -> int:
        return int(self.d_sae or self.expansion * d_in)

    def resolved_lr(self, d_sae: int) -> float:
        if self.lr is not None:
            return float(self.lr)
        if self.architecture in ("topk", "batchtopk"):
            return 2e-4 / math.sqrt(d_sae / 2**14)
        return 4e-4

    @property
    def total_steps(self) -> int:
        return max(1, self.total_tokens // self.batch_size)

    def dead_window(self) -> int:
        return int(self.dead_window_tokens or min(1_000_000, max(self.batch_size, self.total_tokens // 4)))

    def check_against(self, recorded: Mapping[str, Any] | None, what: str | Path) -> None:
        """Refuse to continue ``what`` (a checkpoint, a finished SAE) recorded under another config
        (older records are read through :meth:`from_dict`, so renamed values compare equal)."""
        if recorded is None:
            return
        try:
            rec = (
                type(self)
                .from_dict({k: v for k, v in recorded.items() if k in {f.name for f in fields(self)}})
                .to_dict()
            )
        except DeltalensError:
            rec = dict(recorded)
        self.check_resume(rec, what, exclude=self.RESUME_EXEMPT)


def positive(cfg: Any, name: str) -> None:
    """``cfg.name > 0`` (``None`` allowed)."""
    v = getattr(cfg, name)
    if v is not None and not v > 0:
        raise ConfigError(f"{flag_of(cfg, name)} must be > 0, got {v!r}")


@register_result
@dataclass
class SAETrainResult(StageResult):
    """A finished training run: ``training.json`` (config, sizes, timing, history) beside the
    SAELens directory. ``sae``, ``path`` and ``sparsity`` are not in the JSON; :meth:`load`
    reads them from the directory when it holds the SAE."""

    KIND: ClassVar[str] = "SAE training"
    FILENAME: ClassVar[str] = TRAINING_JSON

    config: SAETrainConfig
    d_in: int
    d_sae: int
    site: str | None = None
    model_name: str | None = None
    tokens: int = 0
    steps: int = 0
    seconds: float = 0.0
    norm_scale: float = 1.0
    dead_fraction: float = 0.0
    dead_window_tokens: int = 0
    final: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    parent: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    sae: SAE | None = field(default=None, repr=False, compare=False, metadata={"runtime": True})
    path: Path | None = field(default=None, compare=False, metadata={"runtime": True})
    sparsity: torch.Tensor | None = field(default=None, repr=False, compare=False, metadata={"runtime": True})

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if not f.metadata.get("runtime")}
        d["config_hash"] = self.config.hash(exclude=SAETrainConfig.RESUME_EXEMPT)
        d["tokens_per_second"] = self.tokens_per_second
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SAETrainResult:
        names = {f.name for f in fields(cls) if not f.metadata.get("runtime")}
        body = {k: v for k, v in data.items() if k in names}
        body["config"] = SAETrainConfig.from_dict(dict(data.get("config") or {}))
        return cls(**body)

    @classmethod
    def load(cls, directory: str | Path) -> SAETrainResult:
        """Read ``training.json`` (also the files of earlier versions, which had no ``kind``)
        and, when the directory holds the SAE, the SAE and its sparsity."""
        path = cls.path_in(directory)
        if not path.is_file():
            raise DataFormatError(f"not a valid {cls.KIND}: {path} (no such file)")
        data = read_json(path)
        if isinstance(data, dict) and "kind" not in data and {"config", "history", "d_sae"} <= set(data):
            data = {"kind": cls.KIND, **data}  # written before results had a kind
        if not isinstance(data, dict) or data.get("kind") != cls.KIND:
            got = data.get("kind") if isinstance(data, dict) else type(data).__name__
            raise DataFormatError(f"not a valid {cls.KIND}: {path} (kind is {got!r})")
        try:
            res = cls.from_dict({k: v for k, v in data.items() if k not in ("kind", "schema")})
        except (TypeError, KeyError, ValueError, DeltalensError) as exc:
            raise DataFormatError(f"not a valid {cls.KIND}: {path} ({exc})") from None
        root = path.parent
        if (root / SAE_CFG).is_file():
            from .io import load_sae, read_sparsity

            res.sae, res.sparsity = load_sae(root), read_sparsity(root)
        res.path = root
        return res


def _lr_factor(step: int, total: int, warmup: float, decay: float) -> float:
    w = int(warmup * total)
    d = int(decay * total)
    if w and step < w:
        return (step + 1) / w
    if d and step >= total - d:
        return max(0.0, (total - step) / d)
    return 1.0


class Trainer:
    """Trains one SAE; :meth:`step` takes one batch, so several trainers can share a stream."""

    def __init__(
        self,
        config: SAETrainConfig,
        d_in: int,
        *,
        site: str | None = None,
        model_name: str | None = None,
        out: str | Path | None = None,
        init_from: SAE | str | Path | None = None,
        metadata: Mapping[str, Any] | None = None,
        world: World | None = None,
    ):
        """``world``: train data-parallel over the ranks of a ``torch.distributed`` world
        (:func:`deltalens.scale.dist.init`). Every rank is given the same global batch and trains
        on its block of rows ``[r·B/W, (r+1)·B/W)``; gradients are averaged over the ranks before
        the optimiser step (so the update is the one-process update on the whole batch), the
        step's metrics are averaged and the firing counts summed; only rank 0 writes checkpoints
        and the final SAE."""
        self.world = world if world is not None and world.distributed else None
        if self.world is not None:
            self.world.span(config.batch_size, "rows of a batch (--batch-size)")
        self.cfg = config
        self.d_in = int(d_in)
        self.d_sae = config.resolved_d_sae(d_in)
        self.site = site
        self.model_name = model_name
        self.out = None if out is None else Path(out)
        self.metadata = dict(metadata or {})
        self.device = torch.device(config.device)
        opts = dict(
            l1_coefficient=config.l1_coefficient,
            target_l0=config.target_l0,
            l0_coefficient=config.l0_coefficient,
            jumprelu_bandwidth=config.jumprelu_bandwidth,
            jumprelu_init_threshold=config.jumprelu_init_threshold,
            aux_k=config.aux_k,
            aux_coefficient=config.aux_coefficient,
            threshold_momentum=config.threshold_momentum,
        )
        self.module: TrainingSAE = make_training_sae(
            config.architecture, d_in, self.d_sae, k=config.k, **opts
        ).to(self.device)
        self.parent: SAE | None = None
        if init_from is not None:
            self.parent = init_from if isinstance(init_from, SAE) else SAE.load(init_from)
        self.scale = 1.0
        self.step_n = 0
        self.tokens = 0
        self.since_fired = torch.zeros(self.d_sae, dtype=torch.long, device=self.device)
        self.fire_counts = torch.zeros(self.d_sae, dtype=torch.float64, device=self.device)
        self.fire_tokens = 0
        self.prev_counts: torch.Tensor | None = None
        self.prev_tokens = 0
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0
        self.initialized = False
        self.last_checkpoint: Path | None = None
        self.lr = config.resolved_lr(self.d_sae)
        groups = [
            {
                "params": [p for n, p in self.module.named_parameters() if n != "log_threshold"],
                "lr_scale": 1.0,
            }
        ]
        if hasattr(self.module, "log_threshold"):
            groups.append({"params": [self.module.log_threshold], "lr_scale": config.threshold_lr_scale})
        self.opt = _adam(groups, self.lr, config.adam_betas)
        self._calib: torch.Tensor | None = None
        self._last: dict[str, float] = {}

    # ---- setup ---------------------------------------------------------------------------------
    def initialize(self, sample: torch.Tensor, target_sample: torch.Tensor | None = None) -> None:
        """Norm scale, weights and ``b_dec`` from a sample of rows (raw activations); a
        transcoder passes its target rows too (``b_dec`` starts at their median, both sides
        are scaled by the input's norm scale)."""
        if sample.shape[-1] != self.d_in:
            raise ShapeError(f"training rows have width {sample.shape[-1]}, the SAE expects d_in={self.d_in}")
        x = sample.float()
        x = x[torch.isfinite(x).all(-1)]
        if len(x) == 0:
            raise ShapeError("no finite activation rows to initialise the SAE from")
        if self.parent is not None:
            if self.parent.d_in != self.d_in:
                raise ShapeError(
                    f"parent SAE has d_in={self.parent.d_in} but the activations have width {self.d_in}"
                )
            self.scale = float(self.parent.cfg.metadata.get("deltalens_norm_scale", 1.0))
            if self.cfg.normalize == "none":
                self.scale = 1.0
            self.module.load_inference(self.parent.to("cpu"), self.scale)
            self.module.to(self.device)
        else:
            if self.cfg.normalize == "expected_norm":
                self.scale = float(math.sqrt(self.d_in) / x.norm(dim=-1).mean().clamp(min=1e-12))
            g = torch.Generator().manual_seed(self.cfg.seed)
            self.module.initialize(g, self.cfg.decoder_init_norm)
            y = x if target_sample is None else target_sample.float()[torch.isfinite(sample.float()).all(-1)]
            self.module.init_b_dec(y * self.scale, self.cfg.b_dec_init)
            self._calib = (x[:8192] * self.scale).to(self.device)
            if hasattr(self.module, "init_threshold_from"):
                self.module.init_threshold_from(x * self.scale)
            self.module.to(self.device)
        self.initialized = True

    # ---- one step ------------------------------------------------------------------------------
    def dead_mask(self) -> torch.Tensor:
        return self.since_fired >= self.cfg.dead_window()

    def step(self, batch: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, float]:
        """One training step on ``batch``; with ``target`` (same rows) a transcoder step:
        ``target`` is reconstructed from ``batch``."""
        cfg = self.cfg
        if batch.shape[-1] != self.d_in:
            raise ShapeError(f"batch has width {batch.shape[-1]}, the SAE expects d_in={self.d_in}")
        n = batch.shape[0]  # rows of the global batch (every rank is given all of them)
        if self.world is not None:
            lo, hi = self.world.span(n, "rows of a batch (--batch-size)")
            batch = batch[lo:hi]
            target = None if target is None else target[lo:hi]
        x = batch.to(self.device, torch.float32) * self.scale
        y = None if target is None else target.to(self.device, torch.float32) * self.scale
        total = cfg.total_steps
        lr = self.lr * _lr_factor(self.step_n, total, cfg.lr_warmup, cfg.lr_decay)
        for gparam in self.opt.param_groups:
            gparam["lr"] = lr * gparam.get("lr_scale", 1.0)
        sw = int(cfg.sparsity_warmup * total)
        sp_scale = min(1.0, (self.step_n + 1) / sw) if sw else 1.0
        self.module.train()
        out = self.module.step_loss(x, dead=self.dead_mask(), sparsity_scale=sp_scale, target=y)
        if self.world is None and not torch.isfinite(out.loss):
            self._diverged(f"loss is {float(out.loss)}")
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.world is not None:
            out = self._all_reduce(out)  # every rank now holds the same gradients and metrics
            if not torch.isfinite(out.loss):
                self._diverged(f"loss is {float(out.loss)}")
        self.module.remove_parallel_grad()
        if cfg.grad_clip:
            gn = torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
        else:
            gn = torch.sqrt(
                sum((p.grad.float() ** 2).sum() for p in self.module.parameters() if p.grad is not None)
            )
        if not torch.isfinite(gn):
            self._diverged(f"the gradient norm is {float(gn)}")
        self.opt.step()
        self.module.normalize_decoder()
        self.tokens += n
        self.step_n += 1
        fired = out.fired if out.fired is not None else torch.zeros(self.d_sae, device=self.device)
        hit = fired > 0
        self.since_fired += n
        self.since_fired[hit] = 0
        self.fire_counts += fired.to(torch.float64)
        self.fire_tokens += n
        if self.fire_tokens >= self.cfg.dead_window():
            self.prev_counts, self.prev_tokens = self.fire_counts.clone(), self.fire_tokens
            self.fire_counts.zero_()
            self.fire_tokens = 0
        rec = {
            "step": self.step_n,
            "tokens": self.tokens,
            "loss": float(out.loss.detach()),
            "mse": out.mse,
            "fvu": out.fvu,
            "l0": out.l0,
            "aux": out.aux,
            "sparsity": out.sparsity,
            "lr": lr,
            "dead": int(self.dead_mask().sum()),
        }
        self._last = rec
        if self.step_n % max(1, cfg.log_every) == 0 or self.step_n == total:
            self.history.append(rec)
        if cfg.checkpoint_every_tokens and self.out is not None:
            every = max(cfg.checkpoint_every_tokens // cfg.batch_size, 1)
            if self.step_n % every == 0 and self.step_n < total:
                self.checkpoint()
        return rec

    @property
    def is_main(self) -> bool:
        """Rank 0 of the world (or one process): the one that writes files."""
        return self.world is None or self.world.is_main

    def _all_reduce(self, out: StepOutput) -> StepOutput:
        """Data parallel: gradients and metrics averaged over the ranks, firing counts summed.

        With equal blocks of ``m = B/W`` rows, ``(1/W) Σ_r ∇(1/m) Σ_{i∈r} ℓ_i = ∇(1/B) Σ_i ℓ_i``:
        the averaged gradient is the one-process gradient of the batch-mean loss. ``loss``,
        ``mse``, ``l0``, ``aux`` and ``sparsity`` are batch means, so their rank mean is the
        batch mean; ``fvu`` is the mean of the ranks' FVUs (each over its block's variance)."""
        from ..scale.dist import all_reduce_mean_, all_reduce_sum_

        assert self.world is not None
        params = [p for p in self.module.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        stats = torch.tensor(
            [float(out.loss.detach()), out.mse, out.fvu, out.l0, out.aux, out.sparsity],
            dtype=torch.float64,
            device=self.device,
        )
        all_reduce_mean_([p.grad for p in params], self.world)
        all_reduce_mean_([stats], self.world)
        # running statistics updated in the step (the batchtopk threshold): their rank mean
        all_reduce_mean_([b for b in self.module.buffers() if b.is_floating_point()], self.world)
        fired = out.fired if out.fired is not None else torch.zeros(self.d_sae, device=self.device)
        fired = fired.detach().clone()
        all_reduce_sum_([fired], self.world)
        loss, mse, fvu, l0, aux, sparsity = stats.tolist()
        return StepOutput(
            torch.tensor(loss), mse, fvu, l0, aux=aux, sparsity=sparsity, fired=fired, extra=out.extra
        )

    def sync_initial_state(self) -> None:
        """Data parallel: every rank starts from rank 0's weights and norm scale."""
        if self.world is None:
            return
        from ..scale.dist import broadcast_

        scale = torch.tensor([self.scale], dtype=torch.float64, device=self.device)
        with torch.no_grad():
            broadcast_(
                [*(p.data for p in self.module.parameters()), *self.module.buffers(), scale], self.world
            )
        self.scale = float(scale)

    def _diverged(self, what: str) -> None:
        last = self.last_checkpoint
        where = (
            f"the last good checkpoint is kept at {last}" if last else "no checkpoint had been written yet"
        )
        raise TrainingDiverged(
            f"training {self.site or 'SAE'} stopped: {what} at step {self.step_n + 1} "
            f"(after {self.tokens} tokens); {where}. Lower the learning rate (now {self.lr:g}) or check the "
            "activations for inf/NaN"
        )

    @property
    def done(self) -> bool:
        return self.step_n >= self.cfg.total_steps

    # ---- checkpoints ---------------------------------------------------------------------------
    def _state(self) -> dict[str, torch.Tensor]:
        t: dict[str, torch.Tensor] = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        for i, (_p, st) in enumerate(
            zip(self.module.parameters(), [self.opt.state.get(p, {}) for p in self.module.parameters()])
        ):
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    t[f"opt.{i}.{k}"] = v
        t["since_fired"] = self.since_fired
        t["fire_counts"] = self.fire_counts
        if self.prev_counts is not None:
            t["prev_counts"] = self.prev_counts
        return t

    def checkpoint(self) -> Path:
        assert self.out is not None
        path = self.out / CHECKPOINTS / f"step_{self.step_n:08d}"
        if not self.is_main:  # rank 0 writes; every rank knows where it is
            self.last_checkpoint = path
            return path
        path.mkdir(parents=True, exist_ok=True)
        save_tensors(path / "state.safetensors", self._state())
        write_json(
            path / "trainer.json",
            {
                "step": self.step_n,
                "tokens": self.tokens,
                "scale": self.scale,
                "seconds": self.seconds,
                "fire_tokens": self.fire_tokens,
                "prev_tokens": self.prev_tokens,
                "history": self.history,
                "config": self.cfg.to_dict(),
                "config_hash": self.cfg.hash(exclude=SAETrainConfig.RESUME_EXEMPT),
                "site": self.site,
                "model_name": self.model_name,
                "d_in": self.d_in,
            },
        )
        self.last_checkpoint = path
        ckpts = sorted((self.out / CHECKPOINTS).glob("step_*"))
        for old in ckpts[: -max(1, self.cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def latest_checkpoint(self) -> Path | None:
        if self.out is None or not (self.out / CHECKPOINTS).is_dir():
            return None
        for p in sorted((self.out / CHECKPOINTS).glob("step_*"), reverse=True):
            if (p / "trainer.json").is_file() and (p / "state.safetensors").is_file():
                return p
        return None

    def check_resumable(self, path: Path) -> None:
        """Raise :class:`ConfigError` if checkpoint ``path`` cannot be continued by this trainer."""
        meta = read_json(path / "trainer.json")
        if meta.get("d_in") != self.d_in or (self.site and meta.get("site") and meta["site"] != self.site):
            raise ConfigError(
                f"{path}: checkpoint is for d_in={meta.get('d_in')} at {meta.get('site')}, this run is d_in={self.d_in} "
                f"at {self.site}; use another output directory or --overwrite"
            )
        self.cfg.check_against(meta.get("config"), f"checkpoint {path}")

    def resume(self, path: Path) -> None:
        """Continue from checkpoint ``path``; refused (naming the differing fields) when it was
        written under another config, width or site."""
        self.check_resumable(path)
        meta = read_json(path / "trainer.json")
        state = load_tensors(path / "state.safetensors", device=self.device)
        self.module.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("module.")})
        params = list(self.module.parameters())
        for i, p in enumerate(params):
            st = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"opt.{i}.")}
            if st:
                if "step" in st:
                    st["step"] = st["step"].cpu()
                self.opt.state[p] = st
        self.since_fired = state["since_fired"].long()
        self.fire_counts = state["fire_counts"].double()
        self.prev_counts = state.get("prev_counts")
        self.step_n, self.tokens, self.scale = int(meta["step"]), int(meta["tokens"]), float(meta["scale"])
        self.seconds = float(meta.get("seconds", 0.0))
        self.fire_tokens, self.prev_tokens = int(meta.get("fire_tokens", 0)), int(meta.get("prev_tokens", 0))
        self.history = list(meta.get("history", []))
        self.initialized = True
        self.last_checkpoint = path

    # ---- result --------------------------------------------------------------------------------
    def log10_density(self) -> torch.Tensor:
        """log10 firing frequency per latent over the last completed window (or what there is)."""
        if self.prev_counts is not None and self.prev_tokens:
            c, n = self.prev_counts, self.prev_tokens
        else:
            c, n = self.fire_counts, max(self.fire_tokens, 1)
        return torch.log10(c.float().cpu() / n + 1e-10)

    def inference_sae(self) -> SAE:
        if self._calib is not None and hasattr(self.module, "calibrate_threshold"):
            self.module.calibrate_threshold(self._calib)
        meta = dict(self.metadata)
        meta["deltalens_training"] = {
            "architecture": self.cfg.architecture,
            "k": self.cfg.k,
            "tokens": self.tokens,
            "batch_size": self.cfg.batch_size,
            "lr": self.lr,
        }
        return self.module.to_inference(
            self.scale,
            site=self.site,
            model_name=self.model_name,
            metadata=meta,
            apply_b_dec_to_input=self.module.b_dec_to_input,
        )

    def check_finished(self) -> None:
        """Refuse to overwrite a finished SAE in ``out`` that was trained under another config."""
        if self.out is None or not (self.out / TRAINING_JSON).is_file():
            return
        try:
            recorded = read_json(self.out / TRAINING_JSON)
        except DataFormatError:
            return
        if isinstance(recorded, dict) and isinstance(recorded.get("config"), dict):
            self.cfg.check_against(recorded["config"], f"the SAE in {self.out}")

    def discard_checkpoints(self) -> None:
        if self.is_main and self.out is not None and (self.out / CHECKPOINTS).is_dir():
            shutil.rmtree(self.out / CHECKPOINTS)

    def result(self) -> SAETrainResult:
        """The typed result of the run so far (the inference SAE with normalisation folded in)."""
        return SAETrainResult(
            config=self.cfg,
            d_in=self.d_in,
            d_sae=self.d_sae,
            site=self.site,
            model_name=self.model_name,
            tokens=self.tokens,
            steps=self.step_n,
            seconds=self.seconds,
            norm_scale=self.scale,
            dead_fraction=float(self.dead_mask().float().mean()),
            dead_window_tokens=self.cfg.dead_window(),
            final=dict(self._last),
            history=list(self.history),
            parent=None if self.parent is None else str(self.parent.cfg.metadata.get("deltalens_path", "")),
            metadata=dict(self.metadata),
            sae=self.inference_sae(),
            path=self.out,
            sparsity=self.log10_density(),
        )

    def save(self) -> SAETrainResult:
        """The result; with ``out``, the SAELens directory + ``training.json`` (checkpoints removed)."""
        res = self.result()
        if self.out is not None and self.is_main:
            assert res.sae is not None
            save_sae(res.sae, self.out, sparsity=res.sparsity)
            res.save(self.out)
            if (self.out / CHECKPOINTS).is_dir():
                shutil.rmtree(self.out / CHECKPOINTS, ignore_errors=True)
        return res


def _postfix(rec: Mapping[str, float]) -> dict[str, str]:
    return {
        "L0": f"{rec['l0']:.1f}",
        "mse": f"{rec['mse']:.3g}",
        "fvu": f"{rec['fvu']:.3f}",
        "dead": str(rec["dead"]),
    }


def train_saes(
    source: ActivationSource | Any,
    trainers: Mapping[str, Trainer],
    *,
    progress: bool = True,
    resume: bool = True,
    overwrite: bool = False,
    callback: Callable[[str, dict[str, float]], None] | None = None,
) -> dict[str, SAETrainResult]:
    """Train several SAEs from one stream: the source yields ``{site: batch}`` (a
    :class:`~deltalens.sae.sources.ModelSource` over several sites) or plain batches; each
    trainer takes the batch of its own site. All trainers must share ``batch_size``.

    ``resume``: continue each trainer's newest checkpoint; a checkpoint or a finished SAE in
    the output made under another config is refused (:class:`ConfigError` naming the fields)
    before anything is written. ``overwrite`` (or ``resume=False``) discards old checkpoints
    and starts fresh."""
    trainers = dict(trainers)
    if not trainers:
        raise ConfigError("no SAEs to train")
    for t in trainers.values():  # refuse before anything is written
        if resume and not overwrite:
            if (ck := t.latest_checkpoint()) is not None:
                t.check_resumable(ck)
            else:
                t.check_finished()
    bs = {t.cfg.batch_size for t in trainers.values()}
    if len(bs) != 1:
        raise ConfigError(f"SAEs trained from one stream need one batch size, got {sorted(bs)}")
    batch_size = bs.pop()
    first = next(iter(trainers.values()))
    seed = first.cfg.seed
    worlds = {id(t.world): t.world for t in trainers.values()}
    if len(worlds) != 1:
        raise ConfigError("SAEs trained from one stream must share one world (or all train in one process)")
    world = next(iter(worlds.values()))
    if world is not None:
        from ..scale.dist import barrier

        barrier(world)  # every rank has looked for checkpoints before rank 0 discards any
    for t in trainers.values():
        if overwrite or not resume:
            t.discard_checkpoints()
    if world is not None:
        barrier(world)
    for t in trainers.values():
        if not (overwrite or not resume) and (ck := t.latest_checkpoint()) is not None:
            t.resume(ck)
    # batches consumed before the checkpoint (trainers of one stream step in lockstep)
    consumed = min(t.step_n for t in trainers.values())
    src = source if isinstance(source, ActivationSource) else as_source(source)
    need_init = [t for t in trainers.values() if not t.initialized]
    if need_init:
        n = max(t.cfg.norm_sample_tokens for t in need_init)
        samples: dict[Any, torch.Tensor] = {}
        got = 0
        parts: list[Any] = []
        for b in src.batches(batch_size, seed=seed + 104729):
            parts.append(b)
            got += len(next(iter(b.values()))) if isinstance(b, dict) else len(b)
            if got >= n:
                break
        if not parts:
            raise ShapeError(f"{src.description or 'the data'} yields no rows")
        if isinstance(parts[0], dict):
            samples = {s: torch.cat([p[s] for p in parts]) for s in parts[0]}
        else:
            samples = {None: torch.cat(parts)}
        for t in need_init:
            t.initialize(_pick(samples, t.site))
            t.sync_initial_state()
    steps = max(t.cfg.total_steps for t in trainers.values())
    bar = tqdm(
        total=steps,
        initial=min(t.step_n for t in trainers.values()),
        desc="train SAE",
        unit="step",
        disable=not progress,
        leave=False,
    )
    t_last = time.perf_counter()
    stream: Iterator[Any] = itertools.islice(
        src.batches(batch_size, seed=seed, device=first.device), consumed, None
    )
    for batch in stream:
        active = [(name, t) for name, t in trainers.items() if not t.done]
        if not active:
            break
        for name, t in active:
            rec = t.step(_pick(batch, t.site))
            if callback is not None:
                callback(name, rec)
        now = time.perf_counter()
        for _, t in active:
            t.seconds += (now - t_last) / len(active)
        t_last = now
        bar.update(1)
        if progress:
            bar.set_postfix(_postfix(active[0][1]._last), refresh=False)
    bar.close()
    results = {name: t.save() for name, t in trainers.items()}
    if world is not None:
        from ..scale.dist import barrier

        barrier(world)  # rank 0 has written every SAE
    return results


def _pick(batch: Any, site: str | None) -> torch.Tensor:
    if not isinstance(batch, dict):
        return batch
    if site is None:
        if len(batch) != 1:
            raise ConfigError("the stream holds several sites; give each SAE its site")
        return next(iter(batch.values()))
    key = Site.parse(site)
    if key in batch:
        return batch[key]
    if None in batch and len(batch) == 1:
        return batch[None]
    raise ConfigError(f"the stream has no site {site} (it has {', '.join(map(str, batch))})")


def train_sae(
    data: Any,
    config: SAETrainConfig | None = None,
    *,
    site: Any = None,
    model_name: str | None = None,
    out: str | Path | None = None,
    init_from: SAE | str | Path | None = None,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    world: World | None = None,
    **source_kw: Any,
) -> SAETrainResult:
    """Train one SAE on ``data`` (a tensor ``[n, d]``, an ActivationStore or its path, or an
    :class:`~deltalens.sae.sources.ActivationSource`). ``out`` gets the SAELens directory
    (and checkpoints while training). ``init_from`` fine-tunes an existing SAE. ``world``
    trains data-parallel over a ``torch.distributed`` world (see :class:`Trainer`)."""
    config = config or SAETrainConfig()
    src = as_source(data, site, **source_kw)
    site_s = str(Site.parse(site)) if site is not None else src.site
    trainer = Trainer(
        config,
        src.d_in,
        site=site_s,
        model_name=model_name or src.model_name,
        out=out,
        init_from=init_from,
        metadata=metadata,
        world=world,
    )
    progress = progress and (world is None or world.is_main)
    return train_saes(src, {"sae": trainer}, progress=progress, resume=resume, overwrite=overwrite)["sae"]


def _adam(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """Adam, fused into one kernel per step where this torch build supports it."""
    try:
        return torch.optim.Adam(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(groups, lr=lr, betas=betas)


def grid_name(architecture: str, site: Any, k: int, *, name: str | None = None, many: bool = True) -> str:
    """Name of one SAE of a site × k grid: ``<name or arch>_<site>_k<k>`` (one SAE alone:
    ``<name>`` or ``<arch>_<site>``)."""
    if many:
        return f"{name or architecture}_{site}_k{k}"
    return name or f"{architecture}_{site}"


def train_grid(
    source: ActivationSource | Any,
    config: SAETrainConfig,
    sites: Sequence[Any],
    ks: Sequence[int] = (),
    *,
    out: str | Path | None = None,
    experiment: str | Path | None = None,
    name: str | None = None,
    init_from: SAE | str | Path | None = None,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    world: World | None = None,
) -> list[SAETrainResult]:
    """One SAE per ``site × k`` (``ks`` empty: ``config.k``), all from one stream (one forward
    pass per batch when the source is on the fly). Each goes to ``out`` (one SAE) or
    ``out/<grid_name>`` (several), else to ``Experiment(experiment).sae_dir(<grid_name>)``.
    Resume and overwrite as :func:`train_saes`; ``world`` trains data-parallel (:class:`Trainer`)."""
    from ..experiment import Experiment

    ks = [int(k) for k in ks] or [config.k]
    site_list = [Site.parse(s) for s in sites] or (
        [Site.parse(source.site)] if getattr(source, "site", None) else []
    )
    if not site_list:
        raise ConfigError("name the site(s) to train at (--site)")
    many = len(site_list) * len(ks) > 1
    src = (
        source
        if isinstance(source, ActivationSource)
        else as_source(source, site_list[0] if len(site_list) == 1 else None)
    )
    meta = {"training_data": src.description, **dict(metadata or {})}
    trainers: dict[str, Trainer] = {}
    for s in site_list:
        for k in ks:
            nm = grid_name(config.architecture, s, k, name=name, many=many)
            if out is not None:
                dest = Path(out) / nm if many else Path(out)
            else:
                dest = Experiment.named(str(experiment or "default")).sae_dir(nm)
            trainers[nm] = Trainer(
                config.replace(k=k),
                src.d_in,
                site=str(s),
                model_name=src.model_name,
                out=dest,
                init_from=init_from,
                metadata=meta,
                world=world,
            )
    progress = progress and (world is None or world.is_main)
    results = train_saes(src, trainers, progress=progress, resume=resume, overwrite=overwrite)
    for nm, r in results.items():
        r.extra.setdefault("name", nm)
    return list(results.values())
