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
