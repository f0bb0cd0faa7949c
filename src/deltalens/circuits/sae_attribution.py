"""SAE-latent attribution: node attribution patching through a spliced SAE.

The SAE is spliced at its site as ``x = x̂ + ε`` (:class:`deltalens.Splice`): the latents
``f`` (a leaf tensor) and the error node ``ε = x − x̂`` both receive gradients, and with the
error term kept the forward pass is unchanged (logits equal the model's to float error).

**Node attribution** (the first-order estimate of patching one node, same convention as
:mod:`deltalens.circuits.attribution`, gradient on the base run — the corrupted run for
denoising)::

    latent i at position p:   Σ_pairs (f_clean − f_corrupt)[p, i] · ∂m/∂f[p, i]
    error node at position p: Σ_pairs Σ_d (ε_clean − ε_corrupt)[p, d] · ∂m/∂ε[p, d]   (one scalar)

``mode="direct"`` keeps only the direct path to the logits (the seed's "direct effect
from features to logits"): every block after the SAE's site is frozen, so the gradient
is that of the metric w.r.t. the final residual stream (before the final norm),
projected on the latent's decoder direction::

    direct(i, p) = Σ_pairs (f_clean − f_corrupt)[p, i] · W_dec[i] · ∂m/∂resid_final[p]

Only positions whose logits the metric reads (the last prompt token, and answer tokens
for ``logprob_diff``) have a direct effect.

With ``keep_error=False`` the SAE reconstruction replaces the activation (no error node);
gradients then flow through the SAE encoder too, and the metric itself changes — the
"with / without error term" table of the seed reports the metric of the model, of the
splice with ε and of the splice without it, on both runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..errors import ConfigError, SiteError
from ..hooks import Read, Site, Splice, intervene
from ..io import load_tensors, save_tensors, write_json
from ..stage import StageResult, register_result
from .attribution import gradient_path
from .patching import runs_for
from .task import PairTask

if TYPE_CHECKING:
    from ..models.loading import LoadedModel
    from ..sae.protocol import SAELike

log = logging.getLogger(__name__)

MODES = ("indirect", "direct")


def sae_site(lm: LoadedModel, sae: SAELike, site: Any | None = None, force: bool = False) -> Site:
    """The site to splice ``sae`` at: the SAE's own ``site`` (or ``site`` for an SAE that
    records none); checked against the model (layer range, width) with messages naming
    both. A ``site`` that differs from the SAE's own is refused unless ``force``."""
    own = getattr(sae, "site", None)
    if site is None and own is None:
        raise ConfigError(
            "the SAE does not record its site (cfg.site / hook name); pass site=, e.g. 'resid.15'"
        )
    if site is not None and own is not None and Site.parse(site) != Site.parse(own) and not force:
        raise ConfigError(
            f"the SAE was trained at {Site.parse(own)} but site {Site.parse(site)} was asked for; "
            "an SAE only reconstructs the activations of its own site (force=True / --force-site to splice it anyway)"
        )
    asked = Site.parse(site if site is not None else own)
    try:
        s = asked.resolve(lm)
    except SiteError:
        n = lm.n_layers
        raise ConfigError(
            f"SAE site {asked} does not exist in {lm.name}: the model has {n} layers "
            f"(valid: 0..{n - 1}, or -{n}..-1 counting from the end)"
        ) from None
    d_in = int(getattr(sae, "d_in", -1))
    if d_in != lm.d_model:
        raise ConfigError(f"SAE d_in={d_in} does not match {lm.name}'s d_model={lm.d_model} (SAE site {s})")
    model_name = getattr(getattr(sae, "cfg", None), "model_name", None)
    if model_name and model_name != lm.name:
        log.warning("SAE was trained on %s but is spliced into %s", model_name, lm.name)
    return s


@register_result
@dataclass
class SAEAttribution(StageResult):
    """Latent and error-node attribution at one SAE site (module docstring).

    ``scores [P, d_sae]`` and ``error_scores [P]`` are over the grid ``positions``;
    ``act_clean``/``act_corrupted [P, d_sae]`` are mean latent activations over pairs.
    ``error_table`` holds the metric of the model and of the splice with/without ε.

    Saved in a directory: ``attribution.json`` (kind, schema, summary, error table),
    ``top_latents.json`` and ``scores.safetensors``.
    """

    KIND: ClassVar[str] = "circuits.sae_attribution"
    FILENAME: ClassVar[str] = "attribution.json"
    TOP_FILE: ClassVar[str] = "top_latents.json"
    SCORES_FILE: ClassVar[str] = "scores.safetensors"

    site: Site
    direction: str
    mode: str
    keep_error: bool
    metric_name: str
    positions: list[int]
    labels: list[str]
    clean: float
    corrupted: float
    scores: torch.Tensor
    error_scores: torch.Tensor | None
    act_clean: torch.Tensor
    act_corrupted: torch.Tensor
    error_table: dict[str, dict[str, float]]
    seq_latents: dict[str, torch.Tensor] = field(
        default_factory=dict, repr=False
    )  # run → [n_pairs, P, d_sae]
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def d_sae(self) -> int:
        return int(self.scores.shape[1])

    def top(
        self, k: int = 25, include_error: bool = False, descriptions: dict[int, str] | None = None
    ) -> list[dict[str, Any]]:
        """The ``k`` nodes with the largest |score| (latents; error nodes too if asked); a latent's
        ``description`` comes from ``descriptions`` (:mod:`.descriptions`) when it has one."""
        descriptions = descriptions or {}
        flat = self.scores.flatten()
        n = min(k, flat.numel())
        idx = flat.abs().topk(n).indices
        den = self.clean - self.corrupted
        out = []
        for j in idx.tolist():
            p, i = divmod(j, self.d_sae)
            s = float(flat[j])
            out.append(
                {
                    "latent": i,
                    "layer": self.site.layer,
                    "site": str(self.site),
                    "position": self.positions[p],
                    "token": self.labels[p],
                    "score": s,
                    "score_normalised": s / den if den else float("nan"),
                    "activation": float(self.act_clean[p, i]),
                    "activation_corrupted": float(self.act_corrupted[p, i]),
                    "description": descriptions.get(i),
                }
            )
        if include_error and self.error_scores is not None:
            for p, s in enumerate(self.error_scores.tolist()):
                out.append(
                    {
                        "latent": "error",
                        "layer": self.site.layer,
                        "site": str(self.site),
                        "position": self.positions[p],
                        "token": self.labels[p],
                        "score": s,
                        "score_normalised": s / den if den else float("nan"),
                        "activation": None,
                        "activation_corrupted": None,
                        "description": "SAE error node (x - x_hat)",
                    }
                )
            out.sort(key=lambda r: -abs(r["score"]))
            out = out[:k]
        return out

    def top_positions(self, k: int = 5) -> list[dict[str, Any]]:
        """Positions ranked by total |latent score| + |error score|."""
        tot = self.scores.abs().sum(1) + (self.error_scores.abs() if self.error_scores is not None else 0)
        order = tot.argsort(descending=True)[:k].tolist()
        return [
            {
                "position": self.positions[p],
                "token": self.labels[p],
                "sum_abs_latent_score": float(self.scores[p].abs().sum()),
                "error_score": None if self.error_scores is None else float(self.error_scores[p]),
            }
            for p in order
        ]

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.KIND,
            "schema": self.SCHEMA,
            "site": str(self.site),
            "direction": self.direction,
            "mode": self.mode,
            "keep_error": self.keep_error,
            "metric": self.metric_name,
            "clean": self.clean,
            "corrupted": self.corrupted,
            "positions": self.positions,
            "labels": self.labels,
            "d_sae": self.d_sae,
            "error_table": self.error_table,
            "error_scores": None if self.error_scores is None else self.error_scores.tolist(),
            "total_latent_score": float(self.scores.sum()),
            "total_error_score": None if self.error_scores is None else float(self.error_scores.sum()),
            "seconds": round(self.seconds, 3),
            "meta": self.meta,
        }

    def to_dict(self) -> dict[str, Any]:
        return self.summary()

    def save(self, out_dir: str | Path, k: int = 25, descriptions: dict[int, str] | None = None) -> Path:
        """Write the result into ``out_dir`` (see the class docstring); returns ``attribution.json``."""
        return self.save_all(out_dir, k, descriptions)["summary"]

    def save_all(
        self, out_dir: str | Path, k: int = 25, descriptions: dict[int, str] | None = None
    ) -> dict[str, Path]:
        """:meth:`save`, returning every file by name: ``summary`` (``attribution.json``),
        ``top`` (``top_latents.json``, the ``k`` largest) and ``scores`` (``scores.safetensors``)."""
        out_dir = Path(out_dir)
        paths = {
            "summary": write_json(out_dir / self.FILENAME, self.summary()),
            "top": write_json(out_dir / self.TOP_FILE, self.top(k, descriptions=descriptions)),
        }
        tensors = {"scores": self.scores, "act_clean": self.act_clean, "act_corrupted": self.act_corrupted}
        if self.error_scores is not None:
            tensors["error_scores"] = self.error_scores
        save_tensors(
            out_dir / self.SCORES_FILE, tensors, metadata={"site": str(self.site), "mode": self.mode}
        )
        paths["scores"] = out_dir / self.SCORES_FILE
        return paths

    @classmethod
    def load(cls, out_dir: str | Path) -> SAEAttribution:
        """Read a saved attribution (its directory or its ``attribution.json``)."""
        path = cls.path_in(out_dir)
        s = cls.read_header(path)
        scores = cls.companion(path, cls.SCORES_FILE)
        t = load_tensors(scores)
        return cls(
            Site.parse(s["site"]),
            s["direction"],
            s["mode"],
            s["keep_error"],
            s["metric"],
            s["positions"],
            s["labels"],
            s["clean"],
            s["corrupted"],
            t["scores"],
            t.get("error_scores"),
            t["act_clean"],
            t["act_corrupted"],
            s["error_table"],
            seconds=s.get("seconds", 0.0),
            meta=s.get("meta", {}),
        )

    def latent_heatmap(
        self,
        path: str | Path,
        latents: list[int] | None = None,
        run: str = "clean",
        pair: int | None = None,
        k: int = 12,
    ) -> Path:
        """Heatmap of latent activations (rows: latents, columns: positions with token
        labels) on the clean or corrupted run, for one pair or the mean over pairs."""
        from ..plots import heatmap

        if latents is None:
            seen: list[int] = []
            for r in self.top(5 * k):
                if r["latent"] not in seen:
                    seen.append(r["latent"])
            latents = seen[:k]
        if pair is None or not self.seq_latents:
            acts = self.act_clean if run == "clean" else self.act_corrupted
            what = "mean over pairs"
        else:
            seq = self.seq_latents[run]
            acts = seq[int(pair)]
            what = f"pair {pair}"
        m = acts[:, latents].T.numpy()
        return heatmap(
            m,
            path,
            xlabels=self.labels,
            ylabels=[f"L{self.site.layer}/{i}" for i in latents],
            title=f"SAE latents at {self.site}\n{run} run, {what}",
            xlabel="position",
            ylabel="latent",
            cmap="viridis",
            center=None,
            colorbar_label="activation",
        )

    def latent_heatmap_at(
        self,
        path: str | Path,
        position: int,
        latents: list[int] | None = None,
        run: str = "clean",
        pair_labels: list[str] | None = None,
        k: int = 12,
    ) -> Path:
        """The seed's per-position view: latents (rows) × pairs (columns) at one grid
        position (a column index of the task, e.g. a named position's column)."""
        from ..plots import heatmap

        if position not in self.positions:
            raise ConfigError(f"position {position} is not in this attribution's grid {self.positions}")
        p = self.positions.index(position)
        if latents is None:
            latents = [
                r["latent"]
                for r in sorted(
                    ({"latent": i, "s": float(self.scores[p, i])} for i in range(self.d_sae)),
                    key=lambda r: -abs(r["s"]),
                )[:k]
            ]
        seq = self.seq_latents.get(run)
        if seq is None:
            raise ConfigError("per-pair latent activations are not stored (a loaded result keeps only means)")
        m = seq[:, p, latents].T.numpy()
        xl = pair_labels or [str(i) for i in range(m.shape[1])]
        return heatmap(
            m,
            path,
            xlabels=xl,
            ylabels=[f"L{self.site.layer}/{i}" for i in latents],
            title=f"SAE latents at {self.site}, position {position}\n({self.labels[p].strip()}), {run} run",
            xlabel="pair",
            ylabel="latent",
            cmap="viridis",
            center=None,
            colorbar_label="activation",
        )


def _splice_run(
    lm: LoadedModel, task: PairTask, which: str, sae: SAELike, site: Site, keep_error: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair metric and kept logits of a run with the SAE spliced in."""
    with torch.no_grad(), intervene(lm, [Splice(site, sae, keep_error=keep_error, check_site=False)]):
        logits = task.forward(lm, task.ids(which), task.mask)
    return task.metric(logits)[0], logits


def error_term_table(
    lm: LoadedModel, task: PairTask, sae: SAELike, site: Any | None = None, force_site: bool = False
) -> dict[str, dict[str, float]]:
    """The seed's table: mean metric on the clean and corrupted runs for the model, the SAE
    spliced with the error term, and without it; plus the largest |logit difference| of the
    spliced runs from the model's (``max_abs_logit_change``)."""
    s = sae_site(lm, sae, site, force_site)
    table: dict[str, dict[str, float]] = {"model": {}, "with_error": {}, "without_error": {}}
    for which in ("clean", "corrupted"):
        with torch.no_grad():
            ref = task.forward(lm, task.ids(which), task.mask)
        table["model"][which] = float(task.metric(ref)[0].mean())
        for name, keep in (("with_error", True), ("without_error", False)):
            m, logits = _splice_run(lm, task, which, sae, s, keep)
            table[name][which] = float(m.mean())
            real = task.mask[:, -task.keep :].bool().to(logits.device)
            change = float((logits - ref).abs()[real].max())
            table[name][f"max_abs_logit_change_{which}"] = change
    for row in table.values():
        row["difference"] = row["clean"] - row["corrupted"]
    return table


def sae_attribution(
    lm: LoadedModel,
    task: PairTask,
    sae: SAELike,
    site: Any | None = None,
    direction: str = "denoising",
    mode: str = "indirect",
    keep_error: bool = True,
    positions: list[int] | None = None,
    force_site: bool = False,
) -> SAEAttribution:
    """Node attribution of every SAE latent and of the error node at every position.

    Two forwards with the SAE spliced (source run recorded without gradients, base run with
    them) and one backward, plus the small error-term table (six forwards).
    """
    if mode not in MODES:
        raise ConfigError(f"unknown SAE attribution mode '{mode}'; valid: {', '.join(MODES)}")
    t0 = time.perf_counter()
    s = sae_site(lm, sae, site, force_site)
    src_run, base_run = runs_for(direction)
    cols = list(task.positions if positions is None else positions)
    table = error_term_table(lm, task, sae, s, force_site=True)  # s is already checked

    src = Splice(s, sae, keep_error=keep_error, record=True, check_site=False)
    with torch.no_grad(), intervene(lm, [src]):
        m_src = task.metric(task.forward(lm, task.ids(src_run), task.mask))[0]
    f_src, e_src = src.latents[-1].detach(), src.errors[-1].detach()

    base = Splice(s, sae, keep_error=keep_error, record=True, check_site=False)
    final = Read(Site(lm.n_layers - 1, "resid"), keep_grad=True)
    ivs = [base] + ([final] if mode == "direct" else [])
    with gradient_path(lm), intervene(lm, ivs):
        m_base = task.metric(task.forward(lm, task.ids(base_run), task.mask))[0]
        f_b, e_b = base.latents[-1], base.errors[-1]
        wrt = [f_b] + ([e_b] if keep_error else []) + ([final.value] if mode == "direct" else [])
        grads = torch.autograd.grad(m_base.mean(), wrt, allow_unused=True)
    g_f = grads[0]
    g_e = grads[1] if keep_error else None
    d_f = (f_src - f_b.detach()).float()
    d_e = (e_src - e_b.detach()).float()
    if mode == "direct":
        g_final = grads[-1].float()
        W_dec = sae.W_dec.detach().float().to(g_final.device)
        g_f = g_final @ W_dec.T  # ∂m/∂f along the direct path: W_dec[i] · ∂m/∂resid_final
        g_e = g_final if keep_error else None
    g_f = torch.zeros_like(d_f) if g_f is None else g_f.float()
    lat = (d_f * g_f).sum(0)[cols].cpu()  # [P, d_sae]
    err = None if g_e is None else (d_e * g_e.float()).sum(-1).sum(0)[cols].cpu()

    real = task.mask.bool()[:, cols].float().unsqueeze(-1).to(f_src.device)  # [S, P, 1]
    n_real = real.sum(0).clamp(min=1)
    f_clean, f_corr = (f_src, f_b.detach()) if direction == "denoising" else (f_b.detach(), f_src)
    act_clean = ((f_clean[:, cols].float() * real).sum(0) / n_real).cpu()
    act_corr = ((f_corr[:, cols].float() * real).sum(0) / n_real).cpu()
    m_clean, m_corr = (m_src, m_base.detach()) if direction == "denoising" else (m_base.detach(), m_src)
    labels_all = dict(zip(task.positions, task.position_labels()))
    first = torch.tensor([int((task.seq_pair == i).nonzero()[0]) for i in range(task.n_pairs)])
    return SAEAttribution(
        site=s,
        direction=direction,
        mode=mode,
        keep_error=keep_error,
        metric_name=task.metric_name,
        positions=cols,
        labels=[labels_all.get(c, str(c)) for c in cols],
        clean=float(m_clean.mean()),
        corrupted=float(m_corr.mean()),
        scores=lat,
        error_scores=err,
        act_clean=act_clean,
        act_corrupted=act_corr,
        error_table=table,
        seq_latents={
            "clean": f_clean[first][:, cols].float().cpu(),
            "corrupted": f_corr[first][:, cols].float().cpu(),
        },
        seconds=time.perf_counter() - t0,
        meta={
            "task": task.describe(),
            "gradient_on": base_run,
            "sae": repr(sae),
            "sae_model": getattr(getattr(sae, "cfg", None), "model_name", None),
            "score_normalised": "score / (m_clean - m_corrupt) of the spliced runs",
        },
    )
