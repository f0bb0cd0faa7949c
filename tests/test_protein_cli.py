"""``deltalens protein score | generate | datasets`` end to end on in-test inputs."""

from __future__ import annotations

import pandas as pd

from deltalens.cli import main as _main
from deltalens.protein.records import ProteinRecord, read_records, write_fasta
from deltalens.protein.scorers import HMMScorer
from protein_helpers import build_hmm, family, tiny_protein_lm


def main(argv: list[str]) -> None:
    try:
        _main(argv)
    except SystemExit as exc:
        assert not exc.code, f"exit {exc.code}"


def test_score_generate_datasets(tmp_path, capsys):
    _, members = family(seed=3, length=30, n=8, n_sub=5)
    hmm = build_hmm(tmp_path / "fam.hmm", members)
    seqs = write_fasta(
        tmp_path / "q.fasta", [ProteinRecord(f"q{i}", "famA", s) for i, s in enumerate(members[:4])]
    )
    main(["protein", "score", str(seqs), "--scorer", f"hmm:{hmm}", "--scorer", f"align:{seqs}", "--no-cache",
          "--out", str(tmp_path / "s.parquet")])  # fmt: skip
    df = pd.read_parquet(tmp_path / "s.parquet")
    assert list(df["id"]) == ["q0", "q1", "q2", "q3"] and (df["align_q_identity"] == 1.0).all()
    assert (
        list(df["hmm_planted"]) == HMMScorer(str(hmm), cache=None).score_sequences(members[:4])["hmm_planted"]
    )
    model = tiny_protein_lm(tmp_path / "m", tags=("famA", "famB"))
    main(["protein", "generate", "--model", str(model), "--tag", "famB", "--n", "3", "--max-new-tokens", "12",
          "--out", str(tmp_path / "g.fasta")])  # fmt: skip
    got = read_records(tmp_path / "g.fasta", alphabet="extended")  # the testbed vocabulary has X
    assert len(got) == 3 and {r.tag for r in got} == {"famB"}
    main(["protein", "datasets", "--model", f"0={model}", "--tag", "famA", "--n", "2", "--max-new-tokens", "12",
          "--scorer", f"hmm:{hmm}", "--out", str(tmp_path / "ds")])  # fmt: skip
    out = capsys.readouterr().out
    assert "per-iteration datasets" in out and (tmp_path / "ds" / "combined.parquet").is_file()
