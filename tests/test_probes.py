"""Probes: planted ground truth, equality with direct scikit-learn calls, the metrics join, latent
tables on a tiny model, and the CLI end to end."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from deltalens.probes import (
    AnnotateConfig,
    CompareConfig,
    CorrelateConfig,
    ProbeFitConfig,
    annotate,
    fit_probe,
    fit_table,
    join_metrics,
    make_labels,
    run_annotate,
    run_compare,
    run_correlate,
    table_from_arrays,
)
from deltalens.probes.fit import logistic, rank_by_diff, splits

A, B, C_, D = (
    7,
    42,
    13,
    99,
)  # dominant, secondary (visible once A is zeroed), unrelated, high-firing distractor


def planted(n: int = 2400, d: int = 160, seed: int = 0):
    """Background sparse latents; the metric is 3·a + b (+ noise); D fires on 95 % of sequences
    with large values and is independent of the metric."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=0.03, random_state=seed, data_rvs=lambda m: rng.exponential(1.0, m)).toarray()
    X[:, A] = (rng.random(n) < 0.4) * rng.exponential(2.0, n)
    X[:, B] = (rng.random(n) < 0.4) * rng.exponential(2.0, n)
    X[:, D] = (rng.random(n) < 0.95) * rng.exponential(5.0, n)
    m = 3 * X[:, A] + X[:, B] + rng.normal(0, 0.3, n)
    return X, m


def labelled(n: int = 2400):
    X, m = planted(n)
    lb = make_labels(m, "score", high=0.8, low=0.2)
    return sp.csr_matrix(X[lb.index]), lb.y


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        yield


@pytest.mark.parametrize("method", ["l1", "ksparse", "diff_mean"])
def test_planted_latents_recovered(method):
    X, y = labelled()
    p = fit_probe(X, y, method)
    assert p.top_latents(1) == [A]
    assert p.top_latents(2) == [A, B]
    assert D not in p.top_latents(2)
    assert p.direction[A] == 1 and p.direction[B] == 1
    assert p.cv_auroc > 0.95
    # the distractor fires most often of all latents yet carries no signal
    assert int(np.argmax(np.asarray((X > 0).sum(0)).ravel())) == D
    assert abs(p.stats["diff_norm"][D]) < 0.2


@pytest.mark.parametrize("method", ["l1", "ksparse", "diff_mean"])
def test_secondary_latent_only_after_first_round(method):
    X, y = labelled()
    rows = annotate(
        X, y, AnnotateConfig(method=method, per_round=1, rounds=6, stop_auroc=0.6), metric="score"
    )
    assert [r["latent"] for r in rows[:2]] == [A, B]
    assert [r["round"] for r in rows[:2]] == [0, 1]
    assert rows[0]["auroc_before"] > 0.95 and 0.6 < rows[0]["auroc_after"] < 0.9  # B carries what is left
    assert rows[1]["auroc_after"] < 0.6
    assert len(rows) == 2  # stopped: nothing left to predict
    assert D not in [r["latent"] for r in rows]
    assert rows[0]["auroc_after"] == rows[1]["auroc_before"]


def test_ksparse_equals_sklearn_on_same_folds():
    from sklearn.metrics import roc_auc_score

    X, y = labelled(1200)
    p = fit_probe(X, y, "ksparse", k=4, folds=5, seed=3)
    direct = []
    for tr, te in splits(y, 5, 3):
        cols = rank_by_diff(X[tr], y[tr], 4)
        est = logistic("l2", 1.0, 3, False).fit(X[tr][:, cols].toarray(), y[tr])
        direct.append(roc_auc_score(y[te], est.decision_function(X[te][:, cols].toarray())))
    np.testing.assert_allclose(p.fold_auroc, direct, atol=1e-6)
    assert abs(p.cv_auroc - np.mean(direct)) < 1e-6


def test_l1_and_diff_mean_equal_sklearn_on_same_folds():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = labelled(1200)
    p = fit_probe(X, y, "l1", Cs=[0.05], folds=4, seed=1)
    folds = list(StratifiedKFold(4, shuffle=True, random_state=1).split(np.zeros(len(y)), y))
    direct = []
    for tr, te in folds:
        est = make_pipeline(
            StandardScaler(with_mean=False),
            LogisticRegression(l1_ratio=1.0, C=0.05, solver="liblinear", max_iter=1000, random_state=1),
        )
        est.fit(X[tr], y[tr])
        direct.append(roc_auc_score(y[te], est.decision_function(X[te])))
    np.testing.assert_allclose(p.fold_auroc, direct, atol=1e-6)
    d = fit_probe(X, y, "diff_mean", folds=4, seed=1)
    direct = []
    for tr, te in folds:
        Xtr = X[tr].toarray()
        w = Xtr[y[tr] == 1].mean(0) - Xtr[y[tr] == 0].mean(0)
        direct.append(roc_auc_score(y[te], X[te].toarray() @ w))
    np.testing.assert_allclose(d.fold_auroc, direct, atol=1e-6)


def test_dense_and_tensor_features_give_the_same_probe():
    import torch

    X, y = labelled(800)
    a = fit_probe(X, y, "ksparse", k=2)
    b = fit_probe(torch.tensor(X.toarray()), torch.tensor(y), "ksparse", k=2)
    assert a.top_latents(2) == b.top_latents(2)
    np.testing.assert_allclose(a.fold_auroc, b.fold_auroc, atol=1e-9)


def _planted_table():
    import pandas as pd

    X, m = planted(1500)
    rng = np.random.default_rng(1)
    dense = rng.normal(size=(len(m), 12))
    dense[:, 0] += 0.3 * m  # the residual carries the metric too (less cleanly)
    t = table_from_arrays(X, dense=dense, meta={"sae": "planted", "site": "resid.1"})
    df = pd.DataFrame(
        {
            "id": [str(i) for i in range(len(m))],
            "score": m,
            "flat": np.ones(len(m)),
            "noise": rng.normal(size=len(m)),
        }
    )
    return t, df


def test_fit_table_baseline_controls_and_stages(tmp_path):
    t, df = _planted_table()
    res = fit_table(
        t,
        df,
        ProbeFitConfig(metrics=["score", "noise"], methods=["ksparse", "diff_mean"], top=5),
        name="M1D1",
    )
    ks = res.probe("score", "ksparse")
    assert ks["top_latents"][:2] == [A, B]
    assert ks["cv_auroc"] > 0.95 and 0.6 < ks["dense_auroc"] < ks["cv_auroc"]
    assert abs(ks["shuffled_auroc"] - 0.5) < 0.1
    assert ks["random_latents_auroc"] < 0.85
    assert abs(res.probe("noise", "ksparse")["cv_auroc"] - 0.5) < 0.1
    assert res.labels["score"]["high"] == res.labels["score"]["low"] == 300
    res.save(tmp_path / "M1D1")
    assert (tmp_path / "M1D1" / "importance.csv").is_file() and (
        tmp_path / "M1D1" / "probe_auroc.png"
    ).is_file()
    ann = run_annotate(tmp_path / "M1D1", AnnotateConfig(metrics=["score"], rounds=4, stop_auroc=0.6))
    assert [r["latent"] for r in ann.rows[:2]] == [A, B]
    cor = run_correlate(
        tmp_path / "M1D1", CorrelateConfig(thresholds=[0.0, 1.0, 3.0], top=4, metrics=["score"])
    )
    assert {r["property"] for r in cor.rows} >= {"prevalence", "firing_rate"}
    assert sorted(cor.points["threshold"].unique()) == [0.0, 1.0, 3.0]
    assert (tmp_path / "M1D1" / "connected_scatter_score.png").is_file()
    # a second "iteration" with the same latents: comparisons
    res2 = fit_table(
        t, df, ProbeFitConfig(metrics=["score", "noise"], methods=["ksparse"], top=5), name="M0D1"
    )
    res2.save(tmp_path / "M0D1")
    run_correlate(tmp_path / "M0D1", CorrelateConfig(thresholds=[0.0, 1.0], top=4))
    cmp = run_compare([tmp_path / "M0D1", tmp_path / "M1D1"], CompareConfig(ks=[2, 5]), out=tmp_path / "cmp")
    by = {(r["a"], r["b"]): r for r in cmp.rows}
    same = by[("M0D1:score", "M1D1:score")]
    assert same["axis"] == "intra-stage" and same["jaccard@2"] == 1.0
    assert by[("M0D1:score", "M0D1:noise")]["axis"] == "inter-metric"
    assert (tmp_path / "cmp" / "compare.csv").is_file()


def test_join_reports_unmatched_nan_and_constant():
    import pandas as pd

    t = table_from_arrays(np.eye(6), seq_ids=list("abcdef"), n_tokens=[1, 1, 1, 1, 1, 0])
    df = pd.DataFrame({"id": ["a", "b", "c", "zz"], "m": [1.0, np.nan, 3.0, 4.0], "k": [2.0, 2.0, 2.0, 2.0]})
    j = join_metrics(t, df, "id", source="m.csv")
    rep = j.report()
    assert rep["unmatched_keys"] == 1 and rep["unmatched_examples"] == ["zz"]
    assert rep["sequences_without_metrics"] == 3 and rep["empty_sequences"] == 1
    assert rep["nan"] == {"m": 1, "k": 0} and rep["constant"] == ["k"]
    np.testing.assert_array_equal(np.isnan(j.values["m"]), [False, True, False, True, True, True])


def test_labels_quantile_threshold_and_single_class():
    from deltalens.errors import DataFormatError

    v = np.arange(10, dtype=float)
    lb = make_labels(v, high=0.8, low=0.2)
    assert lb.counts == {"high": 2, "low": 2}  # q0.2 = 1.8, q0.8 = 7.2
    th = make_labels(v, high=7, low=2, mode="threshold")
    assert th.counts == {"high": 3, "low": 3}
    with pytest.raises(DataFormatError, match="single class"):
        make_labels(v, high=20, low=2, mode="threshold")
    with pytest.raises(DataFormatError, match="constant"):
        make_labels(np.ones(5))


def _tiny_sae(tiny, d_sae=48):
    import torch

    from deltalens.sae import SAE, SAEConfig

    torch.manual_seed(0)
    sae = SAE(SAEConfig(tiny.d_model, d_sae, "topk", k=6, site="resid.1", model_name="tiny"))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.b_enc.fill_(0.1)
    return sae


def test_latent_table_pools_like_a_direct_capture(tiny):
    import torch

    from deltalens.capture import capture
    from deltalens.probes import as_sequences, build_latent_table

    sae = _tiny_sae(tiny)
    data = [
        {"question": q, "response": r}
        for q, r in [
            ("Why is the sky blue?", "Light scatters in the air."),
            ("Tell me a story", "A brave mouse lived in a big old house."),
            ("hello", "good morning thanks"),
        ]
    ]
    t = build_latent_table(tiny, sae, as_sequences(data), positions="response", batch_size=2)
    cap = capture(tiny, data, ["resid.1"], "response")
    f = sae.encode(cap["resid.1"]).detach()
    for i in range(3):
        rows = f[cap.seq_ids == i]
        np.testing.assert_allclose(
            t.pooled["max"][i].toarray().ravel(), rows.max(0).values.numpy(), atol=1e-5
        )
        np.testing.assert_allclose(t.pooled["mean"][i].toarray().ravel(), rows.mean(0).numpy(), atol=1e-5)
        np.testing.assert_allclose(
            t.pooled["frac"][i].toarray().ravel(), (rows > 0).float().mean(0).numpy(), atol=1e-6
        )
        np.testing.assert_allclose(t.dense[i], cap["resid.1"][cap.seq_ids == i].mean(0).numpy(), atol=1e-5)
        assert t.n_tokens[i] == int((cap.seq_ids == i).sum())
    assert t.seq_ids == ["0", "1", "2"] and t.texts[0] == "Light scatters in the air."
    assert torch.is_tensor(f)


def test_cli_fit_annotate_correlate_compare(tiny, tmp_path):
    import pandas as pd
    from tests.tiny import save_tiny

    from deltalens.cli import main
    from deltalens.sae.io import save_sae

    model = save_tiny(tiny, tmp_path / "model")
    sae = _tiny_sae(tiny)
    save_sae(sae, tmp_path / "sae")
    rng = np.random.default_rng(0)
    words = ["sea", "fish", "boat", "sun", "dog", "book", "house", "blue"]
    recs, metr = [], []
    for i in range(40):
        resp = " ".join(rng.choice(words, 6))
        recs.append({"id": f"s{i}", "question": "Tell me a story", "response": resp})
        metr.append({"id": f"s{i}", "sea_rate": resp.split().count("sea") / 6 + 0.01 * rng.random()})
    seqs = tmp_path / "D1.jsonl"
    seqs.write_text("".join(json.dumps(r) + "\n" for r in recs))
    pd.DataFrame(metr).to_csv(tmp_path / "m.csv", index=False)
    for name in ("M1D1", "M0D1"):
        with pytest.raises(SystemExit) as e:
            main(
                [
                    "probes",
                    "fit",
                    "--sequences",
                    str(seqs),
                    "--metrics",
                    str(tmp_path / "m.csv"),
                    "--sae",
                    str(tmp_path / "sae"),
                    "--model",
                    model,
                    "--folds",
                    "3",
                    "--high",
                    "0.7",
                    "--low",
                    "0.3",
                    "--ks",
                    "1,2,4",
                    "--out",
                    str(tmp_path / name),
                ]
            )
        assert e.value.code in (0, None)
    fit = json.loads((tmp_path / "M1D1" / "probe.json").read_text())
    assert fit["kind"] == "probe fit" and {p["method"] for p in fit["probes"]} == {
        "l1",
        "ksparse",
        "diff_mean",
    }
    assert all("dense_auroc" in p and "shuffled_auroc" in p for p in fit["probes"])
    for argv in (
        ["probes", "annotate", str(tmp_path / "M1D1"), "--folds", "3", "--rounds", "2"],
        [
            "probes",
            "correlate",
            str(tmp_path / "M1D1"),
            "--sae",
            str(tmp_path / "sae"),
            "--base-sae",
            str(tmp_path / "sae"),
            "--folds",
            "3",
            "--thresholds",
            "0,0.5",
        ],
        [
            "probes",
            "fit",
            "--table",
            str(tmp_path / "M1D1" / "table"),
            "--metrics",
            str(tmp_path / "m.csv"),
            "--folds",
            "3",
            "--method",
            "diff_mean",
            "--no-controls",
            "--out",
            str(tmp_path / "refit"),
        ],
        [
            "probes",
            "compare",
            str(tmp_path / "M0D1"),
            str(tmp_path / "M1D1"),
            "--k",
            "2,4",
            "--out",
            str(tmp_path / "cmp"),
        ],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code in (0, None), argv
    cor = pd.read_csv(tmp_path / "M1D1" / "correlations.csv")
    assert {"enc_norm", "dec_cos_base", "prevalence"} <= set(cor["property"])
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"][0]["axis"] == "intra-stage"

    from deltalens.info import describe

    assert describe(tmp_path / "M1D1")["kind"] == "probe fit"
    assert describe(tmp_path / "M1D1" / "table")["kind"] == "probe latent table"
    assert describe(tmp_path / "M1D1" / "annotation.csv")["kind"] == "probe annotation CSV"


def test_report_section(tmp_path):
    from deltalens.experiment import Experiment
    from deltalens.report.html import build_report

    exp = Experiment(tmp_path / "exp")
    t, df = _planted_table()
    fit_table(t, df, ProbeFitConfig(metrics=["score"], methods=["diff_mean"], controls=False), name="m").save(
        exp.probes_dir("m")
    )
    run_annotate(exp.probes_dir("m"), AnnotateConfig(method="diff_mean", rounds=2))
    html = build_report(exp).read_text()
    assert (
        "probes (stratified CV)" in html and "iterative annotation" in html and "could not render" not in html
    )


def test_join_by_text_key():
    import pandas as pd

    t = table_from_arrays(np.eye(3), seq_ids=["a", "b", "c"], texts=["the sea", "a dog", "blue waves"])
    j = join_metrics(
        t, pd.DataFrame({"text": ["blue waves", "the sea", "no such text"], "rate": [0.5, 0.5, 0.0]}), "text"
    )
    np.testing.assert_array_equal(j.values["rate"][[0, 2]], [0.5, 0.5])
    assert np.isnan(j.values["rate"][1]) and j.unmatched_keys == ["no such text"]
