"""Trait-vector commands: ``traits``, ``extract``, ``steer``, ``combine``, ``export-gguf``, ``import-gguf``."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from ..scale.backends import BackendConfig
from ..steering.extraction import ExtractConfig
from ..steering.runs import CombineConfig, SteerRunConfig
from ._common import config_option, console, experiment_option, parse_floats, parse_layers, split_list, table

MODEL_HELP = "Model spec for --model-variant (recorded in config.yaml)."


def _fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


@contextlib.contextmanager
def _console_warnings() -> Iterator[None]:
    """Print deltalens' own warnings (e.g. an uninformative offline judge) on the console."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        original = warnings.showwarning

        def show(
            message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
        ) -> None:
            if "deltalens" in str(filename):
                console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)
            else:
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _layers_or_all(spec: str | None) -> list[int] | None:
    """``all`` → None (every layer there is); else the listed layers (checked by the library)."""
    if spec is None or spec.strip() == "all":
        return None
    return parse_layers(spec, 1 << 20)


def traits_cmd(
    validate: Path | None = typer.Option(
        None, "--validate", help="Validate a trait directory instead of listing."
    ),
    combined: Path | None = typer.Option(
        None,
        "--combined",
        help="Write the combined steering prompt set (steering_combined.json: ids, text, note=trait).",
    ),
    combine_traits: str = typer.Option(
        "sycophancy,evil,hallucination", "--combine-traits", help="Traits for --combined, in id order."
    ),
) -> None:
    """List the bundled trait datasets (or validate a trait directory, or build steering_combined)."""
    from ..data.traits import bundled_traits, load_trait

    if combined is not None:
        from collections import Counter

        from ..data.traits import steering_combined
        from ..io import write_json

        data = steering_combined(split_list(combine_traits) or [])
        write_json(combined, data)
        counts = Counter(p["note"] for p in data["prompts"])
        span, start = [], 1
        for t in data["traits"]:
            span.append(f"{t} {start}-{start + counts[t] - 1}")
            start += counts[t]
        console.print(
            f"wrote {combined}: {len(data['prompts'])} prompts ({', '.join(span)})", highlight=False
        )
        return
    specs = [str(validate)] if validate is not None else bundled_traits()
    rows = []
    for s in specs:
        t = load_trait(s)
        rows.append(
            (
                t.id if validate is None else str(t.path),
                t.format,
                len(t.positive),
                len(t.negative),
                len(t.steering_questions),
                t.definition[:70] + "…",
            )
        )
    console.print(
        table(
            "trait datasets", ["trait", "format", "positive", "negative", "steering qs", "definition"], rows
        )
    )
    if validate is not None:
        console.print(f"[green]valid[/green]: {validate}")


def extract_cmd(
    trait: str = typer.Option(
        ...,
        "--trait",
        "--traits",
        "-t",
        help="Trait id (instruction/pirate, pv_natural/sycophancy) or directory.",
    ),
    experiment: str = experiment_option(),
    variant: str = config_option(ExtractConfig, "variant"),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    position: str = config_option(ExtractConfig, "position"),
    methods: str | None = config_option(ExtractConfig, "methods"),
    layers: str = typer.Option("all", "--layers", help="Layers to fit: all, 9-19, 6,12,…"),
    component: str = config_option(ExtractConfig, "component"),
    rollouts: int = config_option(ExtractConfig, "rollouts"),
    max_new_tokens: int | None = config_option(ExtractConfig, "max_new_tokens"),
    val_fraction: float = config_option(ExtractConfig, "val_fraction"),
    filter_: bool = config_option(ExtractConfig, "filter"),
    judge: str = config_option(ExtractConfig, "judge"),
    regenerate: bool = config_option(ExtractConfig, "regenerate"),
    batch_size: int = config_option(ExtractConfig, "batch_size"),
    seed: int = config_option(ExtractConfig, "seed"),
) -> None:
    """Extract trait vectors: responses → activations → one vector file per layer and method."""
    from ..data.traits import load_trait
    from ..experiment import Experiment
    from ..models import load
    from ..steering.extraction import extract
    from ..steering.pipeline import model_spec_for

    cfg = ExtractConfig(
        variant=variant,
        position=position,
        methods=split_list(methods),
        component=component,
        rollouts=rollouts,
        max_new_tokens=max_new_tokens,
        val_fraction=val_fraction,
        filter=filter_,
        judge=judge,
        regenerate=regenerate,
        batch_size=batch_size,
        seed=seed,
    )
    exp = Experiment.named(experiment)
    ts = load_trait(trait)
    spec = model_spec_for(exp, cfg.variant, model)
    lm = load(spec)
    cfg = cfg.replace(layers=parse_layers(layers, lm.n_layers))
    t0 = time.time()
    with _console_warnings():
        res = extract(lm, exp, ts, cfg)
    dt = time.time() - t0
    rows = []
    for m, layers_ in res.metrics.items():
        key = "val_separation" if any("val_separation" in r for r in layers_) else "train_separation"
        best = max(
            layers_, key=lambda r: r.get(key, float("-inf")) if r.get(key) == r.get(key) else float("-inf")
        )
        acc = best.get("val_accuracy", best.get("train_accuracy"))
        rows.append(
            (m, len(layers_), best["layer"], _fmt(best.get(key), 2), _fmt(acc, 3), _fmt(best["norm"], 2))
        )
    split = "held-out" if any("val_separation" in r for ls in res.metrics.values() for r in ls) else "train"
    console.print(
        table(
            f"{ts.id} · {cfg.variant} ({spec}) · {cfg.position}",
            [
                "method",
                "layers",
                "most separating layer",
                f"{split} separation d",
                f"{split} accuracy",
                "‖v‖",
            ],
            rows,
        )
    )
    for m in res.metrics:
        console.print(f"  {m}: {res.paths[m]}/layer*.safetensors + summary.json", highlight=False)
    f = (
        f"; filter kept {res.filtered['pos_kept']}/{res.filtered['pos_before']} pos, {res.filtered['neg_kept']}/{res.filtered['neg_before']} neg"  # noqa: E501
        if res.filtered
        else ""
    )
    console.print(
        f"{res.n_pos} positive / {res.n_neg} negative responses ({'reused' if res.reused_responses else 'generated'}){f}; {dt:.1f} s"  # noqa: E501
    )


def _print_summary(run: Any, title: str) -> None:
    rows = []
    for m, s in run.checkpoint.items():
        a80, a70 = s.get("at_coh80") or {}, s.get("at_coh70") or {}
        rows.append(
            (
                m,
                _fmt(s["best_layer"]) + ("" if s["best_layer_meets_coh70"] else " (coh<70)"),
                _fmt(s["max_delta_coh80"]) + (f" (L{a80['layer']} c{a80['coef']:g})" if a80 else ""),
                _fmt(s["max_delta_coh70"])
                + (f" (L{a70['layer']} c{a70['coef']:g}, coh {a70['coherence']:.0f})" if a70 else ""),
                _fmt(s["coef_coh_below_80"], 3),
                s["n_configs"],
            )
        )
    b = run.baseline
    console.print(
        table(
            title,
            ["method", "best layer", "max Δ coh≥80", "max Δ coh≥70", "coef: coh<80 first", "configs"],
            rows,
        )
    )
    console.print(f"baseline (unsteered): trait {_fmt(b.trait_mean)}, coherence {_fmt(b.coherence_mean)}")
    p = run.extra.get("prompted")
    if p:
        console.print(
            f"prompting baseline (trait's system prompts, no vector): trait {_fmt(p['trait'])}, "
            f"coherence {_fmt(p['coherence'])}, Δ {_fmt(p['delta'])} — the bar steering has to clear"
        )


def _print_trait_summary(res: Any) -> None:
    def ci(r: dict[str, Any]) -> str:
        if r.get("ci_lo") is None and r.get("ci70_lo") is None:
            return "-"
        lo, hi = r.get("ci70_lo", r.get("ci_lo")), r.get("ci70_hi", r.get("ci_hi"))
        return "-" if lo is None or lo != lo else f"[{lo:.1f}, {hi:.1f}]"

    rows = [
        (
            r["key"],
            f"{r['source']} ({r['variant']})",
            r["position"],
            r["method"],
            _fmt(r["best_layer"]),
            _fmt(r["max_delta_coh80"]),
            _fmt(r["max_delta_coh70"]),
            ci(r),
            _fmt(r["coef_coh_below_80"], 3),
            _fmt(r["anti_steerable"], 2),
            _fmt(r["consistency"], 2),
            _fmt(r.get("harmonic")),
        )
        for r in res.rows
    ]
    p = res.prompting
    if p:
        rows.append(
            (
                "prompting",
                "system prompt, no vector",
                "-",
                "-",
                "-",
                _fmt(p["delta"]) if (p.get("coherence") or 0) >= 80 else "-",
                _fmt(p["delta"])
                if (p.get("coherence") or 0) >= 70
                else f"- (Δ {_fmt(p['delta'])}, coh {_fmt(p['coherence'], 0)})",
                ci(p),
                "-",
                _fmt(p["anti_steerable"], 2),
                "-",
                _fmt(p.get("harmonic")),
            )
        )
    b = res.baseline
    console.print(
        table(
            f"Phase 1 · {res.trait} · {res.model} · judge {res.judge.split(':')[0]} "
            f"(unsteered trait {_fmt(b['trait'])}, coherence {_fmt(b['coherence'])})",
            [
                "key",
                "source",
                "position",
                "method",
                "best layer",
                "max Δ coh≥80",
                "max Δ coh≥70",
                "95% CI (coh≥70)",
                "coef: coh<80 first",
                "anti-steerable",
                "consistency",
                "harmonic (LLM judge)",
            ],
            rows,
        )
    )
    if res.position_test:
        console.print(
            table(
                "does extraction position matter? paired sign-flip test on per-question Δ (Holm)",
                ["source", "method", "a vs b", "questions", "mean Δa − Δb", "p", "p (Holm)"],
                [
                    (
                        t["source"],
                        t["method"],
                        f"{t['a']} vs {t['b']}",
                        t["n"],
                        _fmt(t["mean_diff"]),
                        _fmt(t["p"], 3),
                        _fmt(t["p_holm"], 3),
                    )
                    for t in res.position_test
                ],
            )
        )
        sig = [t for t in res.position_test if t["p_holm"] == t["p_holm"] and t["p_holm"] < 0.05]
        console.print(
            "position matters: "
            + (
                "yes — " + ", ".join(f"{t['method']} {t['a']} vs {t['b']}" for t in sig)
                if sig
                else "no pair differs at p < 0.05 (Holm)"
            )
        )


def steer_cmd(
    action: list[str] | None = typer.Argument(
        None,
        help="`summary TRAIT`: join every steer run of TRAIT into the Phase-1 table.",
        show_default=False,
    ),
    experiment: str = experiment_option(help="Experiment where results are written."),
    weight_diff: Path | None = typer.Option(
        None, "--weight-diff", help="summary: a diff weights result for the phase cross-checks."
    ),
    activation_diff: Path | None = typer.Option(
        None, "--activation-diff", help="summary: a diff activations result for the phase cross-checks."
    ),
    vector_from_trait: str | None = typer.Option(
        None,
        "--vector-from-trait",
        help="(experiment/)<format>/<trait>, e.g. model_diff/pv_instruction/sycophancy or instruction/pirate.",
    ),
    extraction_variant: str = config_option(SteerRunConfig, "variant"),
    method: str | None = config_option(SteerRunConfig, "methods"),
    position: str = config_option(SteerRunConfig, "position"),
    layers: str | None = config_option(SteerRunConfig, "layers"),
    coefficients: str | None = config_option(SteerRunConfig, "coefficients"),
    coef_mode: str = config_option(SteerRunConfig, "coef_mode"),
    subset: int = config_option(SteerRunConfig, "subset"),
    max_new_tokens: int = config_option(SteerRunConfig, "max_new_tokens"),
    variant: str = config_option(SteerRunConfig, "model_variant"),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    judge: str = config_option(SteerRunConfig, "judge"),
    steps: int = config_option(SteerRunConfig, "steps"),
    start: float = config_option(SteerRunConfig, "start"),
    threshold: float = config_option(SteerRunConfig, "threshold"),
    steer_positions: str = config_option(SteerRunConfig, "steer_positions"),
    component: str = config_option(SteerRunConfig, "component"),
    max_rows: int = config_option(SteerRunConfig, "max_rows"),
    project: int | None = config_option(SteerRunConfig, "project_layer"),
    backend: str = config_option(BackendConfig, "backend"),
    workers: int | None = config_option(BackendConfig, "workers"),
    retries: int = config_option(BackendConfig, "retries"),
    ray_address: str | None = config_option(BackendConfig, "ray_address"),
    slurm_partition: str | None = config_option(BackendConfig, "slurm_partition"),
    slurm_time: int = config_option(BackendConfig, "slurm_time"),
    slurm_gpus: int = config_option(BackendConfig, "slurm_gpus"),
) -> None:
    """Steer with trait vectors: baseline, adaptive coefficient search (or a grid), judged; resumable.

    ``--backend ray|slurm`` generates the configurations as work units on a Ray cluster or a
    SLURM job array (each unit's records are written as it finishes).
    `deltalens steer summary TRAIT` joins every steer run of TRAIT into the Phase-1 table."""
    from ..errors import ConfigError
    from ..experiment import Experiment

    if action:
        if action[0] != "summary" or len(action) != 2:
            raise ConfigError(
                f"steer: unexpected argument(s) {' '.join(action)!r}; did you mean `steer summary TRAIT`?"
            )
        from ..steering.study import summarize_trait

        res = summarize_trait(
            Experiment.named(experiment), action[1], weight_diff=weight_diff, activation_diff=activation_diff
        )
        _print_trait_summary(res)
        for k, v in (res.extra.get("crosscheck") or {}).items():
            r = v["pearson_r"]
            console.print(
                f"cross-check {k}: peak distance {_fmt(v['peak_distance'])} layers, "
                f"Pearson r {'-' if r is None else f'{r:.2f}'} (figure {k}.png)",
                highlight=False,
            )
        console.print(
            f"wrote {Experiment.named(experiment).root / 'steering' / 'summary' / res.trait}/summary.json, summary.csv",
            highlight=False,
        )
        return
    if vector_from_trait is None:
        raise ConfigError("steer: --vector-from-trait is required (or `steer summary TRAIT`)")
    from ..models import load
    from ..steering.pipeline import model_spec_for, resolve_trait, split_trait_ref
    from ..steering.runs import run_steering

    cfg = SteerRunConfig(
        variant=extraction_variant,
        position=position,
        methods=split_list(method),
        coefficients=parse_floats(coefficients, "coefficients"),
        coef_mode=coef_mode,
        component=component,
        subset=subset,
        max_new_tokens=max_new_tokens,
        steer_positions=steer_positions,
        steps=steps,
        start=start,
        threshold=threshold,
        max_rows=max_rows,
        project_layer=project,
        model_variant=variant,
        judge=judge,
    )
    bcfg = BackendConfig(
        backend=backend,
        workers=workers,
        retries=retries,
        ray_address=ray_address,
        slurm_partition=slurm_partition,
        slurm_time=slurm_time,
        slurm_gpus=slurm_gpus,
    )
    bcfg.check_available()
    exp = Experiment.named(experiment)
    vexp_name, trait_spec = split_trait_ref(vector_from_trait)
    vexp = Experiment.named(vexp_name) if vexp_name else exp
    ts = resolve_trait(vexp, trait_spec)
    lm = load(model_spec_for(exp, cfg.model_variant, model))
    cfg = cfg.replace(layers=parse_layers(layers, lm.n_layers))

    def report(step: int, rows: list) -> None:
        cells = ", ".join(
            f"{n[:4]} L{st.layer} c{st.coef:g}: {_fmt(r.trait_mean, 0)}/{_fmt(r.coherence_mean, 0)}"
            for n, st, r in rows
        )
        console.print(f"round {step + 1}: {cells}", highlight=False)

    t0 = time.time()
    with _console_warnings():
        run = run_steering(
            lm,
            exp,
            ts,
            cfg,
            vector_exp=vexp,
            report=report,
            backend=None if bcfg.backend == "local" else bcfg,
        )
    rows = [
        (r["method"], r["layer"], r["n"], _fmt(r["best_coef"], 3), _fmt(r["delta"]), _fmt(r["coherence"]))
        for r in run.layers
    ]
    console.print(
        table(
            "per layer: best trait Δ with coherence ≥ 70",
            ["method", "layer", "configs", "coef", "trait Δ", "coherence"],
            rows,
        )
    )
    _print_summary(run, f"checkpoint · {ts.id} ({cfg.variant}, {cfg.position}) steering {cfg.model_variant}")
    console.print(
        f"{run.extra['computed']} configurations computed, {run.extra['reused']} reused from {run.log_path} "
        f"in {time.time() - t0:.1f} s (judge {run.judge.split(':')[0]})"
    )


def combine_cmd(
    experiment: str = experiment_option(),
    natural: str = typer.Option(..., "--natural", help="First vector source trait (e.g. natural/pirate)."),
    natural_variant: str = config_option(CombineConfig, "natural_variant"),
    natural_position: str = config_option(CombineConfig, "natural_position"),
    instruction: str = typer.Option(
        ..., "--instruction", help="Second vector source trait (e.g. instruction/pirate)."
    ),
    instruction_variant: str = config_option(CombineConfig, "instruction_variant"),
    instruction_position: str = config_option(CombineConfig, "instruction_position"),
    variant: str = config_option(CombineConfig, "model_variant"),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    judge: str = config_option(CombineConfig, "judge"),
    subset: int = config_option(CombineConfig, "subset"),
    max_new_tokens: int = config_option(CombineConfig, "max_new_tokens"),
    min_coherence: float = config_option(CombineConfig, "min_coherence"),
    multipliers: str | None = config_option(CombineConfig, "multipliers"),
    max_rows: int = config_option(CombineConfig, "max_rows"),
) -> None:
    """Phase 2: combination strategies 1–4 of two vector sources vs the best single vectors."""
    from ..experiment import Experiment
    from ..models import load
    from ..steering.pipeline import model_spec_for
    from ..steering.runs import run_combinations

    cfg = CombineConfig(
        natural=natural,
        natural_variant=natural_variant,
        natural_position=natural_position,
        instruction=instruction,
        instruction_variant=instruction_variant,
        instruction_position=instruction_position,
        model_variant=variant,
        judge=judge,
        subset=subset,
        max_new_tokens=max_new_tokens,
        min_coherence=min_coherence,
        multipliers=parse_floats(multipliers, "multipliers"),
        max_rows=max_rows,
    )
    exp = Experiment.named(experiment)
    lm = load(model_spec_for(exp, cfg.model_variant, model))
    with _console_warnings():
        res = run_combinations(lm, exp, cfg)
    console.print(
        table(
            f"combinations · {res.trait} (baseline trait {_fmt(res.baseline.trait_mean)})",
            ["config", "layer(s)", "coef", "trait Δ", "coherence", "notes"],
            [
                (
                    r["config"],
                    r["layers"],
                    r["coef"] if isinstance(r["coef"], str) else _fmt(r["coef"], 3),
                    _fmt(r["delta"]),
                    _fmt(r["coherence"]),
                    r["notes"],
                )
                for r in res.rows
            ],
        )
    )
    console.print(f"results: {res.log_path}")


def export_gguf_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="The .gguf file to write."),
    experiment: str = experiment_option(),
    trait: str = typer.Option(
        ..., "--trait", "-t", help="Trait id the vectors were extracted for (as extract records it)."
    ),
    variant: str = typer.Option(
        "instruct", "--extraction-variant", help="Model variant the vectors were extracted from."
    ),
    position: str = typer.Option("response[:]", "--position", help="Extraction position of the vectors."),
    method: str = typer.Option("mean_diff", "--method", help="Vector method."),
    layers: str = typer.Option(..., "--layers", help="Layers to include, e.g. 12, 10-14 or all."),
    coef: float = typer.Option(1.0, "--coef", help="Coefficient baked into the exported vectors."),
    coef_mode: str = typer.Option(
        "raw",
        "--coef-mode",
        help="raw (coef × stored vector) or relative (coef × mean activation norm × unit vector).",
    ),
    component: str = typer.Option("resid", "--component"),
) -> None:
    """Export vectors as a llama.cpp control vector (repeng's GGUF format)."""
    from ..experiment import Experiment
    from ..steering.control import export_control_vector

    with _console_warnings():
        res = export_control_vector(
            Experiment.named(experiment),
            trait,
            out,
            variant=variant,
            position=position,
            method=method,
            layers=_layers_or_all(layers),
            coef=coef,
            coef_mode=coef_mode,
            component=component,
        )
    console.print(
        f"wrote {res.path}: {len(res.layers)} direction(s) (layers {res.layers}), model hint {res.model_hint!r}"
    )


def import_gguf_cmd(
    path: Path = typer.Argument(..., help="A llama.cpp / repeng control vector (.gguf)."),
    experiment: str = experiment_option(),
    trait: str = typer.Option(
        ..., "--trait", "-t", help="Trait id to file the vectors under, e.g. instruction/pirate."
    ),
    variant: str = typer.Option("imported", "--extraction-variant", help="Variant label to file them under."),
    position: str = typer.Option("response[:]", "--position", help="Position label to file them under."),
    method: str = typer.Option("gguf", "--method", help="Method label to file them under."),
    model_variant: str = typer.Option(
        "instruct", "--model-variant", help="Model variant the vectors are for (width check)."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Model spec the vectors are for (width check)."
    ),
) -> None:
    """Import a GGUF control vector as deltalens vector files (one per layer)."""
    from ..experiment import Experiment
    from ..steering.control import import_control_vector

    with _console_warnings():
        res = import_control_vector(
            Experiment.named(experiment),
            path,
            trait,
            variant=variant,
            position=position,
            method=method,
            model_variant=model_variant,
            model=model,
        )
    console.print(
        f"imported {len(res.layers)} layer(s) {res.layers} of width {res.d_model} (model hint {res.model_hint!r}) "
        f"as {res.trait} → {res.directory}"
    )
    console.print(
        f"steer with: deltalens steer --vector-from-trait {res.trait} --extraction-variant {variant} "
        f"--position '{position}' --method {method}",
        highlight=False,
    )


COMMANDS = {
    "traits": traits_cmd,
    "extract": extract_cmd,
    "steer": steer_cmd,
    "combine": combine_cmd,
    "export-gguf": export_gguf_cmd,
    "import-gguf": import_gguf_cmd,
}
