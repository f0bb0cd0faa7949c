"""Benchmark: a causal grid's cells as rows of shared batches vs one cell at a time.

16 cells — one latent group of 8 and 7 random groups of the same size, each zero-ablated and each
steered (c = 2, relative) — of an SAE at ``resid.6`` (2,304 latents, TopK k = 32, random unit
directions; speed does not depend on what the latents mean) × the 20 held-out questions of the
bundled ``pirate`` trait × 32 new tokens, greedy, on the bundled SmolLM2-135M-Instruct.

* baseline — the way one-off scripts run a grid: for each cell, ``deltalens.generate``
  (Hugging Face ``model.generate``) on the 20 questions as one batch under that cell's
  intervention (:class:`deltalens.hooks.EditLatents` / ``Add``);
* batched — :func:`deltalens.batched.generate_batched` with the interventions of
  :func:`deltalens.causal.run.cell_interventions` (what ``deltalens causal run`` does): 12 cells
  × 20 questions per batch, prompts prefilled once, finished rows dropped.

Both must give the same responses, row for row. Target: batched ≥ 3× faster. Each side is timed
twice, interleaved (A B then B A), best time kept; ``DELTALENS_BENCH_REPS=1`` times once.
Run: ``python benchmarks/causal.py`` (exits 1 if the target or equality fails).
"""

from __future__ import annotations

import os
import sys
import time

import torch

TARGET = 3.0
N_NEW = 32
REPS = int(os.environ.get("DELTALENS_BENCH_REPS", "2"))


def main() -> int:
    import deltalens
    from deltalens.batched import generate_batched
    from deltalens.causal import CausalConfig, Cell, latent_stats, null_groups
    from deltalens.causal.run import cell_interventions
    from deltalens.data.traits import load_trait
    from deltalens.sae.base import SAE, SAEConfig

    lm = deltalens.load("smollm2-135m-instruct")
    questions = list(load_trait("instruction/pirate").steering_questions)[:20]
    site = "resid.6"
    g = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(lm.d_model, 2304, "topk", k=32, site=site))
    with torch.no_grad():
        D = torch.randn(2304, lm.d_model, generator=g)
        D /= D.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(D)
        sae.W_enc.copy_(D.T)
    ctrl = deltalens.generate(lm, questions, max_new_tokens=N_NEW, progress=False)
    stats = {"M0D0": latent_stats(lm, sae, site, ctrl, "response")}
    group = tuple(int(i) for i in torch.argsort(stats["M0D0"].firing_rate, descending=True)[:8])
    groups = [group] + null_groups(group, stats["M0D0"].firing_rate.numpy(), 7, 10, "bench")
    cfg = CausalConfig(do_sample=False, coefficients=[2.0])
    cells = [Cell("ablation", 0, 0, "MD", "M0D0", f"g{k}", grp) for k, grp in enumerate(groups)]
    cells += [Cell("steering", 0, 0, "MD", "M0D0", f"g{k}", grp, 2.0) for k, grp in enumerate(groups)]
    saes, sites = {"M0D0": sae}, {"M0D0": site}
    Q = len(questions)

    def one_at_a_time():
        out = []
        for c in cells:
            ivs = cell_interventions([c], [0], Q, saes, sites, stats, cfg)
            with deltalens.intervene(lm, ivs):
                out.append(
                    deltalens.generate(lm, questions, max_new_tokens=N_NEW, batch_size=Q, progress=False)
                )
        return out

    def batched():
        def make(idx, row0, n_items):
            return cell_interventions([cells[i] for i in idx], row0, n_items, saes, sites, stats, cfg)

        return generate_batched(
            lm, questions, len(cells), make, max_new_tokens=N_NEW, max_rows=256, progress=False
        )

    times: dict[str, list[float]] = {"base": [], "fast": []}
    for order in (("base", "fast"), ("fast", "base"))[:REPS]:
        for name in order:
            t = time.perf_counter()
            result = one_at_a_time() if name == "base" else batched()
            times[name].append(time.perf_counter() - t)
            if name == "base":
                base = result
            else:
                fast = result
    t_base, t_fast = min(times["base"]), min(times["fast"])
    same = sum(a.response_ids == b.response_ids for ra, rb in zip(base, fast) for a, b in zip(ra, rb))
    total = len(cells) * Q
    changed = sum(a.response_ids != b.response_ids for r in fast for a, b in zip(r, ctrl))
    ratio = t_base / t_fast
    print(
        f"causal: {len(cells)} cells (8 ablation, 8 steering; groups of 8 latents of a 2304-latent SAE) x {Q} questions "
        f"x {N_NEW} new tokens: one cell at a time (generate, batch {Q}) {t_base:.1f} s, batched grid {t_fast:.1f} s "
        f"-> {ratio:.2f}x (target >= {TARGET:.0f}x); identical outputs {same}/{total}; {changed}/{total} rows differ "
        f"from the unmodified model; best of {len(times['base'])} interleaved runs, {torch.get_num_threads()} thread(s)"
    )
    ok = ratio >= TARGET and same == total
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
