"""The steering stages: ``steer`` (Phase 1) and ``combine`` (Phase 2), config → function → result.

* :class:`SteerRunConfig` → :func:`run_steering` → :class:`SteeringRun`: baseline, adaptive
  search or grid for one vector source (every method searched together), records appended to
  ``steering/<trait>/<variant>/<position>/results.jsonl``, checkpoint summary and per-layer
  table. :meth:`SteeringRun.save` writes ``steering.json`` (the run: config, record keys,
  summary) with ``layers.csv``, ``configs.csv`` and two figures next to the results log.
* :class:`CombineConfig` → :func:`run_combinations` → :class:`CombinationResult`:
  strategies 1–4 of two vector sources (:mod:`deltalens.steering.combine`);
  ``combinations.json`` and ``comparison.csv`` next to ``combinations/results.jsonl``.

The results log is append-only and shared by runs; a re-run reuses every configuration already
evaluated (same model, vectors, questions, lengths and judge), so a killed run resumes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.traits import TraitSet
from ..errors import ConfigError, DataFormatError
from ..experiment import Experiment
from ..io import atomic_write, read_json
from ..judges import Judge, JudgeCache, TraitInfo
from ..models.arch import COMPONENTS
from ..positions import Positions
from ..stage import StageConfig, StageResult, at_least, one_of, option, register_result
from .combine import MULTIPLIERS, Source, combination_candidates, comparison_table
from .evaluate import EvalSettings, Monitor, evaluate_candidates
from .extraction import JUDGE_HELP, load_vector_set
from .results import ResultsLog, SteeringRecord
from .search import adaptive_search, checkpoint_summary, grid_search, per_layer_table
from .terms import COEF_MODES, Candidate, check_widths

if TYPE_CHECKING:
    from ..models.loading import LoadedModel
    from ..scale.backends import BackendConfig

MIN_COHERENCE = 70.0  # the coherence a configuration must keep to count (tables, best sources)


def _positive(cfg: Any, name: str) -> None:
    from ..stage import flag_of

    v = getattr(cfg, name)
    if v is not None and not v > 0:
        raise ConfigError(f"{flag_of(cfg, name)} must be > 0, got {v!r}")


# ---- Phase 1: steer ------------------------------------------------------------------------------


@dataclass
class SteerRunConfig(StageConfig):
    """Settings of one steering run (``deltalens steer``)."""

    variant: str = option(
        "instruct", flag="--extraction-variant", help="Model variant the vectors were extracted from."
    )
    position: str = option("response[:]", flag="--position", help="Extraction position of the vectors.")
    methods: list[str] = option(
        default_factory=lambda: ["mean_diff"],
        flag="--method",
        help="Vector method(s), comma-separated; searched together.",
    )
    layers: list[int] = option(
        default_factory=list, flag="--layers", help="Layers to steer (default: 30%–60% of depth)."
    )
    coefficients: list[float] = option(
        default_factory=list,
        flag="--coefficients",
        help="Fine grid, e.g. 0.1,0.15,0.2 (skips the adaptive search).",
    )
    coef_mode: str = option(
        "relative",
        flag="--coef-mode",
        help="relative (× mean activation norm of the layer) or raw (× stored vector).",
    )
    component: str = option("resid", flag="--component", help="Component the vectors were extracted at.")
    subset: int = option(0, flag="--subset", help="Use the first N steering questions (0 = all).")
    max_new_tokens: int = option(64, flag="--max-new-tokens", help="Response length.")
    steer_positions: str = option(
        "response", flag="--steer-positions", help="Where vectors are added: response, all, response[:10], …"
    )
    steps: int = option(6, flag="--steps", help="Adaptive search rounds.")
    start: float = option(0.15, flag="--start", help="Adaptive search start coefficient (relative).")
    threshold: float = option(75.0, flag="--threshold", help="Coherence the adaptive search keeps.")
    max_rows: int = option(256, flag="--max-rows", help="Rows (configs × questions) per generation batch.")
    project_layer: int | None = option(
        None, flag="--project-layer", help="Also project responses on the vector of this layer."
    )
    model_variant: str = option(
        "instruct", flag="--model-variant", help="Model variant to steer (the application model)."
    )
    judge: str = option("offline", flag="--judge", help=JUDGE_HELP)

    def validate(self) -> None:
        Positions.parse(self.position)
        Positions.parse(self.steer_positions)
        if not self.methods:
            raise ConfigError("--method: give at least one vector method")
        one_of(self, "coef_mode", COEF_MODES)
        one_of(self, "component", COMPONENTS)
        at_least(self, "subset", 0)
        at_least(self, "max_new_tokens", 1)
        at_least(self, "steps", 1)
        at_least(self, "max_rows", 1)
        _positive(self, "start")

    @property
    def vector_id(self) -> str:
        return Experiment.steering_vector_id(self.variant, self.position)


def _settings(
    trait: TraitSet, subset: int, max_new_tokens: int, steer_positions: str, max_rows: int
) -> EvalSettings:
    questions = trait.steering_questions[:subset] if subset and subset > 0 else trait.steering_questions
    return EvalSettings(
        list(questions), max_new_tokens=max_new_tokens, positions=steer_positions, max_rows=max_rows
    )


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    for r in rows:
        w.writerow(
            [
                "" if r.get(c) is None else (f"{r[c]:.4g}" if isinstance(r[c], float) else r[c])
                for c in columns
            ]
        )
    return buf.getvalue()


def _read_header(cls: type[StageResult], directory: str | Path) -> tuple[Path, dict[str, Any]]:
    """The result file of ``cls`` in ``directory`` and its JSON (DataFormatError for another kind)."""
    path = cls.path_in(directory)
    if not path.is_file():
        raise DataFormatError(f"not a valid {cls.KIND}: {path} (no such file)")
    d = read_json(path)
    if not isinstance(d, dict) or d.get("kind") != cls.KIND:
        raise DataFormatError(
            f"not a valid {cls.KIND}: {path} (kind is {d.get('kind') if isinstance(d, dict) else None!r})"
        )
    return path, d


def _records_from(log_path: Path, judge: str | None, keys: Sequence[str], what: Path) -> list[SteeringRecord]:
    if not log_path.is_file():
        raise DataFormatError(f"not a valid steering result: {what} (its results log {log_path} is missing)")
    log = ResultsLog(log_path)
    latest = {r.key: r for r in log.latest_per_key(judge)}
    missing = [k for k in keys if k not in latest]
    if missing:
        raise DataFormatError(
            f"not a valid steering result: {what} ({len(missing)} record(s) missing from {log_path})"
        )
    return [latest[k] for k in keys]


@register_result
@dataclass
class SteeringRun(StageResult):
    """A Phase-1 run: its baseline and single-vector records (in ``results.jsonl``), the
    checkpoint summary per method and the per-layer table (best Δ at coherence ≥ 70)."""

    KIND = "steering run"
    FILENAME = "steering.json"
    LAYERS_CSV = "layers.csv"
    CONFIGS_CSV = "configs.csv"
    DELTA_FIGURE = "trait_delta_by_layer.png"
    SCATTER_FIGURE = "trait_vs_coherence.png"

    baseline: SteeringRecord
    records: list[SteeringRecord]
    checkpoint: dict[str, dict[str, Any]]  # per method: :func:`~deltalens.steering.search.checkpoint_summary`
    layers: list[dict[str, Any]]
    log_path: Path
    trait: str = ""
    judge: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trait": self.trait,
            "judge": self.judge,
            "config": self.config,
            "results": Path(self.log_path).name,
            "baseline_key": self.baseline.key,
            "record_keys": [r.key for r in self.records],
            "checkpoint": self.checkpoint,
            "layers": self.layers,
            "extra": self.extra,
        }

    def config_rows(self) -> list[dict[str, Any]]:
        """Every configuration: method, layer, coef, trait, coherence, delta."""
        recs = sorted(self.records, key=lambda r: (str(r.method), r.layer or 0, r.coef or 0))
        return [
            {
                "method": r.method,
                "layer": r.layer,
                "coef": r.coef,
                "trait": r.trait_mean,
                "coherence": r.coherence_mean,
                "delta": r.delta(self.baseline),
            }
            for r in recs
        ]

    def save(self, directory: str | Path) -> Path:
        """``steering.json``, ``layers.csv`` (best Δ per method and layer at coherence ≥ 70),
        ``configs.csv`` (every configuration), ``trait_delta_by_layer.png`` and ``trait_vs_coherence.png``."""
        from ..plots import lines_by_layer, scatter

        out = Path(directory)
        path = super().save(out)
        atomic_write(
            out / self.LAYERS_CSV,
            _csv(self.layers, ["method", "layer", "n", "best_coef", "delta", "coherence"]),
        )
        rows = self.config_rows()
        atomic_write(
            out / self.CONFIGS_CSV, _csv(rows, ["method", "layer", "coef", "trait", "coherence", "delta"])
        )
        layers = sorted({r["layer"] for r in self.layers})
        if layers:
            series = {}
            for m in sorted({r["method"] for r in self.layers}):
                by = {r["layer"]: r["delta"] for r in self.layers if r["method"] == m}
                series[m] = [float("nan") if by.get(L) is None else by[L] for L in layers]
            lines_by_layer(
                series,
                out / self.DELTA_FIGURE,
                layers=layers,
                title="best trait Δ with coherence ≥ 70",
                ylabel="trait Δ (judge points)",
            )
        ok = [r for r in rows if r["delta"] is not None and r["coherence"] is not None]
        if ok:
            scatter(
                [r["coherence"] for r in ok],
                [r["delta"] for r in ok],
                out / self.SCATTER_FIGURE,
                title="every configuration",
                xlabel="coherence",
                ylabel="trait Δ",
                annotate=[f"{str(r['method'])[:2]} L{r['layer']} {r['coef']:g}" for r in ok]
                if len(ok) <= 24
                else None,
            )
        return path

    @classmethod
    def load(cls, directory: str | Path) -> SteeringRun:  # type: ignore[override]
        path, d = _read_header(cls, directory)
        try:
            log_path = path.parent / str(d["results"])
            base, *recs = _records_from(
                log_path, d.get("judge") or None, [d["baseline_key"], *d["record_keys"]], path
            )
            return cls(
                base,
                recs,
                dict(d["checkpoint"]),
                list(d["layers"]),
                log_path,
                str(d.get("trait", "")),
                str(d.get("judge", "")),
                dict(d.get("config") or {}),
                dict(d.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataFormatError(f"not a valid {cls.KIND}: {path} ({exc})") from None

    def summary(self) -> dict[str, Any]:
        return {
            "trait": self.trait,
            "judge": self.judge,
            "configurations": len(self.records),
            "baseline_trait": self.baseline.trait_mean,
            "best_layer": {m: s.get("best_layer") for m, s in self.checkpoint.items()},
        }


def _vector_sets(
    exp: Experiment, trait: TraitSet, cfg: SteerRunConfig, layers: Sequence[int] | None
) -> dict[str, Any]:
    return {
        m: load_vector_set(exp, trait.id, cfg.variant, cfg.position, m, cfg.component, layers)
        for m in cfg.methods
    }


def run_steering(
    lm: LoadedModel,
    exp: Experiment,
    trait: TraitSet,
    config: SteerRunConfig | None = None,
    judge: Judge | None = None,
    *,
    vector_exp: Experiment | None = None,
    progress: bool = True,
    report: Callable[..., None] | None = None,
    backend: BackendConfig | None = None,
) -> SteeringRun:
    """Phase 1 for one vector source (see the module docstring). Vectors are read from
    ``vector_exp`` (default: ``exp``, where the results are written); the judge defaults to
    the one ``config.judge`` names. Every vector's width is checked against the model before
    anything is generated. The run is saved next to its results log. ``backend`` generates the
    configurations as work units on Ray or SLURM (:mod:`deltalens.scale.backends`)."""
    from .pipeline import default_layers, make_judge

    cfg = config or SteerRunConfig()
    if backend is not None:
        backend.check_available()  # before anything is loaded or generated
    layers = list(cfg.layers) or default_layers(lm.n_layers)
    vexp = vector_exp or exp
    sets = _vector_sets(vexp, trait, cfg, layers)
    check_widths(
        [Candidate.single(v, 1.0) for vs in sets.values() for v in vs.values()],
        lm.d_model,
        f"model {lm.name}",
    )
    monitor = None
    if cfg.project_layer is not None:
        v = sets[cfg.methods[0]].get(cfg.project_layer)
        if v is None:
            v = load_vector_set(
                vexp, trait.id, cfg.variant, cfg.position, cfg.methods[0], cfg.component, [cfg.project_layer]
            )[cfg.project_layer]
        check_widths([Candidate.single(v, 1.0)], lm.d_model, f"model {lm.name}")
        monitor = Monitor(v.vector, (cfg.project_layer, cfg.component))
    if judge is None:
        judge = make_judge(cfg.judge, lm, exp, trait, cfg.model_variant, progress=progress)
    judge.check()
    settings = _settings(trait, cfg.subset, cfg.max_new_tokens, cfg.steer_positions, cfg.max_rows)
    info = TraitInfo.from_trait(trait)
    log = ResultsLog(exp.steering_results(trait.id, cfg.vector_id))
    cache = JudgeCache(exp.judge_cache_path())
    common = dict(
        layers=layers,
        coef_mode=cfg.coef_mode,
        cache=cache,
        monitor=monitor,
        trait_id=trait.id,
        progress=progress,
        backend=backend,
    )
    try:
        if cfg.coefficients:
            res = grid_search(lm, sets, settings, judge, info, log, cfg.coefficients, **common)
        else:
            res = adaptive_search(
                lm,
                sets,
                settings,
                judge,
                info,
                log,
                start=cfg.start,
                steps=cfg.steps,
                threshold=cfg.threshold,
                report=report,
                **common,
            )
        prompted = prompting_baseline(
            lm, trait, settings, judge, info, log, cache=cache, monitor=monitor, progress=progress
        )
    finally:
        cache.close()
    fps = {v.fingerprint() for vs in sets.values() for v in vs.values()}
    mine = [
        r
        for r in log.latest_per_key(judge.id)
        if r.kind == "single"
        and r.questions_sha == settings.questions_sha
        and r.max_new_tokens == cfg.max_new_tokens
        and r.positions == cfg.steer_positions
        and r.fingerprint in fps
        and r.coef_mode == cfg.coef_mode
    ]
    n_cfg = 1 + len({r.key for r in res.records}) + (prompted is not None)
    extra = {
        "computed": log.appended,
        "reused": max(0, n_cfg - log.appended),
        "skipped_lines": log.skipped_lines,
    }
    if prompted is not None:
        extra["prompted"] = {
            "key": prompted.key,
            "trait": prompted.trait_mean,
            "coherence": prompted.coherence_mean,
            "delta": prompted.delta(res.baseline),
        }
    run = SteeringRun(
        res.baseline,
        mine,
        checkpoint_summary(mine, res.baseline),
        per_layer_table(mine, res.baseline),
        log.path,
        trait.id,
        judge.id,
        cfg.to_dict(),
        extra,
    )
    run.save(log.path.parent)
    return run


def prompting_baseline(
    lm: LoadedModel,
    trait: TraitSet,
    settings: EvalSettings,
    judge: Judge,
    info: TraitInfo,
    log: ResultsLog,
    *,
    cache: JudgeCache | None = None,
    monitor: Monitor | None = None,
    progress: bool = True,
) -> SteeringRecord | None:
    """The bar steering has to clear: the steering questions asked under the trait's own
    instruction system prompts (positive polarity, cycled over the questions), no vector added.

    Recorded as kind ``prompted`` in the run's results log (resumable like every other
    configuration); its Δ is ``trait_mean − unsteered baseline trait_mean``. ``None`` when the
    trait has no instruction-format counterpart (no system prompts to ask with).
    """
    from .pipeline import instruction_counterpart

    inst = instruction_counterpart(trait)
    if inst is None:
        return None
    prompts = list(dict.fromkeys(s.system for s in inst.positive if s.system))
    system: list[str | None] = [prompts[i % len(prompts)] for i in range(len(settings.questions))]
    ps = dataclasses.replace(settings, system=system)
    cand = Candidate((), "prompted", "prompting baseline", {"system_prompts": len(prompts)})
    (rec,) = evaluate_candidates(
        lm, [cand], ps, judge, info, log, cache=cache, monitor=monitor, trait_id=trait.id, progress=progress
    )
    return rec


# ---- Phase 2: combine ----------------------------------------------------------------------------


def best_source(
    exp: Experiment,
    trait: TraitSet,
    variant: str,
    positions: str,
    judge: Judge,
    name: str,
    *,
    methods: Sequence[str] = ("mean_diff", "probe", "pca"),
    component: str = "resid",
    min_coh: float = MIN_COHERENCE,
) -> Source:
    """The Phase-1 winner of a vector source (best method, layer and coefficient at coherence ≥ ``min_coh``)."""
    log = ResultsLog(exp.steering_results(trait.id, Experiment.steering_vector_id(variant, positions)))
    recs = log.latest_per_key(judge.id)
    base = next((r for r in recs if r.kind == "baseline"), None)
    singles = [
        r
        for r in recs
        if r.kind == "single" and r.method in methods and r.coherent(min_coh) and r.coef_mode == "relative"
    ]
    if base is None or not singles:
        raise DataFormatError(
            f"no Phase-1 results with coherence ≥ {min_coh:g} for {trait.id} ({variant}, {positions}) scored by this judge "
            f"in {log.path}; run deltalens steer first"
        )
    best = max(singles, key=lambda r: r.trait_mean or 0.0)
    vs = load_vector_set(exp, trait.id, variant, positions, str(best.method), component)
    return Source(
        name, vs, int(best.layer or 0), float(best.coef or 0.0), best.delta(base), best.coherence_mean
    )


@dataclass
class CombineConfig(StageConfig):
    """Settings of the Phase-2 comparison (``deltalens combine``)."""

    natural: str = option("", flag="--natural", help="First vector source trait (e.g. natural/pirate).")
    natural_variant: str = option(
        "base", flag="--natural-variant", help="Model variant of the first source's vectors."
    )
    natural_position: str = option(
        "response[:5]", flag="--natural-position", help="Extraction position of the first source."
    )
    instruction: str = option(
        "", flag="--instruction", help="Second vector source trait (e.g. instruction/pirate)."
    )
    instruction_variant: str = option(
        "instruct", flag="--instruction-variant", help="Model variant of the second source's vectors."
    )
    instruction_position: str = option(
        "response[:]", flag="--instruction-position", help="Extraction position of the second source."
    )
    model_variant: str = option("instruct", flag="--model-variant", help="Model variant to steer.")
    judge: str = option("offline", flag="--judge", help=JUDGE_HELP)
    subset: int = option(0, flag="--subset", help="Use the first N steering questions (0 = all).")
    max_new_tokens: int = option(64, flag="--max-new-tokens", help="Response length.")
    min_coherence: float = option(
        MIN_COHERENCE, flag="--min-coherence", help="Coherence a configuration must keep to count."
    )
    multipliers: list[float] = option(
        default_factory=lambda: list(MULTIPLIERS),
        flag="--multipliers",
        help="Coefficient multipliers swept per strategy.",
    )
    steer_positions: str = option("response", flag="--steer-positions", help="Where vectors are added.")
    max_rows: int = option(256, flag="--max-rows", help="Rows (configs × questions) per generation batch.")

    def validate(self) -> None:
        for name in ("natural_position", "instruction_position", "steer_positions"):
            Positions.parse(getattr(self, name))
        at_least(self, "subset", 0)
        at_least(self, "max_new_tokens", 1)
        at_least(self, "max_rows", 1)
        if not self.multipliers:
            raise ConfigError("--multipliers: give at least one multiplier")


def _source_dict(s: Source) -> dict[str, Any]:
    v = next(iter(s.vectors.values()))
    return {
        "name": s.name,
        "trait": v.meta.get("trait"),
        "variant": v.meta.get("variant"),
        "positions": v.meta.get("positions"),
        "method": v.method,
        "best_layer": s.best_layer,
        "best_coef": s.best_coef,
        "best_delta": s.best_delta,
        "best_coherence": s.best_coherence,
    }


@register_result
@dataclass
class CombinationResult(StageResult):
    """The Phase-2 comparison table (best single per source, strategies 1–4), its baseline and records."""

    KIND = "steering combinations"
    FILENAME = "combinations.json"
    TABLE = "comparison.csv"

    rows: list[dict[str, Any]]
    baseline: SteeringRecord
    records: list[SteeringRecord]
    log_path: Path
    sources: list[dict[str, Any]] = field(default_factory=list)
    trait: str = ""
    judge: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trait": self.trait,
            "judge": self.judge,
            "config": self.config,
            "sources": self.sources,
            "rows": self.rows,
            "results": Path(self.log_path).name,
            "baseline_key": self.baseline.key,
            "record_keys": [r.key for r in self.records],
        }

    def save(self, directory: str | Path) -> Path:
        """``combinations.json`` and the table as ``comparison.csv``."""
        path = super().save(directory)
        atomic_write(
            Path(directory) / self.TABLE,
            _csv(self.rows, ["config", "layers", "coef", "delta", "coherence", "notes"]),
        )
        return path

    @classmethod
    def load(cls, directory: str | Path) -> CombinationResult:  # type: ignore[override]
        path, d = _read_header(cls, directory)
        try:
            log_path = path.parent / str(d["results"])
            base, *recs = _records_from(
                log_path, d.get("judge") or None, [d["baseline_key"], *d["record_keys"]], path
            )
            return cls(
                list(d["rows"]),
                base,
                recs,
                log_path,
                list(d.get("sources") or []),
                str(d.get("trait", "")),
                str(d.get("judge", "")),
                dict(d.get("config") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataFormatError(f"not a valid {cls.KIND}: {path} ({exc})") from None

    def summary(self) -> dict[str, Any]:
        return {
            "trait": self.trait,
            "judge": self.judge,
            "strategies": len(self.rows) - 2,
            "baseline_trait": self.baseline.trait_mean,
            "sources": [s.get("name") for s in self.sources],
        }


def run_combinations(
    lm: LoadedModel,
    exp: Experiment,
    config: CombineConfig,
    judge: Judge | None = None,
    *,
    sources: tuple[Source, Source] | None = None,
    progress: bool = True,
) -> CombinationResult:
    """Phase 2: strategies 1–4 for the two sources of ``config`` (their Phase-1 winners, or
    ``sources``), scored on the instruction trait's questions; saved next to the results log."""
    from ..data.traits import load_trait
    from .pipeline import make_judge

    cfg = config
    if not cfg.natural or not cfg.instruction:
        raise ConfigError("--natural and --instruction: give both vector source traits")
    nat, inst = load_trait(cfg.natural), load_trait(cfg.instruction)
    if judge is None:
        judge = make_judge(cfg.judge, lm, exp, inst, cfg.model_variant, progress=progress)
    if sources is None:
        a = best_source(
            exp, nat, cfg.natural_variant, cfg.natural_position, judge, "natural", min_coh=cfg.min_coherence
        )
        b = best_source(
            exp,
            inst,
            cfg.instruction_variant,
            cfg.instruction_position,
            judge,
            "instruction",
            min_coh=cfg.min_coherence,
        )
    else:
        a, b = sources
    cands = combination_candidates(a, b, cfg.multipliers)
    check_widths(cands, lm.d_model, f"model {lm.name}")
    settings = _settings(inst, cfg.subset, cfg.max_new_tokens, cfg.steer_positions, cfg.max_rows)
    info = TraitInfo.from_trait(inst)
    log = ResultsLog(exp.combinations_results(inst.id))
    cache = JudgeCache(exp.judge_cache_path())
    try:
        base = evaluate_candidates(
            lm,
            [Candidate.baseline()],
            settings,
            judge,
            info,
            log,
            cache=cache,
            trait_id=inst.id,
            progress=progress,
        )[0]
        recs = evaluate_candidates(
            lm, cands, settings, judge, info, log, cache=cache, trait_id=inst.id, progress=progress
        )
    finally:
        cache.close()
    res = CombinationResult(
        comparison_table(a, b, recs, base, cfg.min_coherence),
        base,
        recs,
        log.path,
        [_source_dict(a), _source_dict(b)],
        inst.id,
        judge.id,
        cfg.to_dict(),
    )
    res.save(log.path.parent)
    return res
