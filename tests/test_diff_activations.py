"""Activation diffs: replay similarity (checked against HF hidden states) and the difference lens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import deltalens
from deltalens.diff.activations import activation_difference_lens, activation_similarity, replay_ids
from deltalens.generate import Generation
from tiny import save_tiny as save
from tiny import tiny_model

PROMPTS = [
    "Hello there",
    "What is the capital of France?",
    "Tell me a story about a mouse.",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    base = tiny_model("llama")
    b = save(base, root / "base")
    with torch.no_grad():
        base.model.model.layers[2].mlp.down_proj.weight += 0.2 * torch.randn(
            64, 128, generator=torch.Generator().manual_seed(0)
        )
    f = save(base, root / "ft")
    return b, f


def gens_with_lengths(lengths, seed=0):
    """Generations with fixed response lengths (ids from the tiny tokenizer's range)."""
    g = torch.Generator().manual_seed(seed)
    lm = tiny_model("llama")
    out = []
    for i, n in enumerate(lengths):
        prompt = lm.format_chat(f"question {i}")
        pids = lm.encode(prompt, formatted=True)
        rids = torch.randint(5, 390, (n,), generator=g).tolist()
        out.append(Generation(i, 0, f"question {i}", None, prompt, "", pids, rids, True))
    return out


def test_self_similarity_is_one_at_every_layer(pair, tmp_path):
    a, b = deltalens.load(pair[0]), deltalens.load(pair[0])  # two separate copies of one model
    r = activation_similarity(a, b, PROMPTS, max_new_tokens=8, out_dir=tmp_path, progress=False)
    assert len(r["per_layer_similarity"]["mean"]) == a.n_layers
    assert np.allclose(r["per_layer_similarity"]["mean"], 1.0, atol=1e-9)
    assert np.allclose(r["norm_change"]["mean"], 0.0, atol=1e-9)
    for L in map(str, r["layers"]):
        assert np.allclose(r["per_position_similarity"]["by_layer"][L]["mean"], 1.0, atol=1e-9)
    d = json.loads((tmp_path / "results.json").read_text())
    for key in (
        "n_prompts",
        "per_layer_similarity",
        "per_position_similarity",
        "transfer_curves",
        "correlations",
    ):
        assert key in d  # the trait seed's schema
    assert set(d["per_layer_similarity"]) == {"mean", "std", "per_prompt"}
    assert set(d["per_position_similarity"]) >= {"positions", "n_prompts_at_position", "by_layer"}
    assert (tmp_path / "similarity_by_layer.png").exists() and (
        tmp_path / "similarity_by_position.png"
    ).exists()


def test_replay_matches_hidden_states_on_identical_ids(pair):
    """Independent check: both models' HF hidden states on the ft model's own token ids give the
    same per-layer cosine — so the base model read exactly the ft model's prompt and response."""
    B, F = deltalens.load(pair[0]), deltalens.load(pair[1])
    gens = deltalens.generate(F, PROMPTS, max_new_tokens=10, progress=False)
    base_items, ft_items = replay_ids(B, F, gens, "same")
    assert base_items == ft_items
    assert [x["prompt_ids"] + x["response_ids"] for x in ft_items] == [
        g.prompt_ids + g.response_ids for g in gens
    ]
    r = activation_similarity(B, F, generations=gens, progress=False)
    assert r["replay"]["token_ids_identical"] and r["replay"]["n_response_tokens"] == sum(
        len(g.response_ids) for g in gens
    )
    want = np.zeros((len(gens), B.n_layers - 1))
    with torch.no_grad():
        for i, g in enumerate(gens):
            ids = torch.tensor([g.prompt_ids + g.response_ids])
            hb = B.model(input_ids=ids, output_hidden_states=True).hidden_states
            hf = F.model(input_ids=ids, output_hidden_states=True).hidden_states
            P = len(g.prompt_ids)
            for L in range(B.n_layers - 1):  # HF's last entry has the final norm applied
                mb, mf = hb[L + 1][0, P:].double().mean(0), hf[L + 1][0, P:].double().mean(0)
                want[i, L] = float(mb @ mf / (mb.norm() * mf.norm()))
    got = np.array(r["per_layer_similarity"]["per_prompt"])[:, : B.n_layers - 1]
    assert np.allclose(got, want, atol=1e-6)
    assert got[:, :2].min() > 1 - 1e-9  # layers before the perturbed one are untouched
    assert got[:, 2].max() < 1 - 1e-4  # the perturbed layer differs

    raw_b, raw_f = replay_ids(B, F, gens, "raw")
    assert [x["response_ids"] for x in raw_b] == [x["response_ids"] for x in raw_f]
    assert raw_b[0]["prompt_ids"] == B.encode(gens[0].question) != raw_f[0]["prompt_ids"]
    r2 = activation_similarity(B, F, generations=gens, base_prompt="raw", progress=False)
    assert r2["replay"]["base_prompt"] == "raw" and r2["n_prompts"] == len(gens)


def test_per_position_similarity_is_clipped_at_80_percent(pair):
    gens = gens_with_lengths([10] * 7 + [5] * 2 + [2])
    r = activation_similarity(pair[0], pair[1], generations=gens, progress=False)
    pp = r["per_position_similarity"]
    assert pp["positions"] == [0, 1, 2, 3, 4]
    assert pp["n_prompts_at_position"] == [10, 10, 9, 9, 9]
    assert len(pp["by_layer"]["0"]["mean"]) == 5


def test_transfer_curve_correlation(pair, tmp_path):
    res = tmp_path / "results.jsonl"
    deltas = {0: 5.0, 1: 9.0, 2: 2.0, 3: 7.0}
    recs = [{"kind": "baseline", "trait_mean": 10.0, "coherence_mean": 90}]
    for L, d in deltas.items():
        recs.append({"kind": "single", "layer": L, "coef": 4.0, "trait_mean": 10.0 + d, "coherence_mean": 85})
        recs.append(
            {"kind": "single", "layer": L, "coef": 2.0, "trait_mean": 10.0 + d / 2, "coherence_mean": 95}
        )
        recs.append(
            {"kind": "single", "layer": L, "coef": 9.0, "trait_mean": 99.0, "coherence_mean": 40}
        )  # incoherent
    res.write_text("".join(json.dumps(r) + "\n" for r in recs))
    r = activation_similarity(
        pair[0], pair[1], PROMPTS, max_new_tokens=6, steering={"planted": res}, progress=False
    )
    curve = r["transfer_curves"]["planted"]
    assert curve["layers"] == [0, 1, 2, 3] and curve["deltas"] == [5.0, 9.0, 2.0, 7.0]
    from scipy.stats import pearsonr

    want = pearsonr(r["per_layer_similarity"]["mean"], [5.0, 9.0, 2.0, 7.0])
    assert r["correlations"]["planted"]["pearson_r"] == pytest.approx(float(want[0]), abs=1e-9)
    assert r["correlations"]["planted"]["p_value"] == pytest.approx(float(want[1]), abs=1e-9)


def test_activation_difference_lens(pair, tmp_path):
    B, F = deltalens.load(pair[0]), deltalens.load(pair[1])
    texts = [
        "The committee met on Tuesday afternoon.",
        "She opened the old wooden box and found letters.",
        "To install the package, run the installer.",
    ]
    same = activation_difference_lens(B, deltalens.load(pair[0]), texts, progress=False, figures=False)
    assert all(e["all"]["norm"] == 0.0 and e["all"]["pos"] == [] for e in same["layers"].values())
    r = activation_difference_lens(B, F, texts, n_positions=3, out_dir=tmp_path, progress=False)
    # independent: mean over all tokens of the hidden-state difference at layer 2 through the ft logit lens
    diffs, first = [], []
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([B.encode(t)])
            d = (
                F.model(input_ids=ids, output_hidden_states=True).hidden_states[3][0]
                - B.model(input_ids=ids, output_hidden_states=True).hidden_states[3][0]
            )
            diffs.append(d)
            first.append(d[:3])
        delta = torch.cat(diffs).double().mean(0)
        delta_first = torch.cat(first).double().mean(0)
        want = F.token_str(F.logits(delta.float()).topk(20).indices)
    e = r["layers"]["2"]
    assert e["all"]["norm"] == pytest.approx(float(delta.norm()), rel=1e-5)
    assert e["first_k"]["norm"] == pytest.approx(float(delta_first.norm()), rel=1e-5)
    assert [t for t, _ in e["all"]["pos"]] == want
    assert r["layers"]["0"]["all"]["norm"] == 0.0  # before the perturbed layer nothing differs
    assert r["summary"]["layer"] == B.n_layers // 2
    assert r["summary_max"]["layer"] >= 2  # the difference starts at the perturbed layer
    assert (tmp_path / "activation_lens.json").exists() and (tmp_path / "activation_lens.png").exists()
