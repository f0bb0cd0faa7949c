"""Benchmark: nearest-reference alignment of 1,000 queries × 100 references, parasail vs Biopython.

The task of :class:`deltalens.protein.scorers.AlignmentScorer`: for each of 1,000 query
sequences (100 residues, random over the 20 amino acids) find the nearest of 100 reference
sequences (100 residues) by identity of a global BLOSUM62 alignment (gap open 11, extend 1), and
report identity, similarity and coverage — 100,000 alignments.

* baseline — Biopython ``Bio.Align.PairwiseAligner``: one optimal alignment and its counts per pair;
* parasail — striped SIMD Needleman–Wunsch that keeps the statistics (matches, similar, length)
  without a traceback, plus one traceback per query for coverage (what the scorer uses by default).

Both must find the same nearest reference for every mutated reference and the same alignment
score wherever they pick the same nearest (identity may differ where several alignments are
optimal, and then so may the nearest of a random query; the counts are printed). Target:
parasail ≥ 3× faster. Run: ``python benchmarks/protein_align.py`` (exits 1 if the target or the
agreement fails); ``DELTALENS_BENCH_QUERIES=200`` runs a smaller instance.
"""

from __future__ import annotations

import os
import random
import sys
import time

TARGET = 3.0
N_QUERIES = int(os.environ.get("DELTALENS_BENCH_QUERIES", "1000"))
N_REFS = 100
LENGTH = 100


def main() -> int:
    from deltalens.protein.align import nearest_references

    rng = random.Random(0)
    aa = "ACDEFGHIKLMNPQRSTVWY"
    refs = ["".join(rng.choice(aa) for _ in range(LENGTH)) for _ in range(N_REFS)]
    queries = []
    for k in range(N_QUERIES):  # half are mutated references (a clear nearest), half random
        if k % 2 == 0:
            s = list(refs[rng.randrange(N_REFS)])
            for i in rng.sample(range(LENGTH), rng.randrange(10, 60)):
                s[i] = rng.choice(aa)
            queries.append("".join(s))
        else:
            queries.append("".join(rng.choice(aa) for _ in range(LENGTH)))
    print(
        f"{N_QUERIES} queries × {N_REFS} references × {LENGTH} residues = {N_QUERIES * N_REFS:,} alignments"
    )
    t = time.perf_counter()
    par = nearest_references(queries, refs, backend="parasail")
    t_par = time.perf_counter() - t
    print(f"parasail  : {t_par:7.2f} s  ({N_QUERIES * N_REFS / t_par:,.0f} alignments/s)")
    t = time.perf_counter()
    bio = nearest_references(queries, refs, backend="biopython")
    t_bio = time.perf_counter() - t
    print(f"biopython : {t_bio:7.2f} s  ({N_QUERIES * N_REFS / t_bio:,.0f} alignments/s)  [baseline]")
    same_ref = sum(a.ref_index == b.ref_index for a, b in zip(par, bio))
    same_score = sum(a.score == b.score for a, b in zip(par, bio) if a.ref_index == b.ref_index)
    planted_ok = all(par[k].ref_index == bio[k].ref_index for k in range(0, N_QUERIES, 2))
    same_ident = sum(abs(a.identity - b.identity) < 1e-9 for a, b in zip(par, bio))
    ratio = t_bio / t_par
    print(
        f"agreement : nearest {same_ref}/{N_QUERIES} (every mutated reference: {planted_ok}), score "
        f"{same_score}/{same_ref} where the nearest agrees, identity {same_ident}/{N_QUERIES} (co-optimal "
        "alignments may differ in identity, and so pick another nearest for random queries)"
    )
    print(f"speed-up  : parasail {ratio:.1f}× faster than Biopython (target ≥ {TARGET}×)")
    ok = ratio >= TARGET and same_score == same_ref and planted_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
