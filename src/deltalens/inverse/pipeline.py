"""The inverse-problem pipeline, two ways: notebook stage functions and a batch run.

**Notebook style** — call the stages you need, one at a time::

    from deltalens.inverse import (get_default_config, update_config, load_experiment_models,
        collect_and_filter_data, run_clustering, analyze_clusters, select_features,
        optimize_feature, generate_explanations, visualize_results)

    config = update_config(get_default_config(), {"sae": "experiments/x/saes/topk", "data": {"n_prompts": 100}})
    lm, sae = load_experiment_models(config)
    coll, kept = collect_and_filter_data(lm, sae, config["data"])
    clusters = run_clustering(coll, kept, config["clustering"])
    analysis = analyze_clusters(coll, clusters, config["clustering"], tokenizer=lm.tokenizer)
    chosen = select_features(coll, clusters, config["clustering"])
    found = [optimize_feature(lm, sae, i, config["optimization"], collection=coll) for i in chosen.latents[:3]]
    visualize_results(found, "figures/")

**Batch** — :func:`run_experiment` runs the stages whose ``pipeline`` flag is on, in order
(collect+filter → cluster+analysis → selection → optimisation → explanations → figures), into
``<experiment>/inverse/<name>/`` (``Experiment.inverse_dir``)::

    inverse_run.json   the config, and per stage its cache key and whether it finished
    collect/  filter/  cluster/ (cluster.json, analysis.json)  select/
    optimize/latent_<i>/optimize.json, optimize/optimize_summary.json
    explain/explanations.json   viz/ (cluster_map.html/png, optimization_progress.png, token_heatmaps.html)

**Caching.** A stage's cache key hashes its own settings and its inputs' keys (the collection's
key hashes the model, the SAE's weights file and the data settings), so a change anywhere
upstream invalidates everything below it. With ``use_cached_data`` a stage whose key matches the
one recorded as finished is loaded, not recomputed; the optimisation stage also reuses every
latent whose ``optimize.json`` carries the latent's key, so a killed run resumes losing at most
the latent in flight. A stage whose flag is off is loaded from the cache when a later stage needs
it, and computed when it is not there.

**Acceptance columns** of ``optimize_summary.json`` (per latent ``i``):
``meets_activation = activation ≥ max_s max[s, i]`` (the collection maximum),
``meets_ce = CE ≤ P90`` (90th percentile of the collection prompts' CE), and
``found = survives ∧ meets_activation ∧ meets_ce``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, DataFormatError
from ..stage import StageConfig, StageResult, register_result
from .cluster import (
    AnalyzeConfig,
    ClusterAnalysis,
    ClusterConfig,
    ClusterResult,
    SelectConfig,
    Selection,
)
from .cluster import analyze_clusters as _analyze
from .cluster import cluster_latents as _cluster
from .cluster import select_features as _select
from .collect import CollectConfig, CollectResult, check_latent
from .explain import ExplainConfig, ExplainResult
from .filter import FilterConfig, FilterResult
from .optimize import OptimizeConfig, OptimizeResult

STAGES = ("collect", "filter", "cluster", "select", "optimize", "explain", "viz")
FLAGS = {
    "run_data_collection": ("collect", "filter"),
    "run_clustering": ("cluster",),
    "run_feature_selection": ("select",),
    "run_prompt_optimization": ("optimize",),
    "run_explanations": ("explain",),
    "run_visualization": ("viz",),
}
RUN_FILE = "inverse_run.json"

# section → (its stage config, extra keys of the section: nested sections / pipeline settings)
_SECTIONS: dict[str, tuple[type[StageConfig], dict[str, Any]]] = {
    "data": (CollectConfig, {"filtering": FilterConfig}),
    "clustering": (ClusterConfig, {"analysis": AnalyzeConfig, "selection": SelectConfig}),
    "optimization": (OptimizeConfig, {"latents": None, "max_latents": None, "max_ce_percentile": None}),
    "explanation": (ExplainConfig, {"write_to_sae": False, "dashboards": None}),
}


# ---- configuration ---------------------------------------------------------------------------
def get_default_config() -> dict[str, Any]:
    """The full default configuration (every key :func:`update_config` accepts)."""
    cfg: dict[str, Any] = {
        "name": "inverse",
        "model": "smollm2-135m-instruct",
        "sae": None,
        "site": None,
        "hardware": {"device": None, "dtype": "auto"},
    }
    for sec, (cls, extra) in _SECTIONS.items():
        d = cls().to_dict()
        for k, v in extra.items():
            d[k] = v().to_dict() if isinstance(v, type) else copy.deepcopy(v)
        cfg[sec] = d
    cfg["output"] = {"experiment": "default", "dir": None}
    cfg["pipeline"] = {flag: True for flag in FLAGS}
    cfg["use_cached_data"] = True
    return cfg


def update_config(config: Mapping[str, Any], custom: Mapping[str, Any], *, where: str = "") -> dict[str, Any]:
    """``config`` with ``custom`` merged in (nested sections merged key by key). A key that does
    not exist is a :class:`ConfigError` naming its dotted path and the valid keys; the merged
    configuration is validated (:func:`stage_configs`)."""
    out = copy.deepcopy(dict(config))
    _merge(out, custom, "", where)
    stage_configs(out, where=where)
    return out


def _merge(base: dict[str, Any], new: Mapping[str, Any], prefix: str, where: str) -> None:
    if not isinstance(new, Mapping):
        raise ConfigError(
            f"{where + ': ' if where else ''}{prefix.rstrip('.') or 'config'} must be a mapping"
        )
    for k, v in new.items():
        path = f"{prefix}{k}"
        if k not in base:
            at = f"{where}: " if where else ""
            raise ConfigError(
                f"{at}unknown config key '{path}' (valid under {prefix.rstrip('.') or 'the top level'}: "
                f"{', '.join(sorted(base))})"
            )
        if isinstance(base[k], dict):
            if not isinstance(v, Mapping):
                at = f"{where}: " if where else ""
                raise ConfigError(f"{at}config key '{path}' must be a mapping, got {v!r}")
            _merge(base[k], v, path + ".", where)
        else:
            base[k] = copy.deepcopy(v)


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """A section's mapping whether given the whole config or the section itself."""
    if isinstance(config, Mapping) and name in config and isinstance(config[name], Mapping):
        return config[name]
    return config


def _make(cls: type[StageConfig], data: Any, keys: Sequence[str] = (), where: str = "") -> Any:
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} settings")
    return cls.from_dict({k: v for k, v in data.items() if k not in keys}, where=where)


def stage_configs(config: Mapping[str, Any], *, where: str = "") -> dict[str, Any]:
    """Every stage's validated config object, by stage name (errors name ``where`` and the key)."""
    w = (where + ": ") if where else ""
    out: dict[str, Any] = {}
    for sec, (cls, extra) in _SECTIONS.items():
        data = config.get(sec) or {}
        out[sec] = _make(cls, data, list(extra), f"{w}{sec}".rstrip(": "))
        for k, v in extra.items():
            if isinstance(v, type):
                out[f"{sec}.{k}"] = _make(v, data.get(k) or {}, (), f"{w}{sec}.{k}")
    lat = (config.get("optimization") or {}).get("latents")
    if lat is not None and (not isinstance(lat, list) or not all(isinstance(i, int) for i in lat)):
        raise ConfigError(f"{w}optimization.latents must be a list of latent ids, got {lat!r}")
    return out


def read_config(path: str | Path) -> dict[str, Any]:
    """A configuration file (YAML or JSON, the keys of :func:`get_default_config`, any subset).
    Relative paths of ``model``, ``sae``, ``data.sources``, ``explanation.dashboards`` and
    ``output.dir`` that exist beside the file are resolved against its directory."""
    import yaml

    from ..io import read_text

    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(read_text(p)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        raise DataFormatError(f"{at}: invalid YAML/JSON ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise DataFormatError(f"{p}: expected a mapping of settings at the top level")

    def rel(v: Any) -> Any:
        if isinstance(v, str) and not Path(v).is_absolute() and (p.parent / v).exists():
            return str(p.parent / v)
        return v

    for key in ("model", "sae"):
        if key in data:
            data[key] = rel(data[key])
    for sec, key in (("explanation", "dashboards"), ("output", "dir")):
        if isinstance(data.get(sec), dict) and key in data[sec]:
            data[sec][key] = rel(data[sec][key]) if key != "dir" else _rel_dir(p, data[sec][key])
    if isinstance(data.get("data"), dict) and isinstance(data["data"].get("sources"), list):
        data["data"]["sources"] = [rel(s) for s in data["data"]["sources"]]
    return data


def _rel_dir(cfg_file: Path, v: Any) -> Any:
    if isinstance(v, str) and not Path(v).is_absolute():
        return str(cfg_file.parent / v)
    return v


# ---- notebook stage functions ----------------------------------------------------------------
def load_experiment_models(config: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(lm, sae)`` of a config: the model spec ``model``, the SAE directory ``sae`` (its site
    checked against ``site`` and the model's width)."""
    import deltalens

    from ..features.latents import check_sae_fits, sae_site
    from ..sae.io import load_any
    from .score import check_sae_site

    if not config.get("sae"):
        raise ConfigError("sae: give the SAE directory (config key 'sae' or --sae)")
    if not Path(str(config["sae"])).exists():
        raise DataFormatError(f"{config['sae']}: no such SAE directory")
    hw = config.get("hardware") or {}
    lm = deltalens.load(
        config.get("model") or "smollm2-135m-instruct", dtype=hw.get("dtype", "auto"), device=hw.get("device")
    )
    sae = load_any(str(config["sae"]), device=lm.device)
    check_sae_site(sae, config.get("site"))
    check_sae_fits(lm, sae, sae_site(sae, config.get("site")))
    return lm, sae


def collect_and_filter_data(
    lm: Any, sae: Any, data_config: Mapping[str, Any] | None = None, *, prompts: Sequence[str] | None = None,
    progress: bool = False,
) -> tuple[CollectResult, FilterResult]:  # fmt: skip
    """Collect (:func:`~.collect.collect`) and filter (:func:`~.filter.filter_latents`): the
    collection and the kept latents."""
    from .collect import collect
    from .filter import filter_latents

    data = _section(data_config or {}, "data")
    ccfg = _make(CollectConfig, data, ["filtering"], "data")
    fcfg = _make(
        FilterConfig, data.get("filtering") if isinstance(data, Mapping) else None, (), "data.filtering"
    )
    coll = collect(lm, sae, prompts, ccfg, progress=progress)
    return coll, filter_latents(coll, fcfg)


def run_clustering(
    collection: CollectResult, filtered: Any = None, clustering_config: Any = None, *, sae: Any = None
) -> ClusterResult:
    """Cluster the kept latents (:func:`~.cluster.cluster_latents`)."""
    sec = _section(clustering_config or {}, "clustering")
    cfg = _make(ClusterConfig, sec, ["analysis", "selection"], "clustering")
    return _cluster(collection, filtered, cfg, sae=sae)


def analyze_clusters(
    collection: CollectResult, clustering: ClusterResult, config: Any = None, *, tokenizer: Any = None, sae: Any = None
) -> ClusterAnalysis:  # fmt: skip
    """Size, cohesion and drivers of each cluster; ``config`` is an :class:`AnalyzeConfig`, the
    ``clustering`` section (its ``analysis``) or ``None``."""
    sec = config if isinstance(config, AnalyzeConfig) else _section(config or {}, "clustering")
    if isinstance(sec, Mapping) and "analysis" in sec:
        sec = sec["analysis"]
    return _analyze(
        collection,
        clustering,
        _make(AnalyzeConfig, sec, (), "clustering.analysis"),
        tokenizer=tokenizer,
        sae=sae,
    )


def select_features(
    collection: CollectResult, clustering: ClusterResult, config: Any = None, *, sae: Any = None
) -> Selection:
    """Representatives per cluster; ``config`` is a :class:`SelectConfig`, the ``clustering``
    section (its ``selection``) or ``None``."""
    sec = config if isinstance(config, SelectConfig) else _section(config or {}, "clustering")
    if isinstance(sec, Mapping) and "selection" in sec:
        sec = sec["selection"]
    return _select(collection, clustering, _make(SelectConfig, sec, (), "clustering.selection"), sae=sae)


def top_contexts(lm: Any, collection: CollectResult, latent: int, length: int, k: int = 4) -> list[list[int]]:
    """The ``length``-token windows ending at the latent's peak in its ``k`` top collection prompts."""
    out = []
    max_len = int(collection.config.get("max_length", 64))
    for p, _, pos in collection.top_prompts(latent, k):
        ids = lm.encode(collection.prompts[p])[:max_len]
        if pos >= 0:
            out.append(ids[max(0, pos - length + 1) : pos + 1])
    return out


def reference(collection: CollectResult | None, latent: int | None, q: float = 90.0) -> dict[str, Any]:
    """The collection's yardsticks of a latent: its maximum and the CE percentile."""
    if collection is None or latent is None:
        return {}
    return {
        "collection_max": float(collection.max_activation[latent]),
        "collection_ce_p90": collection.ce_percentile(q) if collection.ce is not None else None,
    }


def acceptance(res: OptimizeResult) -> dict[str, Any]:
    """The acceptance columns of the module docstring for one result."""
    b, ref = res.best, res.reference
    mx, p90 = ref.get("collection_max"), ref.get("collection_ce_p90")
    ma = None if mx is None else bool(b["activation"] >= mx)
    mc = None if p90 is None else bool(b["ce"] <= p90)
    return {
        "latent": res.latent,
        "text": b["text"],
        "activation": b["activation"],
        "collection_max": mx,
        "ce": b["ce"],
        "collection_ce_p90": p90,
        "survives": bool(b["survives"]),
        "meets_activation": ma,
        "meets_ce": mc,
        "found": bool(b["survives"] and ma and mc) if ma is not None and mc is not None else None,
        "evaluated": res.evaluated,
        "seconds": res.seconds,
    }


def optimize_feature(
    lm: Any, sae: Any, feature_id: int, optimization_config: Any = None, *, collection: CollectResult | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> OptimizeResult:  # fmt: skip
    """Optimise a prompt for one latent (:func:`~.optimize.optimize`); with ``collection`` the
    result records the latent's collection maximum and CE percentile (acceptance columns) and
    ``init="top_context"`` starts from the windows ending at its top collection peaks; with
    ``max_ce_percentile: q`` in the section, the reported prompt is the best with CE ≤ the
    collection's ``q``-th CE percentile (``max_ce``)."""
    from .optimize import optimize

    sec = _section(optimization_config or {}, "optimization")
    cfg = _make(OptimizeConfig, sec, list(_SECTIONS["optimization"][1]), "optimization")
    q = sec.get("max_ce_percentile") if isinstance(sec, Mapping) else None
    if q is not None:
        if collection is None or collection.ce is None:
            raise ConfigError("optimization.max_ce_percentile needs a collection with cross-entropies")
        cfg = cfg.replace(max_ce=collection.ce_percentile(float(q)))
    latent = check_latent(feature_id, int(sae.d_sae))
    init = None
    if cfg.init == "top_context":
        if collection is None:
            raise ConfigError("--init top_context needs the collection (its top prompts)")
        init = top_contexts(lm, collection, latent, cfg.length) or None
    res = optimize(lm, sae, cfg, latent=latent, init_ids=init, progress=progress)
    res.reference.update(reference(collection, latent))
    return res


def generate_explanations(
    lm: Any, sae: Any, collection: CollectResult, features: Sequence[int] | Selection, explanation_config: Any = None,
    *, optimized: Sequence[OptimizeResult] | Mapping[int, OptimizeResult] | None = None, judge: Any = None,
) -> ExplainResult:  # fmt: skip
    """Explain ``features`` (:func:`~.explain.explain_latents`), with optimised prompts if given."""
    from .explain import explain_latents

    ids = features.latents if isinstance(features, Selection) else [int(i) for i in features]
    opt = optimized if isinstance(optimized, Mapping) else {r.latent: r for r in (optimized or [])}
    cfg = _make(
        ExplainConfig,
        _section(explanation_config or {}, "explanation"),
        ["write_to_sae", "dashboards"],
        "explanation",
    )
    return explain_latents(lm, sae, collection, ids, cfg, optimized=dict(opt), judge=judge)


def visualize_results(
    results: Any = None, out_dir: str | Path = "inverse_figures", *, clustering: ClusterResult | None = None,
    selection: Selection | None = None, explanations: ExplainResult | None = None,
    collection: CollectResult | None = None, tokenizer: Any = None,
) -> dict[str, Path]:  # fmt: skip
    """Write the figures (:func:`~.viz.visualize`) of optimisation ``results`` (a list of
    :class:`OptimizeResult`, or an :class:`ExperimentResults`) and/or of the clustering."""
    from .viz import visualize

    if isinstance(results, ExperimentResults):
        clustering = clustering or results.clustering
        selection = selection or results.selection
        explanations = explanations or results.explanations
        collection = collection or results.collection
        results = results.optimized
    return visualize(
        out_dir, clustering=clustering, selection=selection, optimized=list(results or []),
        explanations=explanations, collection=collection, tokenizer=tokenizer,
    )  # fmt: skip


# ---- results of a batch run --------------------------------------------------------------------
@register_result
@dataclass
class InverseRun(StageResult):
    """The run's configuration and, per stage, its cache key and whether it finished."""

    KIND: ClassVar[str] = "inverse run"
    FILENAME: ClassVar[str] = RUN_FILE

    name: str
    config: dict[str, Any]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.config.get("model"),
            "sae": self.config.get("sae"),
            "stages": {k: ("done" if v.get("done") else "partial") for k, v in self.stages.items()},
        }


@register_result
@dataclass
class OptimizeSummary(StageResult):
    """One acceptance row per optimised latent (module docstring) and the fractions."""

    KIND: ClassVar[str] = "inverse optimisation summary"
    FILENAME: ClassVar[str] = "optimize_summary.json"

    rows: list[dict[str, Any]]
    config: dict[str, Any]

    def fractions(self) -> dict[str, float | None]:
        def frac(k: str) -> float | None:
            v = [r[k] for r in self.rows if r.get(k) is not None]
            return float(np.mean(v)) if v else None

        return {k: frac(k) for k in ("found", "meets_activation", "meets_ce", "survives")}

    def summary(self) -> dict[str, Any]:
        return {"latents": len(self.rows), **self.fractions()}


@dataclass
class ExperimentResults:
    """What :func:`run_experiment` produced or loaded; ``computed`` / ``cached`` name the stages."""

    run_dir: Path
    collection: CollectResult | None = None
    filtered: FilterResult | None = None
    clustering: ClusterResult | None = None
    analysis: ClusterAnalysis | None = None
    selection: Selection | None = None
    optimized: list[OptimizeResult] = field(default_factory=list)
    optimize_summary: OptimizeSummary | None = None
    explanations: ExplainResult | None = None
    figures: dict[str, Path] = field(default_factory=dict)
    computed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)


def run_dir(config: Mapping[str, Any]) -> Path:
    """``output.dir``, else ``<experiment>/inverse/<name>/``."""
    from ..experiment import Experiment

    out = config.get("output") or {}
    if out.get("dir"):
        return Path(out["dir"])
    return Experiment.named(str(out.get("experiment") or "default")).inverse_dir(
        str(config.get("name") or "inverse")
    )


def _sae_fingerprint(path: str) -> str:
    from ..io import sha256_file

    p = Path(path)
    for f in ("sae_weights.safetensors", "ae.pt", "sae.safetensors"):
        if (p / f).is_file():
            return sha256_file(p / f)
    return sha256_file(p) if p.is_file() else str(p.resolve())


class _Runner:
    """One batch run: decides per stage between loading and computing (module docstring)."""

    def __init__(
        self, config: dict[str, Any], lm: Any, sae: Any, progress: bool, stages: Sequence[str] | None
    ):
        from ..io import config_hash

        self.cfg = config
        self.sc = stage_configs(config)
        self.lm, self.sae, self.progress = lm, sae, progress
        self.dir = run_dir(config)
        self.use_cache = bool(config.get("use_cached_data", True))
        flags = config.get("pipeline") or {}
        unknown = sorted(set(flags) - set(FLAGS))
        if unknown:
            raise ConfigError(f"unknown config key 'pipeline.{unknown[0]}' (valid: {', '.join(FLAGS)})")
        on = {s for f, ss in FLAGS.items() if flags.get(f, True) for s in ss}
        self.on = set(stages) if stages is not None else on
        self.hash = config_hash
        prev = self.dir / RUN_FILE
        self.manifest = (
            InverseRun.load(prev) if prev.is_file() else InverseRun(str(config.get("name")), config, {})
        )
        self.manifest.config = config
        self.out = ExperimentResults(self.dir)
        self.keys: dict[str, str] = {}
        self.got: dict[str, Any] = {}

    # keys ------------------------------------------------------------------------------------
    def key(self, stage: str) -> str:
        if stage in self.keys:
            return self.keys[stage]
        sc, c = self.sc, self.cfg
        parts: dict[str, Any]
        if stage == "collect":
            parts = {
                "model": c.get("model"),
                "sae": _sae_fingerprint(str(c["sae"])),
                "site": c.get("site"),
                "data": sc["data"].to_dict(),
            }
        elif stage == "filter":
            parts = {"up": self.key("collect"), "filter": sc["data.filtering"].to_dict()}
        elif stage == "cluster":
            parts = {
                "up": self.key("filter"),
                "cluster": sc["clustering"].to_dict(),
                "analysis": sc["clustering.analysis"].to_dict(),
            }
        elif stage == "select":
            parts = {"up": self.key("cluster"), "select": sc["clustering.selection"].to_dict()}
        elif stage == "optimize":
            parts = {
                "up": self.key("collect"),
                "latents": self.latents(),
                "opt": sc["optimization"].to_dict(),
            }
        elif stage == "explain":
            parts = {
                "up": self.key("collect"),
                "latents": self.latents(),
                "opt": self.key("optimize") if self._have_opt() else None,
                "explain": sc["explanation"].to_dict(),
            }
        else:
            parts = {s: self.key(s) for s in ("cluster", "select", "optimize", "explain") if self._used(s)}
        self.keys[stage] = self.hash(parts)
        return self.keys[stage]

    def _have_opt(self) -> bool:
        return self._used("optimize")

    def _used(self, stage: str) -> bool:
        """An optional input is used when its stage runs now or has a finished cached result."""
        return stage in self.on or self._done(stage)

    def _done(self, stage: str) -> bool:
        rec = self.manifest.stages.get(stage) or {}
        return bool(self.use_cache and rec.get("done") and rec.get("key") == self.key(stage))

    def latents(self) -> list[int]:
        opt = self.cfg.get("optimization") or {}
        if opt.get("latents") is not None:
            ids = [check_latent(i, int(self.sae.d_sae)) for i in opt["latents"]]
        else:
            ids = self.need("select").latents
        if opt.get("max_latents"):
            ids = ids[: int(opt["max_latents"])]
        return ids

    # stage plumbing --------------------------------------------------------------------------
    def record(self, stage: str, done: bool, seconds: float = 0.0) -> None:
        self.manifest.stages[stage] = {"key": self.key(stage), "done": done, "seconds": round(seconds, 3)}
        self.manifest.save(self.dir)

    def need(self, stage: str) -> Any:
        """The stage's result: loaded when cached, else computed."""
        if stage in self.got:
            return self.got[stage]
        if self._done(stage):
            try:
                self.got[stage] = _LOADERS[stage](self)
                self.out.cached.append(stage)
                return self.got[stage]
            except DataFormatError:
                pass  # a missing or broken file: recompute
        t0 = time.time()
        self.got[stage] = _COMPUTE[stage](self)
        self.out.computed.append(stage)
        self.record(stage, True, time.time() - t0)
        return self.got[stage]

    def sub(self, stage: str) -> Path:
        return self.dir / stage


def _c_collect(r: _Runner) -> CollectResult:
    from .collect import collect

    coll = collect(r.lm, r.sae, None, r.sc["data"], site=r.cfg.get("site"), progress=r.progress)
    coll.save(r.sub("collect"))
    r.out.collection = coll
    return coll


def _c_filter(r: _Runner) -> FilterResult:
    from .filter import filter_latents

    f = filter_latents(r.need("collect"), r.sc["data.filtering"])
    f.save(r.sub("filter"))
    r.out.filtered = f
    return f


def _c_cluster(r: _Runner) -> ClusterResult:
    coll = r.need("collect")
    res = _cluster(coll, r.need("filter"), r.sc["clustering"], sae=r.sae)
    res.save(r.sub("cluster"))
    an = _analyze(coll, res, r.sc["clustering.analysis"], tokenizer=r.lm.tokenizer, sae=r.sae)
    an.save(r.sub("cluster"))
    r.out.clustering, r.out.analysis = res, an
    return res


def _c_select(r: _Runner) -> Selection:
    sel = _select(r.need("collect"), r.need("cluster"), r.sc["clustering.selection"], sae=r.sae)
    sel.save(r.sub("select"))
    r.out.selection = sel
    return sel


def _c_optimize(r: _Runner) -> list[OptimizeResult]:
    from tqdm.auto import tqdm

    coll = r.need("collect")
    ids = r.latents()
    cfg = r.sc["optimization"]
    sec = r.cfg.get("optimization") or {}
    r.record("optimize", False)
    out = []
    reuse = r.use_cache
    for i in tqdm(ids, desc="optimise", disable=not r.progress, leave=False):
        d = r.sub("optimize") / f"latent_{i}"
        key = r.hash({"stage": r.key("optimize"), "latent": i})
        res = None
        if reuse and (d / OptimizeResult.FILENAME).is_file():
            try:
                old = OptimizeResult.load(d)
                res = old if old.reference.get("cache_key") == key else None
            except DataFormatError:
                res = None
        if res is None:
            res = optimize_feature(r.lm, r.sae, i, sec, collection=coll)
            res.reference["cache_key"] = key
            res.save(d)
        out.append(res)
    summ = OptimizeSummary([acceptance(x) for x in out], cfg.to_dict())
    summ.save(r.sub("optimize"))
    r.out.optimized, r.out.optimize_summary = out, summ
    return out


def _c_explain(r: _Runner) -> ExplainResult:
    from .explain import apply_to_dashboards, explain_latents, write_for_sae

    opt = {x.latent: x for x in r.need("optimize")} if r._have_opt() else {}
    res = explain_latents(r.lm, r.sae, r.need("collect"), r.latents(), r.sc["explanation"], optimized=opt)
    res.save(r.sub("explain"))
    ex = r.cfg.get("explanation") or {}
    if ex.get("write_to_sae"):
        write_for_sae(res, r.cfg["sae"])
    if ex.get("dashboards"):
        apply_to_dashboards(res, ex["dashboards"])
    r.out.explanations = res
    return res


def _c_viz(r: _Runner) -> dict[str, Path]:
    from .viz import visualize

    clustering = r.need("cluster") if r._used("cluster") else None
    sel = r.need("select") if r._used("select") else None
    opt = r.need("optimize") if r._used("optimize") else []
    expl = r.need("explain") if r._used("explain") else None
    figs = visualize(
        r.sub("viz"), clustering=clustering, selection=sel, optimized=opt, explanations=expl,
        collection=r.need("collect") if clustering is not None else None, tokenizer=r.lm.tokenizer,
    )  # fmt: skip
    r.out.figures = figs
    return figs


def _l_collect(r: _Runner) -> CollectResult:
    r.out.collection = CollectResult.load(r.sub("collect"))
    return r.out.collection


def _l_filter(r: _Runner) -> FilterResult:
    r.out.filtered = FilterResult.load(r.sub("filter"))
    return r.out.filtered


def _l_cluster(r: _Runner) -> ClusterResult:
    r.out.clustering = ClusterResult.load(r.sub("cluster"))
    r.out.analysis = ClusterAnalysis.load(r.sub("cluster"))
    return r.out.clustering


def _l_select(r: _Runner) -> Selection:
    r.out.selection = Selection.load(r.sub("select"))
    return r.out.selection


def _l_optimize(r: _Runner) -> list[OptimizeResult]:
    r.out.optimized = [OptimizeResult.load(r.sub("optimize") / f"latent_{i}") for i in r.latents()]
    r.out.optimize_summary = OptimizeSummary.load(r.sub("optimize"))
    return r.out.optimized


def _l_explain(r: _Runner) -> ExplainResult:
    r.out.explanations = ExplainResult.load(r.sub("explain"))
    return r.out.explanations


def _l_viz(r: _Runner) -> dict[str, Path]:
    d = r.sub("viz")
    names = {
        "cluster_map_html": "cluster_map.html", "cluster_map_png": "cluster_map.png",
        "progress_png": "optimization_progress.png", "heatmaps_html": "token_heatmaps.html",
        "acceptance_png": "acceptance.png",
    }  # fmt: skip
    r.out.figures = {k: d / v for k, v in names.items() if (d / v).is_file()}
    if not r.out.figures:
        raise DataFormatError(f"{d}: no figures")
    return r.out.figures


_COMPUTE = {
    "collect": _c_collect, "filter": _c_filter, "cluster": _c_cluster, "select": _c_select,
    "optimize": _c_optimize, "explain": _c_explain, "viz": _c_viz,
}  # fmt: skip
_LOADERS = {
    "collect": _l_collect, "filter": _l_filter, "cluster": _l_cluster, "select": _l_select,
    "optimize": _l_optimize, "explain": _l_explain, "viz": _l_viz,
}  # fmt: skip


def check_inputs(config: Mapping[str, Any], lm: Any, sae: Any) -> None:
    """Everything that can be refused before a file is written: the prompt set is not empty,
    explicit latents are in range, the target site is the SAE's."""
    from .collect import load_prompts
    from .score import check_sae_site

    sc = stage_configs(config)
    load_prompts(sc["data"].sources, sc["data"].n_prompts)
    check_sae_site(sae, config.get("site"))
    for i in (config.get("optimization") or {}).get("latents") or []:
        check_latent(i, int(sae.d_sae))


def run_experiment(
    config: Mapping[str, Any] | None = None,
    *,
    lm: Any = None,
    sae: Any = None,
    stages: Sequence[str] | None = None,
    progress: bool = False,
) -> ExperimentResults:
    """Run the pipeline (module docstring): the stages whose ``pipeline`` flag is on, or exactly
    ``stages`` (names from :data:`STAGES`); upstream results are loaded from the cache or computed.
    ``lm`` / ``sae`` skip loading them again (they must be the config's)."""
    cfg = update_config(get_default_config(), config or {})
    if stages is not None:
        bad = [s for s in stages if s not in STAGES]
        if bad:
            raise ConfigError(f"unknown stage {bad[0]!r}; valid: {', '.join(STAGES)}")
    if lm is None or sae is None:
        lm2, sae2 = load_experiment_models(cfg)
        lm, sae = lm or lm2, sae or sae2
    check_inputs(cfg, lm, sae)
    r = _Runner(cfg, lm, sae, progress, stages)
    for stage in STAGES:
        if stage in r.on:
            r.need(stage)
    return r.out
