"""The probe stages: fit (table → labels → probes with baselines and controls), annotate,
correlate, compare — each a config → one function → a typed result with save/load.

Files under ``probes/<name>/`` (:meth:`deltalens.experiment.Experiment.probes_dir`):

* ``probe.json`` (:class:`ProbeFitResult`), ``importance.csv`` (one row per latent × metric ×
  method), ``labels.csv`` (sequence id, metric, value, label), ``table/`` (the latent table),
  ``probe_auroc.png``;
* ``annotate.json`` + ``annotation.csv`` (:class:`AnnotationResult`);
* ``correlate.json`` + ``correlations.csv`` + ``points.csv`` + ``connected_scatter_<metric>.png``
  (:class:`CorrelationResult`);
* ``compare.json`` + ``compare.csv`` (:class:`CompareResult`, wherever ``--out`` says).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, DataFormatError, ShapeError
from ..stage import StageConfig, StageResult, at_least, in_range, one_of, option, register_result
from .fit import DEFAULT_KS, METHODS, fit_probe, random_latents_control
from .metrics import Labels, join_metrics, make_labels, read_table_file
from .table import POOLINGS, LatentTable, Sequences, as_sequences, build_latent_table, read_sequences

PROBE_JSON = "probe.json"
IMPORTANCE_CSV = "importance.csv"
LABELS_CSV = "labels.csv"
TABLE_DIR = "table"
AUROC_PNG = "probe_auroc.png"
ANNOTATE_JSON = "annotate.json"
ANNOTATION_CSV = "annotation.csv"
CORRELATE_JSON = "correlate.json"
CORRELATIONS_CSV = "correlations.csv"
POINTS_CSV = "points.csv"
COMPARE_JSON = "compare.json"
COMPARE_CSV = "compare.csv"
LABEL_MODES = ("quantile", "threshold")


def _runtime(default: Any = None) -> Any:
    return field(default=default, repr=False, compare=False, metadata={"runtime": True})


class _TableResult(StageResult):
    """JSON header of every probe result; fields marked runtime are files, not JSON."""

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import fields

        from ..stage import _jsonable

        return {
            f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if not f.metadata.get("runtime")
        }


def _write_csv(df: Any, path: Path) -> None:
    from ..io import atomic_path

    with atomic_path(path, ".csv") as tmp:
        df.to_csv(tmp, index=False)


def _read_csv(path: Path, kind: str) -> Any:
    import pandas as pd

    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"not a valid {kind}: {path} ({exc})") from None


# ---- fit -------------------------------------------------------------------------------------------


@dataclass
class ProbeFitConfig(StageConfig):
    """How probes are fitted (recorded in ``probe.json``)."""

    metrics: list[str] = option(
        default_factory=list,
        flag="--metric",
        help="Metric column(s) to probe (comma-separated; default every numeric column).",
    )
    key: str = option(
        "id",
        flag="--key",
        help="Key column of the metrics file: the sequence id ('id') or the text itself ('text').",
    )
    high: float = option(
        0.8,
        flag="--high",
        help="High class: metric ≥ this quantile (or threshold with --label-mode threshold).",
    )
    low: float = option(
        0.2, flag="--low", help="Low class: metric ≤ this quantile (or threshold); the middle is dropped."
    )
    label_mode: str = option("quantile", flag="--label-mode", help="quantile or threshold.")
    methods: list[str] = option(
        default_factory=lambda: list(METHODS),
        flag="--method",
        help="Probe types: l1, ksparse, diff_mean (comma-separated).",
    )
    k: int | None = option(
        None,
        flag="--k",
        help="Latents per probe (ksparse/diff_mean; l1: at most k non-zero); default: sweep --ks.",
    )
    ks: list[int] = option(
        default_factory=lambda: list(DEFAULT_KS), flag="--ks", help="k sweep of the k-sparse probe."
    )
    C: float = option(1.0, flag="--C", help="Inverse L2 strength of the k-sparse logistic regression.")
    folds: int = option(5, flag="--folds", help="Stratified cross-validation folds.")
    pooling: str = option("max", flag="--pooling", help="Per-sequence pooling of latents: max, mean or frac.")
    positions: str = option(
        "response", flag="--positions", help="Positions pooled per sequence (response, all, …)."
    )
    activation_threshold: float = option(
        0.0, flag="--activation-threshold", help="A latent fires where its activation > this (frac pooling)."
    )
    batch_size: int = option(16, flag="--batch-size", help="Sequences per forward pass.")
    max_length: int | None = option(None, flag="--max-length", help="Truncate sequences to this many tokens.")
    dense_baseline: bool = option(
        True,
        flag="--dense-baseline",
        help="Also fit every probe on the residual activations at the SAE's site.",
    )
    controls: bool = option(True, flag="--controls", help="Shuffled-label and random-latent controls.")
    top: int = option(20, flag="--top", help="Top latents listed per probe.")
    seed: int = option(0, flag="--seed", help="Seed of the folds and controls.")

    def validate(self) -> None:
        one_of(self, "label_mode", LABEL_MODES)
        if self.label_mode == "quantile":
            in_range(self, "high", 0, 1)
            in_range(self, "low", 0, 1)
        if self.low > self.high:
            raise ConfigError(f"--low {self.low:g} must not be above --high {self.high:g}")
        one_of(self, "methods", METHODS)
        one_of(self, "pooling", POOLINGS)
        for name in ("k", "batch_size", "max_length", "top", "C"):
            at_least(self, name, 1 if name != "C" else 1e-12)
        at_least(self, "folds", 2)
        at_least(self, "activation_threshold", 0)
        if not self.methods:
            raise ConfigError("--method: give at least one of " + ", ".join(METHODS))
        if any(int(k) < 1 for k in self.ks):
            raise ConfigError(f"--ks must be ≥ 1, got {self.ks}")
        from ..positions import Positions

        try:
            Positions.parse(self.positions)
        except Exception as exc:  # noqa: BLE001 - any parse error is a config error here
            raise ConfigError(f"--positions: {exc}") from None


@register_result
@dataclass
class ProbeFitResult(_TableResult):
    """Probes of one latent table: per metric × method, CV scores, dense baseline, controls and
    top latents (``probes``); per-latent importance in ``importance`` (``importance.csv``)."""

    KIND: ClassVar[str] = "probe fit"
    FILENAME: ClassVar[str] = PROBE_JSON

    name: str
    sae: str | None
    site: str | None
    d_sae: int
    n_sequences: int
    join: dict[str, Any]
    labels: dict[str, Any]
    probes: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    importance: Any = _runtime()
    label_rows: Any = _runtime()
    table: Any = _runtime()

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        path = super().save(d)
        if self.importance is not None:
            _write_csv(self.importance, d / IMPORTANCE_CSV)
        if self.label_rows is not None:
            _write_csv(self.label_rows, d / LABELS_CSV)
        if self.table is not None:
            self.table.save(d / TABLE_DIR)
        from .plots import auroc_bars

        auroc_bars(self.probes, d / AUROC_PNG)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ProbeFitResult:
        res = super().load(directory)
        d = cls.path_in(directory).parent
        if (d / IMPORTANCE_CSV).is_file():
            res.importance = _read_csv(d / IMPORTANCE_CSV, cls.KIND)
        if (d / LABELS_CSV).is_file():
            res.label_rows = _read_csv(d / LABELS_CSV, cls.KIND)
        return res

    def load_table(self, directory: str | Path) -> LatentTable:
        return LatentTable.load(Path(directory) / TABLE_DIR)

    def probe(self, metric: str | None = None, method: str | None = None) -> dict[str, Any]:
        for p in self.probes:
            if (metric is None or p["metric"] == metric) and (method is None or p["method"] == method):
                return p
        raise ConfigError(
            f"{self.name}: no probe for metric {metric!r} and method {method!r} "
            f"(have {', '.join(sorted({p['metric'] + '/' + p['method'] for p in self.probes}))})"
        )

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sae": self.sae,
            "site": self.site,
            "sequences": self.n_sequences,
            "probes": [
                {k: p.get(k) for k in ("metric", "method", "k", "cv_auroc", "dense_auroc", "shuffled_auroc")}
                for p in self.probes
            ],
        }


def _sequences(data: Any) -> Sequences:
    if isinstance(data, Sequences):
        return data
    if isinstance(data, (str, Path)):
        return read_sequences(data)
    return as_sequences(data)


class _Ids:
    """The ids/texts of sequences before the table exists (to check the join before any model work)."""

    def __init__(self, seqs: Sequences):
        self.seq_ids, self.texts, self.n = seqs.ids, seqs.texts, len(seqs)
        self.n_tokens = np.ones(len(seqs), dtype=np.int64)


def _labels_for(join: Any, cfg: ProbeFitConfig) -> dict[str, Labels]:
    return {
        m: make_labels(
            join.values[m],
            m,
            high=cfg.high,
            low=cfg.low,
            mode=cfg.label_mode,
            source=join.source,
            min_per_class=cfg.folds,
        )
        for m in join.values
    }


def _metric_columns(metrics: Any, cfg: ProbeFitConfig) -> list[str] | None:
    return list(cfg.metrics) or None


def check_inputs(sequences: Any, metrics: Any, cfg: ProbeFitConfig) -> tuple[Sequences, Any]:
    """Read sequences and metrics and check the join and the labels — before any model work."""
    seqs = _sequences(sequences)
    src = str(metrics) if isinstance(metrics, (str, Path)) else None
    df = read_table_file(metrics) if isinstance(metrics, (str, Path)) else metrics
    join = join_metrics(_Ids(seqs), df, cfg.key, _metric_columns(metrics, cfg), source=src)
    _labels_for(join, cfg)
    return seqs, df


def _probe_entry(
    metric: str,
    method: str,
    X: Any,
    y: np.ndarray,
    dense: np.ndarray | None,
    cfg: ProbeFitConfig,
    alive: np.ndarray,
) -> tuple[dict[str, Any], Any]:
    """One probe with its dense baseline and controls, as a JSON-able dict (+ the Probe)."""
    kw = dict(k=cfg.k, folds=cfg.folds, seed=cfg.seed, C=cfg.C, ks=cfg.ks)
    p = fit_probe(X, y, method, **kw)
    e: dict[str, Any] = {
        "metric": metric,
        "method": method,
        **p.summary(),
        "fold_auroc": p.fold_auroc,
        "fold_accuracy": p.fold_accuracy,
        "path": p.path,
        "top_latents": p.top_latents(cfg.top),
        "top_directions": [int(p.direction[i]) for i in p.top_latents(cfg.top)],
    }
    if dense is not None:
        b = fit_probe(dense, y, method, **kw)
        e.update(
            dense_auroc=b.cv_auroc, dense_auroc_se=b.cv_auroc_se, dense_accuracy=b.cv_accuracy, dense_k=b.k
        )
        e["sae_minus_dense"] = p.cv_auroc - b.cv_auroc
    if cfg.controls:
        rng = np.random.default_rng(cfg.seed + 1)
        sh = fit_probe(X, rng.permutation(y), method, **kw)
        n_ctrl = p.k or (int((p.importance > 0).sum()) if method == "l1" else cfg.top)
        r = random_latents_control(X, y, int(max(n_ctrl, 1)), cfg.folds, seed=cfg.seed, C=cfg.C, pool=alive)
        e.update(
            shuffled_auroc=sh.cv_auroc,
            shuffled_auroc_se=sh.cv_auroc_se,
            random_latents_auroc=r.cv_auroc,
            random_latents_auroc_se=r.cv_auroc_se,
            random_latents_k=r.k,
        )
    return e, p


def _importance_rows(metric: str, method: str, p: Any) -> Any:
    import pandas as pd

    order = np.array(p.top_latents(p.d))
    rank = np.empty(p.d, dtype=np.int64)
    rank[order] = np.arange(1, p.d + 1)
    st = p.stats
    return pd.DataFrame(
        {
            "latent": np.arange(p.d),
            "metric": metric,
            "method": method,
            "importance": p.importance,
            "rank": rank,
            "direction": np.where(p.direction > 0, "high", np.where(p.direction < 0, "low", "none")),
            "mean_high": st["mean_high"],
            "mean_low": st["mean_low"],
            "diff": st["diff"],
            "diff_norm": st["diff_norm"],
            "coef": p.coef,
        }
    )


def fit_table(
    table: LatentTable,
    metrics: Any,
    config: ProbeFitConfig | None = None,
    *,
    name: str = "probe",
    source: str | None = None,
) -> ProbeFitResult:
    """Probes on an existing latent table joined with ``metrics`` (a path or a DataFrame)."""
    import pandas as pd

    cfg = config or ProbeFitConfig()
    join = join_metrics(table, metrics, cfg.key, list(cfg.metrics) or None, source=source)
    labels = _labels_for(join, cfg)
    X = table.features(cfg.pooling)
    alive = np.flatnonzero(table.prevalence(cfg.activation_threshold, cfg.pooling) > 0)
    probes, imp, lab = [], [], []
    for metric, lb in labels.items():
        Xm = X[lb.index]
        dense = table.dense[lb.index] if (cfg.dense_baseline and table.dense is not None) else None
        for method in cfg.methods:
            e, p = _probe_entry(metric, method, Xm, lb.y, dense, cfg, alive)
            probes.append(e)
            imp.append(_importance_rows(metric, method, p))
        lab.append(
            pd.DataFrame(
                {
                    "seq_id": [table.seq_ids[i] for i in lb.index],
                    "metric": metric,
                    "value": lb.values,
                    "label": lb.y,
                }
            )
        )
    return ProbeFitResult(
        name=name,
        sae=table.meta.get("sae"),
        site=table.meta.get("site"),
        d_sae=table.d_sae,
        n_sequences=table.n,
        join=join.report(),
        labels={m: {**lb.counts, "low_cut": lb.low_cut, "high_cut": lb.high_cut} for m, lb in labels.items()},
        probes=probes,
        config=cfg.to_dict(),
        provenance=dict(table.meta),
        importance=pd.concat(imp, ignore_index=True),
        label_rows=pd.concat(lab, ignore_index=True),
        table=table,
    )


def run_probe_fit(
    lm: Any,
    sae: Any,
    sequences: Any,
    metrics: Any,
    config: ProbeFitConfig | None = None,
    *,
    out: str | Path | None = None,
    name: str | None = None,
    table: Any = None,
    progress: bool = False,
) -> ProbeFitResult:
    """Build the latent table of ``sequences`` with ``sae`` on ``lm`` (a LoadedModel or a spec;
    the SAE or its directory), join ``metrics``, fit every probe (+ dense baseline and
    controls); with ``out``, save everything there. With ``table`` (a :class:`LatentTable` or
    its directory) no model is needed: the probes are refitted on it.

    Sequences, metrics, the join and the labels are checked before the model runs."""
    cfg = config or ProbeFitConfig()
    src = str(metrics) if isinstance(metrics, (str, Path)) else None
    label = name or (Path(out).name if out else "probe")
    if table is not None:
        tab = table if isinstance(table, LatentTable) else LatentTable.load(table)
        df = read_table_file(metrics) if isinstance(metrics, (str, Path)) else metrics
        res = fit_table(tab, df, cfg, name=label, source=src)
    else:
        if sequences is None or sae is None:
            raise ConfigError("give sequences and an SAE (or an existing latent table)")
        seqs, df = check_inputs(sequences, metrics, cfg)
        lm, sae = _load_model_and_sae(lm, sae)
        tab = build_latent_table(
            lm,
            sae,
            seqs,
            positions=cfg.positions,
            activation_threshold=cfg.activation_threshold,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            dense=cfg.dense_baseline,
            progress=progress,
        )
        res = fit_table(tab, df, cfg, name=label, source=src)
    if out is not None:
        res.save(out)
    return res


def _load_model_and_sae(lm: Any, sae: Any) -> tuple[Any, Any]:
    """The SAE first (a broken file fails fast), its fit to the model checked before any forward."""
    from ..features.latents import check_sae_fits, sae_site
    from ..sae.io import load_any

    if not hasattr(sae, "encode"):
        sae = load_any(sae)
    if not hasattr(lm, "model"):
        from ..models import load

        lm = load(lm)
    check_sae_fits(lm, sae, sae_site(sae))
    return lm, sae


# ---- annotate ----------------------------------------------------------------------------------------


@dataclass
class AnnotateConfig(StageConfig):
    """Iterative annotation: fit → record the top latents → zero their columns → refit."""

    method: str = option("ksparse", flag="--method", help="Probe type: l1, ksparse or diff_mean.")
    k: int | None = option(None, flag="--k", help="Latents per probe (default: the k sweep).")
    per_round: int = option(1, flag="--per-round", help="Top latents recorded and zeroed per round.")
    rounds: int = option(10, flag="--rounds", help="Round budget.")
    stop_auroc: float = option(0.55, flag="--stop-auroc", help="Stop when the held-out AUROC is ≤ this.")
    metrics: list[str] = option(
        default_factory=list, flag="--metric", help="Metrics to annotate (default: all of the fit)."
    )
    folds: int = option(5, flag="--folds", help="Cross-validation folds.")
    seed: int = option(0, flag="--seed", help="Seed of the folds.")

    def validate(self) -> None:
        one_of(self, "method", METHODS)
        for name in ("k", "per_round", "rounds"):
            at_least(self, name, 1)
        at_least(self, "folds", 2)
        in_range(self, "stop_auroc", 0, 1)


@register_result
@dataclass
class AnnotationResult(_TableResult):
    """Rows ``latent, metric, direction, round, importance, auroc_before, auroc_after``."""

    KIND: ClassVar[str] = "probe annotation"
    FILENAME: ClassVar[str] = ANNOTATE_JSON

    rows: list[dict[str, Any]]
    rounds: dict[str, list[dict[str, Any]]]
    config: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        import pandas as pd

        path = super().save(directory)
        cols = ["latent", "metric", "direction", "round", "importance", "auroc_before", "auroc_after"]
        _write_csv(pd.DataFrame(self.rows, columns=cols), Path(directory) / ANNOTATION_CSV)
        return path

    def summary(self) -> dict[str, Any]:
        return {
            "latents": len(self.rows),
            "rounds": {m: len(r) for m, r in self.rounds.items()},
            "config": self.config,
        }


def _probe_inputs(
    probe_dir: str | Path, metrics: Sequence[str] = ()
) -> tuple[ProbeFitResult, LatentTable, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The fit result, its table and ``{metric: (row index, y)}`` from a ``probes fit`` output."""
    d = Path(probe_dir)
    fit = ProbeFitResult.load(d)
    table = fit.load_table(d)
    lab = fit.label_rows
    if lab is None:
        raise DataFormatError(f"not a valid {fit.KIND}: {d} (no {LABELS_CSV})")
    pos = {s: i for i, s in enumerate(table.seq_ids)}
    out = {}
    for m in metrics or list(dict.fromkeys(lab["metric"].astype(str))):
        sub = lab[lab["metric"].astype(str) == m]
        if sub.empty:
            raise ConfigError(
                f"--metric: {d} has no labels for metric '{m}' (has {', '.join(sorted(set(lab['metric'].astype(str))))})"
            )
        out[m] = (np.array([pos[str(s)] for s in sub["seq_id"]]), sub["label"].to_numpy(np.int64))
    return fit, table, out


def annotate(
    X: Any, y: np.ndarray, config: AnnotateConfig | None = None, metric: str = "metric"
) -> list[dict[str, Any]]:
    """Annotation rounds on features ``X`` and labels ``y`` (see :class:`AnnotateConfig`)."""
    import scipy.sparse as sp

    cfg = config or AnnotateConfig()
    Xc = sp.csr_matrix(X, dtype=np.float64, copy=True) if sp.issparse(X) else np.array(X, dtype=np.float64)
    fit = lambda Z: fit_probe(Z, y, cfg.method, k=cfg.k, folds=cfg.folds, seed=cfg.seed)  # noqa: E731
    p = fit(Xc)
    rows: list[dict[str, Any]] = []
    zeroed: set[int] = set()
    for r in range(cfg.rounds):
        before = p.cv_auroc
        if before <= cfg.stop_auroc:
            break
        top = [i for i in p.top_latents(cfg.per_round + len(zeroed)) if i not in zeroed][: cfg.per_round]
        Xc = _zero_columns(Xc, top)
        zeroed.update(top)
        nxt = fit(Xc)
        for i in top:
            rows.append(
                {
                    "latent": int(i),
                    "metric": metric,
                    "direction": "high" if p.direction[i] > 0 else "low",
                    "round": r,
                    "importance": float(p.importance[i]),
                    "auroc_before": before,
                    "auroc_after": nxt.cv_auroc,
                }
            )
        p = nxt
    return rows


def _zero_columns(X: Any, cols: Sequence[int]) -> Any:
    import scipy.sparse as sp

    if sp.issparse(X):
        X = X.tocsc(copy=True)
        for c in cols:
            X.data[X.indptr[c] : X.indptr[c + 1]] = 0.0
        X = X.tocsr()
        X.eliminate_zeros()
        return X
    X = X.copy()
    X[:, list(cols)] = 0.0
    return X


def run_annotate(
    probe_dir: str | Path, config: AnnotateConfig | None = None, *, out: str | Path | None = None
) -> AnnotationResult:
    """Iterative annotation on the table and labels of a ``probes fit`` output; saves
    ``annotate.json`` + ``annotation.csv`` in ``out`` (default: ``probe_dir``)."""
    cfg = config or AnnotateConfig()
    fit, table, labs = _probe_inputs(probe_dir, cfg.metrics)
    X = table.features(fit.config.get("pooling", "max"))
    rows, rounds = [], {}
    for m, (idx, y) in labs.items():
        r = annotate(X[idx], y, cfg, metric=m)
        rows += r
        per: dict[int, dict[str, Any]] = {}
        for x in r:
            per.setdefault(
                x["round"],
                {"round": x["round"], "auroc_before": x["auroc_before"], "auroc_after": x["auroc_after"]},
            )
        rounds[m] = list(per.values())
    res = AnnotationResult(rows, rounds, {**cfg.to_dict(), "probe": str(probe_dir)})
    res.save(out or probe_dir)
    return res


# ---- correlate ---------------------------------------------------------------------------------------


@dataclass
class CorrelateConfig(StageConfig):
    """Importance vs latent properties at several activity thresholds."""

    thresholds: list[float] = option(
        default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0],
        flag="--thresholds",
        help="Activity thresholds τ (pooled values ≤ τ count as not firing).",
    )
    method: str = option("diff_mean", flag="--method", help="Probe type whose importance is correlated.")
    top: int = option(20, flag="--top", help="Important latents drawn as paths in the connected scatterplot.")
    metrics: list[str] = option(
        default_factory=list, flag="--metric", help="Metrics (default: all of the fit)."
    )
    folds: int = option(5, flag="--folds", help="Cross-validation folds.")
    seed: int = option(0, flag="--seed", help="Seed of the folds.")

    def validate(self) -> None:
        one_of(self, "method", METHODS)
        at_least(self, "top", 1)
        at_least(self, "folds", 2)
        if not self.thresholds or any(t < 0 for t in self.thresholds):
            raise ConfigError(f"--thresholds must be ≥ 0 (at least one), got {self.thresholds}")


@register_result
@dataclass
class CorrelationResult(_TableResult):
    """Spearman correlations (``rows``: metric, threshold, property, rho, p, n) and the points
    of the connected scatterplot (``points``, ``points.csv``)."""

    KIND: ClassVar[str] = "probe correlations"
    FILENAME: ClassVar[str] = CORRELATE_JSON

    rows: list[dict[str, Any]]
    important: dict[str, list[int]]
    config: dict[str, Any] = field(default_factory=dict)
    points: Any = _runtime()

    def save(self, directory: str | Path) -> Path:
        import pandas as pd

        path = super().save(directory)
        _write_csv(pd.DataFrame(self.rows), Path(directory) / CORRELATIONS_CSV)
        if self.points is not None:
            _write_csv(self.points, Path(directory) / POINTS_CSV)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> CorrelationResult:
        res = super().load(directory)
        p = cls.path_in(directory).parent / POINTS_CSV
        if p.is_file():
            res.points = _read_csv(p, cls.KIND)
        return res

    def summary(self) -> dict[str, Any]:
        return {"rows": len(self.rows), "metrics": sorted(self.important), "config": self.config}


def latent_properties(table: LatentTable, sae: Any = None, base_sae: Any = None) -> dict[str, np.ndarray]:
    """Per-latent properties that do not depend on the threshold: token firing rate (from the
    table) and, with the SAE, encoder/decoder norms and decoder cosine with ``base_sae``."""
    props = {"firing_rate": table.firing_rate()}
    if sae is not None:
        if int(sae.d_sae) != table.d_sae:
            raise ShapeError(
                f"the SAE has d_sae={sae.d_sae} but the latent table has {table.d_sae} latents; "
                "give the SAE the table was built with"
            )
        from ..features.weights import weight_metrics

        wm = weight_metrics(sae, base_sae, pairwise=False)
        props["enc_norm"] = wm.enc_norm.numpy().astype(np.float64)
        props["dec_norm"] = wm.dec_norm.numpy().astype(np.float64)
        if wm.dec_cos_ref is not None:
            props["dec_cos_base"] = wm.dec_cos_ref.numpy().astype(np.float64)
    return props


def _spearman(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.all(a[ok] == a[ok][0]) or np.all(b[ok] == b[ok][0]):
        return None, None
    r = spearmanr(a[ok], b[ok])
    return float(r.statistic), float(r.pvalue)


def _threshold(X: Any, tau: float) -> Any:
    Z = X.copy()
    Z.data[Z.data <= tau] = 0.0
    Z.eliminate_zeros()
    return Z


def correlate(
    X: Any,
    y: np.ndarray,
    props: dict[str, np.ndarray],
    config: CorrelateConfig | None = None,
    metric: str = "metric",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[int]]:
    """Importance at each threshold vs properties: (correlation rows, scatter points, important latents)."""
    import scipy.sparse as sp

    cfg = config or CorrelateConfig()
    X = sp.csr_matrix(X)
    rows, points = [], []
    important: list[int] = []
    for tau in sorted(cfg.thresholds):
        Z = _threshold(X, tau)
        prev = np.asarray((Z > 0).sum(0)).ravel() / max(Z.shape[0], 1)
        p = fit_probe(Z, y, cfg.method, folds=cfg.folds, seed=cfg.seed)
        if not important:
            important = p.top_latents(cfg.top)
        alive = prev > 0
        allp = {"prevalence": prev, **props}
        for name, v in allp.items():
            rho, pv = _spearman(p.importance[alive], v[alive])
            rows.append(
                {
                    "metric": metric,
                    "threshold": float(tau),
                    "property": name,
                    "spearman": rho,
                    "p_value": pv,
                    "n_latents": int(alive.sum()),
                    "cv_auroc": p.cv_auroc,
                }
            )
        for i in important:
            points.append(
                {
                    "metric": metric,
                    "latent": int(i),
                    "threshold": float(tau),
                    "importance": float(p.importance[i]),
                    **{name: float(v[i]) for name, v in allp.items()},
                }
            )
    return rows, points, important


def run_correlate(
    probe_dir: str | Path,
    config: CorrelateConfig | None = None,
    *,
    sae: Any = None,
    base_sae: Any = None,
    out: str | Path | None = None,
) -> CorrelationResult:
    """Correlate importance with latent properties on a ``probes fit`` output (saves into
    ``out``, default ``probe_dir``, with one connected scatterplot per metric)."""
    import pandas as pd

    from ..sae.io import load_any

    cfg = config or CorrelateConfig()
    if sae is not None and not hasattr(sae, "encode"):
        sae = load_any(sae)
    if base_sae is not None and not hasattr(base_sae, "encode"):
        base_sae = load_any(base_sae)
    fit, table, labs = _probe_inputs(probe_dir, cfg.metrics)
    props = latent_properties(table, sae, base_sae)
    X = table.features(fit.config.get("pooling", "max"))
    rows, points, important = [], [], {}
    for m, (idx, y) in labs.items():
        r, pts, imp = correlate(X[idx], y, props, cfg, metric=m)
        rows += r
        points += pts
        important[m] = imp
    res = CorrelationResult(rows, important, {**cfg.to_dict(), "probe": str(probe_dir)}, pd.DataFrame(points))
    dest = Path(out or probe_dir)
    res.save(dest)
    from .plots import connected_scatter

    for m in important:
        connected_scatter(res.points[res.points["metric"] == m], dest / f"connected_scatter_{m}.png", title=m)
    return res


# ---- compare -------------------------------------------------------------------------------------------


@dataclass
class CompareConfig(StageConfig):
    """Comparisons of importance between probes (iterations, stages, metrics)."""

    ks: list[int] = option(
        default_factory=lambda: [5, 10, 20, 50], flag="--k", help="Top-k sizes of the Jaccard overlap."
    )
    method: str = option("ksparse", flag="--method", help="Probe type whose importance is compared.")
    rank_top: int = option(
        100, flag="--rank-top", help="Rank correlation over the union of each side's top this many."
    )

    def validate(self) -> None:
        one_of(self, "method", METHODS)
        at_least(self, "rank_top", 2)
        if not self.ks or any(int(k) < 1 for k in self.ks):
            raise ConfigError(f"--k must be ≥ 1, got {self.ks}")


@register_result
@dataclass
class CompareResult(_TableResult):
    """Pairwise rows (a, b, axis, jaccard@k, spearman, shared) and, along a series, the
    change in importance vs the change in properties (``series``)."""

    KIND: ClassVar[str] = "probe comparison"
    FILENAME: ClassVar[str] = COMPARE_JSON

    rows: list[dict[str, Any]]
    series: list[dict[str, Any]] = field(default_factory=list)
    properties: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        import pandas as pd

        path = super().save(directory)
        _write_csv(pd.DataFrame(self.rows), Path(directory) / COMPARE_CSV)
        return path

    def summary(self) -> dict[str, Any]:
        return {
            "pairs": len(self.rows),
            "axes": sorted({r["axis"] for r in self.rows}),
            "config": self.config,
        }


from .compare import run_compare  # noqa: E402  (defined there; re-exported with its config)

__all__ = [
    "AnnotateConfig",
    "AnnotationResult",
    "CompareConfig",
    "CompareResult",
    "CorrelateConfig",
    "CorrelationResult",
    "ProbeFitConfig",
    "ProbeFitResult",
    "annotate",
    "check_inputs",
    "correlate",
    "fit_table",
    "latent_properties",
    "run_annotate",
    "run_compare",
    "run_correlate",
    "run_probe_fit",
]
