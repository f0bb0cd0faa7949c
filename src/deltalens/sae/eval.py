"""SAE evaluation: reconstruction quality, sparsity, dead latents, and the model's loss with
the SAE spliced in. Every number is accumulated in float64 over a stream of batches.

Reconstruction metrics (:func:`reconstruction_metrics`), over N evaluated tokens with
activations ``x`` (raw, as the model produces them), reconstructions ``x̂`` and latents ``f``:

* ``mse``                = (1/(N·d)) Σ_t ‖x_t − x̂_t‖²       (per element, SAELens's ``mse``)
* ``mse_per_token``      = (1/N) Σ_t ‖x_t − x̂_t‖²
* ``explained_variance`` = 1 − Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − x̄‖²,  x̄ = (1/N) Σ_t x_t
  (the standard definition: one minus the fraction of *total* variance left unexplained,
  ``1 − FVU``; SAELens's ``explained_variance_legacy`` instead averages a per-token ratio
  and is not reported here)
* ``l0``                 = (1/N) Σ_t #{i : f_ti ≠ 0}
* ``l1``                 = (1/N) Σ_t Σ_i |f_ti|
* ``dead``               = #{i : f_ti = 0 for every evaluated token} (window: the N tokens
  evaluated, stated as ``dead_window_tokens``); ``dead_fraction`` = dead / d_sae
* ``density``            = per latent, fraction of tokens on which it fires; the histogram
  of log10(density) (dead latents counted apart) is in ``density_histogram``
* ``shrinkage``          = (1/N) Σ_t ‖x̂_t‖ / ‖x_t‖  (SAELens's ``l2_ratio``; < 1 means the
  SAE shrinks activations); ``cosine`` = (1/N) Σ_t cos(x_t, x̂_t)

Loss metrics (:func:`ce_metrics`), next-token cross-entropy averaged over predicted tokens:

* ``ce_clean``, ``ce_sae`` (the site replaced by ``x̂`` — no error term), ``ce_zero`` (the
  site set to 0), ``ce_mean`` (the site set to the mean activation over the eval tokens);
* ``delta_ce``           = ce_sae − ce_clean
* ``kl``                 = (1/T) Σ_t KL(p_clean,t ‖ p_sae,t)
* ``ce_recovered_zero``  = (ce_zero − ce_sae) / (ce_zero − ce_clean)
* ``ce_recovered_mean``  = (ce_mean − ce_sae) / (ce_mean − ce_clean)
  (SAELens's ``ce_loss_score`` is the zero-ablation variant; mean ablation is the harder
  baseline, as in Gao et al. 2024)
* ``ce_by_position``     = CE at each position of the window, clean and spliced (loss over
  context length).

The splice, zero- and mean-ablation act on the same tokens: ``positions`` (default
``all[1:]``: every token but the first of each window, which is the attention sink that
training excludes as a high-norm token).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import ConfigError, DataFormatError, DeltalensError, ShapeError, SiteError
from ..hooks import Site, SiteLike
from ..stage import StageConfig, StageResult, _jsonable, at_least, option, register_result
from .base import SAE

HIST_BINS = np.arange(-8.0, 0.25, 0.25)
EVAL_JSON = "eval.json"
DENSITY = "density.safetensors"


def _check_sae(sae: SAE, d_in: int, site: SiteLike | None, what: str) -> None:
    if sae.d_in != d_in:
        raise ShapeError(
            f"SAE d_in={sae.d_in} (trained at {sae.site}) does not match {what} with width {d_in}"
        )
    if site is not None and sae.site is not None and Site.parse(site) != Site.parse(sae.site):
        raise SiteError(f"SAE was trained at {sae.site} but {what} is at {Site.parse(site)}")


class ReconstructionAccumulator:
    """Streaming float64 sums for :func:`reconstruction_metrics` (usable on its own)."""

    def __init__(self, d_in: int, d_sae: int):
        self.n = 0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_sq = 0.0
        self.sse = 0.0
        self.l0 = 0.0
        self.l1 = 0.0
        self.shrink = 0.0
        self.cos = 0.0
        self.fired = torch.zeros(d_sae, dtype=torch.float64)
        self.d_in, self.d_sae = d_in, d_sae

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> None:
        x64, h64 = x.double().cpu(), x_hat.double().cpu()
        self.n += x64.shape[0]
        self.sum_x += x64.sum(0)
        self.sum_sq += float((x64 * x64).sum())
        self.sse += float((x64 - h64).pow(2).sum())
        nz = f != 0
        self.l0 += float(nz.sum())
        self.l1 += float(f.double().abs().sum())
        xn, hn = x64.norm(dim=-1), h64.norm(dim=-1)
        self.shrink += float((hn / xn.clamp(min=1e-12)).sum())
        self.cos += float(((x64 * h64).sum(-1) / (xn * hn).clamp(min=1e-12)).sum())
        self.fired += nz.sum(0).double().cpu()

    def result(self) -> dict[str, Any]:
        n = max(self.n, 1)
        mean = self.sum_x / n
        total_var = self.sum_sq - n * float(mean @ mean)
        density = (self.fired / n).numpy()
        dead = int((self.fired == 0).sum())
        live = density[density > 0]
        hist, edges = (
            np.histogram(np.log10(live), bins=HIST_BINS)
            if len(live)
            else (np.zeros(len(HIST_BINS) - 1), HIST_BINS)
        )
        return {
            "tokens": self.n,
            "mse": self.sse / (n * self.d_in),
            "mse_per_token": self.sse / n,
            "explained_variance": 1.0 - self.sse / total_var if total_var > 0 else float("nan"),
            "total_variance_per_token": total_var / n,
            "l0": self.l0 / n,
            "l1": self.l1 / n,
            "dead": dead,
            "dead_fraction": dead / self.d_sae,
            "dead_window_tokens": self.n,
            "shrinkage": self.shrink / n,
            "cosine": self.cos / n,
            "density_histogram": {
                "log10_edges": edges.tolist(),
                "counts": np.asarray(hist).astype(int).tolist(),
                "dead": dead,
            },
            "density": density,
        }


@torch.no_grad()
def reconstruction_metrics(
    sae: SAE,
    data: Any,
    *,
    site: SiteLike | None = None,
    n_tokens: int | None = None,
    batch_size: int = 4096,
    split: str | None = "val",
    progress: bool = False,
    **source_kw: Any,
) -> dict[str, Any]:
    """Reconstruction metrics (module docstring) of ``sae`` on ``data``: a tensor ``[n, d]``,
    an ActivationStore (its ``split`` rows; ``None`` for all) or an activation source.
    ``n_tokens`` caps the tokens evaluated (default: one pass over the data)."""
    from .sources import ActivationSource, StoreSource, TensorSource

    if isinstance(data, torch.Tensor):
        batches: Iterable[torch.Tensor] = (data[i : i + batch_size] for i in range(0, len(data), batch_size))
        d_in, dsite = data.shape[-1], site
    else:
        src = (
            data
            if isinstance(data, ActivationSource)
            else StoreSource(data, site or sae.site, split=split, **source_kw)
        )
        d_in, dsite = src.d_in, src.site
        if isinstance(src, StoreSource):
            batches = _one_pass(src, batch_size)
        elif isinstance(src, TensorSource):
            batches = (src.x[i : i + batch_size] for i in range(0, len(src.x), batch_size))
        else:
            if n_tokens is None:
                raise ShapeError("give n_tokens when evaluating on an endless source")
            batches = src.batches(batch_size)
    _check_sae(sae, d_in, dsite, "the evaluation activations")
    acc = ReconstructionAccumulator(sae.d_in, sae.d_sae)
    bar = tqdm(
        total=n_tokens, desc="eval SAE", unit="tok", unit_scale=True, disable=not progress, leave=False
    )
    for b in batches:
        if n_tokens is not None and acc.n >= n_tokens:
            break
        if n_tokens is not None:
            b = b[: n_tokens - acc.n]
        x = b.to(sae.device, sae.dtype)
        f = sae.encode(x)
        acc.update(x, sae.decode(f), f)
        bar.update(len(b))
    bar.close()
    if acc.n == 0:
        raise ShapeError("no activation rows to evaluate on (empty split?)")
    return acc.result()


def _one_pass(src: Any, batch_size: int) -> Iterable[torch.Tensor]:
    for i in range(src.n_shards()):
        t = src._shard(i)[0]
        for k in range(0, len(t), batch_size):
            yield t[k : k + batch_size]


# ---- loss with the SAE spliced in ---------------------------------------------------------------


@torch.no_grad()
def mean_activation(
    lm: Any, windows: Sequence[Any], site: SiteLike, positions: str = "all[1:]", batch_size: int = 8
) -> torch.Tensor:
    """Mean activation at ``site`` over the ``positions`` of ``windows`` (for mean ablation)."""
    from ..capture import capture

    items = [w if isinstance(w, dict) else {"prompt_ids": list(w), "response_ids": []} for w in windows]
    acts = capture(lm, items, [site], positions, reduce=None, batch_size=batch_size, progress=False)
    return acts[site].double().mean(0).float()


@torch.no_grad()
def ce_metrics(
    lm: Any,
    sae: SAE,
    windows: Sequence[Any],
    *,
    site: SiteLike | None = None,
    positions: str = "all[1:]",
    batch_size: int = 8,
    mean: torch.Tensor | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Cross-entropy metrics (module docstring) over token ``windows`` (lists of ids or the
    dicts of :func:`deltalens.data.corpus.token_windows`), all of the same length.
    (One function on purpose: the clean and spliced runs of a batch share its padding, masks
    and clean log-probabilities, and every sum is accumulated in one pass.)"""
    from .. import hooks
    from ..generate import left_pad, position_ids

    site_s = Site.parse(site if site is not None else sae.site)
    if sae.site is None and site is None:
        raise SiteError("the SAE names no site; pass site=")
    if sae.d_in != lm.d_model:
        raise ShapeError(f"SAE d_in={sae.d_in} does not match {lm.name}'s d_model={lm.d_model}")
    if sae.site is not None and Site.parse(sae.site) != site_s:
        raise SiteError(f"SAE was trained at {sae.site} but is evaluated at {site_s}")
    seqs = [
        list(w["prompt_ids"]) + list(w.get("response_ids", [])) if isinstance(w, dict) else list(w)
        for w in windows
    ]
    if not seqs:
        raise ShapeError("no windows to evaluate the loss on")
    if mean is None:
        mean = mean_activation(lm, seqs, site_s, positions, batch_size)
    T = max(len(s) for s in seqs)
    sums = {k: 0.0 for k in ("clean", "sae", "zero", "mean", "kl")}
    pos_clean = torch.zeros(T, dtype=torch.float64)
    pos_sae = torch.zeros(T, dtype=torch.float64)
    pos_n = torch.zeros(T, dtype=torch.float64)
    n_tok = 0
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    variants = {
        "sae": [hooks.Splice(site_s, sae, positions=positions, keep_error=False)],
        "zero": [hooks.Ablate(site_s, None, positions=positions)],
        "mean": [hooks.Replace(site_s, mean.to(lm.device), positions=positions)],
    }
    bar = tqdm(total=len(seqs), desc="CE eval", unit="seq", disable=not progress, leave=False)
    for k in range(0, len(seqs), batch_size):
        batch = seqs[k : k + batch_size]
        ids, attn = left_pad(batch, pad, lm.device)
        kw = dict(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn), use_cache=False)
        target = ids[:, 1:]
        valid = (attn[:, 1:] * attn[:, :-1]).bool()
        rel = (attn.cumsum(1) - 1)[:, 1:]  # position of the predicted token within its window

        def logp(ivs: list[Any] | None) -> torch.Tensor:
            if ivs:
                with hooks.intervene(lm, ivs):
                    out = lm.model(**kw)  # noqa: B023
            else:
                out = lm.model(**kw)  # noqa: B023
            return F.log_softmax(out.logits[:, :-1].double(), -1)

        lp_clean = logp(None)
        ce_clean = -lp_clean.gather(-1, target[..., None]).squeeze(-1)
        sums["clean"] += float(ce_clean[valid].sum())
        for name, ivs in variants.items():
            lp = logp(ivs)
            ce = -lp.gather(-1, target[..., None]).squeeze(-1)
            sums[name] += float(ce[valid].sum())
            if name == "sae":
                kl = (lp_clean.exp() * (lp_clean - lp)).sum(-1)
                sums["kl"] += float(kl[valid].sum())
                r = rel[valid].cpu()
                pos_sae.index_add_(0, r, ce[valid].cpu())
                pos_clean.index_add_(0, r, ce_clean[valid].cpu())
                pos_n.index_add_(0, r, torch.ones(len(r), dtype=torch.float64))
        n_tok += int(valid.sum())
        bar.update(len(batch))
    bar.close()
    c, s, z, m = (sums[k] / n_tok for k in ("clean", "sae", "zero", "mean"))

    def frac(base: float) -> float:
        return (base - s) / (base - c) if abs(base - c) > 1e-12 else float("nan")

    have = pos_n > 0
    return {
        "tokens": n_tok,
        "sequences": len(seqs),
        "positions": positions,
        "ce_clean": c,
        "ce_sae": s,
        "ce_zero": z,
        "ce_mean": m,
        "delta_ce": s - c,
        "kl": sums["kl"] / n_tok,
        "ce_recovered_zero": frac(z),
        "ce_recovered_mean": frac(m),
        "ce_by_position": {
            "position": torch.arange(T)[have].tolist(),  # index of the predicted token in its window
            "clean": (pos_clean[have] / pos_n[have]).tolist(),
            "sae": (pos_sae[have] / pos_n[have]).tolist(),
            "count": pos_n[have].long().tolist(),
        },
    }


@dataclass
class SAEEvalConfig(StageConfig):
    """How an SAE is evaluated (recorded in ``eval.json``)."""

    split: str = option("val", flag="--split", help="Store split to evaluate on ('all' for every row).")
    n_tokens: int | None = option(None, flag="--tokens", help="Cap on tokens for reconstruction metrics.")
    n_windows: int = option(
        64, flag="--windows", help="Token windows for the CE metrics (the end of the corpus)."
    )
    context_len: int = option(128, flag="--context-len", help="Tokens per window (CE metrics).")
    text_key: str = option("text", flag="--text-key", help="Text field of JSONL/Parquet/HF data.")
    positions: str = option(
        "all[1:]", flag="--positions", help="Tokens the SAE / ablations replace in the CE metrics."
    )
    batch_size: int = option(4096, flag="--batch-size", help="Tokens per batch (reconstruction metrics).")
    ce_batch_size: int = option(8, flag="--ce-batch-size", help="Windows per forward pass (CE metrics).")
    device: str = option("cpu", flag="--device", help="Device.")

    def validate(self) -> None:
        for name in ("n_tokens", "n_windows", "batch_size", "ce_batch_size"):
            at_least(self, name, 1)
        at_least(self, "context_len", 2)
        from ..positions import Positions

        try:
            Positions.parse(self.positions)
        except DeltalensError as exc:
            raise ConfigError(f"--positions: {exc}") from None

    @property
    def store_split(self) -> str | None:
        return None if self.split == "all" else self.split


@register_result
@dataclass
class SAEEval(StageResult):
    """Evaluation of one SAE: ``eval.json`` (metrics, config) + ``density.safetensors`` (per-latent
    firing density over the evaluated tokens, when reconstruction metrics were computed)."""

    KIND: ClassVar[str] = "SAE evaluation"
    FILENAME: ClassVar[str] = EVAL_JSON

    sae: str
    site: str | None
    d_in: int
    d_sae: int
    architecture: str
    reconstruction: dict[str, Any] | None = None
    loss: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    density: torch.Tensor | None = field(default=None, repr=False, compare=False, metadata={"runtime": True})

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if not f.metadata.get("runtime")
        }

    def save(self, directory: str | Path) -> Path:
        from ..io import save_tensors

        path = super().save(directory)
        if self.density is not None:
            save_tensors(
                path.parent / DENSITY, {"density": torch.as_tensor(self.density, dtype=torch.float64)}
            )
        return path

    @classmethod
    def load(cls, directory: str | Path) -> SAEEval:
        """Read ``eval.json`` (also those written before results had a ``kind``) and the density."""
        from ..io import load_tensors, read_json

        path = cls.path_in(directory)
        if path.is_file():
            data = read_json(path)
            if (
                isinstance(data, dict)
                and "kind" not in data
                and "sae" in data
                and {"d_in", "d_sae"} <= set(data)
            ):
                data = {"kind": cls.KIND, **data}
                res = cls.from_dict(data)
            else:
                res = super().load(directory)
        else:
            res = super().load(directory)
        dens = path.parent / DENSITY
        if dens.is_file():
            try:
                res.density = load_tensors(dens)["density"]
            except Exception as exc:
                raise DataFormatError(f"not a valid {cls.KIND}: {dens} ({exc})") from None
        return res

    def summary(self) -> dict[str, Any]:
        r, loss = self.reconstruction or {}, self.loss or {}
        return {
            "sae": self.sae,
            "site": self.site,
            **{k: v for k, v in {**r, **loss}.items() if isinstance(v, (int, float, str))},
        }


def evaluate_sae(
    sae: SAE | str | Path,
    config: SAEEvalConfig | None = None,
    *,
    activations: Any = None,
    lm: Any = None,
    windows: Sequence[Any] | None = None,
    data: Any = None,
    out: str | Path | None = None,
    progress: bool = False,
    **source_kw: Any,
) -> SAEEval:
    """Reconstruction metrics on ``activations`` (a store, a tensor, a source) and/or loss
    metrics with ``lm`` (a LoadedModel or a model spec) over token ``windows`` — or over the
    last ``config.n_windows`` windows cut from the text corpus ``data``. ``sae`` may be a
    directory in any supported format. Without ``activations``, reconstruction metrics are
    computed on the windows. With ``out``, writes ``eval.json``, the density and figures."""
    from .io import load_any

    cfg = config or SAEEvalConfig()
    if not isinstance(sae, SAE):
        sae = load_any(sae, device=cfg.device)
    if activations is None and data is None and windows is None:
        raise ConfigError("give activations (a store) and/or text data with a model for the CE metrics")
    if (data is not None or windows is not None) and lm is None:
        raise ConfigError("the CE metrics need a model (lm=)")
    if lm is not None and not hasattr(lm, "model"):
        from ..models import load

        lm = load(lm, device=cfg.device)
    if data is not None and windows is None:
        from ..data.corpus import read_texts, token_windows

        windows = list(token_windows(lm.tokenizer, read_texts(data, text_key=cfg.text_key), cfg.context_len))
        windows = windows[
            -cfg.n_windows :
        ]  # the end of the corpus (training usually reads it from the start)
    res = SAEEval(
        sae=repr(sae),
        site=sae.site,
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        architecture=sae.cfg.architecture,
        config=cfg.to_dict(),
    )
    rec = None
    if activations is not None:
        rec = reconstruction_metrics(
            sae,
            activations,
            n_tokens=cfg.n_tokens,
            batch_size=cfg.batch_size,
            split=cfg.store_split,
            progress=progress,
            **source_kw,
        )
    elif lm is not None and windows is not None:
        from .sources import ModelSource

        src = ModelSource(lm, windows, sae.site, repeat=False)
        need = cfg.n_tokens or sum(len(w["prompt_ids"]) if isinstance(w, dict) else len(w) for w in windows)
        rec = reconstruction_metrics(sae, src.for_site(sae.site), n_tokens=need, batch_size=cfg.batch_size)
    if rec is not None:
        res.density = torch.as_tensor(np.asarray(rec.pop("density")), dtype=torch.float64)
        res.reconstruction = rec
    if lm is not None and windows is not None:
        res.loss = ce_metrics(
            lm, sae, windows, positions=cfg.positions, batch_size=cfg.ce_batch_size, progress=progress
        )
    if out is not None:
        write_eval(res, out)
    return res


def summary_rows(res: SAEEval | dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, value, definition) rows for a table."""
    if not isinstance(res, SAEEval):
        res = _from_metrics(res)
    rows: list[tuple[str, str, str]] = []
    r = res.reconstruction
    if r:
        rows += [
            ("explained variance", f"{r['explained_variance']:.4f}", "1 − Σ‖x−x̂‖² / Σ‖x−x̄‖²"),
            ("MSE", f"{r['mse']:.4g}", "per element"),
            ("L0", f"{r['l0']:.1f}", "active latents per token"),
            ("L1", f"{r['l1']:.4g}", "Σ|f| per token"),
            (
                "dead latents",
                f"{r['dead']} ({100 * r['dead_fraction']:.1f} %)",
                f"no firing in {r['dead_window_tokens']} tokens",
            ),
            ("shrinkage", f"{r['shrinkage']:.3f}", "E ‖x̂‖/‖x‖"),
            ("cosine", f"{r['cosine']:.3f}", "E cos(x, x̂)"),
        ]
    loss = res.loss
    if loss:
        rows += [
            ("CE clean", f"{loss['ce_clean']:.4f}", f"{loss['tokens']} predicted tokens"),
            ("CE with SAE", f"{loss['ce_sae']:.4f}", f"ΔCE {loss['delta_ce']:+.4f}"),
            (
                "CE zero / mean abl.",
                f"{loss['ce_zero']:.3f} / {loss['ce_mean']:.3f}",
                f"at {loss['positions']}",
            ),
            ("KL(clean ‖ SAE)", f"{loss['kl']:.4f}", "nats per token"),
            (
                "CE recovered (zero)",
                f"{loss['ce_recovered_zero']:.4f}",
                "(CE_zero − CE_sae)/(CE_zero − CE_clean)",
            ),
            (
                "CE recovered (mean)",
                f"{loss['ce_recovered_mean']:.4f}",
                "(CE_mean − CE_sae)/(CE_mean − CE_clean)",
            ),
        ]
    return rows


def write_eval(res: SAEEval | dict[str, Any], out: str | Path) -> Path:
    """``eval.json`` (+ ``density.safetensors``) plus ``density_histogram.png`` and
    ``loss_by_position.png`` in ``out``. A plain dict (``{"sae", "site", "reconstruction",
    "loss"}``, as the demo builds it) is accepted too."""
    if not isinstance(res, SAEEval):
        res = _from_metrics(res)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = res.save(out)
    try:
        _figures(res, out)
    except Exception as exc:  # figures are a convenience; the JSON is the record
        (out / "figures_error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
    return path


def _from_metrics(d: dict[str, Any]) -> SAEEval:
    rec = dict(d["reconstruction"]) if d.get("reconstruction") else None
    dens = rec.pop("density", None) if rec else None
    return SAEEval(
        sae=str(d.get("sae", "")),
        site=d.get("site"),
        d_in=int(d.get("d_in", 0)),
        d_sae=int(d.get("d_sae", 0)),
        architecture=str(d.get("architecture", "")),
        reconstruction=rec,
        loss=d.get("loss"),
        config=dict(d.get("config") or {}),
        density=None if dens is None else torch.as_tensor(np.asarray(dens), dtype=torch.float64),
    )


def _figures(res: SAEEval, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plots import save_figure

    r = res.reconstruction
    if r and res.density is not None:
        dens = res.density.numpy()
        live = dens[dens > 0]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        if len(live):
            ax.hist(np.log10(live), bins=HIST_BINS, color="#4c72b0")
        ax.set_xlabel("log10 firing density")
        ax.set_ylabel("latents")
        ax.set_title(
            f"feature density ({r['dead']} dead of {len(dens)}, window {r['dead_window_tokens']} tokens)"
        )
        save_figure(fig, out / "density_histogram.png")
        plt.close(fig)
    loss = res.loss
    if loss:
        p = loss["ce_by_position"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(p["position"], p["clean"], label="original")
        ax.plot(p["position"], p["sae"], label="SAE spliced")
        ax.set_xscale("log")
        ax.set_xlabel("token position in context")
        ax.set_ylabel("cross-entropy (nats)")
        ax.set_title("loss over context length")
        ax.legend()
        save_figure(fig, out / "loss_by_position.png")
        plt.close(fig)


def log10_density(res: SAEEval) -> torch.Tensor:
    """``log10(density + 1e-10)`` per latent (the ``sparsity.safetensors`` convention)."""
    if res.density is None:
        raise ConfigError("this evaluation has no density (it computed no reconstruction metrics)")
    return torch.log10(res.density.float() + 1e-10)
