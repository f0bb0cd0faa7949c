"""Trait-vector commands: ``traits``, ``extract``, ``steer``, ``combine``, ``export-gguf``, ``import-gguf``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from ._common import console, parse_floats, parse_layers, split_list, table

JUDGE_HELP = "Judge: offline (no API; default), openai or openai:<model> (key from $OPENAI_API_KEY), local:<model spec>."


def _fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _default_layers(n_layers: int) -> list[int]:
    """The seed's default search range: 30 %–60 % of the depth (9–19 of 32 layers)."""
    lo, hi = int(0.3 * n_layers), int(0.6 * n_layers)
    return list(range(lo, max(hi, lo) + 1))


def _split_trait_ref(ref: str) -> tuple[str | None, str]:
    """``[experiment/]<format>/<name>`` → (experiment or None, trait spec)."""
    from ..data.traits import FORMATS

    parts = ref.strip().strip("/").split("/")
    if len(parts) >= 3 and not Path(ref).is_dir():
        fmt = parts[-2].replace("pv_", "")
        if fmt in FORMATS:
            return "/".join(parts[:-2]), "/".join(parts[-2:])
    return None, ref


def traits_cmd(
    validate: Optional[Path] = typer.Option(None, "--validate", help="Validate a trait directory instead of listing."),
) -> None:
    """List the bundled trait datasets (or validate a trait directory)."""
    from ..data.traits import bundled_traits, load_trait

    specs = [str(validate)] if validate is not None else bundled_traits()
    rows = []
    for s in specs:
        t = load_trait(s)
        rows.append((t.id if validate is None else str(t.path), t.format, len(t.positive), len(t.negative),
                     len(t.steering_questions), t.definition[:70] + "…"))
    console.print(table("trait datasets", ["trait", "format", "positive", "negative", "steering qs", "definition"], rows))
    if validate is not None:
        console.print(f"[green]valid[/green]: {validate}")


def extract_cmd(
    trait: str = typer.Option(..., "--trait", "--traits", "-t", help="Trait id (instruction/pirate, pv_natural/sycophancy) or directory."),
    experiment: str = typer.Option("default", "--experiment", "-e", help="Experiment name or path."),
    variant: str = typer.Option("instruct", "--model-variant", help="Model variant name (its spec in the experiment config)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model spec for the variant (recorded in config.yaml)."),
    position: str = typer.Option("response[:]", "--position", help="Token positions to average: response[:], response[:5], prompt[-1], …"),
    methods: str = typer.Option("mean_diff,probe", "--methods", help="Comma-separated: mean_diff, probe, pca."),
    layers: str = typer.Option("all", "--layers", help="Layers to fit: all, 9-19, 6,12,…"),
    component: str = typer.Option("resid", "--component", help="resid, resid_pre, attn_out or mlp_out."),
    rollouts: int = typer.Option(1, "--rollouts", help="Responses per scenario (>1 samples at temperature 1)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Response length (default 32, or N for response[:N])."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Fraction of scenarios held out for accuracy/separation."),
    filter_: bool = typer.Option(False, "--filter/--no-filter", help="Keep pos with trait ≥ 50, neg with trait < 50, coherence ≥ 50."),
    judge: str = typer.Option("offline", "--judge", help=JUDGE_HELP),
    regenerate: bool = typer.Option(False, "--regenerate", help="Replace existing responses for this trait and variant."),
    batch_size: int = typer.Option(16, "--batch-size"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Extract trait vectors: responses → activations → one vector file per layer and method."""
    from ..data.traits import load_trait
    from ..experiment import Experiment
    from ..judges import JudgeCache
    from ..models import load
    from ..steering.extraction import extract
    from ..steering.pipeline import make_judge, model_spec_for

    exp = Experiment.named(experiment)
    ts = load_trait(trait)
    spec = model_spec_for(exp, variant, model)
    lm = load(spec)
    layer_list = parse_layers(layers, lm.n_layers)
    j = make_judge(judge, lm, exp, ts, variant) if filter_ else None
    cache = JudgeCache(exp.judge_cache_path()) if filter_ else None
    t0 = time.time()
    res = extract(
        lm, exp, ts, variant, position, split_list(methods), layers=layer_list, component=component, rollouts=rollouts,
        max_new_tokens=max_new_tokens, seed=seed, val_fraction=val_fraction, judge=j, cache=cache, batch_size=batch_size,
        regenerate=regenerate,
    )
    dt = time.time() - t0
    rows = []
    for m, layers_ in res.summary.items():
        key = "val_separation" if any("val_separation" in r for r in layers_) else "train_separation"
        best = max(layers_, key=lambda r: r.get(key, float("-inf")) if r.get(key) == r.get(key) else float("-inf"))
        acc = best.get("val_accuracy", best.get("train_accuracy"))
        rows.append((m, len(layers_), best["layer"], _fmt(best.get(key), 2), _fmt(acc, 3), _fmt(best["norm"], 2)))
    split = "held-out" if any("val_separation" in r for ls in res.summary.values() for r in ls) else "train"
    console.print(table(f"{ts.id} · {variant} ({spec}) · {position}", ["method", "layers", "most separating layer",
                        f"{split} separation d", f"{split} accuracy", "‖v‖"], rows))
    for m in res.summary:
        console.print(f"  {m}: {res.paths[m]}/layer*.safetensors + summary.json", highlight=False)
    f = f"; filter kept {res.filtered['pos_kept']}/{res.filtered['pos_before']} pos, {res.filtered['neg_kept']}/{res.filtered['neg_before']} neg" if res.filtered else ""
    console.print(f"{res.n_pos} positive / {res.n_neg} negative responses ({'reused' if res.reused_responses else 'generated'}){f}; {dt:.1f} s")


def _print_summary(run: Any, title: str) -> None:
    rows = []
    for m, s in run.summary.items():
        a80, a70 = s.get("at_coh80") or {}, s.get("at_coh70") or {}
        rows.append((
            m, _fmt(s["best_layer"]) + ("" if s["best_layer_meets_coh70"] else " (coh<70)"),
            _fmt(s["max_delta_coh80"]) + (f" (L{a80['layer']} c{a80['coef']:g})" if a80 else ""),
            _fmt(s["max_delta_coh70"]) + (f" (L{a70['layer']} c{a70['coef']:g}, coh {a70['coherence']:.0f})" if a70 else ""),
            _fmt(s["coef_coh_below_80"], 3), s["n_configs"],
        ))
    b = run.baseline
    console.print(table(title, ["method", "best layer", "max Δ coh≥80", "max Δ coh≥70", "coef: coh<80 first", "configs"], rows))
    console.print(f"baseline (unsteered): trait {_fmt(b.get('trait_mean'))}, coherence {_fmt(b.get('coherence_mean'))}")


def steer_cmd(
    experiment: str = typer.Option("default", "--experiment", "-e", help="Experiment where results are written."),
    vector_from_trait: str = typer.Option(..., "--vector-from-trait", help="(experiment/)<format>/<trait>, e.g. model_diff/pv_instruction/sycophancy or instruction/pirate."),
    extraction_variant: str = typer.Option("instruct", "--extraction-variant", help="Model variant the vectors were extracted from."),
    method: str = typer.Option("mean_diff", "--method", help="Vector method(s), comma-separated; searched together."),
    position: str = typer.Option("response[:]", "--position", help="Extraction position of the vectors."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Layers to steer (default: 30%–60% of depth)."),
    coefficients: Optional[str] = typer.Option(None, "--coefficients", help="Fine grid, e.g. 0.1,0.15,0.2 (skips the adaptive search)."),
    coef_mode: str = typer.Option("relative", "--coef-mode", help="relative (× mean activation norm of the layer) or raw (× stored vector)."),
    subset: int = typer.Option(0, "--subset", help="Use the first N steering questions (0 = all)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
    variant: str = typer.Option("instruct", "--model-variant", help="Model variant to steer (the application model)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model spec for --model-variant."),
    judge: str = typer.Option("offline", "--judge", help=JUDGE_HELP),
    steps: int = typer.Option(6, "--steps", help="Adaptive search rounds."),
    start: float = typer.Option(0.15, "--start", help="Adaptive search start coefficient (relative)."),
    threshold: float = typer.Option(75.0, "--threshold", help="Coherence the adaptive search keeps."),
    steer_positions: str = typer.Option("response", "--steer-positions", help="Where vectors are added: response, all, response[:10], …"),
    component: str = typer.Option("resid", "--component"),
    max_rows: int = typer.Option(256, "--max-rows", help="Rows (configs × questions) per generation batch."),
    project: Optional[int] = typer.Option(None, "--project-layer", help="Also project responses on the vector of this layer."),
) -> None:
    """Steer with trait vectors: baseline, adaptive coefficient search (or a grid), judged; resumable."""
    from ..data.traits import load_trait
    from ..experiment import Experiment
    from ..models import load
    from ..steering.pipeline import make_judge, model_spec_for, run_steering, write_steering_report

    exp = Experiment.named(experiment)
    vexp_name, trait_spec = _split_trait_ref(vector_from_trait)
    vexp = Experiment.named(vexp_name) if vexp_name else exp
    ts = load_trait(trait_spec)
    lm = load(model_spec_for(exp, variant, model))
    layer_list = parse_layers(layers, lm.n_layers) if layers else _default_layers(lm.n_layers)
    coefs = parse_floats(coefficients, "coefficients") if coefficients else None
    if coef_mode not in ("relative", "raw"):
        from ..errors import DeltalensError

        raise DeltalensError(f"--coef-mode must be relative or raw, not '{coef_mode}'")
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        j = make_judge(judge, lm, exp, ts, variant)
    for w in caught:
        if "offline judge" in str(w.message):
            console.print(f"[yellow]warning:[/yellow] {w.message}", highlight=False)
    j.check()

    def report(step: int, rows: list) -> None:
        cells = ", ".join(f"{n[:4]} L{st.layer} c{st.coef:g}: {_fmt(r.get('trait_mean'), 0)}/{_fmt(r.get('coherence_mean'), 0)}" for n, st, r in rows)
        console.print(f"round {step + 1}: {cells}", highlight=False)

    t0 = time.time()
    run = run_steering(
        lm, exp, ts, extraction_variant, position, split_list(method), j, layers=layer_list, coefficients=coefs,
        coef_mode=coef_mode, component=component, subset=subset, max_new_tokens=max_new_tokens,
        steer_positions=steer_positions, steps=steps, start=start, threshold=threshold, max_rows=max_rows,
        monitor_layer=project, vector_exp=vexp, report=report,
    )
    rows = [(r["method"], r["layer"], r["n"], _fmt(r["best_coef"], 3), _fmt(r["delta"]), _fmt(r["coherence"])) for r in run.layers]
    console.print(table("per layer: best trait Δ with coherence ≥ 70", ["method", "layer", "configs", "coef", "trait Δ", "coherence"], rows))
    _print_summary(run, f"checkpoint · {ts.id} ({extraction_variant}, {position}) steering {variant}")
    write_steering_report(run, Path(run.log_path).parent)
    console.print(
        f"{run.extra['computed']} configurations computed, {run.extra['reused']} reused from {run.log_path} "
        f"in {time.time() - t0:.1f} s (judge {j.id.split(':')[0]})"
    )


def combine_cmd(
    experiment: str = typer.Option("default", "--experiment", "-e"),
    natural: str = typer.Option(..., "--natural", help="First vector source trait (e.g. natural/pirate)."),
    natural_variant: str = typer.Option("base", "--natural-variant"),
    natural_position: str = typer.Option("response[:5]", "--natural-position"),
    instruction: str = typer.Option(..., "--instruction", help="Second vector source trait (e.g. instruction/pirate)."),
    instruction_variant: str = typer.Option("instruct", "--instruction-variant"),
    instruction_position: str = typer.Option("response[:]", "--instruction-position"),
    variant: str = typer.Option("instruct", "--model-variant", help="Model variant to steer."),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    judge: str = typer.Option("offline", "--judge", help=JUDGE_HELP),
    subset: int = typer.Option(0, "--subset"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
    multipliers: str = typer.Option("0.5,0.75,1,1.25,1.5,2", "--multipliers", help="Coefficient multipliers swept per strategy."),
    max_rows: int = typer.Option(256, "--max-rows"),
) -> None:
    """Phase 2: combination strategies 1–4 of two vector sources vs the best single vectors."""
    from ..data.traits import load_trait
    from ..experiment import Experiment
    from ..models import load
    from ..steering.pipeline import (
        best_source,
        make_judge,
        model_spec_for,
        run_combinations,
        write_combination_table,
    )

    exp = Experiment.named(experiment)
    nat, inst = load_trait(natural), load_trait(instruction)
    lm = load(model_spec_for(exp, variant, model))
    j = make_judge(judge, lm, exp, inst, variant)
    a = best_source(exp, nat, natural_variant, natural_position, j, "natural")
    b = best_source(exp, inst, instruction_variant, instruction_position, j, "instruction")
    rows, base, _ = run_combinations(lm, exp, inst, a, b, j, subset=subset, max_new_tokens=max_new_tokens,
                                     multipliers=parse_floats(multipliers, "multipliers"), max_rows=max_rows)
    console.print(table(f"combinations · {inst.name} (baseline trait {_fmt(base.get('trait_mean'))})",
                        ["config", "layer(s)", "coef", "trait Δ", "coherence", "notes"],
                        [(r["config"], r["layers"], r["coef"] if isinstance(r["coef"], str) else _fmt(r["coef"], 3),
                          _fmt(r["delta"]), _fmt(r["coherence"]), r["notes"]) for r in rows]))
    write_combination_table(rows, exp.combinations_results(inst.id).parent / "comparison.csv")
    console.print(f"results: {exp.combinations_results(inst.id)}")


def export_gguf_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="The .gguf file to write."),
    experiment: str = typer.Option("default", "--experiment", "-e"),
    trait: str = typer.Option(..., "--trait", "-t"),
    variant: str = typer.Option("instruct", "--extraction-variant"),
    position: str = typer.Option("response[:]", "--position"),
    method: str = typer.Option("mean_diff", "--method"),
    layers: str = typer.Option(..., "--layers", help="Layers to include, e.g. 12 or 10-14."),
    coef: float = typer.Option(1.0, "--coef", help="Coefficient baked into the exported vectors."),
    coef_mode: str = typer.Option("raw", "--coef-mode", help="raw (coef × stored vector) or relative (coef × mean activation norm × unit vector)."),
    component: str = typer.Option("resid", "--component"),
) -> None:
    """Export vectors as a llama.cpp control vector (repeng's GGUF format)."""
    from ..data.traits import load_trait
    from ..errors import DeltalensError
    from ..experiment import Experiment
    from ..steering.extraction import load_vector_set
    from ..vectors import export_gguf

    if component != "resid":
        raise DeltalensError("llama.cpp control vectors act on the residual stream; export --component resid vectors")
    exp = Experiment.named(experiment)
    ts = load_trait(trait)
    vs = load_vector_set(exp, ts.id, variant, position, method, component)
    n_layers = max(vs) + 1
    want = parse_layers(layers, max(n_layers, 1))
    missing = [L for L in want if L not in vs]
    if missing:
        raise DeltalensError(f"no vectors for layers {missing} (have {sorted(vs)})")
    dirs = {}
    if coef_mode == "relative":
        from ..models import load
        from ..steering.pipeline import model_spec_for
        from ..vectors import reference_norms

        lm = load(model_spec_for(exp, variant))
        norms = reference_norms(lm, want)
        dirs = {L: coef * norms[L] * vs[L].unit for L in want}
    else:
        dirs = {L: coef * vs[L].vector for L in want}
    hint = str(vs[want[0]].meta.get("model", "unknown"))
    export_gguf(dirs, out, hint)
    console.print(f"wrote {out}: {len(dirs)} direction(s) (layers {want}), model hint {hint!r}")


def import_gguf_cmd(
    path: Path = typer.Argument(..., help="A llama.cpp / repeng control vector (.gguf)."),
    experiment: str = typer.Option("default", "--experiment", "-e"),
    trait: str = typer.Option(..., "--trait", "-t", help="Trait id to file the vectors under, e.g. instruction/pirate."),
    variant: str = typer.Option("imported", "--extraction-variant"),
    position: str = typer.Option("response[:]", "--position", help="Position label to file them under."),
    method: str = typer.Option("gguf", "--method", help="Method label to file them under."),
) -> None:
    """Import a GGUF control vector as deltalens vector files (one per layer)."""
    from ..experiment import Experiment
    from ..io import provenance
    from ..vectors import import_gguf, save_vector

    exp = Experiment.named(experiment)
    dirs, hint = import_gguf(path)
    for L, v in sorted(dirs.items()):
        meta = {"trait": trait, "variant": variant, "positions": position, "component": "resid", "layer": L, "method": method,
                "norm": float(v.norm()), "model_hint": hint, "source": str(path), "provenance": provenance(None, source=str(path))}
        save_vector(exp.vector_path(trait, variant, position, "resid", method, L), v, meta)
    console.print(f"imported {len(dirs)} layer(s) {sorted(dirs)} (model hint {hint!r}) → {exp.vectors_dir(trait, variant, position, 'resid', method)}")


def register(app: typer.Typer) -> None:
    app.command("traits")(traits_cmd)
    app.command("extract")(extract_cmd)
    app.command("steer")(steer_cmd)
    app.command("combine")(combine_cmd)
    app.command("export-gguf")(export_gguf_cmd)
    app.command("import-gguf")(import_gguf_cmd)
