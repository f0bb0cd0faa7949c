"""Extraction, evaluation with resume, search logic, summaries, combinations, monitoring."""

from __future__ import annotations

import json

import pytest
import torch

from deltalens.data.traits import load_trait
from deltalens.errors import StoreMismatchError
from deltalens.experiment import Experiment
from deltalens.judges import CoherenceScorer, JudgeCache, OfflineJudge, TraitClassifier, TraitInfo
from deltalens.steering.combine import Source, combination_candidates, comparison_table, summed_vector
from deltalens.steering.evaluate import Candidate, EvalSettings, evaluate_candidates
from deltalens.steering.extraction import ExtractConfig, extract, load_vector_set
from deltalens.steering.monitor import project
from deltalens.steering.results import ResultsLog, SteeringRecord
from deltalens.steering.search import LayerState, _next_coef, adaptive_search, checkpoint_summary
from deltalens.vectors import TraitVector


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    from tiny import tiny_model

    lm = tiny_model("llama")
    exp = Experiment(tmp_path_factory.mktemp("exp"))
    trait = load_trait("instruction/pirate")
    res = extract(
        lm,
        exp,
        trait,
        ExtractConfig(
            variant="instruct",
            position="response[:4]",
            methods=["mean_diff", "probe", "pca"],
            max_new_tokens=6,
        ),
        progress=False,
    )
    return lm, exp, trait, res


def test_extraction_writes_one_file_per_layer_and_method(extracted):
    lm, exp, trait, res = extracted
    assert res.n_pos == 44 and res.n_neg == 44 and not res.reused_responses
    for m in ("mean_diff", "probe", "pca"):
        vs = load_vector_set(exp, trait.id, "instruct", "response[:4]", m)
        assert sorted(vs) == list(range(lm.n_layers))
        v = vs[2]
        assert v.path == exp.vector_path("instruction/pirate", "instruct", "response[:4]", "resid", m, 2)
        assert "response__4" in str(v.path) and f"/{m}/layer2.safetensors" in str(v.path)
        meta = v.meta
        assert meta["method"] == m and meta["layer"] == 2 and meta["positions"] == "response[:4]"
        assert meta["n_pos"] == 44 and meta["n_train"] + meta["n_val"] == 88 and meta["n_val"] > 0
        assert meta["norm"] == pytest.approx(float(v.vector.norm()), rel=1e-5)
        for k in ("val_accuracy", "val_auroc", "val_separation", "weights_hash", "provenance"):
            assert k in meta
        summary = json.loads(
            exp.extraction_summary_path(trait.id, "instruct", "response[:4]", "resid", m).read_text()
        )
        assert [r["layer"] for r in summary["layers"]] == list(range(lm.n_layers))


def test_mean_diff_vector_equals_mean_of_captured_activations(extracted):
    """Independent check: recompute the layer-1 mean_diff from the train split's responses."""
    from deltalens.capture import capture
    from deltalens.generate import load_generations
    from deltalens.store import split_of

    lm, exp, trait, res = extracted
    d = exp.responses_dir(trait.id, "instruct")
    pos, neg = load_generations(d / "pos.jsonl"), load_generations(d / "neg.jsonl")
    acts = capture(lm, pos + neg, [(1, "resid")], "response[:4]", reduce="mean", progress=False)
    x = acts[(1, "resid")]
    train = torch.tensor([split_of(g.index, 0.2) == "train" for g in pos + neg])
    is_pos = torch.arange(len(pos) + len(neg)) < len(pos)
    expect = x[train & is_pos].mean(0) - x[train & ~is_pos].mean(0)
    torch.testing.assert_close(
        load_vector_set(exp, trait.id, "instruct", "response[:4]", "mean_diff")[1].vector,
        expect,
        atol=1e-5,
        rtol=1e-4,
    )


def test_responses_are_reused_or_refused(extracted):
    lm, exp, trait, _ = extracted
    cfg = ExtractConfig(
        variant="instruct", position="response[:2]", methods=["mean_diff"], layers=[1], max_new_tokens=6
    )
    again = extract(lm, exp, trait, cfg, progress=False)
    assert again.reused_responses
    with pytest.raises(StoreMismatchError, match="max_new_tokens .*--regenerate"):
        extract(lm, exp, trait, cfg.replace(max_new_tokens=9), progress=False)


def test_adaptive_step_rule():
    st = LayerState(5, 0.1)
    _next_coef(st, True, 1.6, 0.5, 0.08)
    assert st.coef == pytest.approx(0.16) and st.lo == 0.1
    _next_coef(st, False, 1.6, 0.5, 0.08)
    assert st.hi == pytest.approx(0.16) and st.coef == pytest.approx((0.1 * 0.16) ** 0.5, rel=1e-3)
    st2 = LayerState(5, 0.4)
    _next_coef(st2, False, 1.6, 0.5, 0.08)
    assert st2.coef == pytest.approx(0.2) and st2.lo is None
    st3 = LayerState(1, 0.1, lo=0.1, hi=0.105)
    _next_coef(st3, True, 1.6, 0.5, 0.08)
    assert st3.done


def _judge(lm):
    clf = TraitClassifier.fit(
        [
            "Arr matey ye be",
            "Ahoy me hearty",
            "Shiver me timbers arr",
            "Yo ho ho matey",
            "Aye ye scallywag",
            "Avast ye dogs",
        ],
        [
            "The meeting is at three.",
            "Reset your password.",
            "The library is open.",
            "Revenue grew slightly.",
            "The train is late.",
            "Water the plants.",
        ],
    )
    return OfflineJudge(clf, CoherenceScorer(lm))


def test_evaluate_resumes_without_recomputing(extracted, tmp_path):
    lm, exp, trait, _ = extracted
    judge = _judge(lm)
    vs = load_vector_set(exp, trait.id, "instruct", "response[:4]", "mean_diff")
    cands = [
        Candidate.baseline(),
        Candidate.single(vs[1], 0.2),
        Candidate.single(vs[2], 0.4),
        Candidate.single(vs[2], 0.4),
    ]
    settings = EvalSettings(trait.steering_questions[:3], max_new_tokens=5)
    info = TraitInfo.from_trait(trait)
    log = ResultsLog(tmp_path / "r.jsonl")
    cache = JudgeCache(tmp_path / "c.sqlite")
    recs = evaluate_candidates(lm, cands, settings, judge, info, log, cache=cache, progress=False)
    assert log.appended == 3  # the duplicate candidate is evaluated once
    assert recs[2].key == recs[3].key
    r = recs[1]
    assert r.kind == "single" and r.layer == 1 and r.coef == 0.2 and r.method == "mean_diff"
    assert r.n == 3 and r.n_errors == 0 and len(r.responses) == 3
    assert r.trait_mean == pytest.approx(sum(x["trait"] for x in r.responses) / 3)
    from deltalens.vectors import reference_norms

    assert r.terms[0]["added_norm"] == pytest.approx(0.2 * reference_norms(lm, [1])[1], rel=1e-3)
    # a kill leaves a half-written line; the next process moves it to r.jsonl.torn once
    with open(tmp_path / "r.jsonl", "a") as fh:
        fh.write('{"key": "half')
    log2 = ResultsLog(tmp_path / "r.jsonl")
    assert log2.skipped_lines == 1 and (tmp_path / "r.jsonl.torn").read_text() == '{"key": "half\n'
    assert ResultsLog(tmp_path / "r.jsonl").skipped_lines == 0  # a later run reads a clean file
    recs2 = evaluate_candidates(
        lm, cands + [Candidate.single(vs[3], 0.1)], settings, judge, info, log2, cache=cache, progress=False
    )
    assert log2.appended == 1  # only the new candidate
    assert [x.trait_mean for x in recs2[:4]] == [x.trait_mean for x in recs]
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert '{"key": "half' not in lines and len(lines) == 4 and json.loads(lines[-1])["layer"] == 3


def test_adaptive_search_and_checkpoint(extracted, tmp_path):
    lm, exp, trait, _ = extracted
    judge = _judge(lm)
    vs = load_vector_set(exp, trait.id, "instruct", "response[:4]", "mean_diff", layers=[1, 2])
    settings = EvalSettings(trait.steering_questions[:2], max_new_tokens=4)
    log = ResultsLog(tmp_path / "r.jsonl")
    rounds = []
    res = adaptive_search(
        lm,
        {"mean_diff": vs},
        settings,
        judge,
        TraitInfo.from_trait(trait),
        log,
        start=0.1,
        steps=3,
        threshold=-1.0,
        report=lambda k, rows: rounds.append([(st.layer, st.coef) for _, st, _ in rows]),
    )
    # threshold -1: every step succeeds, so each layer multiplies by 1.6 per round
    assert rounds == [[(1, 0.1), (2, 0.1)], [(1, 0.16), (2, 0.16)], [(1, 0.256), (2, 0.256)]]
    assert len(res.records) == 6 and log.appended == 7  # + baseline
    again = ResultsLog(tmp_path / "r.jsonl")
    adaptive_search(
        lm,
        {"mean_diff": vs},
        settings,
        judge,
        TraitInfo.from_trait(trait),
        again,
        start=0.1,
        steps=3,
        threshold=-1.0,
    )
    assert again.appended == 0


def test_checkpoint_summary_numbers():
    base = SteeringRecord("b", "baseline", trait_mean=10.0, coherence_mean=90.0)

    def rec(layer, coef, t, c, method="mean_diff"):
        return SteeringRecord.from_dict(
            {
                "key": f"{method}{layer}{coef}",
                "kind": "single",
                "layer": layer,
                "coef": coef,
                "trait_mean": t,
                "coherence_mean": c,
                "method": method,
                "terms": [{"coef_mode": "relative"}],
            }
        )

    records = [
        rec(5, 0.1, 20, 92),
        rec(5, 0.2, 40, 85),
        rec(5, 0.3, 60, 75),
        rec(5, 0.4, 80, 50),
        rec(6, 0.1, 25, 88),
        rec(6, 0.2, 70, 72),
        rec(6, 0.3, 90, 30),
        rec(6, 0.1, 50, 95, "probe"),
    ]
    s = checkpoint_summary(records, base)
    md = s["mean_diff"]
    assert md["best_layer"] == 6 and md["max_delta_coh70"] == 60 and md["at_coh70"]["coef"] == 0.2
    assert md["max_delta_coh80"] == 30 and md["at_coh80"]["layer"] == 5
    assert md["coef_coh_below_80"] == 0.2  # layer 6: 88 at 0.1, 72 at 0.2
    assert (
        s["probe"]["best_layer"] == 6
        and s["probe"]["max_delta_coh80"] == 40
        and s["probe"]["coef_coh_below_80"] is None
    )


def _vec(v, layer, method="mean_diff"):
    return TraitVector(
        v, {"trait": "t", "variant": "x", "positions": "response", "method": method, "layer": layer}
    )


def test_combination_strategies():
    g = torch.Generator().manual_seed(0)
    a = Source(
        "natural",
        {L: _vec(torch.randn(8, generator=g), L) for L in (3, 4)},
        best_layer=3,
        best_coef=0.2,
        best_delta=30,
    )
    b = Source(
        "instruction",
        {L: _vec(torch.randn(8, generator=g), L) for L in (3, 4)},
        best_layer=4,
        best_coef=0.4,
        best_delta=50,
    )
    s = summed_vector(a.vectors[3], b.vectors[3], 3)
    expect = a.vectors[3].unit + b.vectors[3].unit
    torch.testing.assert_close(s.vector, expect / expect.norm())
    cands = combination_candidates(a, b, multipliers=(1.0, 2.0))
    strat = [c.meta["strategy"] for c in cands]
    assert strat == ["sum@A", "sum@A", "sum@B", "sum@B", "ensemble", "ensemble"]
    assert [c.terms[0].coef for c in cands[:4]] == [0.2, 0.4, 0.4, 0.8]
    assert cands[0].terms[0].at_layer == 3 and cands[2].terms[0].at_layer == 4
    ens = cands[4]
    assert [(t.at_layer, t.coef) for t in ens.terms] == [(3, 0.1), (4, 0.2)]  # half coefficients at m = 1
    base = SteeringRecord("b", "baseline", trait_mean=10.0)
    recs = [
        SteeringRecord(
            str(i),
            "combination",
            meta=c.meta,
            terms=[t.describe() for t in c.terms],
            trait_mean=20.0 + 5 * i,
            coherence_mean=80.0 - 5 * i,
        )
        for i, c in enumerate(cands)
    ]
    table = comparison_table(a, b, recs, base)
    assert [r["config"] for r in table] == [
        "best single (natural)",
        "best single (instruction)",
        "strategy 1",
        "strategy 2",
        "strategy 3",
        "strategy 4",
    ]
    assert table[2]["delta"] == 15.0  # sum@A: m=2 has trait 25 at coherence 75 → 25 − 10
    assert table[3]["delta"] == 20.0  # sum@B: m=2 (coherence 65) excluded, m=1 has trait 30 → 20
    assert (
        table[4]["layers"] == "4" and table[4]["delta"] == table[3]["delta"]
    )  # strategy 3 = the winner's layer (instruction)
    assert table[5]["delta"] is None  # ensemble rows have coherence 60 and 55


def test_projection_monitor_matches_hidden_states(tiny):
    from deltalens.generate import left_pad, position_ids

    v = torch.randn(tiny.d_model)
    items = [("Why is the sky blue?", "Because of Rayleigh scattering."), ("Hello", "Hi there friend")]
    got = project(tiny, items, v, (1, "resid"))
    for (q, r), pj in zip(items, got.tolist()):
        p = tiny.encode(q, formatted=True)
        rid = tiny.encode(r, formatted=True)
        x, m = left_pad([p + rid], 0)
        with torch.no_grad():
            hs = tiny.model(
                input_ids=x, attention_mask=m, position_ids=position_ids(m), output_hidden_states=True
            ).hidden_states[2]
        expect = float(hs[0, len(p) :].mean(0) @ (v / v.norm()))
        assert pj == pytest.approx(expect, rel=1e-4, abs=1e-5)


def test_projections_are_written_next_to_scores(extracted, tmp_path):
    from deltalens.steering.evaluate import Monitor

    lm, exp, trait, _ = extracted
    vs = load_vector_set(exp, trait.id, "instruct", "response[:4]", "mean_diff")
    settings = EvalSettings(trait.steering_questions[:2], max_new_tokens=4)
    mon = Monitor(vs[2].vector, (2, "resid"))
    rec = evaluate_candidates(
        lm,
        [Candidate.single(vs[1], 0.3)],
        settings,
        _judge(lm),
        TraitInfo.from_trait(trait),
        ResultsLog(tmp_path / "r.jsonl"),
        monitor=mon,
        progress=False,
    )[0]
    items = [{"prompt_ids": r["prompt_ids"], "response_ids": r["response_ids"]} for r in rec.responses]
    expect = project(lm, items, vs[2].vector, (2, "resid")).tolist()
    assert [r["projection"] for r in rec.responses] == pytest.approx(expect)
    assert rec.projection_mean == pytest.approx(sum(expect) / len(expect))
    assert all(r["trait"] is not None and r["coherence"] is not None for r in rec.responses)


def test_uninformative_offline_judge_is_flagged(tmp_path):
    """When the trait's positive and negative responses are indistinguishable, the offline
    judge says so instead of silently returning noise."""
    from deltalens.generate import Generation, save_generations
    from deltalens.io import write_json
    from deltalens.steering.extraction import _trait_hash
    from deltalens.steering.pipeline import offline_judge
    from tiny import tiny_model

    lm = tiny_model("llama")
    exp = Experiment(tmp_path / "exp")
    trait = load_trait("instruction/pirate")
    pool = [
        "The meeting is at three.",
        "Reset your password in settings.",
        "The library opens at nine.",
        "Revenue grew slightly this year.",
        "The train is late again.",
        "Water the plants twice a week.",
    ]
    d = exp.responses_dir(trait.id, "instruct")
    for pol in ("pos", "neg"):
        gens = [
            Generation(i, 0, "q", None, "p", pool[(i + (pol == "neg")) % len(pool)], [1], [2], True)
            for i in range(24)
        ]
        save_generations(d / f"{pol}.jsonl", gens)
    write_json(d / "meta.json", {"weights_hash": lm.weights_hash, "trait_data": _trait_hash(trait)})
    with pytest.warns(UserWarning, match="cannot tell instruction/pirate's positive from its negative"):
        j = offline_judge(lm, exp, trait, "instruct", progress=False)
    assert j.classifier.meta["cv_auroc"] < 0.7


def test_judge_filter_keeps_agreeing_coherent_responses():
    """Persona-vector filtering: positives need trait ≥ 50, negatives trait < 50, both coherence ≥ 50."""
    from deltalens.generate import Generation
    from deltalens.judges import Judge, Score
    from deltalens.steering.extraction import filter_responses

    class KeywordJudge(Judge):  # a deterministic judge implementing the protocol
        id = "keyword"

        def score_batch(self, kind, items, trait):
            if kind == "trait":
                return [Score(90.0 if "arr" in r else 10.0) for _, r in items]
            return [Score(20.0 if "zzz" in r else 80.0) for _, r in items]

    def g(i, text):
        return Generation(i, 0, "q", None, "p", text, [1], [2], True)

    pos = [g(0, "arr matey"), g(1, "plain answer"), g(2, "arr zzz")]
    neg = [g(0, "plain"), g(1, "arr oops"), g(2, "plain zzz")]
    kp, kn, counts = filter_responses(pos, neg, KeywordJudge(), load_trait("instruction/pirate"))
    assert [x.response for x in kp] == ["arr matey"] and [x.response for x in kn] == ["plain"]
    assert counts == {"pos_before": 3, "neg_before": 3, "pos_kept": 1, "neg_kept": 1}


def test_model_spec_for_defaults_only_the_default_variant(tmp_path):
    """A variant without a recorded model used to resolve silently to the bundled SmolLM2;
    only the default variant (instruct) may fall back, any other names the key to set."""
    from deltalens.errors import ConfigError
    from deltalens.steering.pipeline import DEFAULT_MODEL, model_spec_for

    exp = Experiment(tmp_path / "exp")
    with pytest.raises(ConfigError, match=r"models\.base in .*config\.yaml or pass --model"):
        model_spec_for(exp, "base")
    assert not exp.root.exists()  # nothing written
    assert model_spec_for(exp, "instruct") == DEFAULT_MODEL
    assert model_spec_for(exp, "base", "some/model") == "some/model"
    assert model_spec_for(exp, "base") == "some/model"  # recorded
    assert exp.load_config()["models"] == {"instruct": DEFAULT_MODEL, "base": "some/model"}


def test_control_vector_names_and_widths_round_trip(tmp_path):
    """import-gguf files vectors under the trait id steer and extract use (aliases normalised),
    export-gguf takes that id back, and a control vector of another width is refused before
    anything is written."""
    import shutil

    from deltalens.data.traits import resolve_trait_path
    from deltalens.errors import ShapeError
    from deltalens.io import write_json
    from deltalens.steering.control import export_control_vector, import_control_vector
    from deltalens.steering.pipeline import resolve_trait, trait_id
    from deltalens.vectors import export_gguf, import_gguf
    from tiny import save_tiny, tiny_model

    exp = Experiment(tmp_path / "exp")
    exp.save_config(
        {"name": "exp", "models": {"instruct": save_tiny(tiny_model("llama"), tmp_path / "model")}}
    )
    g = torch.Generator().manual_seed(0)
    dirs = {1: torch.randn(64, generator=g), 2: torch.randn(64, generator=g)}
    export_gguf(dirs, tmp_path / "cv.gguf", "tiny")
    res = import_control_vector(exp, tmp_path / "cv.gguf", "pv_instruction/pirate")
    assert res.trait == "instruction/pirate" and res.d_model == 64
    back = load_vector_set(exp, "instruction/pirate", "imported", "response[:]", "gguf")
    assert (
        sorted(back) == [1, 2]
        and torch.equal(back[2].vector, dirs[2])
        and back[1].meta["trait"] == "instruction/pirate"
    )
    out = export_control_vector(
        exp, "instruction/pirate", tmp_path / "again.gguf", variant="imported", method="gguf", layers=[2]
    )
    assert out.layers == [2] and torch.equal(import_gguf(out.path)[0][2], dirs[2])
    # another width: refused, nothing written
    export_gguf({1: torch.randn(8)}, tmp_path / "narrow.gguf", "other")
    with pytest.raises(ShapeError, match="width 8 does not match d_model 64"):
        import_control_vector(exp, tmp_path / "narrow.gguf", "natural/pirate")
    assert not exp.trait_vectors_dir("natural/pirate").exists()
    # a trait from its own directory: extract records its id; steer resolves it from the extraction
    custom = tmp_path / "mytraits" / "corsair"
    shutil.copytree(resolve_trait_path("instruction/pirate"), custom)
    tid = load_trait(custom).id
    assert tid == "instruction/corsair" and trait_id(tid) == tid
    with pytest.raises(Exception, match="unknown trait"):
        resolve_trait(exp, tid)
    write_json(
        exp.extraction_dir(tid, "instruct", "response[:]", "resid") / "extraction.json",
        {"kind": "trait vector extraction", "meta": {"trait": tid, "trait_path": str(custom)}},
    )
    assert resolve_trait(exp, tid).path == custom
