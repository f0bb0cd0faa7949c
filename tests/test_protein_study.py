"""The protein study's DPO + dataset stages on a tiny random protein GPT-2 (the full study with SAEs,
probes and causal runs is the example script; this checks the wiring and the numbers it reports)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from deltalens.diff.organisms import DPOSeriesConfig, OrganismConfig, iterative_dpo
from deltalens.diff.scorers import CombinedScorer
from deltalens.protein.records import ProteinRecord, write_fasta
from deltalens.protein.scorers import AlignmentScorer, HMMScorer
from deltalens.protein.study import ProteinStudy, ProteinStudyConfig, run_study
from protein_helpers import build_hmm, family, tiny_protein_lm


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    _, members = family(seed=2, length=24, n=10, n_sub=4)
    hmm = build_hmm(tmp / "famA.hmm", members)
    refs = write_fasta(
        tmp / "train.fasta", [ProteinRecord(f"m{i}", "famA", s) for i, s in enumerate(members)]
    )
    model = tiny_protein_lm(tmp / "m0", tags=("famA", "famB"))
    return tmp, hmm, refs, model


def _dpo_cfg(**kw):
    train = OrganismConfig(
        method="dpo", lora=False, epochs=1.0, learning_rate=1e-4, batch_size=4, max_length=40
    )
    return DPOSeriesConfig(iterations=1, n_samples=3, max_new_tokens=24, train=train, **kw)


def test_dpo_series_records_one_column_per_key_metric(setup, tmp_path):
    tmp, hmm, refs, model = setup
    sc = CombinedScorer(
        [HMMScorer(str(hmm), cache=None), AlignmentScorer(refs, cache=None)], weights=[1.0, 0.0]
    )
    st = iterative_dpo(str(model), ["famA<sep><start>"] * 3, sc, tmp_path / "s", _dpo_cfg(), progress=False)
    recs = [json.loads(x) for x in (tmp_path / "s" / "D0.jsonl").read_text().splitlines()]
    assert len(recs) == 9
    for r in recs:
        assert {"hmm_planted", "hmm_planted_hit", "align_train_identity", "align_train_coverage"} <= set(
            r["metrics"]
        )
        assert r["score"] == pytest.approx(r["metrics"]["hmm_planted"])  # weight 0 on identity
    assert st.scorer["type"] == "combined" and len(st.scorer["scorers"]) == 2
    roles = [r for r in recs if r["pair_role"]]
    for i in {r["prompt_index"] for r in roles}:
        ch = next(r for r in roles if r["prompt_index"] == i and r["pair_role"] == "chosen")
        rj = next(r for r in roles if r["prompt_index"] == i and r["pair_role"] == "rejected")
        assert ch["score"] > rj["score"]


def test_study_dpo_and_datasets_report_per_iteration_means(setup, tmp_path):
    tmp, hmm, refs, model = setup
    cfg = ProteinStudyConfig(
        tag="famA", hmm=str(hmm), iterations=1, prompts=3, samples=3, max_new_tokens=24, dpo_epochs=1.0,
        skip=["sae", "features", "probes", "causal"],
    )  # fmt: skip
    res = run_study(str(model), tmp_path / "exp", cfg, refs=refs, progress=False)
    assert [r["model"] for r in res.per_iteration] == ["M0", "M1"]
    comb = pd.read_parquet(tmp_path / "exp" / "protein" / "datasets" / "protein_famA" / "combined.parquet")
    for row in res.per_iteration:
        df = comb[comb["iteration"] == row["iteration"]]
        assert row["n"] == 9
        assert row["hmm_mean"] == pytest.approx(df["hmm_planted"].mean())
        assert row["identity_mean"] == pytest.approx(df["align_train_famA_identity"].mean())
    again = ProteinStudy.load(tmp_path / "exp" / "protein")
    assert again.per_iteration == res.per_iteration and again.dpo[0]["checkpoint"] == "M1"
    # the null control: the same rounds with random preferences; its D0 is M0's same samples
    null = res.per_iteration_null
    assert [r["model"] for r in null] == ["M0", "M1"] and again.per_iteration_null == null
    assert null[0]["hmm_mean"] == pytest.approx(res.per_iteration[0]["hmm_mean"])
    nd0 = [json.loads(x) for x in (Path(res.paths["null_series"]) / "D0.jsonl").read_text().splitlines()]
    assert all(0 <= r["score"] < 1 for r in nd0)  # RandomScorer picked its pairs
    # figures and the report section (model text escaped like everything else)
    from deltalens.experiment import Experiment
    from deltalens.report.html import render_report

    figs = tmp_path / "exp" / "protein" / "figures"
    assert {p.name for p in figs.glob("*.png")} == {"hmm_by_iteration.png", "identity_by_iteration.png"}
    html = render_report(Experiment(tmp_path / "exp"))
    assert "Protein study" in html and "null control: the same DPO rounds" in html
    assert f"{res.per_iteration[1]['hmm_mean']:.4g}"[:5] in html
