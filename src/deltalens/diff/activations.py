"""Activation-space diffs: replay similarity and the activation-difference lens.

**Replay mode** (trait seed, Phase 4b–c): the fine-tuned model answers the prompts
(greedy); the base model then reads exactly the same token ids — prompt and response —
so both residual streams are compared on identical inputs. (``base_prompt="raw"`` gives
the base model the prompt as plain text without the chat template, the seed's variant
for base models; the response tokens stay identical.) Per prompt ``i`` and layer ``L``,
with ``x^b_t, x^f_t`` the residual-stream outputs of block L at response token ``t``:

* mean cosine: ``cos(mean_t x^b_t, mean_t x^f_t)`` — averaged over prompts (``mean``,
  ``std``, and the ``[prompts × layers]`` matrix);
* relative norm change: ``‖mean_t x^f‖ / ‖mean_t x^b‖ − 1``;
* relative difference norm: ``‖mean_t x^f − mean_t x^b‖ / ‖mean_t x^b‖``;
* per position: ``cos(x^b_t, x^f_t)`` averaged over the prompts whose response reaches
  ``t``, reported only for positions that at least ``min_fraction`` (80 %) of the prompts
  reach.

With steering results (``results.jsonl`` of the steering stage) the **transfer curve** per
trait is the best trait delta per layer among configurations with coherence ≥ 70
(``trait_mean − baseline trait_mean``), and the **correlation** is Pearson's r (and its
p-value) between the per-layer mean cosine and that curve over the layers both have.

**Activation-difference lens** (Minder et al., "Narrow finetuning leaves clearly readable
traces in activation differences", 2025): on text unrelated to the fine-tune, both models
read the same token ids; the mean difference ``δ_{L,p} = mean_i (x^f_{i,L,p} − x^b_{i,L,p})``
per layer and token position ``p`` (and averaged over the first ``n_positions`` positions,
``first_k``) is read through the fine-tuned model's logit lens
``W_U · norm_f(δ)`` — top tokens of ``+δ`` (and ``−δ``). The definition lives with the other
logit lenses in :func:`deltalens.diff.lens.difference_lens`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..capture import capture
from ..data.jsonl import read_jsonl
from ..data.prompts import bundled_path
from ..errors import ConfigError, DataFormatError
from ..generate import Generation, generate
from ..hooks import Site
from ..io import provenance
from ..stage import StageConfig, at_least, in_range, one_of, option, register_result
from ._models import DiffResult, check_ids, generations_from, load_pair, model_info
from .lens import difference_lens

RESULTS_FILE = "results.json"
LENS_FILE = "activation_lens.json"


@dataclass
class ActivationDiffConfig(StageConfig):
    """Settings of :func:`activation_similarity` and :func:`activation_difference_lens`."""

    layers: list[int] = option(
        default_factory=list, flag="--layers", help="Layers (default all): 'all', '6,12', '9-19'."
    )
    system: str | None = option(
        None, flag="--system", help="System prompt for the fine-tuned model's answers."
    )
    max_new_tokens: int = option(
        64, flag="--max-new-tokens", help="Tokens per answer of the fine-tuned model."
    )
    base_prompt: str = option(
        "same",
        flag="--base-prompt",
        help="same (identical ids) or raw (base reads the prompt as plain text).",
    )
    min_fraction: float = option(
        0.8,
        flag="--min-fraction",
        help="Per-position similarity only where this share of prompts reaches the position.",
    )
    min_coherence: float = option(
        70.0, flag="--min-coherence", help="Coherence a steering result needs (transfer curve)."
    )
    batch_size: int = option(16, flag="--batch-size", help="Sequences per forward pass.")
    chunk: int = option(32, flag="--chunk", help="Prompts captured at once (replay).")
    lens: bool = option(True, flag="--lens/--no-lens", help="Also run the activation-difference lens.")
    n_positions: int = option(
        5, flag="--lens-positions", help="Difference lens: the first positions averaged (first_k)."
    )
    max_length: int = option(64, flag="--lens-max-length", help="Difference lens: tokens per text.")
    top_k: int = option(20, flag="--top-k", help="Tokens per lens list.")
    summary_layer: int | None = option(
        None, flag="--summary-layer", help="Difference lens summary layer (default middle)."
    )
    tokenizer: str | None = option(
        None,
        flag="--tokenizer",
        help="Model or directory whose tokenizer to use for a checkpoint that ships none.",
    )
    figures: bool = option(True, flag="--figures/--no-figures", help="Write PNG figures.")

    def validate(self) -> None:
        one_of(self, "base_prompt", ("same", "raw"))
        at_least(self, "max_new_tokens", 1)
        in_range(self, "min_fraction", 0.0, 1.0)
        at_least(self, "batch_size", 1)
        at_least(self, "chunk", 1)
        at_least(self, "n_positions", 1)
        at_least(self, "max_length", 1)
        at_least(self, "top_k", 1)


@register_result
@dataclass
class DifferenceLens(DiffResult):
    """The activation-difference lens (module docstring), ``activation_lens.json``."""

    KIND = "activation-difference lens"
    FILENAME = LENS_FILE
    LEGACY_KINDS = ("activation_difference_lens",)

    base: dict[str, Any]
    ft: dict[str, Any]
    n_texts: int
    n_tokens: int
    n_positions: int
    max_length: int
    formula: str
    layers: dict[str, Any]
    overview: dict[str, Any]
    summary_max: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "base": self.base["name"],
            "ft": self.ft["name"],
            "n_texts": self.n_texts,
            "layer": self.overview["layer"],
            "top_tokens": [t for t, _ in self.overview["pos"][:10]],
        }


@register_result
@dataclass
class ActivationDiff(DiffResult):
    """Replay-mode activation similarity (module docstring): ``results.json`` in the trait seed's
    schema (plus ``norm_change``, ``relative_diff_norm``, ``replay``); :attr:`lens` (the
    activation-difference lens, when run) is saved beside it as ``activation_lens.json``."""

    KIND = "activation similarity"
    FILENAME = RESULTS_FILE
    LEGACY_KINDS = ("activation_similarity",)

    base: dict[str, Any]
    ft: dict[str, Any]
    n_prompts: int
    layers: list[int]
    per_layer_similarity: dict[str, Any]
    per_position_similarity: dict[str, Any]
    norm_change: dict[str, Any]
    relative_diff_norm: dict[str, Any]
    transfer_curves: dict[str, Any] = field(default_factory=dict)
    correlations: dict[str, Any] = field(default_factory=dict)
    replay: dict[str, Any] = field(default_factory=dict)
    formulas: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    lens: DifferenceLens | None = None

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.pop("lens", None)
        return d

    def summary(self) -> dict[str, Any]:
        m = self.per_layer_similarity["mean"]
        return {
            "base": self.base["name"],
            "ft": self.ft["name"],
            "n_prompts": self.n_prompts,
            "min_similarity": min(m) if m else None,
            "min_layer": self.layers[m.index(min(m))] if m else None,
            "traits": list(self.correlations),
        }

    def save(self, directory: str | Path) -> Path:
        if self.lens is not None:
            self.lens.save(directory)
        return super().save(directory)

    @classmethod
    def load(cls, directory: str | Path) -> ActivationDiff:
        r = super().load(directory)
        if (cls.path_in(directory).parent / LENS_FILE).is_file():
            r.lens = DifferenceLens.load(cls.path_in(directory).parent)
        return r


def _config(config: ActivationDiffConfig | None, overrides: Mapping[str, Any]) -> ActivationDiffConfig:
    cfg = config or ActivationDiffConfig()
    if "layers" in overrides and overrides["layers"] is None:
        overrides = {**overrides, "layers": []}
    return cfg.replace(**overrides) if overrides else cfg


def _cos_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine in float64 (0 where a row is zero)."""
    a64, b64 = a.double(), b.double()
    num = (a64 * b64).sum(-1)
    den = a64.norm(dim=-1) * b64.norm(dim=-1)
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))


def _split(cap: Any, site: Site, n_inputs: int) -> list[torch.Tensor]:
    counts = cap.n_selected.tolist()
    return list(torch.split(cap[site], counts)) if n_inputs else []


def replay_ids(
    base: Any, ft: Any, generations: Sequence[Generation], base_prompt: str = "same"
) -> tuple[list[dict[str, list[int]]], list[dict[str, list[int]]]]:
    """The inputs each model reads in replay mode: ``(base_items, ft_items)`` with
    ``prompt_ids``/``response_ids``. Response ids are always identical."""
    if base_prompt not in ("same", "raw"):
        raise ConfigError(
            f"--base-prompt must be 'same' (identical ids) or 'raw' (prompt as plain text), got {base_prompt!r}"
        )
    ft_items, base_items = [], []
    for g in generations:
        ft_items.append({"prompt_ids": list(g.prompt_ids), "response_ids": list(g.response_ids)})
        if base_prompt == "same":
            base_items.append({"prompt_ids": list(g.prompt_ids), "response_ids": list(g.response_ids)})
        else:
            text = f"{g.system}\n\n{g.question}" if g.system else g.question
            base_items.append(
                {"prompt_ids": base.encode(text, formatted=False), "response_ids": list(g.response_ids)}
            )
    return base_items, ft_items


def _read_steering(path: Path, min_coherence: float) -> dict[str, list]:
    """Transfer curve from a steering ``results.jsonl`` (best Δ per layer at coherence ≥ min)
    or a JSON ``{"layers": [...], "deltas": [...]}``."""
    if path.suffix == ".json":
        from ..io import read_json

        d = read_json(path)
        if not (isinstance(d, dict) and "layers" in d and "deltas" in d):
            raise DataFormatError(f"{path}: expected {{'layers': [...], 'deltas': [...]}}")
        return {"layers": [int(x) for x in d["layers"]], "deltas": [float(x) for x in d["deltas"]]}
    recs = read_jsonl(path)
    base = [r for r in recs if r.get("kind") == "baseline" and r.get("trait_mean") is not None]
    baseline = float(base[-1]["trait_mean"]) if base else None
    best: dict[int, float] = {}
    for _n, r in enumerate(recs, 1):
        if r.get("kind") == "baseline":
            continue
        layer = r.get("layer")
        if layer is None:
            continue
        coh = r.get("coherence_mean", r.get("coherence"))
        if coh is None or float(coh) < min_coherence:
            continue
        if r.get("delta") is not None or r.get("trait_delta") is not None:
            delta = float(r.get("delta", r.get("trait_delta")))
        elif r.get("trait_mean") is not None and baseline is not None:
            delta = float(r["trait_mean"]) - baseline
        else:
            continue
        best[int(layer)] = max(delta, best.get(int(layer), -math.inf))
    layers = sorted(best)
    return {
        "layers": layers,
        "deltas": [best[L] for L in layers],
        "baseline_trait": baseline,
        "min_coherence": min_coherence,
    }


def _pearson(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return {"pearson_r": None, "p_value": None, "n_layers": len(x)}
    from scipy.stats import pearsonr

    r, p = pearsonr(np.asarray(x, float), np.asarray(y, float))
    return {"pearson_r": float(r), "p_value": float(p), "n_layers": len(x)}


def _replay(
    B: Any,
    F: Any,
    base_items: list,
    ft_items: list,
    keep: list[int],
    sites: list[Site],
    chunk: int,
    batch_size: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray], int]:
    """Both models read the kept inputs chunk by chunk; per prompt and layer the cosine of the mean
    response activations, the norm change, the relative difference norm, and per-token cosines."""
    n = len(keep)
    cos_mean = np.zeros((n, len(sites)))
    norm_change = np.zeros((n, len(sites)))
    rel_diff = np.zeros((n, len(sites)))
    pos_cos: list[np.ndarray] = []  # per prompt: [T_i, n_layers]
    n_tokens = 0
    row = 0
    for s in tqdm(range(0, n, chunk), desc="replay", disable=not progress or n <= chunk, leave=False):
        idx = keep[s : s + chunk]
        cb = capture(
            B, [base_items[i] for i in idx], sites, "response", batch_size=batch_size, progress=False
        )
        cf = capture(F, [ft_items[i] for i in idx], sites, "response", batch_size=batch_size, progress=False)
        if not (torch.equal(cb.token_ids, cf.token_ids) and torch.equal(cb.n_selected, cf.n_selected)):
            raise RuntimeError("replay: the two models did not read the same response tokens")
        n_tokens += int(cb.n_selected.sum())
        per_b = {s_: _split(cb, s_, len(idx)) for s_ in sites}
        per_f = {s_: _split(cf, s_, len(idx)) for s_ in sites}
        for j in range(len(idx)):
            pc = np.zeros((int(cb.n_selected[j]), len(sites)))
            for k, s_ in enumerate(sites):
                xb, xf = per_b[s_][j], per_f[s_][j]
                mb, mf = xb.double().mean(0), xf.double().mean(0)
                cos_mean[row, k] = float(_cos_rows(mb[None], mf[None])[0])
                nb = float(mb.norm())
                norm_change[row, k] = float(mf.norm()) / nb - 1.0 if nb > 0 else 0.0
                rel_diff[row, k] = float((mf - mb).norm()) / nb if nb > 0 else 0.0
                pc[:, k] = _cos_rows(xb, xf).numpy()
            pos_cos.append(pc)
            row += 1
    return cos_mean, norm_change, rel_diff, pos_cos, n_tokens


def _per_position(
    pos_cos: list[np.ndarray], layers: list[int], min_fraction: float
) -> tuple[int, list[int], dict[str, dict[str, list[float]]]]:
    """Per-position cosine by layer, clipped where fewer than ``min_fraction`` of prompts have tokens."""
    n = len(pos_cos)
    max_T = max((p.shape[0] for p in pos_cos), default=0)
    counts = [sum(1 for p in pos_cos if p.shape[0] > t) for t in range(max_T)]
    need = math.ceil(min_fraction * n) if n else 0
    clip = next((t for t, c in enumerate(counts) if c < need), max_T)
    by_layer: dict[str, dict[str, list[float]]] = {}
    for k, L in enumerate(layers):
        means, stds = [], []
        for t in range(clip):
            vals = np.array([p[t, k] for p in pos_cos if p.shape[0] > t])
            means.append(float(vals.mean()))
            stds.append(float(vals.std()))
        by_layer[str(L)] = {"mean": means, "std": stds}
    return clip, counts, by_layer


@torch.no_grad()
def activation_similarity(
    base: Any,
    ft: Any,
    prompts: Iterable[Any] | None = None,
    config: ActivationDiffConfig | None = None,
    *,
    generations: Iterable[Any] | None = None,
    steering: Mapping[str, str | Path] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **overrides: Any,
) -> ActivationDiff:
    """Replay-mode activation similarity between a base and a fine-tuned model (see the
    module docstring for every formula). Saves ``results.json`` (the trait seed's schema,
    plus ``norm_change``, ``relative_diff_norm`` and ``replay``) and figures to ``out_dir``.
    With ``config.lens`` the activation-difference lens is not run here (see
    :func:`diff_activations`, which runs both).

    Args:
        base, ft: model specs or LoadedModels (same architecture and width).
        prompts: questions for the fine-tuned model to answer (greedy).
        config: :class:`ActivationDiffConfig`; keyword ``overrides`` (``layers=[1, 2]``,
            ``max_new_tokens=8``, ``figures=False``) replace its fields.
        generations: the fine-tuned model's responses, if already generated (Generations or
            dicts with ``prompt_ids``/``response_ids``); then ``prompts`` is not needed.
        steering: ``{trait: results.jsonl | transfer-curve JSON}`` for transfer correlations.
    """
    cfg = _config(config, overrides)
    layers = cfg.layers or None
    system, max_new_tokens, base_prompt = cfg.system, cfg.max_new_tokens, cfg.base_prompt
    min_fraction, min_coherence, batch_size, chunk = (
        cfg.min_fraction,
        cfg.min_coherence,
        cfg.batch_size,
        cfg.chunk,
    )
    t0 = time.time()
    B, F = load_pair(base, ft, cfg.tokenizer)
    layers = list(range(F.n_layers)) if layers is None else [F.arch.check_layer(int(L)) for L in layers]
    if generations is None:
        if prompts is None:
            raise ConfigError("give prompts (for the fine-tuned model to answer) or generations")
        gens = generate(F, list(prompts), system=system, max_new_tokens=max_new_tokens, progress=progress)
    else:
        gens = generations_from(generations)
    base_items, ft_items = replay_ids(B, F, gens, base_prompt)
    limit = min(B.vocab_size, F.vocab_size)
    keep = [
        i
        for i in check_ids([(x["prompt_ids"] + x["response_ids"], 0) for x in base_items], limit, "replay")
        if gens[i].response_ids and max(ft_items[i]["prompt_ids"] + ft_items[i]["response_ids"]) < limit
    ]
    skipped = len(gens) - len(keep)
    sites = [Site(L, "resid") for L in layers]
    n = len(keep)
    cos_mean, norm_change, rel_diff, pos_cos, n_tokens = _replay(
        B, F, base_items, ft_items, keep, sites, chunk, batch_size, progress
    )
    clip, counts, by_layer = _per_position(pos_cos, layers, min_fraction)

    results: dict[str, Any] = {
        "base": model_info(B),
        "ft": model_info(F),
        "n_prompts": n,
        "layers": layers,
        "per_layer_similarity": {
            "mean": cos_mean.mean(0).tolist() if n else [],
            "std": cos_mean.std(0).tolist() if n else [],
            "per_prompt": cos_mean.tolist(),
        },
        "per_position_similarity": {
            "positions": list(range(clip)),
            "n_prompts_at_position": counts[:clip],
            "min_fraction": min_fraction,
            "by_layer": by_layer,
        },
        "norm_change": {
            "mean": norm_change.mean(0).tolist() if n else [],
            "std": norm_change.std(0).tolist() if n else [],
        },
        "relative_diff_norm": {
            "mean": rel_diff.mean(0).tolist() if n else [],
            "std": rel_diff.std(0).tolist() if n else [],
        },
        "transfer_curves": {},
        "correlations": {},
        "replay": {
            "base_prompt": base_prompt,
            "token_ids_identical": True,
            "n_response_tokens": n_tokens,
            "skipped_prompts": skipped,
            "max_new_tokens": max_new_tokens,
            "responses": [{"question": gens[i].question, "response": gens[i].response} for i in keep[:50]],
        },
        "formulas": {
            "per_layer_similarity": "cos(mean_t x_base[L,t], mean_t x_ft[L,t]) per prompt, averaged over prompts",
            "per_position_similarity": "cos(x_base[L,t], x_ft[L,t]) averaged over prompts reaching t",
            "norm_change": "‖mean_t x_ft‖ / ‖mean_t x_base‖ − 1",
            "relative_diff_norm": "‖mean_t x_ft − mean_t x_base‖ / ‖mean_t x_base‖",
            "correlations": "Pearson r between per-layer similarity and the transfer curve (best Δ, coherence ≥ "
            f"{min_coherence:g})",
        },
    }
    mean_by_layer = dict(zip(layers, results["per_layer_similarity"]["mean"]))
    for trait, path in (steering or {}).items():
        curve = _read_steering(Path(path), min_coherence)
        results["transfer_curves"][trait] = curve
        common = [L for L in curve["layers"] if L in mean_by_layer]
        results["correlations"][trait] = _pearson(
            [mean_by_layer[L] for L in common], [curve["deltas"][curve["layers"].index(L)] for L in common]
        )
    results["config"] = cfg.to_dict()
    results["provenance"] = provenance(None, stage="diff activations", seconds=round(time.time() - t0, 2))
    r = ActivationDiff(**results)
    if out_dir is not None:
        out = Path(out_dir)
        r.files = {"results": str(out / RESULTS_FILE)}
        if cfg.figures and n:
            r.files.update(_similarity_figures(r, out))
        r.save(out)
    return r


def _similarity_figures(results: ActivationDiff, out: Path) -> dict[str, str]:
    from .plots import heatmap, lines_by_layer

    layers = results["layers"]
    files = {}
    files["fig_similarity"] = str(
        lines_by_layer(
            {"mean cosine (response tokens)": results["per_layer_similarity"]["mean"]},
            out / "similarity_by_layer.png",
            layers=layers,
            title=f"activation similarity: {results['ft']['name']} vs {results['base']['name']} (replay)",
            ylabel="cosine",
        )
    )
    files["fig_norm"] = str(
        lines_by_layer(
            {
                "norm change": results["norm_change"]["mean"],
                "relative diff norm": results["relative_diff_norm"]["mean"],
            },
            out / "norm_change_by_layer.png",
            layers=layers,
            title="relative norm change of mean response activation",
            ylabel="ratio",
        )
    )
    pp = results["per_position_similarity"]
    if pp["positions"]:
        mat = [pp["by_layer"][str(L)]["mean"] for L in layers]
        files["fig_positions"] = str(
            heatmap(
                mat,
                out / "similarity_by_position.png",
                xlabels=[str(p) for p in pp["positions"]],
                ylabels=[str(L) for L in layers],
                center=None,
                cmap="viridis",
                title="cosine by layer and response position",
                xlabel="response token",
                ylabel="layer",
                colorbar_label="cosine",
            )
        )
    return files


# ---- activation-difference lens --------------------------------------------------------------


def unrelated_texts() -> list[str]:
    """The bundled unrelated text (40 everyday sentences, no fine-tune topic) for the lens."""
    p = bundled_path("organisms", "unrelated_text.txt")
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


@torch.no_grad()
def activation_difference_lens(
    base: Any,
    ft: Any,
    texts: Iterable[str] | None = None,
    config: ActivationDiffConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **overrides: Any,
) -> DifferenceLens:
    """Mean activation difference (ft − base) on unrelated text, read through the logit lens
    (the length is the result record and figures; see the module docstring and
    :func:`deltalens.diff.lens.difference_lens`). ``texts`` default to :func:`unrelated_texts`.
    Settings: ``config.layers``, ``n_positions``,
    ``max_length``, ``top_k``, ``batch_size``, ``summary_layer`` (``overrides`` replace them).

    Result per layer: ``{"first_k": {"pos", "neg", "norm", "rel_norm"}, "all": …, "positions": {p: …}}``;
    ``summary`` — the ``first_k`` lists at ``summary_layer`` (default: the middle layer,
    ``n_layers // 2``, the reading of Minder et al.); ``summary_max`` — the ``first_k`` lists
    at the layer where the difference is largest relative to the activations
    (``rel_norm = ‖δ‖ / mean_i ‖x_base‖``), where a fine-tune writes most."""
    cfg = _config(config, overrides)
    layers = cfg.layers or None
    n_positions, max_length, top_k, batch_size = cfg.n_positions, cfg.max_length, cfg.top_k, cfg.batch_size
    summary_layer, figures = cfg.summary_layer, cfg.figures
    t0 = time.time()
    B, F = load_pair(base, ft, cfg.tokenizer)
    layers = list(range(F.n_layers)) if layers is None else [F.arch.check_layer(int(L)) for L in layers]
    texts = list(texts) if texts is not None else unrelated_texts()
    items = []
    for t in texts:
        ids = B.encode(t, formatted=False)[:max_length]
        items.append((ids, len(ids)))
    keep = check_ids(items, min(B.vocab_size, F.vocab_size), "activation-difference lens")
    inputs = [{"prompt_ids": items[i][0], "response_ids": []} for i in keep]
    sites = [Site(L, "resid") for L in layers]
    cb = capture(B, inputs, sites, "all", batch_size=batch_size, progress=progress)
    cf = capture(F, inputs, sites, "all", batch_size=batch_size, progress=progress)
    assert torch.equal(cb.token_ids, cf.token_ids)
    k = n_positions
    out_layers = difference_lens(
        F, {L: (cb[s], cf[s]) for L, s in zip(layers, sites)}, cb.positions, k, top_k
    )
    sl = F.n_layers // 2 if summary_layer is None else F.arch.check_layer(summary_layer)
    if sl not in layers:
        sl = min(layers, key=lambda L: abs(L - sl))
    lmax = max(layers, key=lambda L: out_layers[str(L)]["first_k"]["rel_norm"])
    results: dict[str, Any] = {
        "base": model_info(B),
        "ft": model_info(F),
        "n_texts": len(inputs),
        "n_tokens": int(cb.n_selected.sum()),
        "n_positions": k,
        "max_length": max_length,
        "formula": "δ_{L,p} = mean_i (x_ft[i,L,p] − x_base[i,L,p]); tokens: top of W_U · norm_f(±δ) (ft model's lens)",
        "layers": out_layers,
        "overview": {
            "layer": sl,
            "reading": f"first_k (mean over positions 0..{k - 1})",
            **{kk: out_layers[str(sl)]["first_k"][kk] for kk in ("pos", "neg", "norm")},
        },
        "summary_max": {
            "layer": lmax,
            "reading": "first_k at the layer with the largest ‖δ‖ / mean ‖x_base‖",
            **{kk: out_layers[str(lmax)]["first_k"][kk] for kk in ("pos", "neg", "norm", "rel_norm")},
        },
        "provenance": provenance(
            None, stage="activation-difference lens", seconds=round(time.time() - t0, 2)
        ),
    }
    r = DifferenceLens(**results)
    if out_dir is not None:
        out = Path(out_dir)
        files = {"lens": str(out / LENS_FILE)}
        if figures:
            from .plots import lines_by_layer, token_table

            files["fig_lens_norm"] = str(
                lines_by_layer(
                    {
                        "‖δ‖ first positions": [out_layers[str(L)]["first_k"]["rel_norm"] for L in layers],
                        "‖δ‖ all positions": [out_layers[str(L)]["all"]["rel_norm"] for L in layers],
                    },
                    out / "activation_lens_norm.png",
                    layers=layers,
                    title="‖mean(ft − base)‖ / mean ‖x_base‖ on unrelated text",
                    ylabel="relative norm",
                )
            )
            cols = {
                f"L{sl} first {k}": out_layers[str(sl)]["first_k"]["pos"],
                f"L{sl} all": out_layers[str(sl)]["all"]["pos"],
                f"L{lmax} first {k}": out_layers[str(lmax)]["first_k"]["pos"],
                f"L{lmax} all": out_layers[str(lmax)]["all"]["pos"],
            }
            for p, rec in list(out_layers[str(lmax)]["positions"].items())[:2]:
                cols[f"L{lmax} pos {p}"] = rec["pos"]
            files["fig_lens"] = str(
                token_table(
                    cols,
                    out / "activation_lens.png",
                    title=f"activation-difference lens (top tokens of +δ): middle layer "
                    f"{sl} and layer {lmax} (largest ‖δ‖)",
                )
            )
        r.files = files
        r.save(out)
    return r


def diff_activations(
    base: Any,
    ft: Any,
    prompts: Iterable[Any] | None = None,
    config: ActivationDiffConfig | None = None,
    *,
    generations: Iterable[Any] | None = None,
    steering: Mapping[str, str | Path] | None = None,
    lens_texts: Iterable[str] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **overrides: Any,
) -> ActivationDiff:
    """``deltalens diff activations``: :func:`activation_similarity` and, with ``config.lens``,
    :func:`activation_difference_lens` on ``lens_texts`` (default: the bundled unrelated text),
    attached as :attr:`ActivationDiff.lens`. Both models are loaded once."""
    cfg = _config(config, overrides)
    B, F = load_pair(base, ft, cfg.tokenizer)
    r = activation_similarity(
        B, F, prompts, cfg, generations=generations, steering=steering, out_dir=out_dir, progress=progress
    )
    if cfg.lens:
        r.lens = activation_difference_lens(B, F, lens_texts, cfg, out_dir=out_dir, progress=progress)
    return r
