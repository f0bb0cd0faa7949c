"""Per-iteration datasets: one Parquet per iteration + combined; resumable scoring."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest

from deltalens.protein.datasets import ProteinDatasetConfig, build_datasets
from deltalens.protein.records import ProteinRecord, write_fasta
from deltalens.protein.scorers import HMMScorer
from protein_helpers import build_hmm, family, tiny_protein_lm


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ds")
    anc, members = family(seed=4, length=40, n=16, n_sub=8)
    hmm = build_hmm(tmp / "fam.hmm", members)
    refs = write_fasta(
        tmp / "train.fasta", [ProteinRecord(f"m{i}", "famA", s) for i, s in enumerate(members)]
    )
    # a hand-made series: D0, D1 as dpo-series writes them
    series = tmp / "series"
    series.mkdir()
    rng = random.Random(0)
    for i in range(2):
        with open(series / f"D{i}.jsonl", "w") as fh:
            for k in range(6):
                text = (
                    members[k]
                    if (k + i) % 2 == 0
                    else "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(40))
                )
                rec = {"iteration": i, "prompt_index": 0, "rollout": k, "question": "famA<sep><start>", "text": text,
                       "response": text, "score": float(k), "pair_role": None}  # fmt: skip
                fh.write(json.dumps(rec) + "\n")
    return tmp, hmm, refs, series, members


def test_series_datasets_have_every_metric_per_iteration(inputs, tmp_path):
    tmp, hmm, refs, series, members = inputs
    cfg = ProteinDatasetConfig(scorers=[f"hmm:{hmm}", f"align:{refs}"])
    res = build_datasets(tmp_path / "datasets", cfg, series=series, progress=False)
    assert sorted(res.files) == ["0", "1"]
    d0 = pd.read_parquet(res.files["0"])
    assert list(d0["id"]) == [str(k) for k in range(6)] and set(d0["tag"]) == {"famA"}
    assert {"hmm_planted", "hmm_planted_hit", "align_train_identity", "align_train_coverage"} <= set(
        d0.columns
    )
    # training members are memorised (identity 1) and score far above the random sequences
    mem = d0[d0["sequence"].isin(members)]
    rnd = d0[~d0["sequence"].isin(members)]
    assert (mem["align_train_identity"] == 1.0).all() and (rnd["align_train_identity"] < 0.5).all()
    assert mem["hmm_planted"].min() > rnd["hmm_planted"].max()
    # the values are the scorer's own
    direct = HMMScorer(str(hmm), cache=None).score_sequences(list(d0["sequence"]))["hmm_planted"]
    assert list(d0["hmm_planted"]) == pytest.approx(direct, abs=1e-4)
    comb = res.frame()
    assert len(comb) == 12 and sorted(comb["iteration"].unique()) == [0, 1]
    assert res.summary_rows[0]["hmm_planted"] == pytest.approx(d0["hmm_planted"].mean())


def test_killed_scoring_rescores_only_missing(inputs, tmp_path):
    tmp, hmm, refs, series, _ = inputs
    calls: list[int] = []

    class Dies(HMMScorer):
        batch_size = 4

        def _compute(self, seqs):
            calls.append(len(seqs))
            if len(calls) == 2 and self.die:
                raise KeyboardInterrupt  # killed in the second batch
            return super()._compute(seqs)

    cfg = ProteinDatasetConfig(scorers=["hmm"])
    sc = Dies(str(hmm))
    sc.die = True
    with pytest.raises(KeyboardInterrupt):
        build_datasets(tmp_path / "d", cfg, series=series, scorers=[sc], progress=False)
    assert not (tmp_path / "d" / "D0.parquet").exists()  # nothing half-written
    calls.clear()
    sc2 = Dies(str(hmm))
    sc2.die = False
    res = build_datasets(tmp_path / "d", cfg, series=series, scorers=[sc2], progress=False)
    # D0 has 6 unique sequences: the first batch of 4 was committed, only 2 are scored again
    assert calls[0] == 2
    assert len(res.frame()) == 12


def test_generated_datasets_from_models(inputs, tmp_path):
    tmp, hmm, refs, _, _ = inputs
    model = tiny_protein_lm(tmp_path / "m0", tags=("famA", "famB"))
    cfg = ProteinDatasetConfig(scorers=[f"hmm:{hmm}"], tags=["famA", "famB"], n=3, max_new_tokens=16)
    res = build_datasets(tmp_path / "g", cfg, models={0: str(model)}, progress=False)
    df = res.frame()
    assert len(df) == 6 and sorted(df["tag"].unique()) == ["famA", "famB"]
    assert (df["temperature"] == 1.0).all() and (df["max_new_tokens"] == 16).all()
    assert (tmp_path / "g" / "D0.jsonl").is_file()
