"""SAE training: one config dataclass, one trainer, a loop that several SAEs can share.

::

    from deltalens.sae import TrainConfig, train_sae
    result = train_sae(store_dir, TrainConfig(architecture="topk", k=32, expansion=8,
                                              total_tokens=1_000_000), out="saes/l15")
    result.sae            # inference SAE (SAELens layout, normalisation folded in)

What the loop does, in order:

1. **Normalisation** (``normalize="expected_norm"``): a scale ``s = √d_in / E‖x‖`` is
   estimated from ``norm_sample_tokens`` rows; training sees ``s·x``; at save the scale is
   folded into the weights (see :mod:`deltalens.sae.modules`), the file records it as
   ``metadata.deltalens_norm_scale`` and takes raw activations (``normalize_activations``
   is ``"none"`` in ``cfg.json``).
2. **Initialisation**: decoder rows random unit vectors (``relu``: norm 0.1), ``W_enc =
   W_decᵀ``, ``b_enc = 0``, ``b_dec`` = geometric median of a sample (``b_dec_init``).
   Fine-tuning (``init_from``) starts from an existing SAE instead, keeping latent indices.
3. **Steps**: Adam; learning rate linear warm-up over ``lr_warmup`` of the steps, constant,
   linear decay to 0 over the last ``lr_decay``; sparsity coefficient (``relu`` L1,
   ``jumprelu`` L0) linear warm-up over ``sparsity_warmup``; gradient-norm clipping;
   unit-norm decoder rows where the architecture asks for them.
4. **Dead latents**: a latent is dead when it has not fired in the last
   ``dead_window_tokens`` training tokens (TopK/BatchTopK feed these to AuxK).
5. **Checkpoints** every ``checkpoint_every_tokens`` under ``<out>/checkpoints/``; a run
   given the same ``out`` resumes from the newest one (the data stream is reshuffled with a
   new seed on resume). A non-finite loss or gradient stops the run with
   :class:`TrainingDiverged`, naming the step and the last good checkpoint, which is kept.
6. **Save**: ``<out>/`` becomes a SAELens directory (``cfg.json``,
   ``sae_weights.safetensors``, ``sparsity.safetensors`` with log10 firing densities over
   the last ``dead_window_tokens``) plus ``training.json`` (config, history, timing).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, DeltalensError, ShapeError
from ..hooks import Site
from ..io import load_tensors, read_json, save_tensors, write_json
from .base import SAE
from .io import save_sae
from .modules import TrainingSAE, canonical_architecture, make_training_sae
from .sources import ActivationSource, as_source

TRAINING_JSON = "training.json"
CHECKPOINTS = "checkpoints"


class TrainingDiverged(DeltalensError):
    """Loss or gradients became NaN/inf; the message names the step and the last good checkpoint."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in ``training.json``)."""

    architecture: str = "topk"
    expansion: int = 8
    d_sae: int | None = None  # overrides expansion
    k: int = 32  # topk / batchtopk: active latents per token
    total_tokens: int = 1_000_000
    batch_size: int = 1024
    lr: float | None = None  # None: 2e-4 · sqrt(2^14 / d_sae) (sparsify's rule) for topk, 4e-4 otherwise
    lr_warmup: float = 0.02  # fraction of steps
    lr_decay: float = 0.2  # fraction of steps, at the end, decaying linearly to 0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0
    # sparsity
    l1_coefficient: float = 5.0  # relu
    target_l0: float | None = None  # jumprelu: target-L0 variant
    l0_coefficient: float = 1.0  # jumprelu
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.1
    sparsity_warmup: float = 0.05  # fraction of steps
    aux_k: int | None = None  # None: d_in // 2
    aux_coefficient: float = 1 / 32
    threshold_momentum: float = 0.01  # batchtopk
    threshold_lr_scale: float = 10.0  # jumprelu: learning-rate multiplier of log θ
    dead_window_tokens: int | None = None  # None: min(1M, total_tokens // 4)
    # data
    normalize: str = "expected_norm"  # or "none"
    norm_sample_tokens: int = 32768
    b_dec_init: str = "median"
    decoder_init_norm: float | None = None
    # bookkeeping
    seed: int = 0
    device: str = "cpu"
    checkpoint_every_tokens: int | None = None
    keep_checkpoints: int = 2
    log_every: int = 10

    def __post_init__(self) -> None:
        self.architecture = canonical_architecture(self.architecture)
        if self.normalize not in ("expected_norm", "none"):
            raise ConfigError(f"normalize must be 'expected_norm' or 'none', got '{self.normalize}'")
        if self.batch_size <= 0 or self.total_tokens <= 0:
            raise ConfigError("batch_size and total_tokens must be positive")
        self.adam_betas = tuple(self.adam_betas)  # type: ignore[assignment]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown training options: {', '.join(sorted(unknown))}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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


@dataclass
class TrainResult:
    sae: SAE
    path: Path | None
    history: list[dict[str, float]]
    tokens: int
    seconds: float
    dead_fraction: float
    sparsity: torch.Tensor
    config: TrainConfig
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


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
        config: TrainConfig,
        d_in: int,
        *,
        site: str | None = None,
        model_name: str | None = None,
        out: str | Path | None = None,
        init_from: SAE | str | Path | None = None,
        metadata: Mapping[str, Any] | None = None,
    ):
        self.cfg = config
        self.d_in = int(d_in)
        self.d_sae = config.resolved_d_sae(d_in)
        self.site = site
        self.model_name = model_name
        self.out = None if out is None else Path(out)
        self.metadata = dict(metadata or {})
        self.device = torch.device(config.device)
        opts = dict(
            l1_coefficient=config.l1_coefficient, target_l0=config.target_l0, l0_coefficient=config.l0_coefficient,
            jumprelu_bandwidth=config.jumprelu_bandwidth, jumprelu_init_threshold=config.jumprelu_init_threshold,
            aux_k=config.aux_k, aux_coefficient=config.aux_coefficient, threshold_momentum=config.threshold_momentum,
        )
        self.module: TrainingSAE = make_training_sae(config.architecture, d_in, self.d_sae, k=config.k, **opts).to(self.device)
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
        groups = [{"params": [p for n, p in self.module.named_parameters() if n != "log_threshold"], "lr_scale": 1.0}]
        if hasattr(self.module, "log_threshold"):
            groups.append({"params": [self.module.log_threshold], "lr_scale": config.threshold_lr_scale})
        self.opt = _adam(groups, self.lr, config.adam_betas)
        self._calib: torch.Tensor | None = None
        self._last: dict[str, float] = {}

    # ---- setup ---------------------------------------------------------------------------------
    def initialize(self, sample: torch.Tensor) -> None:
        """Norm scale, weights and ``b_dec`` from a sample of rows (raw activations)."""
        if sample.shape[-1] != self.d_in:
            raise ShapeError(f"training rows have width {sample.shape[-1]}, the SAE expects d_in={self.d_in}")
        x = sample.float()
        x = x[torch.isfinite(x).all(-1)]
        if len(x) == 0:
            raise ShapeError("no finite activation rows to initialise the SAE from")
        if self.parent is not None:
            if self.parent.d_in != self.d_in:
                raise ShapeError(f"parent SAE has d_in={self.parent.d_in} but the activations have width {self.d_in}")
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
            self.module.init_b_dec(x * self.scale, self.cfg.b_dec_init)
            self._calib = (x[:8192] * self.scale).to(self.device)
            if hasattr(self.module, "init_threshold_from"):
                self.module.init_threshold_from(x * self.scale)
            self.module.to(self.device)
        self.initialized = True

    # ---- one step ------------------------------------------------------------------------------
    def dead_mask(self) -> torch.Tensor:
        return self.since_fired >= self.cfg.dead_window()

    def step(self, batch: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        if batch.shape[-1] != self.d_in:
            raise ShapeError(f"batch has width {batch.shape[-1]}, the SAE expects d_in={self.d_in}")
        x = batch.to(self.device, torch.float32) * self.scale
        total = cfg.total_steps
        lr = self.lr * _lr_factor(self.step_n, total, cfg.lr_warmup, cfg.lr_decay)
        for gparam in self.opt.param_groups:
            gparam["lr"] = lr * gparam.get("lr_scale", 1.0)
        sw = int(cfg.sparsity_warmup * total)
        sp_scale = min(1.0, (self.step_n + 1) / sw) if sw else 1.0
        self.module.train()
        out = self.module.step_loss(x, dead=self.dead_mask(), sparsity_scale=sp_scale)
        if not torch.isfinite(out.loss):
            self._diverged(f"loss is {float(out.loss)}")
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.module.remove_parallel_grad()
        if cfg.grad_clip:
            gn = torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
        else:
            gn = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in self.module.parameters() if p.grad is not None))
        if not torch.isfinite(gn):
            self._diverged(f"the gradient norm is {float(gn)}")
        self.opt.step()
        self.module.normalize_decoder()
        n = x.shape[0]
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
            "step": self.step_n, "tokens": self.tokens, "loss": float(out.loss.detach()), "mse": out.mse, "fvu": out.fvu,
            "l0": out.l0, "aux": out.aux, "sparsity": out.sparsity, "lr": lr,
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

    def _diverged(self, what: str) -> None:
        last = self.last_checkpoint
        where = f"the last good checkpoint is kept at {last}" if last else "no checkpoint had been written yet"
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
        for i, (p, st) in enumerate(zip(self.module.parameters(), [self.opt.state.get(p, {}) for p in self.module.parameters()])):
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
        path.mkdir(parents=True, exist_ok=True)
        save_tensors(path / "state.safetensors", self._state())
        write_json(
            path / "trainer.json",
            {"step": self.step_n, "tokens": self.tokens, "scale": self.scale, "seconds": self.seconds,
             "fire_tokens": self.fire_tokens, "prev_tokens": self.prev_tokens, "history": self.history,
             "config": self.cfg.to_dict(), "site": self.site, "model_name": self.model_name, "d_in": self.d_in},
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

    def resume(self, path: Path) -> None:
        meta = read_json(path / "trainer.json")
        if meta.get("d_in") != self.d_in or (self.site and meta.get("site") and meta["site"] != self.site):
            raise ConfigError(
                f"{path}: checkpoint is for d_in={meta.get('d_in')} at {meta.get('site')}, this run is d_in={self.d_in} "
                f"at {self.site}; use another output directory"
            )
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
            "architecture": self.cfg.architecture, "k": self.cfg.k, "tokens": self.tokens,
            "batch_size": self.cfg.batch_size, "lr": self.lr,
        }
        return self.module.to_inference(self.scale, site=self.site, model_name=self.model_name, metadata=meta)

    def save(self) -> TrainResult:
        sae = self.inference_sae()
        sparsity = self.log10_density()
        dead = float(self.dead_mask().float().mean())
        if self.out is not None:
            save_sae(sae, self.out, sparsity=sparsity)
            write_json(
                self.out / TRAINING_JSON,
                {"config": self.cfg.to_dict(), "d_in": self.d_in, "d_sae": self.d_sae, "site": self.site,
                 "model_name": self.model_name, "tokens": self.tokens, "steps": self.step_n, "seconds": self.seconds,
                 "tokens_per_second": self.tokens / max(self.seconds, 1e-9), "norm_scale": self.scale,
                 "dead_fraction": dead, "dead_window_tokens": self.cfg.dead_window(), "final": self._last,
                 "history": self.history, "parent": None if self.parent is None else str(self.parent.cfg.metadata.get("deltalens_path", "")),
                 **({"metadata": self.metadata} if self.metadata else {})},
            )
            if (self.out / CHECKPOINTS).is_dir():
                shutil.rmtree(self.out / CHECKPOINTS, ignore_errors=True)
        return TrainResult(sae, self.out, self.history, self.tokens, self.seconds, dead, sparsity, self.cfg)


def _postfix(rec: Mapping[str, float]) -> dict[str, str]:
    return {"L0": f"{rec['l0']:.1f}", "mse": f"{rec['mse']:.3g}", "fvu": f"{rec['fvu']:.3f}", "dead": str(rec["dead"])}


def train_saes(
    source: ActivationSource | Any,
    trainers: Mapping[str, Trainer],
    *,
    progress: bool = True,
    resume: bool = True,
    callback: Callable[[str, dict[str, float]], None] | None = None,
) -> dict[str, TrainResult]:
    """Train several SAEs from one stream: the source yields ``{site: batch}`` (a
    :class:`~deltalens.sae.sources.ModelSource` over several sites) or plain batches; each
    trainer takes the batch of its own site. All trainers must share ``batch_size``."""
    trainers = dict(trainers)
    if not trainers:
        raise ConfigError("no SAEs to train")
    bs = {t.cfg.batch_size for t in trainers.values()}
    if len(bs) != 1:
        raise ConfigError(f"SAEs trained from one stream need one batch size, got {sorted(bs)}")
    batch_size = bs.pop()
    first = next(iter(trainers.values()))
    seed = first.cfg.seed
    for t in trainers.values():
        if resume and (ck := t.latest_checkpoint()) is not None:
            t.resume(ck)
            seed += t.step_n
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
    steps = max(t.cfg.total_steps for t in trainers.values())
    bar = tqdm(total=steps, initial=min(t.step_n for t in trainers.values()), desc="train SAE", unit="step",
               disable=not progress, leave=False)
    t_last = time.perf_counter()
    stream: Iterator[Any] = src.batches(batch_size, seed=seed, device=first.device)
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
    return {name: t.save() for name, t in trainers.items()}


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
    config: TrainConfig | None = None,
    *,
    site: Any = None,
    model_name: str | None = None,
    out: str | Path | None = None,
    init_from: SAE | str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    **source_kw: Any,
) -> TrainResult:
    """Train one SAE on ``data`` (a tensor ``[n, d]``, an ActivationStore or its path, or an
    :class:`~deltalens.sae.sources.ActivationSource`). ``out`` gets the SAELens directory
    (and checkpoints while training). ``init_from`` fine-tunes an existing SAE."""
    config = config or TrainConfig()
    src = as_source(data, site, **source_kw)
    site_s = str(Site.parse(site)) if site is not None else src.site
    trainer = Trainer(config, src.d_in, site=site_s, model_name=model_name or src.model_name, out=out,
                      init_from=init_from, metadata=metadata)
    return train_saes(src, {"sae": trainer}, progress=progress, resume=resume)["sae"]


def _adam(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """Adam, fused into one kernel per step where this torch build supports it."""
    try:
        return torch.optim.Adam(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(groups, lr=lr, betas=betas)
