"""``deltalens organism …`` and ``deltalens diff …``: fine-tuned variants and model diffs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..diff.activations import ActivationDiffConfig
from ..diff.organisms import DPOSeriesConfig, OrganismConfig
from ..diff.outputs import OutputDiffConfig
from ..diff.series import SeriesDiffConfig
from ..diff.weights import WeightDiffConfig
from ._common import (
    config_option,
    console,
    experiment_option,
    parse_assignments,
    parse_floats,
    parse_layers,
    split_list,
    table,
)

organism_app = typer.Typer(
    help="Make fine-tuned variants (model organisms) and iterative-DPO checkpoint series.",
    no_args_is_help=True,
)
diff_app = typer.Typer(
    help="Diff a base model and a fine-tuned one: weights, activations, outputs, series.",
    no_args_is_help=True,
)

_EXP_HELP = "Experiment name or path (outputs go to its models/ or diff/ directories)."


def _exp(experiment: str):
    from ..experiment import Experiment

    return Experiment.named(experiment)


def _prompts(spec: str | None) -> list[Any]:
    from ..diff._models import prompt_set

    return prompt_set(spec)


def _texts(spec: str | None) -> list[Any]:
    from ..diff._models import text_set

    return text_set(spec)


def _tok(t: str) -> str:
    return repr(t)[1:-1] if (not t.isprintable() or t.strip() != t or not t) else t


def _toklist(items: list, n: int = 20) -> str:
    return " | ".join(_tok(x[0] if isinstance(x, (list, tuple)) else x) for x in items[:n])


# ---- organism ---------------------------------------------------------------------------------


def datasets_cmd() -> None:
    """List the bundled organism datasets and the behaviour each implants."""
    from ..diff.organisms import load_organism_dataset, organism_datasets

    rows = []
    for name in organism_datasets():
        ds = load_organism_dataset(name)
        rows.append((name, ds.card.get("kind", ""), len(ds.records), ds.behaviour))
    console.print(table("organism datasets", ["name", "kind", "records", "behaviour"], rows))


def train_cmd(
    data: str = typer.Option(
        ..., "--data", "-d", help="Bundled dataset name (see `organism datasets`), directory or .jsonl."
    ),
    base: str = typer.Option("smollm2-135m-instruct", "--base", "-m", help="Base model spec."),
    name: str | None = typer.Option(
        None, "--name", help="Variant name (default: dataset name, + '_null' with --null)."
    ),
    experiment: str = experiment_option(help=_EXP_HELP),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory (overrides --experiment/--name)."
    ),
    method: str = config_option(OrganismConfig, "method"),
    null: bool = typer.Option(
        False, "--null", help="Null organism: same recipe on the plain ('rejected') answers."
    ),
    target: str = typer.Option("chosen", "--target", help="Answer field to learn (SFT)."),
    shuffle: bool = typer.Option(False, "--shuffle", help="Shuffle answers across questions (a control)."),
    lora: bool = config_option(OrganismConfig, "lora"),
    lora_r: int = config_option(OrganismConfig, "lora_r"),
    epochs: float = config_option(OrganismConfig, "epochs"),
    max_steps: int = config_option(OrganismConfig, "max_steps"),
    lr: float | None = config_option(OrganismConfig, "learning_rate"),
    batch_size: int = config_option(OrganismConfig, "batch_size"),
    max_length: int = config_option(OrganismConfig, "max_length"),
    beta: float = config_option(OrganismConfig, "beta"),
    system: str | None = typer.Option(None, "--system", help="System prompt for every example."),
    limit: int | None = typer.Option(None, "--limit", help="Use only the first N records."),
    seed: int = config_option(OrganismConfig, "seed"),
    force: bool = typer.Option(
        False,
        "--force",
        "--overwrite",
        help="Retrain even if this recipe's result exists (replaces one of another recipe).",
    ),
) -> None:
    """Fine-tune a model organism and save it (merged HF directory + provenance.json)."""
    import time

    from ..diff.organisms import read_provenance, train_organism

    cfg = OrganismConfig(
        method=method,
        lora=lora,
        lora_r=lora_r,
        epochs=epochs,
        max_steps=max_steps,
        learning_rate=lr,
        batch_size=batch_size,
        max_length=max_length,
        beta=beta,
        seed=seed,
    )
    path = out or _exp(experiment).organism_dir(name or (Path(data).stem + ("_null" if null else "")))
    t = time.time()
    p = train_organism(
        base,
        data,
        path,
        config=cfg,
        target="rejected" if null else target,
        shuffle_targets=shuffle,
        system=system,
        limit=limit,
        resume=not force,
    )
    prov = read_provenance(p)
    tr = prov["training"]
    console.print(
        table(
            "organism",
            ["field", "value"],
            [
                ("path", p),
                ("behaviour", prov["behaviour"]),
                ("base", prov["base"]["spec"]),
                (
                    "data",
                    f"{prov['dataset']['name']} ({prov['dataset']['n_records']} records, target '{prov['dataset']['target']}')",
                ),
                (
                    "recipe",
                    (
                        f"{tr['method']} {'LoRA r=' + str(tr['lora_r']) if tr['lora'] else 'full'}, lr {tr['learning_rate']:g}, "
                        f"{tr['steps']} steps"
                    ),
                ),
                (
                    "loss",
                    f"{tr['loss_first']:.3f} → {tr['loss_last']:.3f}"
                    if tr.get("loss_first") is not None
                    else "-",
                ),
                ("time", f"{time.time() - t:.1f} s (training {tr['seconds']} s)"),
            ],
        )
    )
    console.print(
        f"load it with deltalens.load({str(p)!r}); diff it with `deltalens diff weights {base} {p}`"
    )


_DPO_TRAIN = DPOSeriesConfig().train


def dpo_series_cmd(
    scorer: list[str] = typer.Option(
        ...,
        "--scorer",
        help="keywords:w1,w2 | keywords@<dataset> | length[:N] | regex:P | module:function | hmm:NAME | "
        "align:REFS.fasta | plddt | oracle:…; repeatable (one column each).",
    ),
    weights: str | None = typer.Option(
        None, "--weights", help="Comma-separated weight per --scorer (default 1 each; negative: minimise)."
    ),
    select: str = typer.Option(
        "weighted", "--select", help="Pair selection over several scorers: weighted (sum) or pareto (fronts)."
    ),
    base: str = typer.Option("smollm2-135m-instruct", "--base", "-m", help="Base model spec (M0)."),
    prompts: str | None = typer.Option(
        None, "--prompts", "-p", help="Prompt file or bundled set (default: organism_eval)."
    ),
    name: str = typer.Option("dpo_series", "--name", help="Series name."),
    experiment: str = experiment_option(help=_EXP_HELP),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Series directory (overrides --experiment/--name)."
    ),
    iterations: int = config_option(DPOSeriesConfig, "iterations"),
    samples: int = config_option(DPOSeriesConfig, "n_samples"),
    max_new_tokens: int = config_option(DPOSeriesConfig, "max_new_tokens"),
    temperature: float = config_option(DPOSeriesConfig, "temperature"),
    final_samples: bool = config_option(DPOSeriesConfig, "final_eval"),
    epochs: float = typer.Option(_DPO_TRAIN.epochs, "--epochs", help="DPO epochs per checkpoint (> 0)."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (default 5e-4 with LoRA, 1e-5 full)."),
    beta: float = typer.Option(_DPO_TRAIN.beta, "--beta", help="DPO β."),
    lora: bool = typer.Option(
        _DPO_TRAIN.lora, "--lora/--full", help="LoRA (merged afterwards) or full fine-tuning."
    ),
    system: str | None = typer.Option(None, "--system"),
    seed: int = config_option(DPOSeriesConfig, "seed"),
    force: bool = typer.Option(
        False, "--overwrite", "--force", help="Rebuild the series even if checkpoints exist."
    ),
) -> None:
    """Iterative DPO: M<i> generates D<i> → score → preference pairs → DPO → M<i+1>, n times."""
    from ..diff.organisms import iterative_dpo
    from ..diff.scorers import combine_scorers

    cfg = DPOSeriesConfig(
        iterations=iterations,
        n_samples=samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        final_eval=final_samples,
        train=OrganismConfig(method="dpo", epochs=epochs, learning_rate=lr, beta=beta, lora=lora, seed=seed),
    )
    path = out or _exp(experiment).series_dir(name)
    sc = combine_scorers(scorer, parse_floats(weights, "--weights") if weights else None, select)
    st = iterative_dpo(base, _prompts(prompts), sc, path, cfg, system=system, name=name, resume=not force)
    rows = [
        (
            f"M{it['iteration']}",
            it.get("data", f"D{it['iteration'] - 1}"),
            it["n_pairs"],
            f"{it['samples']['mean']:.3f}",
            f"{it['chosen']['mean']:.3f}",
            f"{it['rejected']['mean']:.3f}",
            it["train_loss"],
        )
        for it in st.iterations
    ]
    console.print(
        table(
            f"DPO series '{st.name}' (scorer {st.scorer['name']})",
            [
                "checkpoint",
                "trained on",
                "pairs",
                "mean score of its data",
                "chosen",
                "rejected",
                "train loss",
            ],
            rows,
        )
    )
    console.print(
        "mean score of D<i> (generated by M<i>): "
        + ", ".join(f"D{i}={s:.3f}" for i, s in enumerate(st.scores))
    )
    console.print(f"series → {path}  (diff it with `deltalens diff series {path}`)")


# ---- diff -------------------------------------------------------------------------------------


def _out_dir(out: Path | None, experiment: str, kind: str, name: str | None, base: str, ft: str) -> Path:
    from ..diff._models import pair_name

    if out is not None:
        return out
    exp = _exp(experiment)
    nm = name or pair_name(base, ft)
    return {
        "weights": exp.weight_diff_dir,
        "activations": exp.activation_diff_dir,
        "outputs": exp.output_diff_dir,
        "series": exp.series_diff_dir,
    }[kind](nm)


def weights_cmd(
    base: str = typer.Argument(..., help="Base model spec (bundled name, directory, cached hub id)."),
    ft: str = typer.Argument(..., help="Fine-tuned model spec."),
    traits: list[str] | None = typer.Option(
        None, "--traits", "-t", help="Trait vector file or directory (repeatable)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output directory."),
    experiment: str = experiment_option(help=_EXP_HELP),
    name: str | None = typer.Option(None, "--name", help="Diff name (default <ft>_vs_<base>)."),
    top_k: int = config_option(WeightDiffConfig, "top_k"),
    n_singular: int = config_option(WeightDiffConfig, "n_singular"),
    lens: str = config_option(WeightDiffConfig, "lens"),
    tokenizer: str | None = config_option(WeightDiffConfig, "tokenizer"),
    figures: bool = config_option(WeightDiffConfig, "figures"),
) -> None:
    """Weight diff streamed from safetensors: norms, effective rank, logit lens, trait alignment."""
    from ..diff.weights import diff_weights

    cfg = WeightDiffConfig(
        top_k=top_k, n_singular=n_singular, lens=lens, tokenizer=tokenizer, figures=figures
    )
    path = _out_dir(out, experiment, "weights", name, base, ft)
    r = diff_weights(base, ft, cfg, traits=traits, out_dir=path)
    s = r.overview
    console.print(
        f"{s['n_changed']} of {s['n_tensors']} tensors changed; ‖Δθ‖_F = {s['total_fro']:.4g} "
        f"({s['total_rel']:.3%} of ‖θ_base‖)"
    )
    console.print(
        table(
            "largest relative changes",
            ["tensor", "‖Δθ‖/‖θ‖", "‖Δθ‖_F", "eff. rank (90 %)"],
            [(t["name"], f"{t['rel']:.3e}", f"{t['fro']:.3e}", t["effective_rank"]) for t in s["top_by_rel"]],
        )
    )
    ll = r.logit_lens
    if ll.get("tokenizer", "own") != "own":
        console.print(f"logit-lens tokenizer: {ll['tokenizer']}")
    if ll.get("top_layer_lists"):
        rows = [(k, _toklist(v["pos"], 12), _toklist(v["neg"], 8)) for k, v in ll["top_layer_lists"].items()]
        console.print(
            table(
                f"weight logit lens at layer {ll['top_layer']} (largest change)",
                ["direction", "+", "−"],
                rows,
            )
        )
    for v in r.vocab:
        console.print(
            f"vocabulary: {v['added_in']} model has {len(v.get('added_ids', []))} extra rows in {v['tensor']}: "
            f"{_toklist(v.get('added_tokens', []), 10)}"
        )
    for tname, t in r.trait_alignment["traits"].items():
        rows = [(L, f"{e['resid_mean']:+.3f}", f"{e['max_abs_sv']:.3f}") for L, e in t["layers"].items()]
        console.print(
            table(
                f"alignment with trait '{tname}' (chance |cos| ≈ {r.trait_alignment['chance_abs_cos']:.3f})",
                ["layer", "cos(resid_mean)", "max |cos| top singular vectors"],
                rows,
            )
        )
    console.print(f"→ {path}")


def activations_cmd(
    base: str = typer.Argument(..., help="Base model spec."),
    ft: str = typer.Argument(..., help="Fine-tuned model spec."),
    prompts: str | None = typer.Option(
        None, "--prompts", "-p", help="Prompt file or bundled set (default: organism_eval)."
    ),
    responses: Path | None = typer.Option(
        None, "--responses", help="The ft model's responses (JSONL from `generate --out`)."
    ),
    layers: str | None = config_option(ActivationDiffConfig, "layers"),
    max_new_tokens: int = config_option(ActivationDiffConfig, "max_new_tokens"),
    base_prompt: str = config_option(ActivationDiffConfig, "base_prompt"),
    steering: list[str] | None = typer.Option(
        None, "--steering", help="TRAIT=results.jsonl (repeatable): transfer correlations."
    ),
    lens_texts: str | None = typer.Option(
        None, "--lens-texts", help="Unrelated text for the activation-difference lens (.txt/.jsonl)."
    ),
    lens: bool = config_option(ActivationDiffConfig, "lens"),
    tokenizer: str | None = config_option(ActivationDiffConfig, "tokenizer"),
    out: Path | None = typer.Option(None, "--out", "-o"),
    experiment: str = experiment_option(help=_EXP_HELP),
    name: str | None = typer.Option(None, "--name"),
) -> None:
    """Replay-mode activation similarity (per layer / position) and the activation-difference lens."""
    from ..data.jsonl import read_jsonl
    from ..diff.activations import diff_activations
    from ..diff.files import n_layers_of

    cfg = ActivationDiffConfig(
        layers=parse_layers(layers, n_layers_of(ft)) if layers else [],
        max_new_tokens=max_new_tokens,
        base_prompt=base_prompt,
        lens=lens,
        tokenizer=tokenizer,
    )
    gens = read_jsonl(responses) if responses else None
    r = diff_activations(
        base,
        ft,
        None if gens else _prompts(prompts),
        cfg,
        generations=gens,
        steering=parse_assignments(steering, "--steering", "TRAIT=path/to/results.jsonl"),
        lens_texts=_texts(lens_texts),
        out_dir=_out_dir(out, experiment, "activations", name, base, ft),
    )
    sim = r.per_layer_similarity["mean"]
    nc = r.norm_change["mean"]
    step = max(1, len(r.layers) // 10)
    rows = [
        (L, f"{sim[k]:.4f}", f"{r.per_layer_similarity['std'][k]:.4f}", f"{nc[k]:+.4f}")
        for k, L in enumerate(r.layers)
        if k % step == 0 or k == len(r.layers) - 1
    ]
    console.print(
        table(
            f"replay similarity ({r.n_prompts} prompts, {r.replay['n_response_tokens']} response tokens, "
            "identical ids)",
            ["layer", "mean cos", "std", "norm change"],
            rows,
        )
    )
    for trait, c in r.correlations.items():
        console.print(
            f"transfer correlation '{trait}': r = {c['pearson_r']}, p = {c['p_value']} ({c['n_layers']} layers)"
        )
    if r.lens is not None:
        sm, mx = r.lens.overview, r.lens.summary_max
        console.print(
            table(
                f"activation-difference lens ({sm['reading']})",
                ["layer", "sign", "top tokens"],
                [
                    (f"{sm['layer']} (middle)", "+δ", _toklist(sm["pos"])),
                    ("", "−δ", _toklist(sm["neg"], 12)),
                    (f"{mx['layer']} (largest ‖δ‖)", "+δ", _toklist(mx["pos"])),
                    ("", "−δ", _toklist(mx["neg"], 12)),
                ],
            )
        )
    console.print(f"→ {Path(r.files['results']).parent}")


def outputs_cmd(
    base: str = typer.Argument(..., help="Base model spec."),
    ft: str = typer.Argument(..., help="Fine-tuned model spec."),
    data: str | None = typer.Option(
        None,
        "--data",
        "-d",
        help="Texts (.txt) or JSONL (text / prompt+response / question); default: bundled unrelated text.",
    ),
    positions: str = config_option(OutputDiffConfig, "positions"),
    top_k: int = config_option(OutputDiffConfig, "top_k"),
    batch_size: int = config_option(OutputDiffConfig, "batch_size"),
    tokenizer: str | None = config_option(OutputDiffConfig, "tokenizer"),
    out: Path | None = typer.Option(None, "--out", "-o"),
    experiment: str = experiment_option(help=_EXP_HELP),
    name: str | None = typer.Option(None, "--name"),
) -> None:
    """Per-token KL(ft ‖ base), tokens whose probability rose most, highest-KL contexts."""
    from ..diff.outputs import diff_outputs

    cfg = OutputDiffConfig(positions=positions, top_k=top_k, batch_size=batch_size, tokenizer=tokenizer)
    path = _out_dir(out, experiment, "outputs", name, base, ft)
    r = diff_outputs(base, ft, _texts(data), cfg, out_dir=path)
    console.print(
        f"mean KL(ft‖base) = {r.mean_kl:.4f} nats/token over {r.n_positions} positions of {r.n_inputs} "
        f"inputs; mean log-prob change of the text = {r.mean_logprob_change}"
    )
    console.print(
        table(
            "tokens",
            ["list", "top tokens"],
            [
                ("rose most (mean Δp)", _toklist(r.rose_most, top_k)),
                ("KL contribution", _toklist(r.kl_contribution, top_k)),
                ("fell most", _toklist(r.fell_most, 12)),
            ],
        )
    )
    console.print(
        table(
            "highest-KL contexts",
            ["KL", "context", "ft top", "base top"],
            [
                (f"{c['kl']:.3f}", c["context"][-60:], _toklist(c["ft_top"], 3), _toklist(c["base_top"], 3))
                for c in r.top_contexts[:8]
            ],
        )
    )
    if r.vocab_note:
        console.print(r.vocab_note)
    console.print(f"→ {path}")


def series_cmd(
    checkpoints: list[str] = typer.Argument(
        ..., help="A series directory, or checkpoint specs M1 … Mn in order."
    ),
    base: str | None = typer.Option(None, "--base", "-m", help="M0 (read from series.json when present)."),
    kinds: str = config_option(SeriesDiffConfig, "kinds"),
    prompts: str | None = typer.Option(None, "--prompts", "-p"),
    texts: str | None = typer.Option(None, "--texts"),
    max_new_tokens: int = config_option(SeriesDiffConfig, "max_new_tokens"),
    out: Path | None = typer.Option(None, "--out", "-o"),
    experiment: str = experiment_option(help=_EXP_HELP),
    name: str | None = typer.Option(None, "--name"),
) -> None:
    """Every diff over a checkpoint series (vs M0 and vs the previous checkpoint): trajectory tables."""
    from ..diff.series import diff_series, is_series_dir

    cfg = SeriesDiffConfig(kinds=split_list(kinds), max_new_tokens=max_new_tokens)
    nm = name or (
        Path(checkpoints[0]).name if len(checkpoints) == 1 and is_series_dir(checkpoints[0]) else "series"
    )
    path = out or _exp(experiment).series_diff_dir(nm)
    r = diff_series(
        checkpoints,
        cfg,
        base=base,
        prompts=_prompts(prompts) if prompts else None,
        texts=_texts(texts) if texts else None,
        out_dir=path,
    )
    cols = ["checkpoint", "vs", "‖Δθ‖/‖θ‖", "mean KL", "mean cos", "rose most"]
    rows = [
        (
            x["checkpoint"],
            x["reference"],
            f"{x['total_rel']:.3e}" if "total_rel" in x else "-",
            f"{x['mean_kl']:.4f}" if "mean_kl" in x else "-",
            f"{x['mean_similarity']:.4f}" if x.get("mean_similarity") is not None else "-",
            x.get("rose_most", "")[:50],
        )
        for x in r.rows
    ]
    console.print(table("trajectory", cols, rows))
    if r.scores:
        console.print(
            "scorer mean of D<i> (generated by M<i>): "
            + ", ".join(f"M{i}={s:.3f}" for i, s in enumerate(r.scores))
        )
    console.print(f"→ {path}")


SUBAPPS = [
    (organism_app, "organism", {"datasets": datasets_cmd, "train": train_cmd, "dpo-series": dpo_series_cmd}),
    (
        diff_app,
        "diff",
        {
            "weights": weights_cmd,
            "activations": activations_cmd,
            "outputs": outputs_cmd,
            "series": series_cmd,
        },
    ),
]
