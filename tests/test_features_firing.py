"""Firing statistics and dashboards against a dense, independent computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import deltalens
from deltalens.features import FiringConfig, FiringStats, build_dashboards, firing_stats, write_dashboards
from deltalens.features.dashboard import final_norm_scale
from deltalens.sae import SAE, SAEConfig

TEXTS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Why is the sky blue?", "Light scatters in the air, and blue light scatters most."),
    ("Tell me a story.", "A brave mouse lived in a big old house."),
    ("Numbers please", "0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000"),
    ("Hello", "Hello there, good morning!"),
]


@pytest.fixture(scope="module")
def sae(tiny):
    g = torch.Generator().manual_seed(1)
    s = SAE(SAEConfig(tiny.d_model, 48, "standard", site="resid.1"))
    with torch.no_grad():
        s.W_enc.copy_(torch.randn(tiny.d_model, 48, generator=g) * 0.1)
        s.b_enc.copy_(torch.randn(48, generator=g) * 0.5 - 0.6)
        s.W_dec.copy_(torch.randn(48, tiny.d_model, generator=g))
        s.b_dec.copy_(torch.randn(tiny.d_model, generator=g) * 0.1)
    return s


def _data():
    return [{"question": q, "response": r} for q, r in TEXTS]


def _dense(tiny, sae, data):
    acts = deltalens.capture(tiny, data, [(1, "resid")], "all", progress=False)
    f = sae.encode(acts[(1, "resid")]).detach()
    return f, acts


@pytest.mark.filterwarnings("ignore:.*(empty slice|All-NaN|Degrees of freedom).*:RuntimeWarning")
def test_statistics_match_a_dense_computation(tiny, sae):
    data = _data()
    cfg = FiringConfig(activation_threshold=0.05, top_k=7, max_position=16)
    st = firing_stats(tiny, sae, data, config=cfg, batch_size=2, progress=False)
    f, acts = _dense(tiny, sae, data)
    fn = f.numpy()
    on = fn > 0.05
    seq = acts.seq_ids.numpy()
    pos = acts.positions.numpy()
    resp = acts.is_response.numpy()
    N = len(fn)
    assert st.n_tokens == N and st.n_sequences == len(data) and st.n_response_tokens == int(resp.sum())
    assert 0 < on.mean() < 0.6, "the random SAE should fire on some tokens, not all"
    np.testing.assert_array_equal(st.fire_tokens.numpy(), on.sum(0))
    np.testing.assert_array_equal(st.fire_response_tokens.numpy(), (on & resp[:, None]).sum(0))
    per_seq = np.stack([on[seq == s].any(0) for s in range(len(data))])
    np.testing.assert_allclose(st.frac_sequences.numpy(), per_seq.mean(0))
    np.testing.assert_allclose(st.frac_tokens.numpy(), on.mean(0))
    masked = np.where(on, fn, np.nan)
    alive = on.any(0)
    np.testing.assert_allclose(st.mean_activation.numpy()[alive], np.nanmean(masked, 0)[alive], rtol=1e-5)
    np.testing.assert_allclose(
        st.std_activation.numpy()[alive], np.nanstd(masked, 0)[alive], rtol=1e-3, atol=1e-6
    )
    np.testing.assert_allclose(st.max_activation.numpy()[alive], np.nanmax(masked, 0)[alive], rtol=1e-6)
    np.testing.assert_allclose(st.min_activation.numpy()[alive], np.nanmin(masked, 0)[alive], rtol=1e-6)
    assert (st.dead.numpy() == ~alive).all()
    # positions: mean rank and the rank histogram (last bin collects ranks >= 15)
    posm = np.where(on, pos[:, None], np.nan)
    np.testing.assert_allclose(st.mean_position.numpy()[alive], np.nanmean(posm, 0)[alive], rtol=1e-6)
    for i in np.nonzero(alive)[0][:5]:
        want = np.bincount(np.minimum(pos[on[:, i]], 15), minlength=16)
        np.testing.assert_array_equal(st.position_histogram(i), want)
    # histogram of log10 activations with the configured edges
    edges = cfg.bin_edges.numpy()
    for i in np.nonzero(alive)[0][:5]:
        want, _ = np.histogram(np.clip(fn[on[:, i], i], edges[0], edges[-1] * 0.999999), bins=edges)
        np.testing.assert_array_equal(st.histogram(i)[1], want)
    # quantiles: in the bin of the exact (inverted-CDF) quantile, so within one bin width
    q = st.quantiles((0.5, 0.9)).numpy()
    bin_ratio = edges[1] / edges[0]
    checked = 0
    for i in np.nonzero(on.sum(0) >= 10)[0]:
        exact = np.quantile(fn[on[:, i], i], [0.5, 0.9], method="inverted_cdf")
        assert np.all(q[:, i] <= exact * bin_ratio * 1.0001) and np.all(q[:, i] >= exact / bin_ratio / 1.0001)
        checked += 1
    assert checked >= 5
    # top-k: the 7 highest activations and where they are
    for i in np.nonzero(alive)[0][:8]:
        top = st.top(i)
        order = np.argsort(-fn[:, i], kind="stable")
        want = [v for v in fn[order, i] if v > 0.05][:7]
        np.testing.assert_allclose([t[0] for t in top], want, rtol=1e-6)
        for act, s, p in top:
            row = np.nonzero((seq == s) & (pos == p))[0][0]
            assert fn[row, i] == pytest.approx(act, rel=1e-6)


def test_positions_restrict_the_tokens(tiny, sae):
    st = firing_stats(tiny, sae, _data(), positions="response", progress=False)
    f, acts = _dense(tiny, sae, _data())
    on = f.numpy()[acts.is_response.numpy()] > 0
    np.testing.assert_array_equal(st.fire_tokens.numpy(), on.sum(0))
    assert st.n_tokens == len(on) and int(st.fire_prompt_tokens.sum()) == 0


def test_merge_save_and_load(tiny, sae, tmp_path):
    data = _data()
    cfg = FiringConfig(top_k=5)
    whole = firing_stats(tiny, sae, data, config=cfg, progress=False)
    a = firing_stats(tiny, sae, data[:2], config=cfg, progress=False)
    b = firing_stats(tiny, sae, data[2:], config=cfg, progress=False)
    m = a.merge(b)
    for name in ("fire_tokens", "fire_sequences", "fire_response_tokens", "hist", "pos_hist"):
        assert torch.equal(m.tensors[name], whole.tensors[name]), name
    torch.testing.assert_close(m.act_sum, whole.act_sum)
    torch.testing.assert_close(m.top_values, whole.top_values)
    # other's sequence ids are shifted by a.n_sequences, i.e. they are input indices again
    # (ties — e.g. the identical first token of every prompt — may pick other sequences)
    f, acts = _dense(tiny, sae, data)
    for i in range(0, 48, 7):
        for v, s_, p_ in m.top(i):
            row = ((acts.seq_ids == s_) & (acts.positions == p_)).nonzero()[0, 0]
            assert float(f[row, i]) == pytest.approx(v, rel=1e-6)
    whole.save(tmp_path / "st.safetensors")
    back = FiringStats.load(tmp_path / "st.safetensors")
    assert back.n_tokens == whole.n_tokens and back.config == whole.config
    for k, v in whole.tensors.items():
        assert torch.equal(back.tensors[k], v), k
    assert back.meta["site"] == "resid.1" and back.meta["model"] == "tiny-llama"
    assert back.to_frame().shape[0] == 48


def test_dashboards_hold_exact_windows_and_logit_effects(tiny, sae, tmp_path):
    data = _data()
    recs, st = build_dashboards(
        tiny, sae, data, [0, 5, 7], n_examples=3, left=4, right=2, n_logits=5, progress=False
    )
    f, acts = _dense(tiny, sae, data)
    fn = f.numpy()
    seq, pos = acts.seq_ids.numpy(), acts.positions.numpy()
    gamma, centre = final_norm_scale(tiny)
    assert not centre
    torch.testing.assert_close(
        gamma, tiny.arch.final_norm.weight.detach() / (1 + tiny.arch.final_norm.variance_epsilon) ** 0.5
    )
    W_U = tiny.arch.unembed.weight.detach()
    for r in recs:
        i = r["index"]
        for key in (
            "modelId",
            "layer",
            "index",
            "maxActApprox",
            "frac_nonzero",
            "freq_hist_data_bar_values",
            "freq_hist_data_bar_heights",
            "pos_str",
            "pos_values",
            "neg_str",
            "neg_values",
            "logits_hist_data_bar_values",
            "logits_hist_data_bar_heights",
            "activations",
            "deltalens",
        ):
            assert key in r
        assert len(r["freq_hist_data_bar_values"]) == len(r["freq_hist_data_bar_heights"])
        assert sum(r["freq_hist_data_bar_heights"]) == int(st.fire_tokens[i])
        eff = W_U @ (sae.W_dec[i].detach() * gamma)
        top = eff.topk(5)
        assert r["pos_str"] == [tiny.tokenizer.decode([int(t)]) for t in top.indices]
        np.testing.assert_allclose(r["pos_values"], top.values.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(r["neg_values"], (-(-eff).topk(5).values).numpy(), rtol=1e-4, atol=1e-5)
        for ex in r["activations"]:
            s, p = ex["seq_id"], ex["position"]
            a = p - ex["maxValueTokenIndex"]
            rows = [np.nonzero((seq == s) & (pos == k))[0][0] for k in range(a, a + len(ex["values"]))]
            np.testing.assert_allclose(ex["values"], fn[rows, i], atol=1e-5)
            assert ex["values"][ex["maxValueTokenIndex"]] == pytest.approx(ex["maxValue"], abs=1e-5)
            ids = acts.token_ids.numpy()[rows]
            assert ex["tokens"] == [tiny.tokenizer.decode([int(t)]) for t in ids]
            assert len(ex["values"]) <= 4 + 2 + 1
    index = write_dashboards(recs, tmp_path / "dash", lm=tiny)
    idx = json.loads(index.read_text())
    assert [x["index"] for x in idx["features"]] == [0, 5, 7]
    one = json.loads((tmp_path / "dash" / "features" / "5.json").read_text())
    assert one["index"] == 5
    # rewriting swaps the directory: no stale files left behind
    write_dashboards(recs[:1], tmp_path / "dash", lm=tiny)
    assert sorted(p.name for p in (tmp_path / "dash" / "features").iterdir()) == ["0.json"]
