"""Feature dashboards: per-latent JSON that a Neuronpedia-style viewer can render.

For each latent ``i`` the dashboard holds

* top-activating examples: the ``n_examples`` highest firings on a dataset, each a
  context window (``left`` tokens before, ``right`` after) with the latent's activation
  on *every* token of the window (a second pass over just those sequences);
* the activation histogram over firing tokens (log-spaced bins, see
  :mod:`deltalens.features.firing`) and the firing rate ``frac_nonzero``;
* logit effects — the direct effect of the decoder direction on the output logits,
  ``effect_i = W_U · (γ ⊙ d_i)`` with ``d_i = W_dec[i]``, ``W_U`` the unembedding and ``γ``
  the final norm's elementwise scale folded in (TransformerLens's ``fold_ln``
  convention; the norm's ``1/rms`` factor is a positive scalar and is left out; for
  LayerNorm the direction is also centred). Top and bottom ``n_logits`` tokens, and a
  histogram over the whole vocabulary.

Field names follow Neuronpedia's feature export (``activations[].tokens/values``,
``maxValue``, ``maxValueTokenIndex``, ``pos_str``/``pos_values``, ``neg_str``/
``neg_values``, ``frac_nonzero``, ``freq_hist_data_bar_heights``/``_values``,
``logits_hist_data_bar_heights``/``_values``, ``maxActApprox``); deltalens extras
(quantiles, fraction of sequences, position statistics, weights) are under
``"deltalens"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..capture import encode_inputs
from ..errors import DataFormatError
from ..io import provenance, to_json
from ..models.loading import LoadedModel
from ..sae import SAE
from ..stage import StageResult, register_result
from .firing import FiringConfig, FiringStats, firing_stats
from .latents import iter_latents, sae_site


def final_norm_scale(lm: LoadedModel) -> tuple[torch.Tensor, bool]:
    """``(γ [d_model], centre)``: the final norm's elementwise scale and whether it centres
    its input (LayerNorm). For RMSNorm variants γ is read off the module itself as
    ``norm(1)`` (so Gemma's ``1 + w`` is handled), up to the ``1/sqrt(1 + eps)`` factor."""
    norm = lm.arch.final_norm
    p = next(norm.parameters(), None)
    d = lm.d_model
    dev = p.device if p is not None else lm.device
    dt = p.dtype if p is not None else torch.float32
    if isinstance(norm, nn.LayerNorm):
        w = norm.weight if norm.weight is not None else torch.ones(d, device=dev, dtype=dt)
        return w.detach().float().cpu(), True
    with torch.no_grad():
        g = norm(torch.ones(1, d, device=dev, dtype=dt))[0]
    return g.detach().float().cpu(), False


@torch.no_grad()
def logit_effects(lm: LoadedModel, directions: torch.Tensor, chunk: int = 256) -> Iterable[torch.Tensor]:
    """Yield ``[≤chunk, vocab]`` logit effects of ``directions`` (``[m, d_model]``), see module docstring."""
    gamma, centre = final_norm_scale(lm)
    W_U = lm.arch.unembed.weight  # [vocab, d]
    for a in range(0, directions.shape[0], chunk):
        x = directions[a : a + chunk].float().cpu()
        if centre:
            x = x - x.mean(-1, keepdim=True)
        x = (x * gamma).to(W_U.device, W_U.dtype)
        yield (x @ W_U.T).float().cpu()


def _trim_hist(edges: np.ndarray, counts: np.ndarray) -> tuple[list[float], list[int]]:
    nz = np.nonzero(counts)[0]
    if not len(nz):
        return [], []
    a, b = nz[0], nz[-1] + 1
    centres = np.sqrt(edges[a:b] * edges[a + 1 : b + 1])  # geometric centres of log bins
    return [float(x) for x in centres], [int(c) for c in counts[a:b]]


@torch.no_grad()
def build_dashboards(
    lm: LoadedModel,
    sae: SAE,
    data: Sequence[Any],
    features: Sequence[int] | None = None,
    *,
    stats: FiringStats | None = None,
    n_examples: int = 20,
    left: int = 12,
    right: int = 4,
    n_logits: int = 10,
    logit_bins: int = 30,
    site: Any = None,
    batch_size: int = 16,
    max_length: int | None = None,
    activation_threshold: float = 0.0,
    progress: bool = True,
    dataset_name: str | None = None,
) -> tuple[list[dict[str, Any]], FiringStats]:
    """Dashboard records for ``features`` (default: every latent that fires on ``data``).

    Runs :func:`~deltalens.features.firing.firing_stats` over ``data`` (unless ``stats``
    from the *same* inputs is given), then one more pass over the sequences that hold
    the top examples. Returns the records and the statistics.
    """
    s_site = sae_site(sae, site)
    encoded = encode_inputs(lm, data, max_length)
    inputs = [{"prompt_ids": ids[:pl], "response_ids": ids[pl:]} for ids, pl in encoded]
    if stats is None:
        cfg = FiringConfig(activation_threshold=activation_threshold, top_k=n_examples)
        stats = firing_stats(
            lm,
            sae,
            inputs,
            config=cfg,
            site=s_site,
            batch_size=batch_size,
            progress=progress,
            dataset_name=dataset_name,
        )
    if features is None:
        features = torch.nonzero(~stats.dead).flatten().tolist()
    features = [int(f) for f in features]
    for f in features:
        if not 0 <= f < sae.d_sae:
            from ..errors import ConfigError

            raise ConfigError(f"feature id {f} is out of range (d_sae={sae.d_sae}: valid 0..{sae.d_sae - 1})")

    # examples and the windows whose per-token values the second pass fills in
    examples: dict[int, list[dict[str, Any]]] = {}
    wanted: dict[int, list[tuple[int, dict[str, Any], int, int]]] = {}
    for f in features:
        exs = []
        for act, s, p in stats.top(f)[:n_examples]:
            ids = encoded[s][0]
            a, b = max(0, p - left), min(len(ids), p + right + 1)
            ex = {
                "token_ids": ids[a:b],
                "values": None,
                "maxValue": act,
                "maxValueTokenIndex": p - a,
                "seq_id": s,
                "position": p,
                "is_response": p >= encoded[s][1],
            }
            exs.append(ex)
            wanted.setdefault(s, []).append((f, ex, a, b))
        examples[f] = exs
    seqs = sorted(wanted)
    if seqs:
        subset = [inputs[s] for s in seqs]
        for lb in iter_latents(
            lm,
            [sae],
            subset,
            "all",
            sites=[s_site],
            batch_size=batch_size,
            progress=progress,
            desc="dashboard examples",
        ):
            lat = lb.latents[0].cpu()
            sid = lb.batch.seq_ids
            uniq, counts = torch.unique_consecutive(sid, return_counts=True)
            starts = torch.cumsum(counts, 0) - counts
            for local, start in zip(uniq.tolist(), starts.tolist()):
                for f, ex, a, b in wanted[seqs[local]]:
                    ex["values"] = [round(float(v), 5) for v in lat[start + a : start + b, f]]

    records = _dashboard_records(lm, sae, s_site, stats, features, examples, n_logits, logit_bins)
    return records, stats


def _dashboard_records(
    lm: LoadedModel,
    sae: SAE,
    s_site: Any,
    stats: FiringStats,
    features: list[int],
    examples: dict[int, list[dict[str, Any]]],
    n_logits: int,
    logit_bins: int,
) -> list[dict[str, Any]]:
    """One dashboard record per latent: its examples as token strings, logit effects, histograms."""
    cache: dict[int, str] = {}

    def tok(i: int) -> str:
        s = cache.get(i)
        if s is None:
            s = cache[i] = lm.tokenizer.decode([i])
        return s

    q = stats.quantiles((0.5, 0.9, 0.99))
    W_dec = sae.W_dec.detach().float().cpu()
    dec_norm = W_dec.norm(dim=-1)
    enc_norm = sae.W_enc.detach().float().cpu().norm(dim=0)
    thr = sae.threshold.detach().float().cpu() if sae.threshold is not None else None
    prompt_only = stats.prompt_only if stats.has_responses else None
    records: list[dict[str, Any]] = []
    dirs = W_dec[features] if features else torch.zeros(0, sae.d_in)
    k = 0
    for eff in logit_effects(lm, dirs):
        for row in eff:
            f = features[k]
            k += 1
            top = row.topk(min(n_logits, row.numel()))
            bot = (-row).topk(min(n_logits, row.numel()))
            lh, le = np.histogram(row.numpy(), bins=logit_bins)
            edges, counts = stats.histogram(f)
            centres, heights = _trim_hist(edges, counts)
            acts = []
            for ex in examples[f]:
                acts.append(
                    {
                        "tokens": [tok(i) for i in ex["token_ids"]],
                        "values": ex["values"],
                        "maxValue": round(ex["maxValue"], 5),
                        "maxValueTokenIndex": ex["maxValueTokenIndex"],
                        "seq_id": ex["seq_id"],
                        "position": ex["position"],
                        "is_response": ex["is_response"],
                    }
                )
            rec: dict[str, Any] = {
                "modelId": lm.name,
                "layer": str(s_site),
                "index": f,
                "maxActApprox": float(stats.max_activation[f]),
                "frac_nonzero": float(stats.frac_tokens[f]),
                "freq_hist_data_bar_values": centres,
                "freq_hist_data_bar_heights": heights,
                "pos_str": [tok(int(i)) for i in top.indices],
                "pos_values": [round(float(v), 5) for v in top.values],
                "neg_str": [tok(int(i)) for i in bot.indices],
                "neg_values": [round(-float(v), 5) for v in bot.values],
                "logits_hist_data_bar_values": [float((le[j] + le[j + 1]) / 2) for j in range(len(lh))],
                "logits_hist_data_bar_heights": [int(c) for c in lh],
                "activations": acts,
                "deltalens": {
                    "frac_sequences": float(stats.frac_sequences[f]),
                    "fire_tokens": int(stats.fire_tokens[f]),
                    "mean_activation": float(stats.mean_activation[f]),
                    "quantiles": {"p50": float(q[0, f]), "p90": float(q[1, f]), "p99": float(q[2, f])},
                    "histogram_scale": "log10 bins; bar values are geometric bin centres",
                    "mean_position": float(stats.mean_position[f]),
                    "mean_relative_position": float(stats.mean_relative_position[f]),
                    "prompt_only": None if prompt_only is None else bool(prompt_only[f]),
                    "dec_norm": float(dec_norm[f]),
                    "enc_norm": float(enc_norm[f]),
                    "threshold": None if thr is None else float(thr[f]),
                    "activation_threshold": stats.config.activation_threshold,
                },
            }
            records.append(rec)
    return records


INDEX_FILE = "index.json"
LEGACY_KIND = "deltalens.feature_dashboards"  # the index kind before the stage convention


@register_result
@dataclass
class FeatureDashboards(StageResult):
    """Per-latent dashboard records (see the module docstring) and their provenance.

    Saved as a directory: ``index.json`` (kind, schema, provenance, one entry per latent)
    and ``features/<index>.json`` per latent."""

    KIND: ClassVar[str] = "feature dashboards"
    FILENAME: ClassVar[str] = INDEX_FILE

    records: list[dict[str, Any]]
    provenance: dict[str, Any] = field(default_factory=dict)

    def index(self) -> dict[str, Any]:
        return {
            "kind": self.KIND,
            "schema": self.SCHEMA,
            "provenance": self.provenance,
            "features": [
                {
                    "index": r["index"],
                    "maxActApprox": r["maxActApprox"],
                    "frac_nonzero": r["frac_nonzero"],
                    "pos_str": r["pos_str"][:5],
                    "file": f"features/{int(r['index'])}.json",
                }
                for r in self.records
            ],
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write the directory; it is built next to ``out_dir`` and swapped into place, so a
        killed run never leaves a half-written dashboard set under the final name."""
        out = Path(out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            (tmp / "features").mkdir()
            for r in self.records:
                with open(tmp / "features" / f"{int(r['index'])}.json", "w", encoding="utf-8") as fh:
                    fh.write(to_json(r, indent=None))
            (tmp / INDEX_FILE).write_text(to_json(self.index()) + "\n", encoding="utf-8")
            old = None
            if out.exists():
                old = out.parent / f".{out.name}.old-{os.getpid()}"
                os.replace(out, old)
            os.replace(tmp, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            with contextlib.suppress(Exception):
                shutil.rmtree(tmp)
            raise
        return out / INDEX_FILE

    @classmethod
    def load(cls, out_dir: str | Path) -> FeatureDashboards:
        """Read a dashboard directory (or its ``index.json``)."""
        index = cls.path_in(out_dir)
        if not index.is_file():
            raise DataFormatError(f"not a valid {cls.KIND}: {index} (no such file)")
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DataFormatError(f"not a valid {cls.KIND}: {index} ({exc})") from None
        if not isinstance(data, dict) or data.get("kind") not in (cls.KIND, LEGACY_KIND):
            got = data.get("kind") if isinstance(data, dict) else type(data).__name__
            raise DataFormatError(f"not a valid {cls.KIND}: {index} (kind is {got!r})")
        records = []
        for entry in data.get("features", []):
            f = index.parent / entry["file"]
            if not f.is_file():
                raise DataFormatError(f"not a valid {cls.KIND}: {index} ({entry['file']} is missing)")
            records.append(read_dashboard(f))
        return cls(records, dict(data.get("provenance") or {}))

    def summary(self) -> dict[str, Any]:
        return {
            "latents": len(self.records),
            "first": [r["index"] for r in self.records[:20]],
            "provenance": self.provenance,
        }


def write_dashboards(
    records: Sequence[dict[str, Any]],
    out_dir: str | Path,
    extra: dict[str, Any] | None = None,
    lm: Any = None,
) -> Path:
    """Write ``<out_dir>/features/<index>.json`` per latent and ``<out_dir>/index.json``
    (:meth:`FeatureDashboards.save` with the provenance of ``lm`` and ``extra``)."""
    return FeatureDashboards(list(records), provenance(lm, **(extra or {}))).save(out_dir)


def read_dashboard(path: str | Path) -> dict[str, Any]:
    """Read one per-latent dashboard JSON."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def top_logit_tokens(lm: LoadedModel, sae: SAE, features: Sequence[int], n: int = 5) -> dict[int, list[str]]:
    """The ``n`` tokens each latent's decoder direction promotes most (logit effects, see module docstring)."""
    features = [int(f) for f in features]
    if not features:
        return {}
    out: dict[int, list[str]] = {}
    k = 0
    for eff in logit_effects(lm, sae.W_dec.detach()[features]):
        for row in eff:
            out[features[k]] = [lm.tokenizer.decode([int(i)]) for i in row.topk(min(n, row.numel())).indices]
            k += 1
    return out
