"""``steer summary``: the joined Phase-1 table on constructed steer runs with planted per-question
scores (best layer, Δ at coherence ≥ 80/70, bootstrap CI, anti-steerable fraction, prompting row,
the position test), and refusal of runs of different models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deltalens import Experiment
from deltalens.errors import DataFormatError
from deltalens.steering.results import ResultsLog, SteeringRecord
from deltalens.steering.runs import SteeringRun
from deltalens.steering.search import checkpoint_summary, per_layer_table
from deltalens.steering.study import SummaryConfig, holm, sign_flip_p, summarize_trait

QS = [f"question {i}" for i in range(8)]
BASE = np.array([10.0, 20, 30, 40, 10, 20, 30, 40])


def _rec(key, kind, trait, scores, coh, layer=None, coef=None, method=None, weights="w1"):
    return SteeringRecord(
        key,
        kind,
        key,
        trait,
        [] if layer is None else [{"layer": layer, "coef": coef, "coef_mode": "relative"}],
        layer,
        coef,
        method,
        "response",
        8,
        "sha",
        len(QS),
        "offline:j",
        float(np.mean(scores)),
        coh,
        len(QS),
        responses=[{"question": q, "response": "r", "trait": float(s)} for q, s in zip(QS, scores)],
        model="tiny",
        weights_hash=weights,
    )


def _run(exp: Experiment, trait: str, position: str, shift: np.ndarray, weights: str = "w1", prompted=True):
    """One saved steer run: mean_diff at layers 1, 2 × coefficients 0.1, 0.2, 0.4; layer 2 c0.2
    is the planted winner (per-question Δ = ``shift``), coherence falls with the coefficient."""
    vid = Experiment.steering_vector_id("instruct", position)
    log = ResultsLog(exp.steering_results(trait, vid))
    base = _rec(f"{trait}{vid}base", "baseline", trait, BASE, 95.0, weights=weights)
    log.append(base)
    recs = []
    for layer in (1, 2):
        for coef, coh in ((0.1, 90.0), (0.2, 75.0), (0.4, 40.0)):
            gain = shift if (layer, coef) == (2, 0.2) else shift * 0.5 * (coef / 0.2) * (layer == 2 or 0.4)
            if (layer, coef) == (1, 0.1):
                gain = np.full(len(QS), 3.0)
            r = _rec(
                f"{trait}{vid}{layer}{coef}",
                "single",
                trait,
                BASE + gain,
                coh,
                layer,
                coef,
                "mean_diff",
                weights,
            )
            log.append(r)
            recs.append(r)
    extra = {}
    if prompted:
        p = _rec(f"{trait}{vid}prompt", "prompted", trait, BASE + 30, 65.0, weights=weights)
        log.append(p)
        extra["prompted"] = {"key": p.key, "trait": p.trait_mean, "coherence": 65.0, "delta": 30.0}
    run = SteeringRun(
        base,
        recs,
        checkpoint_summary(recs, base),
        per_layer_table(recs, base),
        log.path,
        trait,
        "offline:j",
        {"variant": "instruct", "position": position},
        extra,
    )
    run.save(log.path.parent)
    return run


def test_summary_table_matches_planted_runs(tmp_path: Path) -> None:
    exp = Experiment(tmp_path / "exp")
    up = np.array([20.0, 22, 18, 25, 21, 19, 23, 20])
    mixed = np.array([30.0, -5, 25, -2, 28, 31, -4, 27])  # 3 of 8 questions anti-steerable
    _run(exp, "instruction/pirate", "response[:]", up)
    _run(exp, "natural/pirate", "response[:5]", up, prompted=False)
    _run(exp, "natural/pirate", "response[:10]", up + 40, prompted=False)  # planted: position matters
    _run(exp, "natural/pirate", "response[:15]", mixed, prompted=False)
    res = summarize_trait(exp, "pirate", SummaryConfig(n_boot=4000, seed=1))
    rows = {r["key"]: r for r in res.rows}
    assert [r["key"] for r in res.rows] == ["inst_md", "nat5_md", "nat10_md", "nat15_md"]
    inst = rows["inst_md"]
    assert inst["best_layer"] == 2
    assert inst["max_delta_coh70"] == pytest.approx(up.mean())
    # coherence ≥ 80 leaves only coefficient 0.1: the best of L1 (+3) and L2 (+0.25 × up)
    assert inst["max_delta_coh80"] == pytest.approx(max(3.0, (0.5 * 0.5 * up).mean()))
    assert inst["coef_coh_below_80"] == pytest.approx(0.2)
    # bootstrap CI over questions brackets the mean and is as wide as an independent bootstrap
    rng = np.random.default_rng(7)
    boot = up[rng.integers(0, 8, (4000, 8))].mean(1)
    assert inst["ci70_lo"] < up.mean() < inst["ci70_hi"]
    assert inst["ci70_hi"] - inst["ci70_lo"] == pytest.approx(
        np.percentile(boot, 97.5) - np.percentile(boot, 2.5), rel=0.15
    )
    assert rows["nat15_md"]["anti_steerable"] == pytest.approx(3 / 8) and inst["anti_steerable"] == 0.0
    assert res.prompting["delta"] == 30.0 and res.prompting["coherence"] == 65.0
    assert res.prompting["ci_lo"] == pytest.approx(30.0) and res.prompting["ci_hi"] == pytest.approx(30.0)
    # position test: [:5] vs [:10] differ by exactly 40 on every question → the smallest exact p
    t = {(x["a"], x["b"]): x for x in res.position_test}
    t510 = t[("response[:5]", "response[:10]")]
    assert t510["mean_diff"] == pytest.approx(-40.0) and t510["p"] == pytest.approx(2 / 256)
    assert t510["p_holm"] == pytest.approx(3 * 2 / 256)
    # saved and reloaded
    d = json.loads((exp.root / "steering" / "summary" / "pirate" / "summary.json").read_text())
    assert d["kind"] == "steering summary" and len(d["rows"]) == 4
    assert (exp.root / "steering" / "summary" / "pirate" / "summary.csv").read_text().startswith("key,source")


def test_sign_flip_and_holm_against_direct_computation() -> None:
    d = np.array([1.0, 2.0, -0.5])
    # all 8 sign patterns: |mean| of each, count those ≥ |mean(d)| = 2.5/3
    pats = [np.array([a, b, c]) for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)]
    expect = np.mean([abs((s * d).mean()) >= abs(d.mean()) - 1e-12 for s in pats])
    assert sign_flip_p(d, 10000, np.random.default_rng(0)) == pytest.approx(expect)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_summary_refuses_runs_of_different_models(tmp_path: Path) -> None:
    exp = Experiment(tmp_path / "exp")
    up = np.full(8, 10.0)
    _run(exp, "instruction/pirate", "response[:]", up)
    _run(exp, "natural/pirate", "response[:5]", up, weights="w2")
    with pytest.raises(DataFormatError, match="cannot join steer runs of different models"):
        summarize_trait(exp, "pirate")


def test_cross_checks_on_a_constructed_case(tmp_path: Path) -> None:
    from scipy import stats

    from deltalens.steering.crosscheck import CrossCheck, cross_check

    n = 8
    fro = [1.0, 2, 4, 8, 5, 3, 2, 1]  # Δθ peaks at layer 3
    sim = [0.99, 0.97, 0.9, 0.8, 0.85, 0.9, 0.95, 0.97]  # similarity dips where Δθ peaks
    cos = {str(L): {"resid_mean": (-1) ** L * 0.1 * L} for L in range(n)}  # |cos| peaks at layer 7
    wd = {
        "per_layer": {"layer_fro": fro},
        "trait_alignment": {"traits": {"instruction/pirate": {"layers": cos}}},
    }
    ad = {"per_layer_similarity": {"mean": sim}}
    # two runs' per-layer tables at layers 2–5; the curve is the max over runs and methods
    runs = [
        [
            {"method": "mean_diff", "layer": L, "delta": d}
            for L, d in zip((2, 3, 4, 5), (10.0, 30.0, 20.0, 5.0))
        ],
        [{"method": "probe", "layer": L, "delta": d} for L, d in zip((2, 3, 4, 5), (12.0, 25.0, None, 8.0))],
    ]
    cc = cross_check("pirate", runs, wd, ad)
    steer = {2: 12.0, 3: 30.0, 4: 20.0, 5: 8.0}
    d = cc.checks["dtheta_vs_steering"]
    assert d["layers"] == [2, 3, 4, 5] and d["y_values"] == [steer[L] for L in (2, 3, 4, 5)]
    assert (d["x_peak_layer"], d["y_peak_layer"], d["peak_distance"]) == (3, 3, 0)
    assert d["pearson_r"] == pytest.approx(stats.pearsonr([4, 8, 5, 3], [12, 30, 20, 8])[0])
    assert d["spearman_rho"] == pytest.approx(stats.spearmanr([4, 8, 5, 3], [12, 30, 20, 8])[0])
    al = cc.checks["alignment_vs_steering"]
    assert al["x_peak_layer"] == 7 and al["peak_distance"] == 4
    assert al["pearson_r"] == pytest.approx(stats.pearsonr([0.2, 0.3, 0.4, 0.5], [12, 30, 20, 8])[0])
    sm = cc.checks["similarity_vs_weight_norm"]
    assert sm["layers"] == list(range(n))
    assert sm["pearson_r"] == pytest.approx(stats.pearsonr(sim, fro)[0]) and sm["pearson_r"] < -0.9
    path = cc.save(tmp_path / "cc")
    for name in ("dtheta_vs_steering", "alignment_vs_steering", "similarity_vs_weight_norm"):
        assert (tmp_path / "cc" / f"{name}.png").stat().st_size > 1000
    back = CrossCheck.load(path.parent)
    assert back.checks["dtheta_vs_steering"]["pearson_r"] == pytest.approx(d["pearson_r"])


def test_summary_writes_cross_checks_when_a_weight_diff_exists(tmp_path: Path) -> None:
    exp = Experiment(tmp_path / "exp")
    _run(exp, "instruction/pirate", "response[:]", np.full(8, 10.0))
    wdir = exp.weight_diff_dir("smol")
    wdir.mkdir(parents=True)
    (wdir / "results.json").write_text(
        json.dumps({"kind": "weight diff", "per_layer": {"layer_fro": [1.0, 5.0, 2.0]}})
    )
    res = summarize_trait(exp, "pirate")
    assert set(res.extra["crosscheck"]) == {"dtheta_vs_steering"}
    assert res.extra["crosscheck"]["dtheta_vs_steering"]["peak_distance"] == 1  # Δθ peak 1, steering peak 2
    assert (exp.root / "steering" / "summary" / "pirate" / "dtheta_vs_steering.png").is_file()


def test_pair_consistency_against_direct_cosines() -> None:
    import torch

    from deltalens.steering.study import mean_pair_cosine

    g = torch.Generator().manual_seed(0)
    v = torch.randn(16, generator=g)
    neg = torch.randn(10, 16, generator=g)
    # planted: 6 pairs differ exactly along +v (cos 1), 4 exactly along −v (cos −1)
    scale = torch.tensor([1.0, 2, 3, 1, 2, 3, 1, 1, 1, 1]).unsqueeze(1)
    sign = torch.tensor([1.0] * 6 + [-1.0] * 4).unsqueeze(1)
    pos = neg + sign * scale * v
    assert mean_pair_cosine(pos, neg, v) == pytest.approx((6 - 4) / 10, abs=1e-5)
    # extra unpaired positives are ignored; random differences give |mean cos| well below 1
    noise = torch.randn(12, 16, generator=g)
    direct = float(
        np.mean(
            [
                float(torch.dot(noise[i] - neg[i], v) / ((noise[i] - neg[i]).norm() * v.norm()))
                for i in range(10)
            ]
        )
    )
    assert mean_pair_cosine(noise, neg, v) == pytest.approx(direct, abs=1e-5)
    assert mean_pair_cosine(pos[:0], neg, v) is None


def test_harmonic_score_axbench_style() -> None:
    from deltalens.steering.study import harmonic_score

    resp = [
        {"question": "a", "trait": 60.0, "relevance": 30.0, "coherence": 90.0},
        {"question": "b", "trait": 0.0, "relevance": 80.0, "coherence": 90.0},  # no concept → 0
        {"question": "c", "trait": 50.0, "coherence": 90.0},  # relevance not scored: skipped
    ]
    rec = SteeringRecord("k", responses=resp)
    h_a = 3 / (1 / 60 + 1 / 30 + 1 / 90)
    assert harmonic_score(rec) == pytest.approx((h_a + 0.0) / 2)
    assert h_a < np.mean([60, 30, 90])  # the harmonic mean punishes the weakest of the three
    assert harmonic_score(SteeringRecord("k", responses=resp[2:])) is None  # offline judge: no score


def test_relevance_is_a_judge_kind_only_llm_judges_score() -> None:
    from deltalens.judges import LocalJudge, OpenAIJudge
    from deltalens.judges.base import KINDS, Judge, render_prompt
    from deltalens.judges.offline import OfflineJudge

    assert "relevance" in KINDS
    assert OpenAIJudge.scores_relevance and LocalJudge.scores_relevance
    assert not OfflineJudge.scores_relevance and not Judge.scores_relevance
    p = render_prompt("relevance", "Why is the sky blue?", "Arr, the sea!", None)
    assert "Why is the sky blue?" in p and "Arr, the sea!" in p and "relevant" in p
