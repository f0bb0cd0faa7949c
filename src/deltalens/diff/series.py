"""Diffs over a checkpoint series ``M0 … Mn`` (iterative DPO, training checkpoints).

Every checkpoint ``M<i>`` is diffed against the base ``M0`` and against its predecessor
``M<i−1>`` with the weight diff (``total_rel = ‖Δθ‖_F / ‖θ_ref‖_F`` over all tensors, per-layer
``‖Δθ_L‖/‖θ_L‖``), the output diff (mean per-token ``KL(M<i> ‖ ref)`` on unrelated text) and
the replay activation similarity (mean cosine per layer on the prompts). The trajectory
tables (``trajectory.json`` and ``trajectory.csv``, one row per (checkpoint, reference)) and
figures show how the model drifts over the iterations; with an iterative-DPO series the
scorer's mean score per checkpoint is added (``scores[i]`` = mean score of ``D<i>``, the
sequences ``M<i>`` generated — the project's naming, see :mod:`deltalens.diff.organisms`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import atomic_write, provenance
from ..models.loading import LoadedModel, load
from ..stage import StageConfig, at_least, flag_of, option, register_result
from ._models import DiffResult

TRAJECTORY_FILE = "trajectory.json"
TRAJECTORY_CSV = "trajectory.csv"
KINDS = ("weights", "outputs", "activations")


def series_checkpoints(series: str | Path) -> tuple[str, list[tuple[str, str]]]:
    """``(base spec, [(name, path), …])`` of a series directory written by
    :func:`deltalens.diff.organisms.iterative_dpo` (``series.json``), or of any directory
    holding ``M1/``, ``M2/``… (then the base must be given separately: returned as "")."""
    from .organisms import SERIES_FILE, read_series

    p = Path(series)
    if (p / SERIES_FILE).exists():
        st = read_series(p)
        cks = [(Path(c).name, str(p / Path(c).name)) for c in st["checkpoints"]]
        return st["base"]["spec"], cks
    cks = sorted(
        (d for d in p.iterdir() if d.is_dir() and d.name[:1] == "M" and d.name[1:].isdigit()),
        key=lambda d: int(d.name[1:]),
    )
    return "", [(d.name, str(d)) for d in cks]


@dataclass
class SeriesDiffConfig(StageConfig):
    """Settings of :func:`diff_series` (recorded in ``trajectory.json``)."""

    kinds: list[str] = option(default_factory=lambda: list(KINDS), flag="--kinds", help="Which diffs to run.")
    vs_previous: bool = option(
        True, flag="--vs-previous/--vs-base-only", help="Also diff each checkpoint with its predecessor."
    )
    max_new_tokens: int = option(
        32, flag="--max-new-tokens", help="Tokens per answer (activation similarity)."
    )
    figures: bool = option(True, flag="--figures/--no-figures", help="Write PNG figures.")

    def validate(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise ConfigError(
                f"{flag_of(self, 'kinds')}: unknown diff kind(s) {', '.join(bad)}; valid: {', '.join(KINDS)}"
            )
        if not self.kinds:
            raise ConfigError(f"{flag_of(self, 'kinds')}: name at least one of {', '.join(KINDS)}")
        at_least(self, "max_new_tokens", 1)


@register_result
@dataclass
class SeriesDiff(DiffResult):
    """Diffs over a checkpoint series (module docstring): ``trajectory.json`` and ``trajectory.csv``."""

    KIND = "series diff"
    FILENAME = TRAJECTORY_FILE
    LEGACY_KINDS = ("series_diff",)

    base: str
    checkpoints: list[str]
    kinds: list[str]
    rows: list[dict[str, Any]]
    per_layer_rel: dict[str, Any] = field(default_factory=dict)
    per_layer_similarity: dict[str, Any] = field(default_factory=dict)
    scores: list[float] | None = None
    formulas: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "checkpoints": self.checkpoints,
            "kinds": self.kinds,
            "rows": len(self.rows),
            "scores": self.scores,
        }

    def save(self, directory: str | Path) -> Path:
        _write_csv(self.rows, Path(directory) / TRAJECTORY_CSV)
        return super().save(directory)


def diff_series(
    checkpoints: Sequence[Any] | str | Path,
    config: SeriesDiffConfig | None = None,
    *,
    base: Any = None,
    names: Sequence[str] | None = None,
    prompts: Sequence[Any] | None = None,
    texts: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **overrides: Any,
) -> SeriesDiff:
    """Run the diffs over a series (module docstring). The loop over (checkpoint, reference)
    pairs and kinds collects the trajectory rows in one place (hence its length).

    Args:
        checkpoints: a series directory (``series.json`` or ``M<i>/`` folders), or a list of
            checkpoint specs in order (``M1 … Mn``), or a one-element list holding a series
            directory.
        config: :class:`SeriesDiffConfig` (``kinds``: any of ``weights``, ``outputs``,
            ``activations``); ``overrides`` replace its fields.
        base: ``M0`` (read from ``series.json`` when present).
        prompts: questions for the activation similarity (default: the bundled held-out
            organism questions); ``texts``: text for the output diff (default: the bundled
            unrelated text).
    """
    from .activations import activation_similarity, unrelated_texts
    from .organisms import SERIES_FILE, organism_eval_questions, read_series
    from .outputs import diff_outputs
    from .weights import diff_weights

    cfg = (config or SeriesDiffConfig()).replace(**overrides) if overrides else (config or SeriesDiffConfig())
    kinds, vs_previous, max_new_tokens = list(cfg.kinds), cfg.vs_previous, cfg.max_new_tokens
    t0 = time.time()
    scores = None
    if not isinstance(checkpoints, (str, Path)) and len(checkpoints) == 1 and is_series_dir(checkpoints[0]):
        checkpoints = checkpoints[0]
    if isinstance(checkpoints, (str, Path)):
        series_base, named = series_checkpoints(checkpoints)
        if (Path(checkpoints) / SERIES_FILE).exists():
            scores = read_series(checkpoints).get("scores")
        base = base if base is not None else series_base
        ck_names = [n for n, _ in named]
        cks: list[Any] = [p for _, p in named]
    else:
        cks = list(checkpoints)
        ck_names = list(names) if names else [f"M{i}" for i in range(1, len(cks) + 1)]
    if not base:
        raise ConfigError(
            "diff series needs the base model (M0): pass base= or use a directory with series.json"
        )
    if not cks:
        raise ConfigError("diff series: no checkpoints found")
    out = Path(out_dir) if out_dir is not None else None
    prompts = list(prompts) if prompts is not None else organism_eval_questions()[:12]
    texts = list(texts) if texts is not None else unrelated_texts()

    need_models = any(k in kinds for k in ("outputs", "activations"))
    loaded: dict[str, LoadedModel] = {}

    def get(name: str, spec: Any) -> LoadedModel:
        if name not in loaded:
            loaded[name] = spec if isinstance(spec, LoadedModel) else load(spec)
        return loaded[name]

    rows: list[dict[str, Any]] = []
    per_layer_rel: dict[str, dict[str, list[float]]] = {"M0": {}, "previous": {}}
    per_layer_sim: dict[str, dict[str, list[float]]] = {"M0": {}, "previous": {}}
    for i, (name, ck) in enumerate(zip(ck_names, cks)):
        refs = [("M0", base, "M0")]
        if vs_previous and i >= 1:
            refs.append((ck_names[i - 1], cks[i - 1], "previous"))
        for ref_name, ref, group in refs:
            row: dict[str, Any] = {"checkpoint": name, "reference": ref_name, "versus": group}
            sub = None if out is None else out / f"{name}_vs_{ref_name}"
            if "weights" in kinds:
                w = diff_weights(
                    ref, ck, out_dir=None if sub is None else sub / "weights", figures=False, progress=False
                )
                row.update(
                    {
                        "total_rel": w["summary"]["total_rel"],
                        "total_fro": w["summary"]["total_fro"],
                        "top_layer": w["summary"]["top_layer"],
                        "n_changed": w["summary"]["n_changed"],
                    }
                )
                per_layer_rel[group][name] = w["per_layer"]["layer_rel"]
            if need_models:
                ref_lm, ck_lm = get(ref_name, ref), get(name, ck)
                if "outputs" in kinds:
                    o = diff_outputs(
                        ref_lm,
                        ck_lm,
                        texts,
                        out_dir=None if sub is None else sub / "outputs",
                        figures=False,
                        progress=False,
                    )
                    row["mean_kl"] = o["mean_kl"]
                    row["rose_most"] = " ".join(t.strip() or repr(t) for t, _ in o["rose_most"][:10])
                if "activations" in kinds:
                    a = activation_similarity(
                        ref_lm,
                        ck_lm,
                        prompts,
                        max_new_tokens=max_new_tokens,
                        out_dir=None if sub is None else sub / "activations",
                        figures=False,
                        progress=False,
                    )
                    sim = a["per_layer_similarity"]["mean"]
                    row["mean_similarity"] = sum(sim) / len(sim) if sim else None
                    row["min_similarity"] = min(sim) if sim else None
                    row["min_similarity_layer"] = a["layers"][sim.index(min(sim))] if sim else None
                    per_layer_sim[group][name] = sim
            rows.append(row)
        # keep at most the base, this checkpoint and the next one's predecessor in memory
        for k in list(loaded):
            if k not in ("M0", name):
                del loaded[k]
    results: dict[str, Any] = {
        "base": str(base.spec if isinstance(base, LoadedModel) else base),
        "checkpoints": ck_names,
        "kinds": kinds,
        "rows": rows,
        "per_layer_rel": per_layer_rel,
        "per_layer_similarity": per_layer_sim,
        "scores": scores,
        "formulas": {
            "total_rel": "‖θ_ckpt − θ_ref‖_F / ‖θ_ref‖_F over all tensors",
            "mean_kl": "mean per-token KL(ckpt ‖ ref) on the texts",
            "mean_similarity": "mean over layers of the replay cosine similarity (activation diff)",
        },
        "config": cfg.to_dict(),
        "provenance": provenance(None, stage="diff series", seconds=round(time.time() - t0, 2)),
    }
    r = SeriesDiff(**results)
    if out is not None:
        r.files = {"trajectory": str(out / TRAJECTORY_FILE), "csv": str(out / TRAJECTORY_CSV)}
        if cfg.figures:
            r.files.update(_figures(r, out))
        r.save(out)
    return r


def is_series_dir(path: Any) -> bool:
    """A directory of checkpoints (``series.json`` or ``M<i>/`` folders), not a model directory."""
    p = Path(str(path))
    return p.is_dir() and not (p / "config.json").exists()


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    import csv
    import io

    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write(path, buf.getvalue())


def _figures(results: SeriesDiff, out: Path) -> dict[str, str]:
    from .plots import heatmap, lines

    files = {}
    names = results["checkpoints"]
    xs = list(range(1, len(names) + 1))
    for metric, title in (
        ("total_rel", "‖Δθ‖/‖θ‖"),
        ("mean_kl", "mean KL (nats/token)"),
        ("mean_similarity", "mean activation cosine"),
    ):
        series = {}
        for group in ("M0", "previous"):
            vals = []
            for n in names:
                r = next((r for r in results["rows"] if r["checkpoint"] == n and r["versus"] == group), None)
                vals.append(float("nan") if r is None or r.get(metric) is None else r[metric])
            if any(not math.isnan(v) for v in vals):
                series[f"vs {'base (M0)' if group == 'M0' else 'previous'}"] = vals
        if series:
            files[f"fig_{metric}"] = str(
                lines(
                    series,
                    out / f"trajectory_{metric}.png",
                    x=xs,
                    xticklabels=names,
                    xlabel="checkpoint",
                    ylabel=title,
                    title=f"{title} over the series",
                )
            )
    for key, title in (
        ("per_layer_rel", "relative weight change vs M0"),
        ("per_layer_similarity", "activation cosine vs M0"),
    ):
        mat = results[key]["M0"]
        if mat:
            rows = [mat[n] for n in names if n in mat]
            files[f"fig_{key}"] = str(
                heatmap(
                    rows,
                    out / f"{key}.png",
                    ylabels=[n for n in names if n in mat],
                    xlabels=[str(i) for i in range(len(rows[0]))],
                    center=None,
                    cmap="viridis",
                    title=title,
                    xlabel="layer",
                    ylabel="checkpoint",
                )
            )
    if results.get("scores"):
        sc = results["scores"]
        files["fig_scores"] = str(
            lines(
                {"mean score": sc},
                out / "trajectory_scores.png",
                x=list(range(len(sc))),
                xticklabels=[f"M{i}" for i in range(len(sc))],
                xlabel="checkpoint",
                ylabel="scorer",
                title="scorer's mean over each checkpoint's samples",
            )
        )
    return files
