"""Acceptance: an SAE with planted latents — one on every ``asst`` token, one on prompt
tokens only, one that never fires — is found exactly by the universal/specific analysis,
prompt-only detection and dead detection; numbers are checked against the tokenizer."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from deltalens.data.prompts import PromptRecord
from deltalens.errors import DataFormatError
from deltalens.features import (
    RECORD_KEYS,
    SPECIFIC_COLUMNS,
    UNIVERSAL_COLUMNS,
    UNIVERSAL_COLUMNS_ANNOTATED,
    FeatureRef,
    analyse,
    firing_stats,
    make_sources,
    read_features_csv,
    specific_features,
    universal_features,
)
from features_helpers import ASST, DEAD, PROMPT_ONLY, planted_sae

QUESTIONS = [
    ("What is the capital of France?", "geo"),
    ("Why is the sky blue?", "science"),
    ("Tell me a story about a brave mouse.", "creative"),
    ("I love reading books. Do you?", "personal"),
    ("def add(a, b): return a + b", "code"),
]
RESPONSES = [
    "The capital is Paris.",
    "assistant says light scatters in the air.",
    "A mouse lived in a big old house. The end?",
    "Yes, reading is fun!",
    "assistant: it is a function that adds.",
]
NOISE = [" the", " is", "?"]


@pytest.fixture(scope="module")
def planted(tiny):
    noise = [tiny.tokenizer.convert_tokens_to_ids(tiny.tokenizer.tokenize(w)[0]) for w in NOISE]
    sae, info = planted_sae(tiny, noise)
    return sae, info


def _prompts():
    return [PromptRecord(q, label) for q, label in QUESTIONS]


def _pairs():
    return [{"question": q, "response": r} for (q, _), r in zip(QUESTIONS, RESPONSES)]


def test_universal_finds_exactly_the_asst_latent(tiny, planted):
    sae, info = planted
    [src] = make_sources(tiny, [sae])
    assert src.name == "tiny_trainer0_layer0"
    for threshold in (0.2, 1.0):
        res = universal_features(
            [src], _prompts(), threshold=threshold, activation_threshold=0.01, progress=False
        )
        t = res.table
        assert list(t.columns) == UNIVERSAL_COLUMNS
        assert t[["feature_id", "token"]].values.tolist() == [[ASST, "asst"]]
        row = t.iloc[0]
        assert row.num_prompts == len(QUESTIONS)
        assert row.activation_mean == pytest.approx(info["acts"][ASST], rel=1e-5)
        assert row.activation_max == pytest.approx(info["acts"][ASST], rel=1e-5)
        assert row.activation_min == pytest.approx(info["acts"][ASST], rel=1e-5)
        assert row.source == "tiny_trainer0_layer0" and row.link == ""


def test_universal_threshold_counts_prompts(tiny, planted):
    """Universal means num_prompts ≥ ⌈threshold·N⌉ (and ≥ 1): with N = 5, a latent active on
    2 prompts is universal at 0.4 but not at 0.41; rows sort by activation_mean."""
    from deltalens.features.universal import TokenScan, universal_from_scans

    sae, info = planted
    [src] = make_sources(tiny, [sae])
    prompts = _prompts()
    sc = TokenScan.new(src, "asst", 5, 0.01, [], False)
    sc.count[:4] = torch.tensor([5, 2, 3, 0])
    sc.act_sum[:4] = torch.tensor([5.0, 4.0, 9.0, 0.0], dtype=torch.float64)
    sc.finish()

    def ids(thr):
        return universal_from_scans([sc], prompts, thr, False).table.feature_id.tolist()

    assert ids(0.4) == [2, 1, 0]  # means 3.0, 2.0, 1.0
    assert ids(0.41) == [2, 0]
    assert ids(0.6) == [2, 0] and ids(0.61) == [0] and ids(1.0) == [0]
    assert ids(0.0) == [2, 1, 0]  # never-active latents are not universal even at 0
    # the real scan: the asst latent is active on all 5, the others on none
    res = analyse([src], prompts, universal=True, threshold=0.4, activation_threshold=0.01, progress=False)
    scan = next(s for s in res.scans if s.token == "asst")
    assert scan.count[ASST] == 5 and scan.count[PROMPT_ONLY] == 0 and scan.count[DEAD] == 0
    # raising the activation threshold above the planted activation removes it
    res = universal_features(
        [src], prompts, threshold=0.2, activation_threshold=info["acts"][ASST] + 1e-3, progress=False
    )
    assert res.table.empty and list(res.table.columns) == UNIVERSAL_COLUMNS


def test_specific_reports_every_prompt_and_records_active_pairs(tiny, planted, tmp_path):
    sae, info = planted
    [src] = make_sources(tiny, [sae])
    feats = tmp_path / "features.csv"
    feats.write_text(
        "feature_id,source,token\n0,tiny_trainer0_layer0,asst\n1,tiny_trainer0_layer0,\n2,tiny_trainer0_layer0,newline\n"
    )
    refs = read_features_csv(feats)
    res = specific_features(
        [src], _prompts(), refs, activation_threshold=0.01, record_prompts=True, progress=False
    )
    t = res.table
    assert list(t.columns) == SPECIFIC_COLUMNS
    n = len(QUESTIONS)
    # feature 0 at asst, feature 1 at asst and newline (no token given), feature 2 at newline
    assert len(t) == n * 4
    asst0 = t[(t.feature_id == 0) & (t.token == "asst")]
    assert asst0.prompt_idx.tolist() == list(range(n))
    assert asst0.prompt.tolist() == [q for q, _ in QUESTIONS] and asst0.label.tolist() == [
        lab for _, lab in QUESTIONS
    ]
    assert asst0.activation.tolist() == pytest.approx([info["acts"][ASST]] * n, rel=1e-5)
    assert (t[t.feature_id != 0].activation == 0).all()
    assert sorted(set(zip(t.feature_id, t.token))) == [
        (0, "asst"),
        (1, "asst"),
        (1, "newline"),
        (2, "newline"),
    ]
    # records: only feature 0 is active, on every prompt
    assert len(res.records) == n
    for rec, (q, lab) in zip(res.records, QUESTIONS):
        assert tuple(rec) == RECORD_KEYS
        assert rec == {
            "model": "tiny",
            "layer": 0,
            "feature_id": 0,
            "prompt": q,
            "label": lab,
            "activation": pytest.approx(info["acts"][ASST], rel=1e-5),
            "token_type": "asst",
        }
    csv_path, jsonl = res.write(tmp_path / "out" / "specific.csv")
    assert jsonl == tmp_path / "out" / "specific_activeprompts.jsonl"
    with open(csv_path, newline="") as fh:
        assert next(csv.reader(fh)) == SPECIFIC_COLUMNS
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert [list(x) for x in lines] == [list(RECORD_KEYS)] * n


def test_universal_csv_schema_on_disk(tiny, planted, tmp_path):
    sae, _ = planted
    [src] = make_sources(
        tiny,
        [sae],
        model_alias="llama",
        link_template="https://dash/?model={model}&layer={layer}&trainer={trainer}&fids={feature_id}",
    )
    res = universal_features([src], _prompts(), threshold=0.3, record_prompts=True, progress=False)
    p, jsonl = res.write(tmp_path / "universal.csv")
    with open(p, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == UNIVERSAL_COLUMNS
    assert rows[1][0] == "0" and rows[1][5:] == [
        "llama_trainer0_layer0",
        "asst",
        "https://dash/?model=llama&layer=0&trainer=0&fids=0",
    ]
    p2, _ = res.write(tmp_path / "annotated.csv", annotation_columns=True)
    with open(p2, newline="") as fh:
        rows2 = list(csv.reader(fh))
    assert rows2[0] == UNIVERSAL_COLUMNS_ANNOTATED
    assert rows2[1][5:8] == ["", "", ""] and rows2[1][8] == "llama_trainer0_layer0"
    recs = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert jsonl.name == "universal_activeprompts.jsonl" and len(recs) == len(QUESTIONS)
    assert {r["model"] for r in recs} == {"llama"} and {r["token_type"] for r in recs} == {"asst"}
    # the universal CSV is a valid features CSV for the specific analysis (token column honoured)
    refs = read_features_csv(p)
    assert refs == [FeatureRef(0, "llama_trainer0_layer0", "asst", f"{p}:2")]


def test_firing_finds_prompt_only_and_dead_latents(tiny, planted):
    sae, info = planted
    st = firing_stats(tiny, sae, _pairs(), batch_size=2, progress=False)
    assert torch.nonzero(st.dead).flatten().tolist() == [DEAD]
    assert torch.nonzero(st.prompt_only).flatten().tolist() == [PROMPT_ONLY]
    # independent count from the tokenizer
    seqs = []
    for (q, _), r in zip(QUESTIONS, RESPONSES):
        p = tiny.encode(tiny.format_chat(q), formatted=True)
        seqs.append((p, tiny.encode(r, formatted=True)))
    n_tok = sum(len(p) + len(r) for p, r in seqs)
    assert st.n_tokens == n_tok and st.n_sequences == len(seqs)
    for i, tok in enumerate(info["tokens"]):
        if tok is None:
            continue
        n_prompt = sum(p.count(tok) for p, _ in seqs)
        n_resp = sum(r.count(tok) for _, r in seqs)
        n_seq = sum(1 for p, r in seqs if tok in p + r)
        assert int(st.fire_prompt_tokens[i]) == n_prompt, i
        assert int(st.fire_response_tokens[i]) == n_resp, i
        assert float(st.frac_tokens[i]) == pytest.approx((n_prompt + n_resp) / n_tok)
        assert float(st.frac_sequences[i]) == pytest.approx(n_seq / len(seqs))
        assert float(st.mean_activation[i]) == pytest.approx(info["acts"][i], rel=1e-5)
        ranks = [k for p, r in seqs for k, t in enumerate(p + r) if t == tok]
        assert float(st.mean_position[i]) == pytest.approx(sum(ranks) / len(ranks))
    # the asst latent fires in two responses too, so it is universal but not prompt-only
    assert st.fire_response_tokens[ASST] == 2 and st.fire_prompt_tokens[ASST] == len(QUESTIONS)


def test_prompt_only_needs_responses(tiny, planted):
    sae, _ = planted
    st = firing_stats(tiny, sae, [q for q, _ in QUESTIONS], progress=False)
    with pytest.raises(DataFormatError, match="need inputs with responses"):
        _ = st.prompt_only


def test_errors_name_the_csv_line(tiny, planted, tmp_path):
    sae, _ = planted
    [src] = make_sources(tiny, [sae])
    bad = tmp_path / "bad.csv"
    bad.write_text("feature_id,source\n0,tiny_trainer0_layer0\n1,qwen_trainer1_layer11\n")
    with pytest.raises(
        DataFormatError,
        match=r"bad.csv:3: source 'qwen_trainer1_layer11' is not one of the SAEs of this run \(loaded: tiny_trainer0_layer0\)",
    ):
        specific_features([src], _prompts(), read_features_csv(bad), progress=False)
    bad.write_text("feature_id,source\n0,tiny_trainer0_layer0\n6,tiny_trainer0_layer0\n")
    with pytest.raises(
        DataFormatError,
        match=r"bad.csv:3: feature_id 6 is out of range for tiny_trainer0_layer0 \(d_sae=6: valid ids 0..5\)",
    ):
        specific_features([src], _prompts(), read_features_csv(bad), progress=False)
    bad.write_text("feature_id,source\n-1,tiny_trainer0_layer0\n")
    with pytest.raises(DataFormatError, match="bad.csv:2: feature_id -1 is out of range"):
        specific_features([src], _prompts(), read_features_csv(bad), progress=False)
    bad.write_text("feature_id,source,token\n0,tiny_trainer0_layer0,endheader\n")
    with pytest.raises(
        DataFormatError,
        match=r"bad.csv:2: token 'endheader' is not analysed for tiny_trainer0_layer0 \(token types: asst, newline\)",
    ):
        specific_features([src], _prompts(), read_features_csv(bad), progress=False)
    bad.write_text("id,source\n0,x\n")
    with pytest.raises(
        DataFormatError, match=r"bad.csv:1: features CSV needs the column\(s\) feature_id; found: id, source"
    ):
        read_features_csv(bad)
    bad.write_text("feature_id,source\nabc,x\n")
    with pytest.raises(DataFormatError, match="bad.csv:2: feature_id 'abc' is not an integer"):
        read_features_csv(bad)
    bad.write_text("")
    with pytest.raises(DataFormatError, match="the features CSV is empty"):
        read_features_csv(bad)


def test_many_sources_of_two_models_in_one_run(tiny, monkeypatch):
    """Three SAEs (two layers of one model, one of another) × both token types, one forward
    pass per model; every activation equals the SAE applied to capture() at that token."""
    import deltalens
    from tiny import tiny_model

    other = tiny_model("qwen2", seed=3)
    g = torch.Generator().manual_seed(5)

    def rand_sae(lm, site):
        from deltalens.sae import SAE, SAEConfig

        s = SAE(SAEConfig(lm.d_model, 32, "standard", site=site))
        with torch.no_grad():
            s.W_enc.copy_(torch.randn(lm.d_model, 32, generator=g) * 0.2)
            s.W_dec.copy_(torch.randn(32, lm.d_model, generator=g))
        return s

    saes = {
        ("llama", "resid.1"): rand_sae(tiny, "resid.1"),
        ("llama", "resid.3"): rand_sae(tiny, "resid.3"),
        ("qwen", "resid.2"): rand_sae(other, "resid.2"),
    }
    sources = make_sources(
        tiny, [saes[("llama", "resid.1")], saes[("llama", "resid.3")]], model_alias="llama"
    )
    sources += make_sources(other, [saes[("qwen", "resid.2")]], model_alias="qwen", existing=sources)
    assert [s.name for s in sources] == [
        "llama_trainer0_layer1",
        "llama_trainer0_layer3",
        "qwen_trainer0_layer2",
    ]
    calls = {"n": 0}
    for lm in (tiny, other):
        orig = lm.model.forward

        def counted(*a, _orig=orig, **k):
            calls["n"] += 1
            return _orig(*a, **k)

        monkeypatch.setattr(lm.model, "forward", counted)
    refs = [FeatureRef(f, s.name) for s in sources for f in range(32)]
    prompts = _prompts()
    res = analyse(sources, prompts, universal=True, features=refs, threshold=0.2, progress=False)
    assert calls["n"] == 2  # one batch per model, every layer and token type from it
    monkeypatch.undo()
    t = res.specific.table
    assert sorted(set(zip(t.source, t.token))) == [
        (s.name, tok) for s in sources for tok in ("asst", "newline")
    ]
    for s, (model, site) in zip(sources, saes):
        lm = tiny if model == "llama" else other
        for tok in ("asst", "newline"):
            ref = deltalens.capture(
                lm, [{"question": p.text, "response": ""} for p in prompts], [site], tok, progress=False
            )
            want = saes[(model, site)].encode(ref[site]).detach()
            got = t[(t.source == s.name) & (t.token == tok)].sort_values(["prompt_idx", "feature_id"])
            torch.testing.assert_close(
                torch.tensor(got.activation.to_numpy(), dtype=torch.float32).view(len(prompts), 32),
                want,
                atol=1e-5,
                rtol=1e-5,
            )
            u = res.universal.table
            u = u[(u.source == s.name) & (u.token == tok)]
            n_active = (want > 0.01).sum(0)
            assert sorted(u.feature_id) == sorted(torch.nonzero(n_active >= 1).flatten().tolist())
