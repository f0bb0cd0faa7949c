"""Circuit commands: ``patch`` (exact activation patching), ``attribute`` (attribution
patching / integrated gradients, SAE-latent attribution, faithfulness) and the ``circuit``
group (``edges``: feature-circuit / EAP / EAP-IG edges; ``graph``: transcoder attribution
graphs): parsing → one call into :mod:`deltalens.circuits` → printing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..circuits.edges_pipeline import EdgesConfig
from ..circuits.graph_pipeline import GraphConfig, TranscodersConfig
from ..circuits.pipeline import AttributeConfig, PatchConfig
from ..circuits.printing import print_curve, print_sae
from ._common import config_option as opt
from ._common import console, experiment_option, parse_floats, split_list, table


def _ints(value: str | None, flag: str) -> list[int]:
    from ..errors import ConfigError

    try:
        return [int(x) for x in split_list(value)]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated integers, got '{value}'") from None


def _print_task(run: Any) -> None:
    console.print(run.pair0, markup=False)
    console.print(
        table(
            run.task_title, ["pair", "answers (clean / corrupted)", "m clean", "m corrupted"], run.task_rows
        )
    )
    console.print(f"mean metric: clean {run.mean_clean:.3f}, corrupted {run.mean_corrupted:.3f}")


def _print_top(res: Any, k: int = 10) -> None:
    rows = [
        (r["component"], r["layer"], r["position"], r["token"], r["effect"], r["normalised"])
        for r in res.top(k)
    ]
    console.print(
        table(
            f"top {k} sites ({res.method}, {res.direction})",
            ["component", "layer", "pos", "token", "effect", "normalised"],
            rows,
        )
    )


P = PatchConfig


def patch_cmd(
    pairs: str = opt(P, "pairs"),
    model: str = opt(P, "model"),
    components: str = opt(P, "components"),
    layers: str = opt(P, "layers"),
    direction: str = opt(P, "direction"),
    metric: str = opt(P, "metric"),
    chat: bool = opt(P, "chat"),
    single_token: bool = opt(P, "single_token"),
    limit: int | None = opt(P, "limit"),
    experiment: str = experiment_option(),
    out: Path | None = opt(P, "out"),
    batch_tokens: int = opt(P, "batch_tokens"),
    dtype: str = opt(P, "dtype"),
    device: str | None = opt(P, "device"),
) -> None:
    """Exact activation patching by layer × position (heatmaps with token labels)."""
    from ..circuits.pipeline import run_patching

    cfg = PatchConfig(
        pairs,
        model,
        metric,
        chat,
        single_token,
        limit,
        out,
        batch_tokens,
        dtype,
        device,
        split_list(components),
        layers,
        direction,
    )
    run = run_patching(cfg, experiment)
    _print_task(run)
    res = run.result
    _print_top(res)
    console.print(
        f"{res.meta['n_forward_rows']} patched sequences in {res.seconds:.1f} s → {run.out_dir}/results.json, "
        f"{', '.join(p.name for p in run.figures)}"
    )


A = AttributeConfig


def attribute_cmd(
    pairs: str = opt(A, "pairs"),
    model: str = opt(A, "model"),
    components: str = opt(A, "components"),
    layers: str = opt(A, "layers"),
    direction: str = opt(A, "direction"),
    method: str = opt(A, "method"),
    steps: int = opt(A, "steps"),
    compare_exact: bool = opt(A, "compare_exact"),
    faithfulness: bool = opt(A, "faithfulness"),
    ks: str | None = opt(A, "ks"),
    sae: Path | None = opt(A, "sae"),
    site_opt: str | None = opt(A, "sae_site"),
    force_site: bool = opt(A, "force_site"),
    mode: str = opt(A, "mode"),
    keep_error: bool = opt(A, "keep_error"),
    top_k: int = opt(A, "top_k"),
    latents: str | None = opt(A, "latents"),
    metric: str = opt(A, "metric"),
    chat: bool = opt(A, "chat"),
    single_token: bool = opt(A, "single_token"),
    limit: int | None = opt(A, "limit"),
    experiment: str = experiment_option(),
    out: Path | None = opt(A, "out"),
    batch_tokens: int = opt(A, "batch_tokens"),
    dtype: str = opt(A, "dtype"),
    device: str | None = opt(A, "device"),
) -> None:
    """Attribution patching / integrated gradients by layer × position, and SAE-latent
    attribution with and without the error term."""
    from ..circuits.pipeline import run_attribution

    k_list = [int(k) for k in parse_floats(ks, "k values")] if ks else []
    cfg = AttributeConfig(
        pairs,
        model,
        metric,
        chat,
        single_token,
        limit,
        out,
        batch_tokens,
        dtype,
        device,
        split_list(components),
        layers,
        direction,
        method,
        steps,
        compare_exact,
        faithfulness,
        k_list,
        sae,
        site_opt,
        force_site,
        mode,
        keep_error,
        top_k,
        _ints(latents, "--latents"),
    )
    run = run_attribution(cfg, experiment)
    _print_task(run)
    if run.result is not None:
        res = run.result
        _print_top(res)
        console.print(f"{res.method}: {res.seconds:.2f} s")
        if run.r is not None and run.exact is not None:
            console.print(
                table(
                    "estimate vs exact patching (normalised effects)",
                    ["cells", "Pearson r"],
                    [(k, v) for k, v in run.r.items()],
                )
            )
            console.print(
                f"exact patching: {run.exact.seconds:.1f} s "
                f"({run.exact.seconds / max(res.seconds, 1e-9):.0f}× the estimate)"
            )
        if run.faithfulness is not None:
            print_curve(run.faithfulness)
        console.print(f"→ {run.out_dir}: {', '.join(p.name for p in run.figures)}")
    if run.sae is not None:
        print_sae(run.sae["result"])
        if "faithfulness" in run.sae:
            print_curve(run.sae["faithfulness"])
        console.print(
            f"→ {run.sae['dir']}: {', '.join(p.name for p in run.sae['figures'])}, top_latents.json"
        )


E = EdgesConfig


def edges_cmd(
    pairs: str = opt(E, "pairs"),
    model: str = opt(E, "model"),
    method: str = opt(E, "method"),
    saes: str | None = opt(E, "saes"),
    dashboards: Path | None = opt(E, "dashboards"),
    direction: str = opt(E, "direction"),
    steps: int = opt(E, "steps"),
    node_threshold: float = opt(E, "node_threshold"),
    edge_threshold: float = opt(E, "edge_threshold"),
    max_nodes: int = opt(E, "max_nodes"),
    top_edges: int = opt(E, "top_edges"),
    heads: bool = opt(E, "heads"),
    budgets: str | None = opt(E, "budgets"),
    budget_curve: bool = opt(E, "budget_curve"),
    metric: str = opt(E, "metric"),
    chat: bool = opt(E, "chat"),
    single_token: bool = opt(E, "single_token"),
    limit: int | None = opt(E, "limit"),
    experiment: str = experiment_option(),
    out: Path | None = opt(E, "out"),
    batch_tokens: int = opt(E, "batch_tokens"),
    dtype: str = opt(E, "dtype"),
    device: str | None = opt(E, "device"),
) -> None:
    """Circuit edges: between SAE latents and error nodes at several sites (feature, Marks et
    al.), or between attention heads and MLPs (eap, eap-ig); figure, Parquet edge list and
    faithfulness vs edge budget (CPR / CMD)."""
    from ..circuits.edges_pipeline import run_edges

    cfg = EdgesConfig(
        pairs,
        model,
        metric,
        chat,
        single_token,
        limit,
        out,
        batch_tokens,
        dtype,
        device,
        method,
        [Path(p) for p in split_list(saes)],
        dashboards,
        direction,
        steps,
        node_threshold,
        edge_threshold,
        max_nodes,
        top_edges,
        heads,
        parse_floats(budgets, "edge budgets") if budgets else _budgets(),
        budget_curve,
    )
    run = run_edges(cfg, experiment)
    c = run.circuit
    console.print(
        f"{c.method}: clean {c.clean:.3f}, corrupted {c.corrupted:.3f} ({c.metric_name}), {c.seconds:.1f} s"
    )
    console.print(
        table(
            f"top edges of {len(c.edges)}",
            ["source", "target", "weight"],
            [tuple(e) for e in c.top_edges(12)],
        )
    )
    console.print("top path: " + " → ".join(c.top_path()), markup=False)
    if run.described:
        console.print(f"{run.described} latent descriptions filled from explanations/dashboards")
    if run.budget is not None:
        b = run.budget
        console.print(
            table(
                f"faithfulness vs edge budget ({b.n_edges} edges): CPR {b.cpr:.3f}, CMD {b.cmd:.3f}",
                ["budget %", "edges", "faithfulness", "completeness (M∖C)"],
                list(zip(b.budgets, b.kept, b.faithfulness, b.completeness)),
            )
        )
    console.print(f"→ {run.out_dir}: {', '.join(p.name for p in run.files.values())}")


TC = TranscodersConfig


def transcoders_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Transcoder directory (resumed if it exists)."),
    model: str = opt(TC, "model"),
    data: str | None = opt(TC, "data"),
    layers: str = opt(TC, "layers"),
    tokens: int = opt(TC, "tokens"),
    context_len: int = opt(TC, "context_len"),
    expansion: int = opt(TC, "expansion"),
    k: int = opt(TC, "k"),
    epochs: float = opt(TC, "epochs"),
    batch_size: int = opt(TC, "batch_size"),
    skip: bool = opt(TC, "skip"),
    skip_fit: str = opt(TC, "skip_fit"),
    skip_ridge: float = opt(TC, "skip_ridge"),
    skip_rows: int = opt(TC, "skip_rows"),
    val_fraction: float = opt(TC, "val_fraction"),
    layers_per_pass: int = opt(TC, "layers_per_pass"),
    seed: int = opt(TC, "seed"),
    dtype: str = opt(TC, "dtype"),
    device: str | None = opt(TC, "device"),
    drop_first: bool = opt(TC, "drop_first"),
) -> None:
    """Train per-layer MLP transcoders (SAELens format) for attribution graphs; resumable."""
    from ..circuits.graph_pipeline import train_transcoders

    cfg = TranscodersConfig(
        model=model, data=data, layers=layers, tokens=tokens, context_len=context_len,
        expansion=expansion, k=k, epochs=epochs, batch_size=batch_size, skip=skip,
        skip_fit=skip_fit, skip_ridge=skip_ridge, skip_rows=skip_rows, val_fraction=val_fraction,
        layers_per_pass=layers_per_pass, seed=seed, dtype=dtype, device=device, drop_first=drop_first,
    )  # fmt: skip
    tset, _ = train_transcoders(cfg, out)
    rows = [(int(i), m["nmse"], m["l0"], f"{m['seconds']:.0f} s") for i, m in tset.layers.items()]
    console.print(table(f"transcoders of {tset.model}", ["layer", "nMSE (held out)", "L0", "time"], rows))
    nm = [m["nmse"] for m in tset.layers.values()]
    console.print(f"mean nMSE {sum(nm) / len(nm):.3f}, max {max(nm):.3f} → {out}")


G = GraphConfig


def graph_cmd(
    transcoders: Path = opt(G, "transcoders"),
    prompt: str | None = opt(G, "prompt"),
    pairs: str = opt(G, "pairs"),
    pair: int = opt(G, "pair"),
    target: str | None = opt(G, "target"),
    contrast: bool = opt(G, "contrast"),
    model: str = opt(G, "model"),
    max_feature_nodes: int = opt(G, "max_feature_nodes"),
    batch_size: int = opt(G, "batch_size"),
    max_logits: int = opt(G, "max_logits"),
    logit_probability: float = opt(G, "logit_probability"),
    node_threshold: float = opt(G, "node_threshold"),
    edge_threshold: float = opt(G, "edge_threshold"),
    experiment: str = experiment_option(),
    out: Path | None = opt(G, "out"),
    dtype: str = opt(G, "dtype"),
    device: str | None = opt(G, "device"),
    constant_first: bool = opt(G, "constant_first"),
    routes: bool = opt(G, "routes"),
) -> None:
    """Attribution graph of one prompt from per-layer transcoders (circuit-tracer's method):
    graph.json for circuit-tracer's viewer / Neuronpedia, the pruned circuit, figure, scores."""
    from ..circuits.graph_pipeline import run_graph

    cfg = GraphConfig(
        transcoders, prompt, pairs, pair, target, contrast, model, max_feature_nodes, batch_size, max_logits,
        logit_probability, node_threshold, edge_threshold, out, dtype, device, constant_first, routes,
    )  # fmt: skip
    run = run_graph(cfg, experiment)
    s = run.summary
    console.print(f"prompt {s['prompt']!r}: {len(s['tokens'])} tokens", markup=False)
    logits = ", ".join(f"{t!r} {p:.3f}" for t, p in zip(s["logit_tokens"], s["logit_probs"]))
    console.print(f"logit nodes: {logits}", markup=False)
    sc = s["scores"]
    console.print(
        f"{s['active_features']} active features, {s['feature_rows']} rows computed; pruned to "
        f"{s['nodes']} nodes, {s['edges']} edges; replacement {sc['replacement']:.3f}, "
        f"completeness {sc['completeness']:.3f}; transcoder nMSE {s['transcoder_nmse_mean']:.3f}; "
        f"{s['seconds']:.1f} s"
    )
    for key, what in (("top_path", "top path"), ("top_feature_path", "top path through a feature")):
        if not s.get(key):
            continue
        rows = [(n["type"], n["layer"], n["position"], n["token"], n["index"]) for n in s[key]]
        console.print(
            table(
                f"{what} (token → logit; {s[key + '_share']:.2%} of the logit's attribution)",
                ["type", "layer", "pos", "token", "index"],
                rows,
            )
        )
    for r in s.get("attention_routes") or []:
        top = ", ".join(
            f"layer {t['layer']} {t['share']:.0%}" if t["share"] is not None else f"layer {t['layer']}"
            for t in r["top_layers"][:3]
        )
        console.print(f"edge {r['source']} → logit ({r['edge']:+.3f}) is carried by the attention of {top}")
    console.print(f"→ {run.out_dir}: {', '.join(p.name for p in run.files.values())}")


def _budgets() -> list[float]:
    from ..circuits.budget import BUDGETS

    return list(BUDGETS)


circuit_app = typer.Typer(
    help="Circuits with edges: feature-circuit and EAP/EAP-IG edges, attribution graphs.",
    no_args_is_help=True,
)

COMMANDS = {"patch": patch_cmd, "attribute": attribute_cmd}
SUBAPPS = [(circuit_app, "circuit", {"edges": edges_cmd, "transcoders": transcoders_cmd, "graph": graph_cmd})]
