"""Study stage types for steering, SAEs, features, circuits, inverse problems and protein LMs.

Same pattern as :mod:`.stages`: each adapter builds the command's config, calls its one library
function with the study's experiment directory, and returns the outputs later stages reference.
Commands whose config already holds every option (``circuits patch``, ``features universal``…)
have no ``inputs`` dataclass: their fields are exactly the config's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..circuits.edges_pipeline import EdgesConfig
from ..circuits.pipeline import AttributeConfig, PatchConfig
from ..errors import DataFormatError
from ..features.pipeline import AnalysisConfig, DashboardConfig, FiringRunConfig
from ..protein.study import ProteinStudyConfig
from ..protein.testbed import TestbedConfig
from ..sae.eval import SAEEvalConfig
from ..sae.train import SAETrainConfig
from ..stage import describe_result, option
from ..steering.extraction import ExtractConfig
from ..steering.runs import CombineConfig, SteerRunConfig
from .registry import StageContext, StageType, register_stage

BASE = "smollm2-135m-instruct"


def _result_in(key: str = "dir") -> Callable[[dict[str, Any]], None]:
    """A saved result of a registered kind in ``outputs[key]`` (it loads), else an error."""

    def check(outputs: dict[str, Any]) -> None:
        p = Path(str(outputs.get(key, "")))
        if not p.exists() or describe_result(p) is None:
            raise DataFormatError(f"{p}: no saved result")

    return check


def _path_exists(key: str) -> Callable[[dict[str, Any]], None]:
    def check(outputs: dict[str, Any]) -> None:
        p = Path(str(outputs.get(key, "")))
        if not p.exists():
            raise DataFormatError(f"{p}: missing")

    return check


# ---- steering ------------------------------------------------------------------------------------
@dataclass
class ExtractInputs:
    trait: str = option(flag="--trait", help="Trait id (instruction/pirate) or directory.")
    model: str | None = option(
        None, flag="--model", help="Model of the variant (default the bundled SmolLM2)."
    )


def _extract(ctx: StageContext, ins: ExtractInputs, cfg: ExtractConfig) -> dict[str, Any]:
    from ..data.traits import load_trait
    from ..steering.extraction import extract
    from ..steering.pipeline import model_spec_for

    ts = load_trait(ins.trait)
    lm = ctx.model(model_spec_for(ctx.exp, cfg.variant, ins.model))
    if not cfg.layers:
        cfg = cfg.replace(layers=list(range(lm.n_layers)))
    if ctx.replace:  # another model or settings: the saved responses are not this stage's
        cfg = cfg.replace(regenerate=True)
    res = extract(lm, ctx.exp, ts, cfg, progress=ctx.progress)
    first = cfg.methods[0]
    ctx.console.print(
        f"{res.n_pos} + {res.n_neg} responses; {len(cfg.layers)} layers × {len(cfg.methods)} methods → "
        f"{res.paths[first]}"
    )
    return {
        "dir": str(Path(res.paths[first]).parent),
        "vectors": str(res.paths[first]),
        # per method; "" for a method this stage did not extract
        **{
            f"vectors_{m}": str(res.paths[m]) if m in res.paths else "" for m in ("mean_diff", "probe", "pca")
        },
        "trait": ts.id,
    }


register_stage(
    StageType(
        "steering.extract",
        _extract,
        ("dir", "vectors", "vectors_mean_diff", "vectors_probe", "vectors_pca", "trait"),
        ExtractInputs,
        ExtractConfig,
        command="deltalens extract",
        description="trait vectors: responses → activations → one vector per layer and method",
        check=_path_exists("vectors"),
    )
)


@dataclass
class SteerInputs:
    vector_from_trait: str = option(
        flag="--vector-from-trait", help="<format>/<trait>, e.g. instruction/pirate."
    )
    model: str | None = option(None, flag="--model", help="Model of the steered variant.")


def _steer(ctx: StageContext, ins: SteerInputs, cfg: SteerRunConfig) -> dict[str, Any]:
    from ..steering.pipeline import model_spec_for, resolve_trait
    from ..steering.runs import run_steering

    ts = resolve_trait(ctx.exp, ins.vector_from_trait)
    lm = ctx.model(model_spec_for(ctx.exp, cfg.model_variant, ins.model))
    if not cfg.layers:
        cfg = cfg.replace(layers=list(range(lm.n_layers)))
    run = run_steering(lm, ctx.exp, ts, cfg, progress=ctx.progress)
    method = cfg.methods[0] if cfg.methods else next(iter(run.checkpoint))
    summ = run.checkpoint.get(method) or {}
    best = summ.get("best_layer")
    best_vec = ""
    if best is not None:
        best_vec = str(
            ctx.exp.vector_path(ts.id, cfg.variant, cfg.position, cfg.component, method, int(best))
        )
    ctx.console.print(
        f"{len(run.records)} configurations; best layer {best} (max Δ at coherence ≥ 70: "
        f"{summ.get('max_delta_coh70')}) → {run.log_path}"
    )
    return {
        "dir": str(Path(run.log_path).parent),
        "results": str(run.log_path),
        "best_vector": best_vec,
        "best_layer": best,
    }


register_stage(
    StageType(
        "steering.steer",
        _steer,
        ("dir", "results", "best_vector", "best_layer"),
        SteerInputs,
        SteerRunConfig,
        command="deltalens steer",
        description="judged steering: baseline, adaptive coefficient search per layer",
        check=_result_in(),
    )
)


@dataclass
class CombineInputs:
    model: str | None = option(None, flag="--model", help="Model of the steered variant.")


def _combine(ctx: StageContext, ins: CombineInputs, cfg: CombineConfig) -> dict[str, Any]:
    from ..steering.pipeline import model_spec_for
    from ..steering.runs import run_combinations

    lm = ctx.model(model_spec_for(ctx.exp, cfg.model_variant, ins.model))
    res = run_combinations(lm, ctx.exp, cfg, progress=ctx.progress)
    ctx.console.print(f"{len(res.rows)} combination rows → {res.log_path}")
    return {"dir": str(Path(res.log_path).parent), "results": str(res.log_path)}


register_stage(
    StageType(
        "steering.combine",
        _combine,
        ("dir", "results"),
        CombineInputs,
        CombineConfig,
        command="deltalens combine",
        description="combination strategies of two vector sources vs the best single vectors",
        check=_result_in(),
    )
)


# ---- SAEs ----------------------------------------------------------------------------------------
@dataclass
class SAETrainInputs:
    store: str | None = option(None, flag="--store", help="ActivationStore to train on.")
    data: str | None = option(None, flag="--data", help="Text corpus for on-the-fly training.")
    model: str = option(BASE, flag="--model", help="Model (on the fly).")
    site: str | None = option(None, flag="--site", help="Site, e.g. resid.6 (default the store's).")
    context_len: int = option(128, flag="--context-len", help="Tokens per window (on the fly).")
    text_key: str = option("text", flag="--text-key", help="Text field of JSONL data.")
    high_norm: float = option(10.0, flag="--high-norm", help="Drop rows with norm > this × median (0: keep).")


def _sae_train(ctx: StageContext, ins: SAETrainInputs, cfg: SAETrainConfig) -> dict[str, Any]:
    from ..sae.sources import training_source
    from ..sae.train import train_grid

    src, sites = training_source(
        store=ins.store,
        data=ins.data,
        model=ins.model,
        sites=[ins.site] if ins.site else [],
        context_len=ins.context_len,
        text_key=ins.text_key,
        high_norm_factor=ins.high_norm,
        device=cfg.device,
    )
    out = ctx.exp.sae_dir(ctx.name)
    (r,) = train_grid(
        src, cfg, sites[:1], out=out, resume=not ctx.replace, overwrite=ctx.replace, progress=ctx.progress
    )
    last = r.history[-1] if r.history else {}
    ctx.console.print(
        f"SAE d_sae={r.d_sae} at {r.site}: L0 {last.get('l0', 0):.1f}, EV {1 - last.get('fvu', 1):.3f}, "
        f"dead {100 * r.dead_fraction:.1f} % → {r.path}"
    )
    return {"dir": str(r.path), "sae": str(r.path), "site": str(r.site)}


register_stage(
    StageType(
        "sae.train",
        _sae_train,
        ("dir", "sae", "site"),
        SAETrainInputs,
        SAETrainConfig,
        command="deltalens sae train",
        description="train an SAE on a store or on the fly",
        check=_path_exists("sae"),
    )
)


@dataclass
class SAEEvalInputs:
    sae: str = option(flag="sae_path", help="SAE directory.")
    store: str | None = option(None, flag="--store", help="ActivationStore for reconstruction metrics.")
    data: str | None = option(None, flag="--data", help="Text corpus for CE metrics.")
    model: str = option(BASE, flag="--model", help="Model for the CE metrics.")


def _sae_eval(ctx: StageContext, ins: SAEEvalInputs, cfg: SAEEvalConfig) -> dict[str, Any]:
    from ..errors import ConfigError
    from ..sae.eval import evaluate_sae

    if ins.store is None and ins.data is None:
        raise ConfigError("give store (reconstruction metrics) and/or data (CE metrics)")
    out = ctx.exp.sae_eval_dir(ctx.name)
    res = evaluate_sae(
        ins.sae,
        cfg,
        activations=ins.store,
        lm=ins.model if ins.data is not None else None,
        data=ins.data,
        out=out,
        progress=ctx.progress,
    )
    ctx.console.print(f"SAE eval → {out / res.FILENAME}")
    return {"dir": str(out)}


register_stage(
    StageType(
        "sae.eval",
        _sae_eval,
        ("dir",),
        SAEEvalInputs,
        SAEEvalConfig,
        command="deltalens sae eval",
        description="SAE metrics: MSE, explained variance, L0, dead latents, CE/KL recovered",
        check=_result_in(),
    )
)


# ---- config-only commands: features, circuits, protein testbed -----------------------------------
def _config_stage(
    name: str,
    config: type,
    call: Callable[[StageContext, Any], Path],
    command: str,
    description: str,
) -> None:
    def run(ctx: StageContext, ins: Any, cfg: Any) -> dict[str, Any]:
        d = Path(call(ctx, cfg))
        ctx.console.print(f"{command} → {d}")
        return {"dir": str(d)}

    register_stage(StageType(name, run, ("dir",), None, config, command=command, description=description,
                             check=_path_exists("dir")))  # fmt: skip


def _root(ctx: StageContext) -> str:
    """The study directory as the ``experiment`` argument (absolute: a relative one is a name)."""
    return str(ctx.exp.root.resolve())


def _features(ctx: StageContext, cfg: AnalysisConfig) -> Path:
    from ..features.pipeline import run_feature_analysis

    res = run_feature_analysis(cfg, _root(ctx), progress=ctx.progress)
    return Path(res.universal_path or res.specific_path).parent


def _firing(ctx: StageContext, cfg: FiringRunConfig) -> Path:
    from ..features.pipeline import run_firing

    run_firing(cfg, _root(ctx), progress=ctx.progress)
    return ctx.exp.features_dir()


def _dashboards(ctx: StageContext, cfg: DashboardConfig) -> Path:
    from ..features.pipeline import run_dashboards

    run_dashboards(cfg, _root(ctx), progress=ctx.progress)
    return ctx.exp.features_dir()


def _own_dir(ctx: StageContext, cfg: Any) -> Any:
    """``out`` defaults to ``circuits/<task>/<stage name>/``: two stages of one command (attribution
    with and without an SAE) do not write into the same directory."""
    if cfg.out is not None:
        return cfg
    return cfg.replace(out=ctx.exp.circuits_dir(Path(str(cfg.pairs)).stem, ctx.name))


def _patch(ctx: StageContext, cfg: PatchConfig) -> Path:
    from ..circuits.pipeline import run_patching

    return run_patching(_own_dir(ctx, cfg), _root(ctx), progress=ctx.progress).out_dir


def _attribute(ctx: StageContext, cfg: AttributeConfig) -> Path:
    from ..circuits.pipeline import run_attribution

    return run_attribution(_own_dir(ctx, cfg), _root(ctx), progress=ctx.progress).out_dir


def _edges(ctx: StageContext, cfg: EdgesConfig) -> Path:
    from ..circuits.edges_pipeline import run_edges

    return run_edges(_own_dir(ctx, cfg), _root(ctx)).out_dir


for _args in (
    ("features.analysis", AnalysisConfig, _features, "deltalens features universal|specific|both",
     "universal / specific features at chat token types"),
    ("features.firing", FiringRunConfig, _firing, "deltalens features firing", "firing statistics per latent"),
    ("features.dashboard", DashboardConfig, _dashboards, "deltalens features dashboard",
     "feature dashboards (top activating examples)"),
    ("circuits.patch", PatchConfig, _patch, "deltalens patch", "exact activation patching by layer × position"),
    ("circuits.attribute", AttributeConfig, _attribute, "deltalens attribute",
     "attribution patching / IG, SAE-latent attribution, faithfulness"),
    ("circuits.edges", EdgesConfig, _edges, "deltalens circuit edges", "feature-circuit / EAP edges"),
):  # fmt: skip
    _config_stage(*_args)


def _testbed(ctx: StageContext, ins: Any, cfg: TestbedConfig) -> dict[str, Any]:
    from ..protein.testbed import build_testbed

    res = build_testbed(cfg, progress=ctx.progress)
    ctx.console.print(f"testbed protein LM → {res.path}")
    return {"dir": str(res.path), "model": str(res.path)}


register_stage(
    StageType(
        "protein.testbed",
        _testbed,
        ("dir", "model"),
        None,
        TestbedConfig,
        command="deltalens protein build-testbed",
        description="the offline ZymCTRL-shaped protein LM (cached)",
        check=_path_exists("model"),
    )
)


@dataclass
class ProteinStudyInputs:
    model: str = option(flag="--model", help="M0: a ZymCTRL-style LM.")
    refs: str | None = option(None, flag="--refs", help="Training set of the tag (default the testbed's).")


def _protein_study(ctx: StageContext, ins: ProteinStudyInputs, cfg: ProteinStudyConfig) -> dict[str, Any]:
    from ..protein.study import run_study

    out = ctx.exp.root
    res = run_study(ins.model, out, cfg, refs=ins.refs)
    ctx.console.print(f"protein study: M0…M{len(res.per_iteration) - 1} → {out}")
    return {"dir": str(out / "protein")}


register_stage(
    StageType(
        "protein.study",
        _protein_study,
        ("dir",),
        ProteinStudyInputs,
        ProteinStudyConfig,
        command="deltalens protein study",
        description="DPO M1…Mn towards a key metric → datasets → SAEs → probes → causal",
        check=_result_in(),
    )
)


# ---- inverse problems ------------------------------------------------------------------------------
@dataclass
class InverseInputs:
    """The options of ``deltalens inverse run|collect|…``; ``settings`` holds config sections
    (``clustering: {min_cluster_size: 3}``), checked against the pipeline's defaults."""

    model: str | None = option(None, flag="--model", help="Model spec (config key model).")
    sae: str | None = option(None, flag="--sae", help="SAE directory (config key sae).")
    site: str | None = option(None, flag="--site", help="Site the SAE reads.")
    prompts: list[str] = option(default_factory=list, flag="--prompts", help="Prompt sources (data.sources).")
    latent: list[int] = option(default_factory=list, flag="--latent", help="Latents to optimise/explain.")
    config: str | None = option(None, flag="--config", help="Inverse config file (YAML/JSON).")
    settings: dict[str, Any] = field(default_factory=dict, metadata={"help": "Config sections to override."})
    no_cache: bool = option(False, flag="--no-cache", help="Recompute even finished stages.")
    name: str = option("inverse", flag="--name", help="Run name: inverse/<name>/ (shared by the stages).")

    def __post_init__(self) -> None:
        self.resolved()  # unknown config keys are refused when the study is read

    def resolved(self, run_dir: Path | None = None, replace: bool = False) -> dict[str, Any]:
        from ..inverse import get_default_config, update_config
        from ..inverse.pipeline import read_config

        cfg = get_default_config()
        if self.config is not None:
            cfg = update_config(cfg, read_config(self.config), where=str(self.config))
        cfg = update_config(cfg, self.settings, where="settings")
        over: dict[str, Any] = {}
        for key, value in (("model", self.model), ("sae", self.sae), ("site", self.site)):
            if value is not None:
                over[key] = value
        if self.prompts:
            over["data"] = {"sources": list(self.prompts)}
        if self.latent:
            over["optimization"] = {"latents": list(self.latent)}
        if self.no_cache or replace:
            over["use_cached_data"] = False
        if run_dir is not None:
            over["output"] = {"dir": str(run_dir)}
        return update_config(cfg, over, where="settings")


def _inverse(stages: list[str] | None):
    def run(ctx: StageContext, ins: InverseInputs, cfg: Any) -> dict[str, Any]:
        from ..inverse import run_experiment

        # one run directory for every inverse stage of the study: each loads the stages it needs
        # from the run's own cache (same settings) instead of recomputing them
        out = ctx.exp.inverse_dir(ins.name)
        run_experiment(ins.resolved(out, ctx.replace), stages=stages, progress=ctx.progress)
        ctx.console.print(f"inverse {'/'.join(stages or ['run'])} → {out}")
        return {"dir": str(out)}

    return run


def _inverse_check(stages: list[str] | None) -> Callable[[dict[str, Any]], None]:
    """The run directory holds this command's stage output (``collect/``…, or ``inverse_run.json``)."""

    def check(outputs: dict[str, Any]) -> None:
        d = Path(str(outputs.get("dir", "")))
        want = [d / s for s in stages] if stages else [d / "inverse_run.json"]
        missing = [p for p in want if not p.exists()]
        if missing:
            raise DataFormatError(f"{missing[0]}: missing")

    return check


for _cmd, _stages in (
    ("run", None),
    ("collect", ["collect", "filter"]),
    ("cluster", ["cluster", "select"]),
    ("optimize", ["optimize"]),
    ("explain", ["explain"]),
    ("viz", ["viz"]),
):
    register_stage(
        StageType(
            f"inverse.{_cmd}",
            _inverse(_stages),
            ("dir",),
            InverseInputs,
            None,
            command=f"deltalens inverse {_cmd}",
            description="inverse problems: "
            + ("the whole pipeline" if _stages is None else ", ".join(_stages)),
            check=_inverse_check(_stages),
        )
    )
