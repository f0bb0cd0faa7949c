"""Attribution patching vs exact activation patching over the same sites.

Workload: the bundled capitals task (10 clean/corrupted pairs, 5-token prompts) on the
bundled SmolLM2-135M; sites ``attn_out`` and ``mlp_out`` of all 30 layers × every prompt
position (300 cells). Baseline: deltalens's exact activation patching (denoising), already
batched — every patch is a group of rows of a batched forward, and the columns before the
first clean/corrupted difference, whose patch is provably a no-op, are not run.
Measured: attribution patching of the same cells (two forwards and one backward).
Target: attribution ≥ 20× faster. Also printed: Pearson r between the two (normalised
effects), and the per-patch cost of the unbatched loop (one forward per patch).

    python benchmarks/patching.py
"""

from __future__ import annotations

import time

import torch
from _common import best_of, report

import deltalens
from deltalens.circuits import activation_patching, attribution_patching, build_task, pearson, run_patches
from deltalens.data.pairs import bundled_pairs


def main() -> None:
    lm = deltalens.load("smollm2-135m-instruct")
    task = build_task(lm, bundled_pairs("capitals"))
    comps = ["attn_out", "mlp_out"]

    t = time.perf_counter()
    exact = activation_patching(lm, task, comps, progress=False)
    t_exact = time.perf_counter() - t
    t_attr = best_of(lambda: attribution_patching(lm, task, comps), repeat=3, warmup=1)
    attr = attribution_patching(lm, task, comps)
    r = pearson(exact.normalised, attr.normalised)

    # unbatched reference: one forward per patch (what a plain loop over sites × positions does)
    from deltalens.hooks import Site

    sample = [{Site(layer, c): [task.positions[-1]]} for c in comps for layer in (0, 10, 20)]
    t = time.perf_counter()
    for p in sample:
        run_patches(lm, task, [p])
    per_patch_loop = (time.perf_counter() - t) / len(sample)
    n_run = exact.meta["n_forward_rows"] // task.n_seqs
    per_patch_batched = t_exact / max(n_run, 1)

    n_cells = exact.values.numel()
    report(
        "attribution patching vs exact activation patching (attn_out+mlp_out, 30 layers x positions)",
        t_exact / t_attr,
        20.0,
        f"attribution {t_attr:.2f} s vs exact {t_exact:.1f} s for {n_cells} cells ({n_run} patches run, "
        f"{task.n_pairs} pairs); Pearson r = {r:.3f}; exact per patch: batched {per_patch_batched * 1000:.0f} ms, "
        f"one-forward loop {per_patch_loop * 1000:.0f} ms; {torch.get_num_threads()} threads",
    )


if __name__ == "__main__":
    main()
