"""Protein key-metric scorers agree with their libraries run directly, on planted data."""

from __future__ import annotations

import random

import pytest

from deltalens.diff.organisms import preference_pairs
from deltalens.diff.scorers import CombinedScorer, load_scorer, pareto_fronts
from deltalens.errors import ConfigError, DataFormatError
from deltalens.generate import Generation
from deltalens.protein.cache import ScoreCache
from deltalens.protein.records import ProteinRecord, write_fasta
from deltalens.protein.scorers import AlignmentScorer, HMMScorer, OracleScorer, clean_generated
from protein_helpers import build_hmm, family, mutate, random_seq


def _gen(i: int, r: int, text: str) -> Generation:
    return Generation(i, r, "fam", None, "fam<sep><start>", text, [], [], True)


# ---- profile HMM ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hmm")
    anc, members = family(seed=0, length=60, n=24, n_sub=12)
    rng = random.Random(1)
    related = [mutate(rng, anc, k) for k in (5, 15, 25, 35, 45)]
    unrelated = [random_seq(rng, 60) for _ in range(6)]
    return build_hmm(tmp / "planted.hmm", members), anc, related, unrelated


def test_hmm_scorer_agrees_with_pyhmmer_hmmsearch(planted):
    import pyhmmer

    path, anc, related, unrelated = planted
    seqs = [anc, *related, *unrelated, "MKV"]
    sc = HMMScorer(str(path), cache=None)
    got = sc.score_sequences(seqs)
    # the library run directly: hmmsearch --max, every hit reported
    with pyhmmer.plan7.HMMFile(str(path)) as fh:
        hmm = fh.read()
    abc = pyhmmer.easel.Alphabet.amino()
    block = pyhmmer.easel.DigitalSequenceBlock(
        abc,
        [
            pyhmmer.easel.TextSequence(name=f"q{i}".encode(), sequence=s).digitize(abc)
            for i, s in enumerate(seqs)
        ],
    )
    hits = next(pyhmmer.hmmsearch(hmm, block, bias_filter=False, F1=1.0, F2=1.0, F3=1.0, E=1e300, domE=1e300))
    direct = {int(str(h.name)[1:]): h.score for h in hits}
    assert direct, "hmmsearch reported nothing"
    for i in range(len(seqs)):
        if i in direct:
            assert got["hmm_planted"][i] == pytest.approx(direct[i], abs=1e-4)
            assert got["hmm_planted_hit"][i] == 1.0
        else:
            assert got["hmm_planted"][i] == sc.no_hit and got["hmm_planted_hit"][i] == 0.0
    # planted ground truth: fewer substitutions from the ancestor → higher bit score
    rel = got["hmm_planted"][1:6]
    assert rel == sorted(rel, reverse=True)
    assert min(rel[:3]) > max(got["hmm_planted"][6:12])


def test_hmm_score_of_a_sequence_does_not_depend_on_its_batch(planted):
    path, anc, related, unrelated = planted
    sc = HMMScorer(str(path), cache=None)
    together = sc.score_sequences([anc, *related])["hmm_planted"]
    alone = [HMMScorer(str(path), cache=None).score_sequences([s])["hmm_planted"][0] for s in [anc, *related]]
    assert together == pytest.approx(alone, abs=1e-4)


def test_hmm_cache_reuses_and_scores_only_missing(planted, tmp_path):
    path, anc, related, unrelated = planted
    db = tmp_path / "scores.sqlite"
    calls: list[int] = []

    class Counting(HMMScorer):
        def _compute(self, seqs):
            calls.append(len(seqs))
            return super()._compute(seqs)

    a = Counting(str(path), cache=ScoreCache(db))
    first = a.score_sequences(related[:3])["hmm_planted"]
    b = Counting(str(path), cache=ScoreCache(db))  # a new process reading the same cache
    both = b.score_sequences(related)["hmm_planted"]
    assert calls == [3, 2]  # the second run computed only the two missing sequences
    assert both[:3] == pytest.approx(first)
    assert ScoreCache(db).count(b.key()) == 5


def test_hmm_scorer_spec_and_generations(planted):
    path, anc, related, _ = planted
    sc = load_scorer(f"hmm:{path}")
    gens = [_gen(0, 0, anc), _gen(0, 1, " ".join(related[0]))]  # spaces in decoded text are dropped
    assert sc(gens) == pytest.approx(sc.score_sequences([anc, related[0]])["hmm_planted"])
    assert sc.config()["sha256"]


def test_hmm_file_that_does_not_parse(tmp_path):
    bad = tmp_path / "bad.hmm"
    bad.write_text("HMMER3/f [3.3]\nNAME broken\nLENG nope\n")
    with pytest.raises(DataFormatError, match=str(bad)):
        HMMScorer(str(bad), cache=None)


# ---- alignment -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refs_and_queries(tmp_path_factory):
    rng = random.Random(3)
    refs = [random_seq(rng, 80) for _ in range(12)]
    # planted: query k is reference 2k mutated at 4k substitutions (no indels)
    planted = [(2 * k, 4 * k, mutate(rng, refs[2 * k], 4 * k)) for k in range(5)]
    tmp = tmp_path_factory.mktemp("align")
    path = write_fasta(tmp / "refs.fasta", [ProteinRecord(f"r{i}", "", s) for i, s in enumerate(refs)])
    return path, refs, planted


def test_alignment_planted_nearest_reference_and_identity(refs_and_queries):
    path, refs, planted = refs_and_queries
    cols = AlignmentScorer(path, cache=None).score_sequences([q for _, _, q in planted])
    for row, (j, n_sub, _) in enumerate(planted):
        assert cols["align_refs_nearest"][row] == j
        assert cols["align_refs_identity"][row] == pytest.approx((80 - n_sub) / 80)
        assert cols["align_refs_coverage"][row] == 1.0


def test_parasail_backend_agrees_with_parasail_run_directly(refs_and_queries):
    import parasail

    path, refs, planted = refs_and_queries
    rng = random.Random(9)
    queries = [q for _, _, q in planted] + [random_seq(rng, 60), refs[3][10:70]]
    cols = AlignmentScorer(path, backend="parasail", cache=None).score_sequences(queries)
    for row, q in enumerate(queries):
        stats = [parasail.nw_stats_striped_16(q, r, 11, 1, parasail.blosum62) for r in refs]
        best = max(range(len(refs)), key=lambda j: (stats[j].matches / stats[j].length, stats[j].score, -j))
        s = stats[best]
        assert cols["align_refs_nearest"][row] == best
        assert cols["align_refs_identity"][row] == pytest.approx(s.matches / s.length)
        assert cols["align_refs_similarity"][row] == pytest.approx(s.similar / s.length)
        assert cols["align_refs_score"][row] == s.score
    # the fragment refs[3][10:70] is covered completely by its source
    assert cols["align_refs_nearest"][-1] == 3 and cols["align_refs_coverage"][-1] == 1.0


def test_biopython_backend_agrees_with_pairwise_aligner_run_directly(refs_and_queries):
    from Bio import Align
    from Bio.Align import substitution_matrices

    path, refs, planted = refs_and_queries
    rng = random.Random(11)
    queries = [q for _, _, q in planted[:3]] + [random_seq(rng, 50)]
    for mode in ("global", "local"):
        bio = AlignmentScorer(path, backend="biopython", mode=mode, cache=None).score_sequences(queries)
        par = AlignmentScorer(path, backend="parasail", mode=mode, cache=None).score_sequences(queries)
        m = substitution_matrices.load("BLOSUM62")
        al = Align.PairwiseAligner(mode=mode, substitution_matrix=m, open_gap_score=-11, extend_gap_score=-1)
        for row, q in enumerate(queries):
            alns = [al.align(q, r)[0] for r in refs]
            idents = [a.counts(m).identities / a.length for a in alns]
            best = max(range(len(refs)), key=lambda j: (idents[j], alns[j].score, -j))
            assert bio["align_refs_nearest"][row] == best
            assert bio["align_refs_identity"][row] == pytest.approx(idents[best])
            assert bio["align_refs_score"][row] == alns[best].score
            # the two backends use one scoring scheme: the optimal score of the nearest pair is equal
            j = int(par["align_refs_nearest"][row])
            assert al.score(q, refs[j]) == par["align_refs_score"][row]


def test_local_coverage_of_a_fragment_in_junk(refs_and_queries):
    path, refs, _ = refs_and_queries
    rng = random.Random(2)
    q = random_seq(rng, 40) + refs[5][:40]  # half of the query is reference 5
    cols = AlignmentScorer(path, mode="local", cache=None).score_sequences([q])
    assert cols["align_refs_nearest"][0] == 5
    assert 0.45 <= cols["align_refs_coverage"][0] <= 0.6
    assert cols["align_refs_identity"][0] > 0.9


def test_alignment_spec_options(refs_and_queries):
    path, refs, planted = refs_and_queries
    sc = load_scorer(f"align:{path}@coverage,mode=local")
    assert sc.name == "align_refs_coverage" and sc.mode == "local"
    with pytest.raises(ConfigError, match="unknown option 'frob'"):
        load_scorer(f"align:{path}@frob=1")


def test_reference_fasta_with_no_sequences(tmp_path):
    p = tmp_path / "empty.fasta"
    p.write_text("\n")
    with pytest.raises(DataFormatError, match=f"{p}: no sequences"):
        AlignmentScorer(p, cache=None)


# ---- oracle, combination -------------------------------------------------------------------------


def test_oracle_from_a_file_function(tmp_path):
    f = tmp_path / "my_oracle.py"
    f.write_text(
        "def hydrophobic(seqs):\n    return [sum(c in 'AILMFVW' for c in s) / len(s) for s in seqs]\n"
    )
    sc = load_scorer(f"oracle:{f}:hydrophobic")
    assert isinstance(sc, OracleScorer)
    assert sc([_gen(0, 0, "AAAK"), _gen(0, 1, "KKKK")]) == [0.75, 0.0]


def test_oracle_wrong_count_is_refused():
    sc = OracleScorer(lambda seqs: [1.0], cache=None)
    with pytest.raises(ConfigError, match="returned 1 values for 2 sequences"):
        sc.score_sequences(["AA", "CC"])


def test_clean_generated():
    assert clean_generated(" m k\nv*J ") == "MKVXX"


def test_pareto_fronts_planted():
    pts = [(3, 1), (1, 3), (2, 2), (1, 1), (0, 0), (2, 0.5)]
    # (1,1) is dominated by (2,2), (2,0.5) by (3,1); (0,0) by those of front 1 too
    assert pareto_fronts(pts) == [0, 0, 0, 1, 2, 1]


def test_combined_scorer_weighted_and_pareto_pairs():
    a = OracleScorer(lambda s: [float(x.count("A")) for x in s], name="a", cache=None)
    b = OracleScorer(lambda s: [float(x.count("C")) for x in s], name="b", cache=None)
    gens = [_gen(0, 0, "AAAC"), _gen(0, 1, "ACCC"), _gen(0, 2, "AKKK"), _gen(1, 0, "CC"), _gen(1, 1, "K")]
    w = CombinedScorer([a, b], weights=[1.0, 2.0])
    cols = w.score_columns(gens)
    assert set(cols) == {"a", "b"}
    assert w.combine(cols, gens) == [5.0, 7.0, 1.0, 4.0, 0.0]
    p = CombinedScorer([a, b], rule="pareto")
    s = p(gens)
    # prompt 0: AAAC (3,1) and ACCC (1,3) are both on front 0; AKKK (1,0) is dominated
    assert s[0] > -0.5 and s[1] > -0.5 and s[2] <= -1
    pairs = preference_pairs(gens, s)
    assert pairs[0]["rejected"] == "AKKK" and pairs[0]["chosen"] in ("AAAC", "ACCC")
    with pytest.raises(ConfigError, match="2 weights for 1 scorers"):
        CombinedScorer([a], weights=[1, 2])


def test_plddt_plumbing_only_tiny_random_esmfold():
    """Plumbing only: a tiny random ESMFold (no real weights) — pLDDT = 100 × mean Cα pLDDT of
    ``EsmForProteinFolding.infer``, independent of padding in a batch."""
    import torch

    from deltalens.protein.scorers import PLDDTScorer
    from protein_helpers import tiny_esmfold

    model = tiny_esmfold()
    seqs = ["MKVLAAGIVGK", "MKKL", "WWPPGGHHAACC"]
    sc = PLDDTScorer(model, cache=None)
    got = sc.score_sequences(seqs)["plddt"]
    for s, v in zip(seqs, got):
        with torch.no_grad():
            direct = 100 * model.infer([s])["plddt"][0, :, 1].mean().item()
        assert v == pytest.approx(direct, abs=1e-3)
        assert 0.0 <= v <= 100.0


def test_plddt_without_local_weights_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not available locally"):
        load_scorer(f"plddt:{tmp_path / 'no_such_esmfold'}")


def test_unknown_protein_spec():
    with pytest.raises(ConfigError, match="write hmm:FILE.hmm"):
        load_scorer("hmm:")
    assert isinstance(load_scorer("length"), object)


def test_spec_of_missing_hmm_file(tmp_path):
    with pytest.raises(DataFormatError, match="HMM file not found"):
        load_scorer(f"hmm:{tmp_path}/none.hmm")
