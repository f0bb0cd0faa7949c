"""Demo stage 60: universal SAE features at the chat template's assistant tokens.

Needs the SAE stage (``state["sae"]``, ``state["sae_site"]``); skips with a message
without it. On the bundled 48 labelled chat prompts it finds the latents active on most
prompts at the ``asst`` and ``newline`` tokens, prints them with the tokens they fire on
most and the tokens they promote, counts dead and prompt-only latents over the core
stage's generations, and writes the universal CSV, its active-prompt JSONL, firing
statistics and dashboards for the printed latents.
"""

from __future__ import annotations

import time

from ..console import table
from . import DemoContext, Stage


def run(ctx: DemoContext) -> None:
    from ..data import bundled_prompts
    from ..features import analyse, build_dashboards, make_sources, top_logit_tokens, write_dashboards
    from ..features.universal import prompt_inputs

    con, lm, exp = ctx.console, ctx.lm, ctx.exp
    sae = ctx.state.get("sae")
    if sae is None:
        con.print(
            "[yellow]skipped:[/yellow] the features stage needs the SAE from the sae stage "
            "(state['sae']); run the whole demo or `deltalens demo --only sae,features`."
        )
        return
    site = ctx.state.get("sae_site")
    if sae.cfg.site is None and site is not None:
        sae.cfg.site = str(site)
    t0 = time.time()
    prompts = bundled_prompts("chat_prompts")
    if ctx.fast:
        prompts = prompts[::2]
    [src] = make_sources(lm, [sae])
    threshold = 0.5
    res = analyse(
        [src],
        prompts,
        universal=True,
        threshold=threshold,
        activation_threshold=0.01,
        record_prompts=True,
        batch_size=16,
        progress=False,
    )
    uni = res.universal
    assert uni is not None
    csv_path, jsonl = uni.write(exp.universal_features_path("demo_universal"))
    t_uni = time.time() - t0

    # firing statistics over the core stage's generations (prompt + response) or the prompts
    gens = ctx.state.get("generations")
    data = list(gens) if gens else prompt_inputs(prompts)
    dname = "demo_questions" if gens else "chat_prompts"
    per_token = 4 if not ctx.fast else 3
    ranked = uni.table.sort_values(["num_prompts", "activation_mean"], ascending=False)
    table_rows = (
        ranked.groupby("token", sort=False)
        .head(per_token)
        .sort_values(["token", "num_prompts", "activation_mean"], ascending=[True, False, False])
    )
    shown = list(dict.fromkeys(int(f) for f in table_rows.feature_id))
    t1 = time.time()
    recs, stats = build_dashboards(
        lm, sae, data, shown, n_examples=10, batch_size=16, progress=False, dataset_name=dname
    )
    dash = write_dashboards(recs, exp.dashboard_dir(src.name, dname), extra={"dataset": dname}, lm=lm)
    stats.save(exp.firing_stats_path(src.name, dname))  # with its .parquet table beside it
    t_fire = time.time() - t1

    promotes = top_logit_tokens(lm, sae, shown, 3)
    by_id = {r["index"]: r for r in recs}

    def fires_on(f: int) -> str:
        toks: list[str] = []
        for ex in by_id.get(f, {}).get("activations", []):
            t = ex["tokens"][ex["maxValueTokenIndex"]]
            if t not in toks:
                toks.append(t)
        return " ".join(repr(t) for t in toks[:4]) or "-"

    rows = [
        (
            int(r.feature_id),
            r.token,
            f"{r.num_prompts}/{len(prompts)}",
            r.activation_mean,
            r.activation_max,
            fires_on(int(r.feature_id)),
            " ".join(repr(t) for t in promotes.get(int(r.feature_id), [])),
        )
        for r in table_rows.itertuples()
    ]
    per_tok = uni.table.groupby("token").size().to_dict()
    con.print(
        table(
            f"most universal latents of {src.name} ({sae.d_sae} latents at {src.site}) at the assistant-header tokens",
            [
                "latent",
                "token",
                "active prompts",
                "mean act",
                "max act",
                f"fires most on ({dname})",
                "promotes",
            ],
            rows,
        )
    )
    s = stats.summary()
    po = s.get("prompt_only")
    con.print(
        f"universal (active on ≥ {threshold:.0%} of {len(prompts)} prompts, a > 0.01): "
        + (", ".join(f"{n} at {t}" for t, n in per_tok.items()) or "none")
        + f"  |  over {dname} ({s['n_tokens']} tokens): {s['alive']} alive, {s['dead']} dead latents, mean L0 "
        f"{s['mean_l0']:.1f}"
        + (f", {po} prompt-only (never fire on a response token)" if po is not None else "")
    )
    con.print(
        f"→ {csv_path}, {jsonl.name if jsonl else ''} ({len(uni.records)} records), dashboards {dash.parent}  "
        f"(universal {t_uni:.1f} s, firing + dashboards {t_fire:.1f} s)"
    )
    ctx.state["universal_features"] = uni.table


STAGE = Stage(
    60, "features", run, "universal SAE features at the assistant-header tokens, firing stats, dashboards"
)
