"""Demo stage 40: train a small TopK SAE on the bundled model's activations and evaluate it.

Data: the bundled Python-tutorial corpus (cut into 128-token windows) plus chat-formatted
text — the core stage's generations when present and the bundled chat prompts — so that
the chat template's tokens (used by the feature-analysis stage) are in distribution.
Shares ``state["sae"]``, ``state["sae_dir"]`` and ``state["sae_site"]`` with later stages.
"""

from __future__ import annotations

import time

from ..console import table
from . import DemoContext, Stage

SITE = "resid.6"


def _chat_items(ctx: DemoContext) -> list:
    from ..data import bundled_prompts

    items: list = []
    gens = ctx.state.get("generations") or []
    items.extend({"prompt_ids": g.prompt_ids, "response_ids": g.response_ids} for g in gens)
    lm = ctx.lm
    for r in bundled_prompts("chat_prompts"):
        ids = lm.encode(lm.format_chat(r.text, r.system), formatted=True)
        items.append({"prompt_ids": ids, "response_ids": []})
    return items


def run(ctx: DemoContext) -> None:
    import torch

    from ..capture import capture
    from ..data import bundled_path
    from ..data.corpus import read_texts, token_windows
    from ..sae.eval import SAEEvalConfig, evaluate_sae, summary_rows
    from ..sae.sources import TensorSource
    from ..sae.train import SAETrainConfig, train_sae

    lm, con = ctx.lm, ctx.console
    t0 = time.time()
    corpus = bundled_path("sae", "python_tutorial.txt")
    windows = list(token_windows(lm.tokenizer, read_texts(corpus), 128))
    n_eval = 8 if ctx.fast else 16
    train_w, eval_w = windows[:-n_eval], windows[-n_eval:]
    train_w = train_w[: (120 if ctx.fast else 240)]
    items = train_w + _chat_items(ctx)
    acts = capture(lm, items, [SITE], "all", batch_size=16, progress=False)
    x = acts[SITE]
    special = torch.tensor(sorted(set(lm.tokenizer.all_special_ids)))
    keep = ~torch.isin(acts.token_ids, special)
    src = TensorSource(x[keep], SITE, lm.name, high_norm_factor=10.0)
    t_cap = time.time() - t0
    con.print(
        f"captured {len(x)} token activations at {SITE} from {len(train_w)} corpus windows + "
        f"{len(items) - len(train_w)} chat texts in {t_cap:.1f} s; training on {len(src)} "
        f"(special and high-norm tokens excluded)"
    )

    cfg = SAETrainConfig(
        architecture="topk",
        expansion=4,
        k=32,
        batch_size=1024,
        total_tokens=(50_000 if ctx.fast else 120_000),
        lr=1e-3,
        dead_window_tokens=30_000,
    )
    out = ctx.exp.sae_dir(f"topk_{SITE.replace('.', '')}")
    res = train_sae(
        src,
        cfg,
        out=out,
        resume=False,
        progress=False,
        metadata={"training_data": "bundled python_tutorial.txt + chat prompts/generations"},
    )
    sae = res.sae
    con.print(
        f"trained {sae} on {res.tokens} tokens in {res.seconds:.1f} s ({res.tokens_per_second:.0f} tok/s) → {out}"
    )

    held = capture(lm, eval_w, [SITE], "all[1:]", batch_size=16, progress=False)[SITE]
    ev = evaluate_sae(
        sae,
        SAEEvalConfig(positions="all[1:]", ce_batch_size=8),
        activations=held,
        lm=lm,
        windows=eval_w,
        out=ctx.exp.sae_eval_dir(f"topk_{SITE.replace('.', '')}"),
    )
    con.print(
        table(
            f"SAE eval on {len(eval_w)} held-out windows ({len(held)} tokens)",
            ["metric", "value", "definition"],
            summary_rows(ev),
        )
    )
    ctx.state["sae"] = sae
    ctx.state["sae_dir"] = out
    ctx.state["sae_site"] = SITE


STAGE = Stage(40, "sae", run, "train a TopK SAE on SmolLM2 activations and evaluate it")
