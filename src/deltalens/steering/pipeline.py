"""High-level runs shared by the CLI and the demo: model variants, judges, steering runs.

* :func:`model_spec_for` — the model of an experiment variant (``config.yaml``'s
  ``models: {variant: spec}``), recorded there on first use.
* :func:`make_judge` — ``offline`` (default), ``openai`` / ``openai:<model>`` or
  ``local:<model spec>``.
* :func:`offline_judge` — the offline judge of a trait: its classifier is trained on the
  trait's *instruction-format* responses from the steered model (generated on first use
  and kept in the experiment), which share the held-out steering questions' format.
* :func:`run_steering` — Phase 1 for one vector source: baseline, adaptive search or
  grid, results appended to ``steering/<trait>/<variant>/<position>/results.jsonl``,
  checkpoint summary.
* :func:`run_combinations` — Phase 2 for two vector sources.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..data.traits import TraitSet, load_trait, resolve_trait_path
from ..errors import ConfigError, DataFormatError
from ..experiment import Experiment
from ..io import config_hash
from ..judges import CoherenceScorer, Judge, JudgeCache, OfflineJudge, TraitClassifier, TraitInfo
from .combine import MULTIPLIERS, Source, combination_candidates, comparison_table
from .evaluate import Candidate, EvalSettings, Monitor, evaluate
from .extraction import existing_responses, load_vector_set, trait_responses
from .results import ResultsLog
from .search import SearchResult, adaptive_search, checkpoint_summary, grid_search, per_layer_table

if TYPE_CHECKING:
    from ..models.loading import LoadedModel

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_VARIANT = "instruct"  # the only variant that falls back to DEFAULT_MODEL
MIN_JUDGE_AUROC = 0.7  # below this the offline trait classifier is flagged as uninformative


def model_spec_for(exp: Experiment, variant: str, model: str | None = None, *, record: bool = True) -> str:
    """The model spec of ``variant`` in the experiment (``models`` in config.yaml).

    ``model`` given: used, and recorded for the variant if none is recorded (a different
    recorded spec is an error). Not given: the recorded spec; the default variant
    (``instruct``) falls back to the bundled SmolLM2, any other variant without a recorded
    model is a :class:`ConfigError` naming the key to set (``models.<variant>``).
    ``record=False`` resolves without writing the config.
    """
    cfg = exp.load_config() if exp.config_path.exists() else {}
    models = cfg.get("models") or {}
    if not isinstance(models, dict):
        raise ConfigError(f"{exp.config_path}: 'models' must be a mapping of variant → model spec")
    have = models.get(variant)
    if model is not None and have is not None and str(have) != str(model):
        raise ConfigError(
            f"{exp.config_path}: variant '{variant}' is {have!r}, not {model!r}; use another --model-variant name "
            "or edit the config"
        )
    if model is None and have is None and variant != DEFAULT_VARIANT:
        raise ConfigError(
            f"no model for variant '{variant}': set models.{variant} in {exp.config_path} or pass --model"
        )
    spec = str(model or have or DEFAULT_MODEL)
    if have is None and record:
        exp.root.mkdir(parents=True, exist_ok=True)
        cfg.setdefault("name", exp.name)
        cfg.setdefault("models", {})[variant] = spec
        exp.save_config(cfg)
    return spec


def instruction_counterpart(trait: TraitSet) -> TraitSet | None:
    """The instruction-format dataset of the same trait (itself, or ``../instruction/<name>``)."""
    if trait.format == "instruction":
        return trait
    for cand in (trait.path.parent.parent / "instruction" / trait.name, f"instruction/{trait.name}"):
        try:
            return load_trait(resolve_trait_path(cand))
        except DataFormatError:
            continue
    return None


def offline_judge(
    lm: LoadedModel, exp: Experiment, trait: TraitSet, variant: str, *, max_new_tokens: int = 48, progress: bool = True
) -> OfflineJudge:
    """The offline judge for ``trait`` on model ``lm`` (classifier trained or loaded; see module docstring)."""
    inst = instruction_counterpart(trait)
    src = inst or trait
    path = exp.trait_classifier_path(trait.name, variant)
    found = existing_responses(lm, exp, src, variant)
    if found is None:
        found = trait_responses(lm, exp, src, variant, max_new_tokens=max_new_tokens, progress=progress)[:2]
    pos, neg = found
    data_sha = config_hash([[g.response for g in pos], [g.response for g in neg]])
    clf = TraitClassifier.load(path) if path.exists() else None
    if clf is None or clf.meta.get("responses_sha") != data_sha or clf.meta.get("weights_hash") != lm.weights_hash:
        clf = TraitClassifier.fit(
            [g.response for g in pos], [g.response for g in neg], trait=src.id, weights_hash=lm.weights_hash,
            model=lm.name, responses_sha=data_sha, confounded_by_content=src.format == "natural",
        )
        clf.save(path)
    auroc = clf.meta.get("cv_auroc")
    if auroc is not None and auroc < MIN_JUDGE_AUROC:
        import warnings

        warnings.warn(
            f"the offline judge cannot tell {src.id}'s positive from its negative responses on {lm.name} "
            f"(cross-validated AUROC {auroc:.2f} < {MIN_JUDGE_AUROC}); its trait scores carry no signal — "
            "use an LLM judge (--judge openai or local:<model>) for this trait",
            stacklevel=2,
        )
    return OfflineJudge(clf, CoherenceScorer(lm))


def make_judge(spec: str, lm: LoadedModel, exp: Experiment, trait: TraitSet, variant: str, *, progress: bool = True) -> Judge:
    """A judge by name: ``offline``, ``openai`` / ``openai:<model>``, ``local:<model spec>``."""
    s = (spec or "offline").strip()
    if s == "offline":
        return offline_judge(lm, exp, trait, variant, progress=progress)
    if s == "openai" or s.startswith("openai:"):
        from ..judges import OpenAIJudge

        return OpenAIJudge(model=s.split(":", 1)[1] if ":" in s else None)
    if s.startswith("local:"):
        from ..judges import LocalJudge
        from ..models import load

        return LocalJudge(load(s.split(":", 1)[1]))
    raise ConfigError(f"unknown judge '{spec}'; valid: offline, openai, openai:<model>, local:<model spec>")


@dataclass
class SteeringRun:
    baseline: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]
    layers: list[dict[str, Any]]
    log_path: Any
    result: SearchResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_steering(
    lm: LoadedModel,
    exp: Experiment,
    trait: TraitSet,
    variant: str,
    positions: str,
    methods: Sequence[str],
    judge: Judge,
    *,
    layers: Sequence[int] | None = None,
    coefficients: Sequence[float] | None = None,
    coef_mode: str = "relative",
    component: str = "resid",
    subset: int = 0,
    max_new_tokens: int = 64,
    steer_positions: str = "response",
    steps: int = 6,
    start: float = 0.15,
    threshold: float = 75.0,
    max_rows: int = 256,
    monitor_layer: int | None = None,
    vector_exp: Experiment | None = None,
    progress: bool = True,
    report: Callable[..., None] | None = None,
) -> SteeringRun:
    """Phase 1 for one vector source (all ``methods`` searched together). Vectors are read
    from ``vector_exp`` (default: ``exp``, where the results are written)."""
    sets = {m: load_vector_set(vector_exp or exp, trait.id, variant, positions, m, component, layers) for m in methods}
    questions = trait.steering_questions[:subset] if subset and subset > 0 else trait.steering_questions
    settings = EvalSettings(list(questions), max_new_tokens=max_new_tokens, positions=steer_positions, max_rows=max_rows)
    info = TraitInfo.from_trait(trait)
    log = ResultsLog(exp.steering_results(trait.id, Experiment.steering_vector_id(variant, positions)))
    cache = JudgeCache(exp.judge_cache_path())
    monitor = None
    if monitor_layer is not None:
        v = sets[methods[0]].get(monitor_layer)
        if v is None:
            v = load_vector_set(vector_exp or exp, trait.id, variant, positions, methods[0], component, [monitor_layer])[monitor_layer]
        monitor = Monitor(v.vector, (monitor_layer, component))
    try:
        if coefficients:
            res = grid_search(lm, sets, settings, judge, info, log, coefficients, layers=layers, coef_mode=coef_mode,
                              cache=cache, monitor=monitor, trait_id=trait.id, progress=progress)
        else:
            res = adaptive_search(lm, sets, settings, judge, info, log, layers=layers, start=start, steps=steps,
                                  threshold=threshold, coef_mode=coef_mode, cache=cache, monitor=monitor,
                                  trait_id=trait.id, progress=progress, report=report)
    finally:
        cache.close()
    fps = {v.fingerprint() for vs in sets.values() for v in vs.values()}
    mine = [
        r for r in log.latest_per_key(judge.id)
        if r.get("kind") == "single" and r.get("questions_sha") == settings.questions_sha
        and r.get("max_new_tokens") == max_new_tokens and r.get("positions") == steer_positions
        and (r.get("terms") or [{}])[0].get("vector", {}).get("fingerprint") in fps
        and (r.get("terms") or [{}])[0].get("coef_mode") == coef_mode
    ]
    n_cfg = 1 + len({r["key"] for r in res.records})
    extra = {"computed": log.appended, "reused": max(0, n_cfg - log.appended), "skipped_lines": log.skipped_lines}
    return SteeringRun(res.baseline, mine, checkpoint_summary(mine, res.baseline), per_layer_table(mine, res.baseline), log.path, res, extra)


def best_source(
    exp: Experiment, trait: TraitSet, variant: str, positions: str, judge: Judge, name: str, *,
    methods: Sequence[str] = ("mean_diff", "probe", "pca"), component: str = "resid", min_coh: float = 70.0,
) -> Source:
    """The Phase-1 winner of a vector source (best method, layer and coefficient at coherence ≥ ``min_coh``)."""
    log = ResultsLog(exp.steering_results(trait.id, Experiment.steering_vector_id(variant, positions)))
    recs = log.latest_per_key(judge.id)
    base = next((r for r in recs if r.get("kind") == "baseline"), None)
    singles = [r for r in recs if r.get("kind") == "single" and r.get("method") in methods
               and (r.get("coherence_mean") or 0) >= min_coh and r.get("trait_mean") is not None
               and (r.get("terms") or [{}])[0].get("coef_mode") == "relative"]
    if base is None or not singles:
        raise DataFormatError(
            f"no Phase-1 results with coherence ≥ {min_coh:g} for {trait.id} ({variant}, {positions}) scored by this judge "
            f"in {log.path}; run deltalens steer first"
        )
    best = max(singles, key=lambda r: r["trait_mean"])
    vs = load_vector_set(exp, trait.id, variant, positions, best["method"], component)
    return Source(name, vs, int(best["layer"]), float(best["coef"]), best["trait_mean"] - base["trait_mean"], best.get("coherence_mean"))


def run_combinations(
    lm: LoadedModel,
    exp: Experiment,
    trait: TraitSet,
    a: Source,
    b: Source,
    judge: Judge,
    *,
    subset: int = 0,
    max_new_tokens: int = 64,
    steer_positions: str = "response",
    multipliers: Sequence[float] = MULTIPLIERS,
    max_rows: int = 256,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """Phase 2: strategies 1–4 for sources ``a`` and ``b`` → (table rows, baseline, records)."""
    questions = trait.steering_questions[:subset] if subset and subset > 0 else trait.steering_questions
    settings = EvalSettings(list(questions), max_new_tokens=max_new_tokens, positions=steer_positions, max_rows=max_rows)
    info = TraitInfo.from_trait(trait)
    log = ResultsLog(exp.combinations_results(trait.id))
    cache = JudgeCache(exp.judge_cache_path())
    try:
        base = evaluate(lm, [Candidate.baseline()], settings, judge, info, log, cache=cache, trait_id=trait.id, progress=progress)[0]
        recs = evaluate(lm, combination_candidates(a, b, multipliers), settings, judge, info, log, cache=cache,
                        trait_id=trait.id, progress=progress)
    finally:
        cache.close()
    return comparison_table(a, b, recs, base), base, recs


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else (f"{r[c]:.4g}" if isinstance(r[c], float) else r[c]) for c in columns])
    return buf.getvalue()


def write_steering_report(run: SteeringRun, out_dir: Any) -> list[Any]:
    """Tables (CSV) and figures (PNG) of a steering run next to its ``results.jsonl``:
    ``layers.csv`` (best Δ per method and layer at coherence ≥ 70), ``configs.csv`` (every
    configuration), ``trait_delta_by_layer.png`` and ``trait_vs_coherence.png``."""
    from pathlib import Path

    from ..io import atomic_write
    from ..report.figures import lines_by_layer, scatter
    from .evaluate import trait_delta

    out = Path(out_dir)
    written = [atomic_write(out / "layers.csv", _csv(run.layers, ["method", "layer", "n", "best_coef", "delta", "coherence"]))]
    rows = [
        {"method": r.get("method"), "layer": r.get("layer"), "coef": r.get("coef"), "trait": r.get("trait_mean"),
         "coherence": r.get("coherence_mean"), "delta": trait_delta(r, run.baseline)}
        for r in sorted(run.records, key=lambda r: (str(r.get("method")), r.get("layer", 0), r.get("coef", 0)))
    ]
    written.append(atomic_write(out / "configs.csv", _csv(rows, ["method", "layer", "coef", "trait", "coherence", "delta"])))
    layers = sorted({r["layer"] for r in run.layers})
    if layers:
        series = {}
        for m in sorted({r["method"] for r in run.layers}):
            by = {r["layer"]: r["delta"] for r in run.layers if r["method"] == m}
            series[m] = [float("nan") if by.get(L) is None else by[L] for L in layers]
        written.append(lines_by_layer(series, out / "trait_delta_by_layer.png", layers=layers,
                                      title="best trait Δ with coherence ≥ 70", ylabel="trait Δ (judge points)"))
    ok = [r for r in rows if r["delta"] is not None and r["coherence"] is not None]
    if ok:
        written.append(scatter([r["coherence"] for r in ok], [r["delta"] for r in ok], out / "trait_vs_coherence.png",
                               title="every configuration", xlabel="coherence", ylabel="trait Δ",
                               annotate=[f"{str(r['method'])[:2]} L{r['layer']} {r['coef']:g}" for r in ok] if len(ok) <= 24 else None))
    return written


def write_combination_table(rows: Sequence[dict[str, Any]], path: Any) -> Any:
    """The Phase-2 comparison table as CSV."""
    from ..io import atomic_write

    return atomic_write(path, _csv(rows, ["config", "layers", "coef", "delta", "coherence", "notes"]))
