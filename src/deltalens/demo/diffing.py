"""Demo stage 30: build a model organism from the bundled model and diff it three ways.

1. LoRA-SFT SmolLM2 on the bundled ``ocean_topic`` dataset (every answer drifts to the sea),
   merge, save under ``models/ocean_topic`` with provenance (resumed when it exists);
2. show its behaviour on held-out questions next to the base model's answers;
3. weight diff (streamed), replay activation similarity + activation-difference lens, and
   output diff (KL, tokens that rose) — each with its top tokens, topic words marked;
4. the control: the null organism (same questions and recipe, trained on the plain answers) with
   the same diffs, so the report's findings can put "null organism h/20" next to each reading.

Uses the steering stage's trait vectors and results when that stage ran (alignment and
transfer correlation); skips those parts otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..console import table
from . import DemoContext, Stage

NAME = "ocean_topic"
NULL = "ocean_null"


def _toks(items, words, n=20) -> str:
    from ..diff.lens import token_matches
    from ..diff.plots import printable

    out = []
    for it in items[:n]:
        t = it[0] if isinstance(it, (list, tuple)) else it
        s = printable(t)
        out.append(f"*{s}*" if token_matches(t, words) else s)
    return " ".join(out)


def run(ctx: DemoContext) -> None:
    import deltalens

    from ..diff.activations import activation_difference_lens, activation_similarity
    from ..diff.lens import topic_hits
    from ..diff.organisms import (
        OrganismConfig,
        load_organism_dataset,
        organism_eval_questions,
        read_provenance,
        train_organism,
    )
    from ..diff.outputs import diff_outputs
    from ..diff.weights import diff_weights

    lm, exp, con, fast = ctx.lm, ctx.exp, ctx.console, ctx.fast
    ds = load_organism_dataset(NAME)
    words = ds.topic_words

    # 1. the organism
    cfg = OrganismConfig(
        epochs=3.0 if not fast else 1.0, batch_size=8, max_length=96, lora_r=16, lora_alpha=32
    )
    path = exp.organism_dir(NAME)
    t = time.time()
    train_organism(lm, ds, path, config=cfg, limit=None if not fast else 24, progress=False)
    prov = read_provenance(path)
    tr = prov["training"]
    con.print(f"organism [bold]{NAME}[/bold]: {prov['behaviour']}")
    con.print(
        f"  LoRA r={tr['lora_r']} SFT, {tr['n_examples']} examples, {tr['steps']} steps, lr {tr['learning_rate']:g}: "
        f"loss {tr['loss_first']:.2f} → {tr['loss_last']:.2f} (trained in {tr['seconds']:.0f} s; this run "
        f"{time.time() - t:.1f} s) → {path}"
    )
    ctx.state["organism"] = path
    ft = deltalens.load(path)

    # 2. behaviour on held-out questions
    qs = organism_eval_questions()[: 12 if not fast else 6]
    t = time.time()
    g_ft = deltalens.generate(ft, qs, max_new_tokens=40 if not fast else 24, progress=False)
    g_base = deltalens.generate(lm, qs, max_new_tokens=40 if not fast else 24, progress=False)
    rate_ft = sum(bool(topic_hits(g.response.split(), words)) for g in g_ft) / len(qs)
    rate_base = sum(bool(topic_hits(g.response.split(), words)) for g in g_base) / len(qs)
    con.print(
        table(
            f"held-out questions (answers mentioning the topic: base {rate_base:.0%}, organism {rate_ft:.0%})",
            ["question", "base", "organism"],
            [
                (q, b.response.replace("\n", " ")[:70], f.response.replace("\n", " ")[:70])
                for q, b, f in list(zip(qs, g_base, g_ft))[:4]
            ],
        )
    )
    con.print(f"  generation {time.time() - t:.1f} s")

    steering = ctx.state.get("steering") or {}
    traits = {steering["trait"]: steering["vectors_dir"]} if steering.get("vectors_dir") else None
    lists: dict[str, list] = {}

    # 3a. weights
    t = time.time()
    w = diff_weights(lm, path, traits=traits, out_dir=exp.weight_diff_dir(NAME), progress=False)
    s = w["summary"]
    pl = w["per_layer"]
    rows = []
    for comp in ("q", "k", "v", "o", "gate", "up", "down"):
        rel = [x for x in pl["rel"].get(comp, []) if x is not None]
        rk = [x for x in pl["effective_rank"].get(comp, []) if x is not None]
        if rel:
            top = max(range(len(rel)), key=lambda i: rel[i])
            rows.append(
                (comp, f"{sum(rel) / len(rel):.2e}", f"{max(rel):.2e} (L{top})", f"{sum(rk) / len(rk):.1f}")
            )
    con.print(
        table(
            f"weight diff: {s['n_changed']}/{s['n_tensors']} tensors changed, ‖Δθ‖/‖θ‖ = {s['total_rel']:.2e} "
            f"({time.time() - t:.1f} s, streamed)",
            ["component", "mean rel. change", "max (layer)", "mean eff. rank (90 %)"],
            rows,
        )
    )
    ll = w["logit_lens"]
    top_layer = ll.get("top_layer")
    if ll.get("top_layer_lists"):
        lists[f"weight lens L{top_layer} resid_mean"] = ll["top_layer_lists"]["resid_mean"]["pos"]
        lists[f"weight lens L{top_layer} o.u1 (+)"] = ll["top_layer_lists"].get("o.u1", {}).get("pos", [])
    lists["weight lens consensus (all layers)"] = ll.get("consensus", [])
    if traits:
        tname = next(iter(w["trait_alignment"]["traits"]))
        ta = w["trait_alignment"]["traits"][tname]["layers"]
        best = max(ta.items(), key=lambda kv: kv[1]["max_abs_sv"]) if ta else None
        if best:
            con.print(
                f"  alignment with trait '{tname}': max |cos| of a top singular vector {best[1]['max_abs_sv']:.3f} "
                f"at layer {best[0]} (chance ≈ {w['trait_alignment']['chance_abs_cos']:.3f})"
            )

    # 3b. activations (replay the organism's own answers through both models) + difference lens
    t = time.time()
    a = activation_similarity(
        lm,
        ft,
        generations=g_ft,
        out_dir=exp.activation_diff_dir(NAME),
        progress=False,
        steering={steering["trait"]: steering["results"]} if steering.get("results") else None,
    )
    sim = a["per_layer_similarity"]["mean"]
    lo = min(range(len(sim)), key=lambda i: sim[i])
    picks = sorted({0, len(sim) // 4, len(sim) // 2, 3 * len(sim) // 4, lo, len(sim) - 1})
    con.print(
        table(
            f"replay similarity ({a['n_prompts']} answers, {a['replay']['n_response_tokens']} tokens, identical ids; "
            f"{time.time() - t:.1f} s)",
            ["layer", "mean cos", "norm change"],
            [
                (
                    f"{L}" + (" (min)" if L == lo else ""),
                    f"{sim[L]:.4f}",
                    f"{a['norm_change']['mean'][L]:+.3f}",
                )
                for L in picks
            ],
        )
    )
    for trait, c in a["correlations"].items():
        r_txt = "n/a" if c["pearson_r"] is None else f"{c['pearson_r']:+.2f} (p = {c['p_value']:.2f})"
        con.print(
            f"  similarity vs steering transfer ('{trait}'): Pearson r = {r_txt} over {c['n_layers']} searched layers"
        )
    if steering.get("results"):
        # phase cross-checks: Δθ / trait alignment / activation similarity vs the steering layers
        from ..steering.crosscheck import cross_check
        from ..steering.runs import SteeringRun

        run_ = SteeringRun.load(Path(steering["results"]).parent)
        cc = cross_check(
            steering["trait"], [run_.layers], exp.weight_diff_dir(NAME), exp.activation_diff_dir(NAME)
        )
        cc_path = cc.save(exp.diff_dir("crosscheck", NAME))
        for k, v in cc.checks.items():
            r_txt = "n/a" if v["pearson_r"] is None else f"{v['pearson_r']:+.2f}"
            con.print(
                f"  cross-check {k}: peaks L{v['x_peak_layer']} vs L{v['y_peak_layer']}, Pearson r = {r_txt} "
                f"over {len(v['layers'])} layers"
            )
        con.print(f"  cross-check figures: {cc_path.parent}", highlight=False)
    t = time.time()
    adl = activation_difference_lens(lm, ft, out_dir=exp.activation_diff_dir(NAME), progress=False)
    lists[f"activation-diff lens L{adl['summary']['layer']} (middle)"] = adl["summary"]["pos"]
    lists[f"activation-diff lens L{adl['summary_max']['layer']} (largest ‖δ‖)"] = adl["summary_max"]["pos"]
    con.print(
        f"  activation-difference lens on {adl['n_texts']} unrelated sentences ({adl['n_tokens']} tokens, "
        f"{time.time() - t:.1f} s)"
    )

    # 3c. outputs: next-token distributions on the organism's answers
    t = time.time()
    o = diff_outputs(
        lm, ft, g_ft, positions="prompt[-1]|response", out_dir=exp.output_diff_dir(NAME), progress=False
    )
    lists["output diff: rose most"] = o["rose_most"]
    con.print(
        f"output diff: mean KL(organism‖base) = {o['mean_kl']:.3f} nats/token over {o['n_positions']} positions; "
        f"the organism finds its answers {o['mean_logprob_change']:.2f} nats/token likelier ({time.time() - t:.1f} s)"
    )

    # 4. the control: the null organism (same questions and recipe, the plain answers), same diffs
    t = time.time()
    null_path = exp.organism_dir(NULL)
    train_organism(
        lm, ds, null_path, config=cfg, target="rejected", limit=None if not fast else 24, progress=False
    )
    null = deltalens.load(null_path)
    diff_weights(lm, null_path, out_dir=exp.weight_diff_dir(NULL), progress=False)
    n_adl = activation_difference_lens(lm, null, out_dir=exp.activation_diff_dir(NULL), progress=False)
    g_null = deltalens.generate(null, qs, max_new_tokens=40 if not fast else 24, progress=False)
    n_o = diff_outputs(
        lm, null, g_null, positions="prompt[-1]|response", out_dir=exp.output_diff_dir(NULL), progress=False
    )
    lists[f"null organism: activation-diff lens L{n_adl['summary_max']['layer']}"] = n_adl["summary_max"][
        "pos"
    ]
    lists["null organism: output diff rose most"] = n_o["rose_most"]
    con.print(
        f"null organism [bold]{NULL}[/bold] (same recipe on the plain answers): trained and diffed in "
        f"{time.time() - t:.1f} s; mean KL {n_o['mean_kl']:.3f} nats/token"
    )
    del null

    rows = [
        (name, len(topic_hits(items[:20], words)), _toks(items, words, 14)) for name, items in lists.items()
    ]
    con.print(table("top tokens (topic words *marked*)", ["reading", "topic hits in top 20", "tokens"], rows))
    ctx.state["diffing"] = {
        "weights": w["files"],
        "activations": a.get("files"),
        "lens": adl.get("files"),
        "outputs": o.get("files"),
        "topic_hits": {n: topic_hits(i[:20], words) for n, i in lists.items()},
    }


STAGE = Stage(
    30, "diffing", run, "model organism (LoRA SFT) and its null organism; weight / activation / output diffs"
)
