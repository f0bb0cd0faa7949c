"""``deltalens features …``: universal / specific features, firing statistics, weight
metrics, evolution across iterations, dashboards (thin wrappers over deltalens.features)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from ._common import console, split_list, table

features_app = typer.Typer(
    name="features",
    help="SAE feature analysis: universal/specific features at chat tokens, firing stats, weights, evolution, dashboards.",
    no_args_is_help=True,
)

_SAE_HELP = "SAE directory (SAELens format), optionally named: NAME=DIR. Repeat for several."


# ---- shared option handling -----------------------------------------------------------------


def _split_named(value: str) -> tuple[str | None, str]:
    name, sep, path = value.partition("=")
    if sep and name and "/" not in name and not Path(value).exists():
        return name.strip(), path.strip()
    return None, value


def _read_saes(values: list[str] | None) -> list[tuple[str | None, Path, Any]]:
    from ..errors import DeltalensError
    from ..sae import load_sae

    if not values:
        raise DeltalensError("no SAE given: pass --sae DIR (a SAELens-format directory), repeatable")
    out = []
    for v in values:
        name, path = _split_named(v)
        out.append((name, Path(path), load_sae(path)))
    return out


class _Models:
    """Loads each model spec once."""

    def __init__(self, dtype: str = "auto", device: str | None = None):
        self.dtype, self.device = dtype, device
        self.cache: dict[str, Any] = {}

    def get(self, spec: str) -> Any:
        from ..models import load

        if spec not in self.cache:
            self.cache[spec] = load(spec, dtype=self.dtype, device=self.device)
        return self.cache[spec]

    def for_sae(self, sae: Any, path: Path, model: str | None) -> Any:
        from ..errors import DeltalensError

        spec = model or sae.cfg.model_name
        if not spec:
            raise DeltalensError(f"{path}: the SAE does not name its model (cfg metadata model_name); pass --model")
        return self.get(spec)


def _prompts(path: Path | None) -> tuple[list[Any], str]:
    from ..data import bundled_prompts, read_prompts

    if path is None:
        return bundled_prompts("chat_prompts"), "chat_prompts"
    return read_prompts(path), path.stem


def _inputs(path: Path | None) -> tuple[list[Any], str]:
    """Capture inputs: a file (texts, prompt/response pairs, generations) or the bundled chat prompts."""
    from ..data import read_capture_inputs
    from ..features.universal import prompt_inputs

    if path is None:
        prompts, name = _prompts(None)
        return prompt_inputs(prompts), name
    if path.suffix == ".jsonl" or path.suffix == ".txt":
        return read_capture_inputs(path), path.stem
    from ..data import read_prompts

    return prompt_inputs(read_prompts(path)), path.stem


def _experiment(name: str) -> Any:
    from ..experiment import Experiment

    return Experiment.named(name)


def _sae_name(name: str | None, path: Path) -> str:
    return name or path.resolve().name


# ---- universal / specific / both --------------------------------------------------------------


def _analysis(
    kind: str,
    sae: list[str] | None,
    model: str | None,
    model_alias: str | None,
    prompts_path: Path | None,
    threshold: float,
    activation_threshold: float,
    features_csv: Path | None,
    universal_output: Path | None,
    specific_output: Path | None,
    record_prompts: bool,
    token_types: str | None,
    annotation_columns: bool,
    link_template: str | None,
    batch_size: int,
    experiment: str,
    top: int,
    dtype: str,
    device: str | None,
) -> None:
    from ..errors import DeltalensError
    from ..features.dashboard import top_logit_tokens
    from ..features.universal import analyse, make_sources, read_features_csv

    if kind in ("specific", "both") and features_csv is None:
        raise DeltalensError(f"'features {kind}' needs --features-csv (columns feature_id, source[, token])")
    prompts, pname = _prompts(prompts_path)
    refs = read_features_csv(features_csv) if features_csv is not None else None
    exp = _experiment(experiment)
    saes = _read_saes(sae)
    models = _Models(dtype, device)
    sources: list[Any] = []
    for name, path, s in saes:
        lm = models.for_sae(s, path, model)
        sources += make_sources(lm, [(name, s)], model_alias=model_alias, link_template=link_template, existing=sources)
    console.print(table("sources", ["source", "SAE", "site", "d_sae", "model"],
                        [(s.name, str(p), str(s.site), s.d_sae, s.lm.name) for s, (_, p, _) in zip(sources, saes)]))
    t0 = time.time()
    res = analyse(
        sources, prompts, universal=kind in ("universal", "both"), features=refs, threshold=threshold,
        activation_threshold=activation_threshold, token_types=split_list(token_types) or None,
        record_prompts=record_prompts, batch_size=batch_size,
    )
    dt = time.time() - t0
    console.print(f"{len(prompts)} prompts ({pname}) × {len(sources)} SAE(s) in {dt:.1f} s")
    if res.universal is not None:
        out = universal_output or exp.universal_features_path()
        csv_path, jsonl = res.universal.write(out, annotation_columns=annotation_columns)
        t = res.universal.table
        by_src = {s.name: s for s in sources}
        shown = t.sort_values(["num_prompts", "activation_mean"], ascending=False).head(top)
        toks: dict[tuple[str, int], list[str]] = {}
        for src_name, grp in shown.groupby("source"):
            s = by_src[src_name]
            for f, tk in top_logit_tokens(s.lm, s.sae, grp.feature_id.tolist(), 4).items():
                toks[(src_name, f)] = tk
        rows = [(r.source, r.token, r.feature_id, f"{r.num_prompts}/{len(prompts)}", r.activation_mean, r.activation_max,
                 " ".join(repr(x) for x in toks.get((r.source, r.feature_id), [])))
                for r in shown.itertuples()]
        console.print(table(f"universal features (active on ≥ {threshold:.0%} of prompts, a > {activation_threshold:g}) — top {len(rows)} of {len(t)}",
                            ["source", "token", "feature", "prompts", "mean", "max", "top logit tokens"], rows))
        counts = t.groupby(["source", "token"]).size()
        console.print("per source/token: " + ", ".join(f"{s}/{k}: {n}" for (s, k), n in counts.items()) if len(t) else "no universal features")
        console.print(f"wrote {csv_path}" + (f" and {jsonl} ({len(res.universal.records)} records)" if jsonl else ""))
    if res.specific is not None:
        out = specific_output or exp.specific_features_path(features_csv.stem if features_csv else "specific_features")
        csv_path, jsonl = res.specific.write(out)
        t = res.specific.table
        thr = activation_threshold
        summ = t.groupby(["source", "token", "feature_id"]).agg(
            n_active=("activation", lambda a: int((a > thr).sum())), mean_act=("activation", "mean"),
            max_act=("activation", "max"))
        rows = [(s, k, f, f"{int(r['n_active'])}/{len(prompts)}", float(r["mean_act"]), float(r["max_act"]))
                for (s, k, f), r in summ.head(top).iterrows()]
        console.print(table(f"specific features (a > {thr:g})", ["source", "token", "feature", "active prompts", "mean", "max"], rows))
        console.print(f"wrote {csv_path} ({len(t)} rows)" + (f" and {jsonl} ({len(res.specific.records)} records)" if jsonl else ""))


def _analysis_command(kind: str):
    def cmd(
        sae: list[str] | None = typer.Option(None, "--sae", help=_SAE_HELP),
        model: str | None = typer.Option(None, "--model", "-m", help="Model spec (default: each SAE's cfg model_name)."),
        model_alias: str | None = typer.Option(None, "--model-alias", help="Model part of source names (default: short model name, e.g. smollm2)."),
        prompts_path: Path | None = typer.Option(None, "--prompts-path", help="Prompts: a .jsonl of {content, label} or a directory of them (default: bundled chat_prompts)."),
        threshold: float = typer.Option(0.3, "--threshold", help="Universal: minimum fraction of prompts (0-1) on which a feature is active."),
        activation_threshold: float = typer.Option(0.01, "--activation-threshold", help="A feature is active on a prompt when its activation exceeds this."),
        features_csv: Path | None = typer.Option(None, "--features-csv", help="Specific: CSV with feature_id, source[, token] columns."),
        universal_output: Path | None = typer.Option(None, "--universal-output", help="Universal features CSV (default: <experiment>/features/universal/universal_features.csv)."),
        specific_output: Path | None = typer.Option(None, "--specific-output", help="Specific analysis CSV (default: <experiment>/features/specific/<features-csv name>.csv)."),
        record_prompts: bool = typer.Option(False, "--record-prompts", help="Write {csv_basename}_activeprompts.jsonl with the prompts that activate each feature."),
        token_types: str | None = typer.Option(None, "--token-types", help="Comma-separated token types (default: all the chat template has: asst, endheader, newline)."),
        annotation_columns: bool = typer.Option(False, "--annotation-columns", help="Universal CSV with empty chat_desc, pt_desc, type columns for hand annotation."),
        link_template: str | None = typer.Option(None, "--link-template", help="Link column, e.g. 'https://host/?model={model}&layer={layer}&trainer={trainer}&fids={feature_id}' (default: Neuronpedia if the SAE names its neuronpedia_id)."),
        batch_size: int = typer.Option(16, "--batch-size"),
        experiment: str = typer.Option("default", "--experiment", "-e", help="Experiment for default output paths."),
        top: int = typer.Option(15, "--top", help="Rows to print."),
        dtype: str = typer.Option("auto", "--dtype"),
        device: str | None = typer.Option(None, "--device"),
    ) -> None:
        _analysis(kind, sae, model, model_alias, prompts_path, threshold, activation_threshold, features_csv,
                  universal_output, specific_output, record_prompts, token_types, annotation_columns, link_template,
                  batch_size, experiment, top, dtype, device)

    cmd.__doc__ = {
        "universal": "Find features active on at least --threshold of the prompts at each chat token type.",
        "specific": "Activations of the features listed in --features-csv on every prompt.",
        "both": "Universal and specific analysis from one pass over the prompts.",
    }[kind]
    return cmd


# ---- firing / weights ---------------------------------------------------------------------------


def firing_cmd(
    sae: list[str] | None = typer.Option(None, "--sae", help=_SAE_HELP),
    data: Path | None = typer.Option(None, "--data", "-d", help="Inputs: .txt/.jsonl texts, prompt/response pairs or generations (default: bundled chat prompts)."),
    model: str | None = typer.Option(None, "--model", "-m"),
    positions: str = typer.Option("all", "--positions", help="Tokens counted (position spec)."),
    activation_threshold: float = typer.Option(0.0, "--activation-threshold", help="Fires means activation > this."),
    top_k: int = typer.Option(20, "--top-k", help="Top examples kept per latent."),
    batch_size: int = typer.Option(16, "--batch-size"),
    max_length: int | None = typer.Option(None, "--max-length"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Statistics file (.safetensors; a .parquet table is written beside it)."),
    experiment: str = typer.Option("default", "--experiment", "-e"),
    dtype: str = typer.Option("auto", "--dtype"),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Firing statistics per latent (rates, distributions, positions, prompt-only, dead), streamed."""
    from ..features.firing import FiringConfig, firing_stats_many
    from ..io import atomic_path

    saes = _read_saes(sae)
    inputs, dname = _inputs(data)
    models = _Models(dtype, device)
    lms = [models.for_sae(s, p, model) for _, p, s in saes]
    if len({id(x) for x in lms}) > 1:
        from ..errors import DeltalensError

        raise DeltalensError("firing statistics run SAEs of one model per call; pass --model or SAEs of the same model")
    cfg = FiringConfig(activation_threshold=activation_threshold, top_k=top_k)
    exp = _experiment(experiment)
    t0 = time.time()
    stats = firing_stats_many(lms[0], [s for _, _, s in saes], inputs, positions=positions, config=cfg,
                              batch_size=batch_size, max_length=max_length, dataset_name=dname)
    dt = time.time() - t0
    rows = []
    for (name, path, s), st in zip(saes, stats):
        target = out if (out is not None and len(saes) == 1) else exp.firing_stats_path(_sae_name(name, path), dname)
        st.save(target)
        with atomic_path(Path(target).with_suffix(".parquet"), ".parquet") as tmp:
            st.to_frame().to_parquet(tmp, index=False)
        sm = st.summary()
        rows.append((_sae_name(name, path), sm["n_tokens"], f"{sm['mean_l0']:.1f}", sm["alive"], sm["dead"],
                     sm.get("prompt_only", "n/a (no responses)"), str(target)))
    console.print(table(f"firing statistics ({dname}, {positions}, fires: a > {activation_threshold:g})",
                        ["SAE", "tokens", "mean L0", "alive", "dead", "prompt-only", "file"], rows))
    st = stats[0]
    fr = st.frac_tokens
    top = fr.argsort(descending=True)[:10].tolist()
    q = st.quantiles((0.5, 0.99))
    console.print(table("most frequent latents", ["latent", "frac tokens", "frac seqs", "mean act", "p50", "p99", "max", "mean rank"],
                        [(i, float(fr[i]), float(st.frac_sequences[i]), float(st.mean_activation[i]), float(q[0, i]),
                          float(q[1, i]), float(st.max_activation[i]), float(st.mean_position[i])) for i in top]))
    console.print(f"{stats[0].n_tokens} tokens in {dt:.1f} s ({stats[0].n_tokens / max(dt, 1e-9):.0f} tok/s)")


def weights_cmd(
    sae: str = typer.Option(..., "--sae", help="SAE directory."),
    reference: str | None = typer.Option(None, "--reference", "-r", help="Reference SAE (base / parent) with aligned latents."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Per-latent table (.parquet)."),
    experiment: str = typer.Option("default", "--experiment", "-e"),
    no_pairwise: bool = typer.Option(False, "--no-pairwise", help="Skip the max-cosine-with-another-latent search."),
) -> None:
    """Weight metrics per latent: cosine with the reference, norms, nearest other latent, thresholds."""
    from ..features.weights import weight_metrics
    from ..io import atomic_path
    from ..sae import load_sae

    name, path = _split_named(sae)
    s = load_sae(path)
    ref = load_sae(reference) if reference else None
    m = weight_metrics(s, ref, pairwise=not no_pairwise)
    target = out or _experiment(experiment).weight_metrics_path(_sae_name(name, Path(path)))
    with atomic_path(target, ".parquet") as tmp:
        m.to_frame().to_parquet(tmp, index=False)
    sm = m.summary()
    rows = [(k, v["mean"], v["p5"], v["median"], v["p95"]) for k, v in sm.items() if isinstance(v, dict)]
    console.print(table(f"weight metrics of {path} (d_sae={m.d_sae})", ["metric", "mean", "p5", "median", "p95"], rows))
    if m.dec_max_cos is not None:
        top = m.dec_max_cos.argsort(descending=True)[:5].tolist()
        console.print(table("most similar decoder pairs", ["latent", "partner", "cos"],
                            [(i, int(m.dec_partner[i]), float(m.dec_max_cos[i])) for i in top]))
    console.print(f"wrote {target}")


# ---- evolution ---------------------------------------------------------------------------------


def evolution_cmd(
    sae: list[str] | None = typer.Option(None, "--sae", help="The series in order, NAME=DIR (e.g. M0D0=saes/m0 M1D1=saes/m1)."),
    model: list[str] | None = typer.Option(None, "--model", "-m", help="Model(s) for firing rates: one for all SAEs, or one per SAE in order."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Inputs for firing rates (default: bundled chat prompts)."),
    use_sparsity: bool = typer.Option(False, "--from-sparsity", help="Firing rates from each SAE's sparsity.safetensors instead of running a model."),
    change_threshold: float = typer.Option(0.9, "--change-threshold", help="Decoder cosine with the previous iteration below this = changed."),
    alive_threshold: float = typer.Option(0.0, "--alive-threshold", help="Firing rate above this = alive."),
    batch_size: int = typer.Option(16, "--batch-size"),
    name: str = typer.Option("series", "--name", help="Series name (output directory)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output directory (default: <experiment>/features/evolution/<name>)."),
    experiment: str = typer.Option("default", "--experiment", "-e"),
    dtype: str = typer.Option("auto", "--dtype"),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Born / died / changed / changed-back latents and trajectories over an iterative SAE series."""
    from ..errors import DeltalensError
    from ..features.evolution import EvolutionConfig, feature_evolution, firing_rates_from_sparsity
    from ..features.firing import firing_stats

    saes = _read_saes(sae)
    names = [_sae_name(n, p) for n, p, _ in saes]
    rates = None
    if use_sparsity:
        rates = firing_rates_from_sparsity([p for _, p, _ in saes])
        if rates is None:
            raise DeltalensError("--from-sparsity: every SAE directory needs a sparsity.safetensors")
    else:
        specs = list(model or [])
        if specs and len(specs) not in (1, len(saes)):
            raise DeltalensError(f"--model: give one model or one per SAE ({len(saes)}), got {len(specs)}")
        models = _Models(dtype, device)
        inputs, _ = _inputs(data)
        rs = []
        for j, (_, p, s) in enumerate(saes):
            spec = specs[j] if len(specs) == len(saes) else (specs[0] if specs else None)
            lm = models.for_sae(s, p, spec)
            rs.append(firing_stats(lm, s, inputs, config=None, batch_size=batch_size).frac_tokens.float())
        rates = rs
    ev = feature_evolution([s for _, _, s in saes], names, rates, EvolutionConfig(change_threshold, alive_threshold))
    target = out or _experiment(experiment).evolution_dir(name)
    paths = ev.save(target)
    rows = [tuple(r.values()) for r in ev.summary_table()]
    console.print(table(f"evolution over {' → '.join(names)} (changed: cos < {change_threshold:g})",
                        list(ev.summary_table()[0].keys()), rows))
    console.print(table("latents by status", ["status", "latents", "examples"],
                        [(k, v, ", ".join(map(str, ev.latents_with(k)[:8]))) for k, v in ev.counts().items() if v]))
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))


# ---- dashboards -------------------------------------------------------------------------------


def dashboard_cmd(
    sae: str = typer.Option(..., "--sae", help="SAE directory (NAME=DIR to name it)."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Inputs (default: bundled chat prompts)."),
    model: str | None = typer.Option(None, "--model", "-m"),
    features: str | None = typer.Option(None, "--features", help="Comma-separated latent ids (default: every latent that fires)."),
    n_examples: int = typer.Option(20, "--examples", help="Top examples per latent."),
    context: str = typer.Option("12,4", "--context", help="Tokens before,after the firing token in each example."),
    batch_size: int = typer.Option(16, "--batch-size"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output directory (default: <experiment>/features/dashboards/<sae>/<data>)."),
    experiment: str = typer.Option("default", "--experiment", "-e"),
    dtype: str = typer.Option("auto", "--dtype"),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Per-latent dashboard JSON (top examples, activation histogram, logit effects)."""
    from ..errors import DeltalensError
    from ..features.dashboard import build_dashboards, write_dashboards
    from ..sae import load_sae

    name, path = _split_named(sae)
    s = load_sae(path)
    lm = _Models(dtype, device).for_sae(s, Path(path), model)
    inputs, dname = _inputs(data)
    try:
        left, right = (int(x) for x in split_list(context))
    except ValueError:
        raise DeltalensError(f"--context must be two integers 'before,after', got '{context}'") from None
    ids = None
    if features:
        try:
            ids = [int(x) for x in split_list(features)]
        except ValueError:
            raise DeltalensError(f"--features must be comma-separated integers, got '{features}'") from None
    t0 = time.time()
    recs, stats = build_dashboards(lm, s, inputs, ids, n_examples=n_examples, left=left, right=right,
                                   batch_size=batch_size, dataset_name=dname)
    sname = _sae_name(name, Path(path))
    target = out or _experiment(experiment).dashboard_dir(sname, dname)
    index = write_dashboards(recs, target, extra={"sae": str(path), "dataset": dname}, lm=lm)
    rows = [(r["index"], r["frac_nonzero"], r["maxActApprox"], " ".join(repr(t) for t in r["pos_str"][:4]),
             "".join(r["activations"][0]["tokens"]).replace("\n", "⏎")[-40:] if r["activations"] else "")
            for r in sorted(recs, key=lambda r: -r["frac_nonzero"])[:10]]
    console.print(table(f"dashboards for {len(recs)} latents", ["latent", "frac tokens", "max", "top logit tokens", "top example"], rows))
    console.print(f"{stats.n_tokens} tokens in {time.time() - t0:.1f} s → {index}")


def register(app: typer.Typer) -> None:
    from .. import features as _features  # noqa: F401  (teaches `deltalens info` the feature artifacts)

    for kind in ("universal", "specific", "both"):
        features_app.command(kind)(_analysis_command(kind))
    features_app.command("firing")(firing_cmd)
    features_app.command("weights")(weights_cmd)
    features_app.command("evolution")(evolution_cmd)
    features_app.command("dashboard")(dashboard_cmd)
    app.add_typer(features_app, name="features")
