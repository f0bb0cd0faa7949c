"""Benchmark: a batched steering sweep vs one configuration at a time.

8 configurations (4 layers × 2 coefficients of a fixed direction, response-only
steering) × the 20 held-out questions of the bundled ``pirate`` trait × 48 new tokens,
greedy, on the bundled SmolLM2-135M-Instruct.

* baseline — the way persona-vector scripts run: for each configuration,
  ``deltalens.generate`` (Hugging Face ``model.generate``) on the 20 questions as one
  batch of 20 under that configuration's ``Add``;
* batched — :func:`deltalens.steering.generate_sweep`: all 160 rows in one batch, the
  prompts prefilled once and the KV cache shared, finished rows dropped.

Both must give the same responses, row for row. Target: batched ≥ 2× faster (aim 3×).
Each side is timed twice, interleaved (A B then B A), and the best time is kept, so a
burst of other work on a shared CPU does not decide the ratio. ``DELTALENS_THREADS`` sets
torch's thread count (default: torch's), ``DELTALENS_BENCH_REPS=1`` times once.
Run: ``python benchmarks/steering_sweep.py`` (exits 1 if the target or equality fails).
"""

from __future__ import annotations

import os
import sys
import time

import torch

TARGET = 2.0
N_NEW = 48
REPS = int(os.environ.get("DELTALENS_BENCH_REPS", "2"))


def main() -> int:
    import deltalens
    from deltalens.data.traits import load_trait
    from deltalens.steering import Candidate, Term, generate_sweep
    from deltalens.vectors import reference_norms

    if os.environ.get("DELTALENS_THREADS"):
        torch.set_num_threads(int(os.environ["DELTALENS_THREADS"]))
    lm = deltalens.load("smollm2-135m-instruct")
    questions = load_trait("instruction/pirate").steering_questions
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(lm.d_model, generator=g)
    direction /= direction.norm()
    layers = [6, 10, 14, 18]
    norms = reference_norms(lm, layers)
    configs = [
        Candidate((Term(direction * norms[L], rel, layer=L, coef_mode="raw"),), label=f"L{L} x{rel}")
        for L in layers
        for rel in (0.2, 0.4)
    ]
    # warm-up (first calls allocate); not timed
    deltalens.generate(lm, questions[:4], max_new_tokens=4, progress=False)

    def one_at_a_time():
        out = []
        for cfg in configs:
            ivs = [deltalens.Add(x.site, x.vector.vector, x.coef, positions="response") for x in cfg.terms]
            with deltalens.intervene(lm, ivs):
                out.append(
                    deltalens.generate(lm, questions, max_new_tokens=N_NEW, batch_size=20, progress=False)
                )
        return out

    def batched():
        return generate_sweep(lm, questions, configs, max_new_tokens=N_NEW, progress=False)

    # interleaved repetitions (A B, B A), best time of each: robust to other jobs on a shared CPU
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
    total = len(configs) * len(questions)
    toks = sum(len(x.response_ids) for r in fast for x in r)
    ratio = t_base / t_fast
    print(
        f"steering_sweep: {len(configs)} configs x {len(questions)} questions x {N_NEW} new tokens ({toks} tokens): "
        f"one config at a time (generate, batch 20) {t_base:.1f} s, batched sweep {t_fast:.1f} s -> {ratio:.2f}x "
        f"(target >= {TARGET:.0f}x); identical outputs {same}/{total}; best of {len(times['base'])} interleaved runs, "
        f"{torch.get_num_threads()} thread(s)"
    )
    ok = ratio >= TARGET and same == total
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
