"""Demo stage 20: extract a trait vector and run a short judged steering search.

Extracts ``instruction/pirate`` vectors (mean_diff and probe, every layer) from the bundled
model's own answers under pirate / plain system prompts, trains the offline judge on the
same answers, then runs the adaptive coefficient search for the probe vectors of three
mid-depth layers (all layers in one batch per round) over the 20 held-out questions and
prints the checkpoint table. Everything lands in the demo experiment and is reused by a second run.
"""

from __future__ import annotations

import time

from ..console import table
from . import DemoContext, Stage

TRAIT = "instruction/pirate"
VARIANT = "instruct"
POSITION = "response[:]"
METHOD = "probe"


def _f(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def run(ctx: DemoContext) -> None:
    from ..data.traits import load_trait
    from ..steering.extraction import ExtractConfig, extract
    from ..steering.pipeline import offline_judge
    from ..steering.runs import SteerRunConfig, run_steering

    lm, exp, con = ctx.lm, ctx.exp, ctx.console
    fast = ctx.fast
    trait = load_trait(TRAIT)
    cfg = exp.load_config()
    cfg.setdefault("models", {}).setdefault(VARIANT, lm.spec)
    exp.save_config(cfg)

    # Phase 0: extraction
    t = time.time()
    res = extract(
        lm,
        exp,
        trait,
        ExtractConfig(
            variant=VARIANT,
            position=POSITION,
            methods=["mean_diff", "probe"],
            max_new_tokens=20 if not fast else 12,
            batch_size=32,
        ),
        progress=False,
    )
    dt = time.time() - t
    show = [L for L in range(0, lm.n_layers, max(1, lm.n_layers // 6))]
    rows = []
    for m in ("mean_diff", "probe"):
        by_layer = {r["layer"]: r for r in res.metrics[m]}
        for L in show:
            r = by_layer[L]
            rows.append(
                (
                    m,
                    L,
                    _f(r.get("val_accuracy"), 2),
                    _f(r.get("val_auroc"), 2),
                    _f(r.get("val_separation"), 2),
                    _f(r["norm"], 2),
                )
            )
    con.print(
        table(
            f"trait vectors · {TRAIT} · {POSITION} (held-out scenarios)",
            ["method", "layer", "val acc", "AUROC", "separation d", "‖v‖"],
            rows,
        )
    )
    con.print(
        f"{res.n_pos} + {res.n_neg} responses ({'reused' if res.reused_responses else 'generated'}), "
        f"{lm.n_layers} layers × 2 methods fitted in {dt:.1f} s → {res.paths['mean_diff'].parent}"
    )

    # offline judge, trained on the same responses
    t = time.time()
    judge = offline_judge(lm, exp, trait, VARIANT, progress=False)
    m = judge.classifier.meta
    con.print(
        f"offline judge: MiniLM classifier (5-fold CV accuracy {m['cv_accuracy']:.2f}, AUROC {m['cv_auroc']:.2f}) "
        f"+ likelihood coherence ({time.time() - t:.1f} s)"
    )

    # Phase 1: adaptive search, three layers stepped together
    layers = (
        [L for L in (12, 14, 16) if L < lm.n_layers] if not fast else [L for L in (12, 15) if L < lm.n_layers]
    )
    if not layers:
        layers = [lm.n_layers // 2]
    steer = SteerRunConfig(
        variant=VARIANT,
        position=POSITION,
        methods=[METHOD],
        layers=layers,
        subset=0 if not fast else 8,
        max_new_tokens=32 if not fast else 20,
        start=0.15,
        steps=3 if not fast else 2,
        threshold=72.0,
    )
    n_questions = len(trait.steering_questions) if not fast else min(8, len(trait.steering_questions))
    t = time.time()
    search_rows: list[tuple] = []

    def report(step: int, rows_: list) -> None:
        for _, st, rec in rows_:
            search_rows.append(
                (step + 1, st.layer, f"{st.coef:g}", _f(rec.trait_mean), _f(rec.coherence_mean))
            )

    run_ = run_steering(lm, exp, trait, steer, judge, progress=False, report=report)
    dt = time.time() - t
    con.print(
        table(
            f"adaptive search (relative coefficients, {len(layers)} layers per batch, "
            f"{n_questions} held-out questions × {steer.max_new_tokens} tokens)",
            ["round", "layer", "coef", "trait", "coherence"],
            search_rows,
        )
    )
    base = run_.baseline
    summ = run_.checkpoint[METHOD]
    a70, a80 = summ.get("at_coh70") or {}, summ.get("at_coh80") or {}
    con.print(
        table(
            f"checkpoint ({METHOD})",
            ["best layer", "max Δ coh≥80", "max Δ coh≥70", "coef: coh<80 first", "baseline trait/coh"],
            [
                (
                    _f(summ["best_layer"], 0),
                    _f(summ["max_delta_coh80"]) + (f" (L{a80['layer']} c{a80['coef']:g})" if a80 else ""),
                    _f(summ["max_delta_coh70"])
                    + (f" (L{a70['layer']} c{a70['coef']:g}, coh {a70['coherence']:.0f})" if a70 else ""),
                    _f(summ["coef_coh_below_80"], 3),
                    f"{_f(base.trait_mean)} / {_f(base.coherence_mean)}",
                )
            ],
        )
    )
    if a70:
        best = next(r for r in run_.records if r.layer == a70["layer"] and r.coef == a70["coef"])
        ex = [
            (q["question"][:40], b["response"].replace("\n", " ")[:70], q["response"].replace("\n", " ")[:70])
            for q, b in zip(best.responses[:3], base.responses[:3])
        ]
        con.print(
            table(
                f"examples: unsteered vs L{a70['layer']} c{a70['coef']:g}",
                ["question", "unsteered", "steered"],
                ex,
            )
        )
    con.print(
        f"search: {len(run_.records)} configurations + baseline in {dt:.1f} s → {run_.log_path} "
        "(+ steering.json, layers.csv, configs.csv, figures)"
    )
    ctx.state["steering"] = {
        "trait": trait.id,
        "summary": summ,
        "results": str(run_.log_path),
        "vectors_dir": str(res.paths["mean_diff"]),
    }


STAGE = Stage(20, "steering", run, "trait vector extraction and judged steering search")
