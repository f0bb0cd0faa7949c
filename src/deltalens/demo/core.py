"""Demo stage 10: generate answers to bundled questions and capture activations."""

from __future__ import annotations

import time

from ..console import table
from ..generate import save_generations
from . import DemoContext, Stage

LAYERS = (6, 15, 24)


def run(ctx: DemoContext) -> None:
    from ..capture import capture
    from ..data import bundled_prompts
    from ..generate import generate

    lm, exp, con = ctx.lm, ctx.exp, ctx.console
    prompts = [r.as_prompt() for r in bundled_prompts("demo_questions")]
    t = time.time()
    gens = generate(lm, prompts, max_new_tokens=48, batch_size=32)
    dt = time.time() - t
    n_tok = sum(g.response_len for g in gens)
    out = exp.generations_path("demo_questions")
    save_generations(out, gens)
    con.print(
        table(
            "generations (greedy, 48 new tokens)",
            ["#", "question", "response"],
            [(g.index, g.question, g.response.replace("\n", " ")[:90]) for g in gens[:6]],
        )
    )
    con.print(f"{len(gens)} responses, {n_tok} tokens in {dt:.1f} s ({n_tok / dt:.0f} tok/s) → {out}")
    ctx.state["generations"] = gens

    sites = [(layer, "resid") for layer in LAYERS if layer < lm.n_layers]
    store_dir = exp.activations_dir("demo_questions", "base", "response")
    t = time.time()
    store = capture(lm, gens, sites, "response", store=store_dir, batch_size=16)
    dt_store = time.time() - t
    t = time.time()
    means = capture(lm, gens, sites, "response", reduce="mean", batch_size=16, progress=False)
    dt_mean = time.time() - t
    rows = [(str(s), tuple(means[s].shape), f"{means[s].norm(dim=-1).mean():.1f}") for s in means]
    con.print(table("mean response activation per question", ["site", "shape", "mean ‖x‖"], rows))
    s = store.summary()
    con.print(
        f"per-token store: {s['rows']} rows × {len(s['sites'])} sites, {s['size_mb']} MB → {store_dir}  "
        f"({dt_store:.1f} s; per-sequence means {dt_mean:.1f} s)"
    )
    ctx.state["store"] = store


STAGE = Stage(10, "core", run, "generate answers and capture activations")
