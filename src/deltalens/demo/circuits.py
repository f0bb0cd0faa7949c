"""Demo stage 50: circuits on the bundled capitals task — residual patching by layer ×
position, attribution patching vs exact patching of attn/MLP outputs, faithfulness, and
SAE-latent attribution with the error term (using the SAE stage's SAE)."""

from __future__ import annotations

from ..console import table
from . import DemoContext, Stage


def run(ctx: DemoContext) -> None:
    from ..circuits import build_task
    from ..circuits.pipeline import run_attribute, run_patch, run_sae_attribute
    from ..data.pairs import bundled_pairs

    lm, exp, con = ctx.lm, ctx.exp, ctx.console
    n = 4 if ctx.fast else 6
    task = build_task(lm, bundled_pairs("capitals"), metric="logit_diff", limit=n)
    m_clean, m_corr = task.run_metric(lm, "clean"), task.run_metric(lm, "corrupted")
    rows = [
        (r.clean, r.corrupted, f"{r.clean_answer!r} vs {r.corrupted_answer!r}", float(a), float(b))
        for r, a, b in zip(task.records[:4], m_clean, m_corr)
    ]
    con.print(
        table(
            f"capitals task ({n} pairs, first {len(rows)} shown): logit difference clean − corrupted answer",
            ["clean", "corrupted", "answers", "clean LD", "corrupted LD"],
            rows,
        )
    )
    con.print(
        f"mean logit difference: clean {float(m_clean.mean()):.2f}, corrupted {float(m_corr.mean()):.2f}"
    )

    # 1. exact residual patching: where does the country information sit, layer by layer?
    res, _ = run_patch(
        lm, task, exp.circuits_dir("capitals", "patching_denoising"), ["resid"], progress=False
    )
    summ = [s for s in res.position_summary("resid") if s["layers"] != "-"]
    con.print(
        table(
            "residual-stream patching (denoising): layers where patching a position restores ≥ 50 % "
            "of the clean logit difference",
            ["pos", "token", "layers", "max (normalised)"],
            [(s["position"], s["token"], s["layers"], s["max"]) for s in summ],
        )
    )
    con.print(f"  {res.meta['n_forward_rows']} patched sequences in {res.seconds:.1f} s")

    # 2. attribution patching of attn/MLP outputs, checked against exact patching
    out = run_attribute(
        lm,
        task,
        exp.circuits_dir("capitals", "attribution_denoising"),
        ["attn_out", "mlp_out"],
        compare_exact=True,
        faithfulness=True,
        ks=[1, 2, 3, 5, 10, 20],
        progress=False,
    )
    att, exact = out["result"], out["exact"]
    top = att.top(6)
    ex_norm = {
        (c, layer, p): float(
            exact.normalised[exact.components.index(c), exact.layers.index(layer), exact.positions.index(p)]
        )
        for c in exact.components
        for layer in exact.layers
        for p in exact.positions
    }
    con.print(
        table(
            "top sites by attribution patching (normalised; exact patching alongside)",
            ["component", "layer", "token", "attribution", "exact"],
            [
                (
                    t["component"],
                    t["layer"],
                    t["token"],
                    t["normalised"],
                    ex_norm[(t["component"], t["layer"], t["position"])],
                )
                for t in top
            ],
        )
    )
    r = out["r"]
    con.print(
        f"  Pearson r (attribution vs exact, attn_out+mlp_out by layer × position): {r['all']:.3f} "
        f"(attn_out {r['attn_out']:.3f}, mlp_out {r['mlp_out']:.3f}); attribution {att.seconds:.2f} s vs "
        f"exact {exact.seconds:.1f} s ({exact.seconds / max(att.seconds, 1e-9):.0f}×)"
    )
    curve = out["faithfulness"]
    con.print(
        table(
            "faithfulness of the top-k attn/MLP nodes (others mean-ablated)",
            ["k", "faithfulness", "complement"],
            list(zip(curve.ks, curve.faithfulness, curve.completeness))[:7],
        )
    )
    ctx.state["circuits"] = {"task": task, "patching": res, "attribution": att, "r": r}

    # 3. SAE latents, with and without the error term
    sae = ctx.state.get("sae")
    if sae is None:
        con.print(
            "[yellow]SAE part skipped:[/yellow] no SAE from the sae stage (state['sae']); run the whole demo, "
            "or `deltalens attribute --sae DIR` with any SAELens-format SAE"
        )
        return
    from ..circuits.printing import print_sae

    site = ctx.state.get("sae_site") or getattr(sae, "site", None)
    sae_out = run_sae_attribute(
        lm,
        task,
        sae,
        exp.circuits_dir("capitals", "sae_attribution"),
        site,
        top_k=25,
        faithfulness=True,
        ks=[1, 5, 10, 20, 50, 100, 200],
    )
    print_sae(sae_out["result"], k=8)
    c = sae_out["faithfulness"]
    con.print(
        table(
            f"faithfulness of the top-k SAE nodes at {sae_out['result'].site} (latents + error nodes)",
            ["k", "faithfulness", "complement"],
            list(zip(c.ks, c.faithfulness, c.completeness))[:8],
        )
    )
    ctx.state["circuits"]["sae"] = sae_out["result"]
    con.print(f"  → {sae_out['dir']}")


STAGE = Stage(50, "circuits", run, "activation/attribution patching and SAE-latent attribution on capitals")
