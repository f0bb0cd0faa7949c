"""Demo stage 20: extract a trait vector and run a short judged steering search.

Extracts ``instruction/pirate`` vectors (mean_diff and probe, every layer) from the bundled
model's own answers under pirate / plain system prompts, trains the offline judge on the
same answers, then runs the adaptive coefficient search for the probe vectors of three
mid-depth layers (all layers in one batch per round) over the 20 held-out questions and
prints the checkpoint table. Everything lands in the demo experiment and is reused by a second run.
"""

from __future__ import annotations

import time

from ..cli._common import table
from . import DemoContext, Stage

TRAIT = "instruction/pirate"
VARIANT = "instruct"
POSITION = "response[:]"
METHOD = "probe"


def _f(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def run(ctx: DemoContext) -> None:
    from ..data.traits import load_trait
    from ..judges import JudgeCache, TraitInfo
    from ..steering.evaluate import EvalSettings
    from ..steering.extraction import extract
    from ..steering.pipeline import SteeringRun, offline_judge, write_steering_report
    from ..steering.results import ResultsLog
    from ..steering.search import adaptive_search, checkpoint_summary, per_layer_table

    lm, exp, con = ctx.lm, ctx.exp, ctx.console
    fast = ctx.fast
    trait = load_trait(TRAIT)
    cfg = exp.load_config()
    cfg.setdefault("models", {}).setdefault(VARIANT, lm.spec)
    exp.save_config(cfg)

    # Phase 0: extraction
    t = time.time()
    res = extract(lm, exp, trait, VARIANT, POSITION, ["mean_diff", "probe"], max_new_tokens=20 if not fast else 12,
                  batch_size=32, progress=False)
    dt = time.time() - t
    show = [L for L in range(0, lm.n_layers, max(1, lm.n_layers // 6))]
    rows = []
    for m in ("mean_diff", "probe"):
        by_layer = {r["layer"]: r for r in res.summary[m]}
        for L in show:
            r = by_layer[L]
            rows.append((m, L, _f(r.get("val_accuracy"), 2), _f(r.get("val_auroc"), 2), _f(r.get("val_separation"), 2), _f(r["norm"], 2)))
    con.print(table(f"trait vectors · {TRAIT} · {POSITION} (held-out scenarios)", ["method", "layer", "val acc", "AUROC",
                    "separation d", "‖v‖"], rows))
    con.print(f"{res.n_pos} + {res.n_neg} responses ({'reused' if res.reused_responses else 'generated'}), "
              f"{lm.n_layers} layers × 2 methods fitted in {dt:.1f} s → {res.paths['mean_diff'].parent}")

    # offline judge, trained on the same responses
    t = time.time()
    judge = offline_judge(lm, exp, trait, VARIANT, progress=False)
    m = judge.classifier.meta
    con.print(f"offline judge: MiniLM classifier (5-fold CV accuracy {m['cv_accuracy']:.2f}, AUROC {m['cv_auroc']:.2f}) "
              f"+ likelihood coherence ({time.time() - t:.1f} s)")

    # Phase 1: adaptive search, three layers stepped together
    layers = [L for L in (12, 14, 16) if L < lm.n_layers] if not fast else [L for L in (12, 15) if L < lm.n_layers]
    if not layers:
        layers = [lm.n_layers // 2]
    questions = trait.steering_questions if not fast else trait.steering_questions[:8]
    settings = EvalSettings(list(questions), max_new_tokens=32 if not fast else 20)
    log = ResultsLog(exp.steering_results(trait.id, exp.steering_vector_id(VARIANT, POSITION)))
    cache = JudgeCache(exp.judge_cache_path())
    vecs = {L: res.vectors[METHOD][L] for L in layers}
    t = time.time()
    search_rows: list[tuple] = []

    def report(step: int, rows_: list) -> None:
        for _, st, rec in rows_:
            search_rows.append((step + 1, st.layer, f"{st.coef:g}", _f(rec.get("trait_mean")), _f(rec.get("coherence_mean"))))

    try:
        sr = adaptive_search(lm, {METHOD: vecs}, settings, judge, TraitInfo.from_trait(trait), log, start=0.15,
                             steps=3 if not fast else 2, threshold=72.0, cache=cache, trait_id=trait.id, progress=False,
                             report=report)
    finally:
        cache.close()
    dt = time.time() - t
    con.print(table(f"adaptive search (relative coefficients, {len(layers)} layers per batch, "
                    f"{len(questions)} held-out questions × {settings.max_new_tokens} tokens)",
                    ["round", "layer", "coef", "trait", "coherence"], search_rows))
    base = sr.baseline
    summ = checkpoint_summary(sr.records, base)[METHOD]
    a70, a80 = summ.get("at_coh70") or {}, summ.get("at_coh80") or {}
    con.print(table(f"checkpoint ({METHOD})", ["best layer", "max Δ coh≥80", "max Δ coh≥70", "coef: coh<80 first", "baseline trait/coh"], [(
        _f(summ["best_layer"], 0),
        _f(summ["max_delta_coh80"]) + (f" (L{a80['layer']} c{a80['coef']:g})" if a80 else ""),
        _f(summ["max_delta_coh70"]) + (f" (L{a70['layer']} c{a70['coef']:g}, coh {a70['coherence']:.0f})" if a70 else ""),
        _f(summ["coef_coh_below_80"], 3),
        f"{_f(base.get('trait_mean'))} / {_f(base.get('coherence_mean'))}",
    )]))
    if a70:
        best = next(r for r in sr.records if r["layer"] == a70["layer"] and r["coef"] == a70["coef"])
        ex = [(q["question"][:40], b["response"].replace("\n", " ")[:70], q["response"].replace("\n", " ")[:70])
              for q, b in zip(best["responses"][:3], base["responses"][:3])]
        con.print(table(f"examples: unsteered vs L{a70['layer']} c{a70['coef']:g}", ["question", "unsteered", "steered"], ex))
    run_ = SteeringRun(base, sr.records, checkpoint_summary(sr.records, base), per_layer_table(sr.records, base), log.path)
    write_steering_report(run_, log.path.parent)
    con.print(f"search: {len(sr.records)} configurations + baseline in {dt:.1f} s → {log.path} (+ layers.csv, configs.csv, figures)")
    ctx.state["steering"] = {"trait": trait.id, "summary": summ, "results": str(log.path),
                             "vectors_dir": str(res.paths["mean_diff"])}


STAGE = Stage(20, "steering", run, "trait vector extraction and judged steering search")
