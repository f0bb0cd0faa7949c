"""Inverse problems: collection, filtering and both optimisers on a planted latent.

The planted SAE latent fires (activation > 0) on exactly one two-token prompt of the tiny model:
its encoder is the LDA direction of that prompt's residual against all 54 756 two-token prompts
over the clean vocabulary, its bias half-way between the top two scores — checked by brute force.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from deltalens.errors import ConfigError, DataFormatError, SiteError
from deltalens.inverse import (
    CollectConfig,
    CollectResult,
    FilterConfig,
    FilterResult,
    OptimizeConfig,
    OptimizeResult,
    collect,
    epo,
    filter_latents,
    soft_prompt,
)
from deltalens.inverse.score import DirectionTarget, LatentTarget, forward, score_ids
from deltalens.inverse.tokens import allowed_tokens
from deltalens.sae import SAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _all_pairs(lm):
    pool = allowed_tokens(lm).nonzero().flatten()
    return torch.stack([pool.repeat_interleave(len(pool)), pool.repeat(len(pool))], 1)


def _site_resid(lm, ids, site="resid.0"):
    tgt = DirectionTarget(torch.ones(lm.d_model), site)
    out = []
    with torch.no_grad():
        for k in range(0, len(ids), 8192):
            h, _ = forward(lm, tgt, ids=ids[k : k + 8192], need_logits=False)
            out.append(h[:, 1])
    return torch.cat(out)


@pytest.fixture(scope="module")
def planted(tiny):
    """(lm, sae, the planted pair, all pairs) — latent 0 fires only on the planted pair."""
    torch.set_num_threads(1)
    ids = _all_pairs(tiny)
    H = _site_resid(tiny, ids)
    mu = H.mean(0)
    Ci = torch.linalg.inv(torch.cov((H - mu).T) + 1e-3 * torch.eye(H.shape[1]))
    g = torch.Generator().manual_seed(0)
    best = None
    for j in torch.randint(0, len(ids), (40,), generator=g).tolist():
        s = H @ (Ci @ (H[j] - mu))
        top = s.topk(2).values
        margin = float((s[j] - top[1]) / s.std()) if int(s.argmax()) == j else -1.0
        if best is None or margin > best[0]:
            best = (margin, j)
    j = best[1]
    w = Ci @ (H[j] - mu)
    top = (H @ w).topk(2).values
    gap = top[0] - top[1]
    sae = SAE(SAEConfig(tiny.d_model, 4, "standard", site="resid.0"))
    with torch.no_grad():
        sae.W_enc[:, 0] = w / gap
        sae.b_enc[0] = -(top[0] + top[1]) / 2 / gap
        sae.W_dec[0] = w / w.norm()
    return tiny, sae, ids[j].tolist(), ids


def test_planted_latent_fires_only_on_its_pair(planted):
    lm, sae, pair, ids = planted
    s = score_ids(lm, LatentTarget(sae, 0), ids, batch_size=8192, fluency=False)
    fired = np.flatnonzero(s.activation > 0)
    assert [ids[i].tolist() for i in fired] == [pair]


@pytest.mark.parametrize("method", ["epo", "soft"])
def test_both_optimisers_find_the_planted_pair(planted, method):
    lm, sae, pair, ids = planted
    cfg = OptimizeConfig(
        method=method,
        length=2,
        steps=12,
        population=4,
        candidates=32,
        top_k=16,
        restarts=32,
        lr=0.5,
        fluency=0.0,
    )
    res = (epo if method == "epo" else soft_prompt)(lm, sae, cfg, latent=0)
    assert res.best["ids"] == pair, (res.best, lm.tokenizer.decode(pair))
    assert res.best["survives"] and res.best["retokenized_ids"] == pair
    assert res.best["activation"] == pytest.approx(0.5, abs=1e-3)  # re-scored as text
    # gradient guidance, not luck: as many uniformly random prompts would hit it with p < 5 %
    assert res.evaluated / len(ids) < 0.05


def test_optimised_result_round_trips_and_history_grows(planted, tmp_path):
    lm, sae, pair, _ = planted
    res = epo(lm, sae, OptimizeConfig(length=2, steps=3, population=3, candidates=8, max_ce=1e9), latent=0)
    assert all(h["best_fluent_activation"] == h["best_activation"] for h in res.history)  # no CE binds
    res.save(tmp_path)
    back = OptimizeResult.load(tmp_path)
    assert back.best == res.best and len(back.history) == 3
    assert [h["evaluated"] for h in back.history] == sorted(h["evaluated"] for h in back.history)
    # the front is Pareto: activation increases strictly with CE
    acts = [p["activation"] for p in back.front]
    ces = [p["ce"] for p in back.front]
    assert acts == sorted(acts) and ces == sorted(ces)


def _dense_reference(lm, sae, texts, positions_from=1):
    """max/mean over tokens ≥ 1 by a plain HF forward with output_hidden_states (independent path)."""
    mx, mean = [], []
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([lm.encode(t)])
            hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[2]  # resid.1
            f = sae.encode(hs[0, positions_from:])
            mx.append(f.max(0).values)
            mean.append(f.mean(0))
    return torch.stack(mx).numpy(), torch.stack(mean).numpy()


@pytest.fixture(scope="module")
def random_sae(tiny):
    torch.manual_seed(0)
    sae = SAE(SAEConfig(tiny.d_model, 32, "standard", site="resid.1"))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.b_enc.fill_(-0.25)
        sae.W_dec.normal_()
    return sae


def test_collect_matches_a_plain_forward_and_round_trips(tiny, random_sae, tmp_path):
    texts = ["The quick brown fox jumps.", "Why is the sky blue?", "def add(a, b): return a + b", "H"]
    res = collect(tiny, random_sae, texts, CollectConfig(batch_size=3))
    assert sp.issparse(res.max) and res.max.shape == (4, 32)
    # a one-token prompt has no positions ≥ 1 and no CE; percentiles skip it
    assert res.n_tokens[3] == 0 and np.isnan(res.ce[3]) and res.max[3].nnz == 0
    assert res.ce_percentile(90) == pytest.approx(float(np.percentile(res.ce[:3], 90)))
    mx, mean = _dense_reference(tiny, random_sae, texts[:3])
    np.testing.assert_allclose(res.max[:3].toarray(), mx, atol=1e-5)
    np.testing.assert_allclose(res.mean[:3].toarray(), mean, atol=1e-5)
    top = res.top_prompts(int(np.argmax(mx.max(0))), 1)[0]
    assert top[1] == pytest.approx(float(mx.max()), abs=1e-5)
    res.save(tmp_path / "c")
    back = CollectResult.load(tmp_path / "c")
    assert (back.max != res.max).nnz == 0 and back.prompts == texts
    np.testing.assert_allclose(back.ce, res.ce)
    from deltalens.info import describe

    assert describe(tmp_path / "c")["kind"] == "inverse collection"


def test_filter_bands_and_entropy_formula(tiny, random_sae):
    texts = ["The quick brown fox jumps.", "Why is the sky blue?", "Tell me a story.", "Numbers 1 2 3"]
    res = collect(tiny, random_sae, texts)
    f = filter_latents(res, FilterConfig(sparsity_min=0.3, sparsity_max=0.8))
    fr = np.asarray((res.max > 0).sum(0)).ravel() / 4
    assert f.kept == [i for i in range(32) if 0.3 <= fr[i] <= 0.8]
    i = f.kept[0]
    col = res.max[:, i].toarray().ravel()
    p = col[col > 0] / col.sum()
    assert f.stats.prompt_entropy[i] == pytest.approx(-(p * np.log(p)).sum() / np.log(4))
    assert FilterResult.from_dict(f.to_dict()).kept == f.kept


def test_bad_inputs(tiny, random_sae):
    with pytest.raises(ConfigError, match="latent 32 is out of range: the SAE has 32 latents"):
        LatentTarget(random_sae, 32)
    with pytest.raises(DataFormatError, match="the prompt set is empty"):
        collect(tiny, random_sae, [])
    with pytest.raises(SiteError, match="not the site the SAE was trained on"):
        epo(tiny, random_sae, OptimizeConfig(steps=1), latent=0, site="resid.2")
    with pytest.raises(ConfigError, match="--length must be > --skip"):
        OptimizeConfig(length=1)
