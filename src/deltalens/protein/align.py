"""Pairwise alignment of each query against a reference set: identity, similarity and coverage
to the nearest reference.

For a query ``q`` and a reference ``r``, ``A(q, r)`` is an optimal alignment under BLOSUM62 with
affine gaps (a gap of ``k`` residues costs ``gap_open + (k − 1)·gap_extend``; global =
Needleman–Wunsch with end gaps, local = Smith–Waterman). With ``C`` its columns:

* ``identity(q, r)   = #{columns with identical residues} / |C|``;
* ``similarity(q, r) = #{columns pairing residues a, b with BLOSUM62(a, b) > 0} / |C|``;
* the **nearest reference** ``r* = argmax_r identity(q, r)`` (ties: higher alignment score, then
  the earlier reference);
* ``coverage(q) = #{residues of q aligned to a residue of r*} / |q|``.

With the training set as references, ``identity`` is the memorisation check: 1.0 means the
query occurs verbatim in the training data.

Backends: ``parasail`` (striped SIMD dynamic programming that keeps the statistics without a
traceback; the default, measured faster in ``benchmarks/protein_align.py``) and ``biopython``
(``Bio.Align.PairwiseAligner``, one alignment with its counts per pair). Both use the same
scoring, so scores agree exactly; identity can differ where several alignments are optimal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError

BACKENDS = ("parasail", "biopython")
MODES = ("global", "local")


@dataclass(frozen=True)
class NearestHit:
    """The nearest reference of one query (module docstring for the definitions)."""

    ref_index: int
    identity: float
    similarity: float
    coverage: float
    score: float
    length: int


def _check(mode: str, backend: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"alignment mode must be one of {', '.join(MODES)}, got {mode!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"alignment backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def _parasail_stats(q: str, r: str, mode: str, go: int, ge: int):
    import parasail

    fn = parasail.nw_stats_striped_16 if mode == "global" else parasail.sw_stats_striped_16
    res = fn(q, r, go, ge, parasail.blosum62)
    if res.saturated:  # scores beyond 16 bits: very long sequences
        fn = parasail.nw_stats_striped_32 if mode == "global" else parasail.sw_stats_striped_32
        res = fn(q, r, go, ge, parasail.blosum62)
    return res


def _parasail_coverage(q: str, r: str, mode: str, go: int, ge: int) -> float:
    import parasail

    fn = parasail.nw_trace_striped_32 if mode == "global" else parasail.sw_trace_striped_32
    tb = fn(q, r, go, ge, parasail.blosum62).traceback
    aligned = sum(1 for a, b in zip(tb.query, tb.ref) if a != "-" and b != "-")
    return aligned / max(len(q), 1)


def _biopython_aligner(mode: str, go: int, ge: int):
    from Bio import Align
    from Bio.Align import substitution_matrices

    m = substitution_matrices.load("BLOSUM62")
    al = Align.PairwiseAligner(mode=mode, substitution_matrix=m, open_gap_score=-go, extend_gap_score=-ge)
    return al, m


def nearest_references(
    queries: Sequence[str],
    references: Sequence[str],
    *,
    mode: str = "global",
    backend: str = "parasail",
    gap_open: int = 11,
    gap_extend: int = 1,
) -> list[NearestHit]:
    """The :class:`NearestHit` of every query against ``references`` (module docstring). An
    empty query gets identity, similarity and coverage 0 and ``ref_index`` −1."""
    _check(mode, backend)
    if not references:
        raise ConfigError("alignment needs at least one reference sequence")
    out: list[NearestHit] = []
    if backend == "parasail":
        for q in queries:
            if not q:
                out.append(NearestHit(-1, 0.0, 0.0, 0.0, 0.0, 0))
                continue
            best = None
            for j, r in enumerate(references):
                s = _parasail_stats(q, r, mode, gap_open, gap_extend)
                n = max(int(s.length), 1)
                key = (s.matches / n, s.score)
                if best is None or key > best[0]:
                    best = (key, j, s.similar / n, n)
            assert best is not None
            (ident, score), j, sim, n = best
            cov = _parasail_coverage(q, references[j], mode, gap_open, gap_extend)
            out.append(NearestHit(j, float(ident), float(sim), float(cov), float(score), n))
        return out
    al, m = _biopython_aligner(mode, gap_open, gap_extend)
    for q in queries:
        if not q:
            out.append(NearestHit(-1, 0.0, 0.0, 0.0, 0.0, 0))
            continue
        best = None
        for j, r in enumerate(references):
            a = al.align(q, r)[0]
            c = a.counts(m)
            n = max(int(c.aligned + c.gaps), 1)
            key = (c.identities / n, float(a.score))
            if best is None or key > best[0]:
                best = (key, j, c.positives / n, c.aligned / len(q), n)
        assert best is not None
        (ident, score), j, sim, cov, n = best
        out.append(NearestHit(j, float(ident), float(sim), float(cov), float(score), n))
    return out
