"""Circuits: pairs, metrics, exact patching, attribution patching, IG, SAE attribution,
faithfulness — on tiny random models, each number checked against an independent
computation (plain forwards / HF hidden states, no deltalens hooks)."""

from __future__ import annotations

import json

import pytest
import torch

from deltalens import Replace, Site, intervene
from deltalens.circuits import (
    activation_patching,
    attribution_patching,
    build_task,
    integrated_gradients,
    normalise,
    pearson,
    run_patches,
)
from deltalens.circuits.faithfulness import faithfulness_curve
from deltalens.circuits.patching import sweep_sites
from deltalens.circuits.results import PatchingResult
from deltalens.circuits.sae_attribution import SAEAttribution, error_term_table, sae_attribution
from deltalens.data.pairs import bundled_pairs, pair_from_dict, read_pairs
from deltalens.errors import ConfigError, DataFormatError
from deltalens.generate import position_ids
from deltalens.sae import SAE, SAEConfig
from tiny import tiny_model

# equal token lengths in the tiny tokenizer (checked by build_task); pair 0 has a 3-token
# clean answer (" Paris") and pair 1 single-token answers, so logprob_diff differs from logit_diff
RECS = [
    {
        "clean": "The capital of France is",
        "corrupted": "The capital of dog is",
        "clean_answer": " Paris",
        "corrupted_answer": " the",
        "names": {"X": " France", "END": -1},
    },
    {
        "clean": "The dog sleeps in the sun",
        "corrupted": "The dog sleeps in the fox",
        "clean_answer": " about",
        "corrupted_answer": " dog",
    },
]


def pairs():
    return [pair_from_dict(r, f"pairs.jsonl:{i + 1}") for i, r in enumerate(RECS)]


@pytest.fixture(scope="module")
def sat():
    """A tiny Llama with weights scaled ×3: softmax/RMSNorm saturate, so first-order
    attribution is visibly wrong and integrated gradients has something to fix."""
    lm = tiny_model("llama", seed=1)
    with torch.no_grad():
        for p in lm.model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    return lm


def _plain_logits(lm, ids):
    with torch.no_grad():
        return lm.model(torch.tensor([ids])).logits[0]


# ---- pairs and metrics ---------------------------------------------------------------------


def test_pairs_file_errors_name_file_and_line(tmp_path, tiny):
    f = tmp_path / "p.jsonl"
    f.write_text(
        json.dumps(RECS[0]) + "\n" + json.dumps({"clean": "a", "corrupted": "b", "clean_answer": " x"}) + "\n"
    )
    with pytest.raises(DataFormatError, match=rf"{f}:2: missing the corrupted answer"):
        read_pairs(f)
    f.write_text(json.dumps({**RECS[0], "corrupted_answer": " Paris"}) + "\n")
    with pytest.raises(DataFormatError, match=":1: clean and corrupted answers are both ' Paris'"):
        read_pairs(f)
    f.write_text(json.dumps({**RECS[0], "names": {"Y": "Germany"}}) + "\n")
    with pytest.raises(DataFormatError, match="names.Y = 'Germany' does not occur in the clean prompt"):
        read_pairs(f)
    # unequal token lengths are refused, not aligned, with both tokenizations shown
    bad = pair_from_dict({**RECS[0], "corrupted": "The capital of Paris is"}, "p.jsonl:7")
    with pytest.raises(
        DataFormatError, match=r"p.jsonl:7: clean and corrupted prompts have unequal token lengths \(5 vs 7\)"
    ):
        build_task(tiny, [bad])
    # answers not in the vocabulary
    with pytest.raises(
        DataFormatError, match="clean answer token id 99999 is not in tiny-llama's vocabulary"
    ):
        build_task(tiny, [pair_from_dict({**RECS[0], "clean_answer": 99999}, "p.jsonl:3")])
    with pytest.raises(DataFormatError, match=r"clean answer ' Paris' is not a single token .* 3 tokens"):
        build_task(tiny, pairs(), single_token=True)
    with pytest.raises(DataFormatError, match="both answers start with the token"):
        build_task(tiny, [pair_from_dict({**RECS[0], "corrupted_answer": " Pa"}, "p.jsonl:4")])
    with pytest.raises(ConfigError, match="unknown metric"):
        build_task(tiny, pairs(), metric="accuracy")


def test_bundled_pair_sets_parse():
    caps = bundled_pairs("capitals")
    errs = bundled_pairs("error_types")
    assert len(caps) >= 8 and len(errs) >= 8
    assert errs[0].clean.startswith('print("temperature: " + 130)') and errs[0].clean_answer == " TypeError"
    with pytest.raises(DataFormatError, match="no bundled pair set 'nope'; available: capitals, error_types"):
        bundled_pairs("nope")


def test_metrics_match_plain_forwards(tiny):
    """logit_diff = z[A₁] − z[B₁] at the last prompt token; logprob_diff = summed teacher-forced
    log-probs of the full answers — both recomputed here from unpadded single-sequence forwards."""
    ld = build_task(tiny, pairs(), metric="logit_diff")
    lp = build_task(tiny, pairs(), metric="logprob_diff")
    got_ld = ld.run_metric(tiny, "clean")
    got_lp = lp.run_metric(tiny, "clean")
    for i, r in enumerate(pairs()):
        ids = tiny.encode(r.clean)
        a = tiny.tokenizer(r.clean_answer, add_special_tokens=False)["input_ids"]
        b = tiny.tokenizer(r.corrupted_answer, add_special_tokens=False)["input_ids"]
        z = _plain_logits(tiny, ids)[-1]
        assert got_ld[i].item() == pytest.approx((z[a[0]] - z[b[0]]).item(), abs=1e-4)

        def seq_lp(ans, ids=ids):
            logp = torch.log_softmax(_plain_logits(tiny, ids + ans), -1)
            return sum(logp[len(ids) - 1 + t, tok].item() for t, tok in enumerate(ans))

        assert got_lp[i].item() == pytest.approx(seq_lp(a) - seq_lp(b), abs=1e-4)
    # single-token answers (pair 1): the two metrics coincide; multi-token (pair 0): they differ
    assert got_lp[1].item() == pytest.approx(got_ld[1].item(), abs=1e-4)
    assert abs(got_lp[0].item() - got_ld[0].item()) > 0.1
    assert normalise(torch.tensor([1.0, 3.0]), 3.0, 1.0).tolist() == [0.0, 1.0]
    assert ld.position_labels()[ld.names[0]["X"] - ld.positions[0]].endswith("(X)")


# ---- exact patching ------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["logit_diff", "logprob_diff"])
def test_full_last_layer_patch_restores_clean_and_empty_patch_gives_corrupted(tiny, metric):
    task = build_task(tiny, pairs(), metric=metric)
    clean, corr = task.run_metric(tiny, "clean"), task.run_metric(tiny, "corrupted")
    last = Site(tiny.n_layers - 1, "resid")
    out = run_patches(tiny, task, [{last: None}, {}, {Site(0, "resid"): None}])
    torch.testing.assert_close(out[0], clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], corr, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[2], clean, atol=1e-4, rtol=0)  # the whole layer-0 residual carries all
    noised = run_patches(tiny, task, [{last: None}, {}], direction="noising")
    torch.testing.assert_close(noised[0], corr, atol=1e-5, rtol=0)
    torch.testing.assert_close(noised[1], clean, atol=1e-5, rtol=0)


def test_batched_grid_equals_one_forward_per_patch(tiny):
    """Every cell of the batched sweep equals a separate, unbatched patched forward."""
    task = build_task(tiny, pairs())
    res = activation_patching(
        tiny, task, ["resid", "mlp_out"], layers=[1, 3], progress=False, batch_tokens=64
    )
    assert res.values.shape == (2, 2, len(task.positions))
    for ci, comp in enumerate(["resid", "mlp_out"]):
        for li, layer in enumerate([1, 3]):
            for pi, col in enumerate(task.positions):
                # independent: capture the clean activation and patch it per pair with a plain forward
                ms = []
                for i, r in enumerate(pairs()):
                    from deltalens import Read

                    rd = Read((layer, comp))
                    with intervene(tiny, [rd]):
                        _plain_logits(tiny, tiny.encode(r.clean))
                    off = task.prompt_end - len(tiny.encode(r.clean))
                    j = col - off
                    ids = tiny.encode(r.corrupted)
                    if j < 0:
                        z = _plain_logits(tiny, ids)[-1]
                    else:
                        with intervene(tiny, [Replace((layer, comp), rd.value[0], positions=f"all[{j}]")]):
                            z = _plain_logits(tiny, ids)[-1]
                    a, b = task.first_tokens[i]
                    ms.append((z[a] - z[b]).item())
                assert res.values[ci, li, pi].item() == pytest.approx(sum(ms) / len(ms), abs=1e-4)
    assert res.normalised.shape == res.values.shape
    again = PatchingResult.from_dict(json.loads(json.dumps(res.to_dict())))
    torch.testing.assert_close(again.values, res.values)


# ---- attribution patching and integrated gradients ------------------------------------------


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_attribution_equals_gradient_from_hf_hidden_states(tiny, direction):
    """Denoising: (h_clean − h_corrupt)·∂m/∂h at the corrupted run; noising: (h_corrupt −
    h_clean)·∂m/∂h at the clean run — recomputed from HF hidden_states."""
    task = build_task(tiny, pairs())
    res = attribution_patching(tiny, task, ["resid"], direction=direction)
    src, base = (
        (task.clean_ids, task.corrupted_ids)
        if direction == "denoising"
        else (task.corrupted_ids, task.clean_ids)
    )
    ids, mask = base, task.mask
    with torch.no_grad():
        hc = tiny.model(
            src, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True
        ).hidden_states
    with torch.enable_grad():
        out = tiny.model(ids, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True)
        hs = out.hidden_states
        m = task.metric(out.logits[:, -1:]).mean()
        layers = range(tiny.n_layers - 1)  # HF's last hidden state has the final norm applied
        grads = torch.autograd.grad(m, [hs[L + 1] for L in layers])
    for L, g in zip(layers, grads):
        want = ((hc[L + 1] - hs[L + 1].detach()) * g).sum(-1).sum(0)[task.positions]
        torch.testing.assert_close(res.effect[0, L], want, atol=1e-4, rtol=1e-4)
    assert res.meta["gradient_on"] == ("corrupted" if direction == "denoising" else "clean")


def test_attribution_tracks_exact_patching_on_a_mild_model(tiny):
    task = build_task(tiny, pairs())
    ex = activation_patching(tiny, task, ["attn_out", "mlp_out"], progress=False)
    at = attribution_patching(tiny, task, ["attn_out", "mlp_out"])
    assert pearson(ex.values, at.values) > 0.8


def test_ig_one_step_is_attribution_and_more_steps_approach_exact_patching(sat):
    task = build_task(sat, pairs())
    at = attribution_patching(sat, task, ["attn_out", "mlp_out"])
    ig1 = integrated_gradients(sat, task, ["attn_out", "mlp_out"], steps=1, progress=False)
    torch.testing.assert_close(ig1.values, at.values, atol=1e-4, rtol=1e-4)
    # completeness: Σ_positions IG(site) → exact effect of patching the site at all positions
    sites = sweep_sites(sat, ["attn_out", "mlp_out"], None)
    exact = (
        run_patches(sat, task, [{s: None} for s in sites]).mean(-1) - task.run_metric(sat, "corrupted").mean()
    )
    errs = []
    for n in (1, 4, 16):
        ig = (
            ig1
            if n == 1
            else integrated_gradients(sat, task, ["attn_out", "mlp_out"], steps=n, progress=False)
        )
        errs.append((ig.effect.sum(-1).flatten() - exact).abs().sum().item())
    assert errs[0] > 0.5  # saturation: the first-order estimate is far off
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.15 * errs[0], errs
    with pytest.raises(ConfigError, match="steps >= 1"):
        integrated_gradients(sat, task, steps=0)


def test_attribution_works_on_a_frozen_model(tiny):
    task = build_task(tiny, pairs())
    want = attribution_patching(tiny, task, ["mlp_out"]).values
    for p in tiny.model.parameters():
        p.requires_grad_(False)
    try:
        got = attribution_patching(tiny, task, ["mlp_out"]).values
    finally:
        for p in tiny.model.parameters():
            p.requires_grad_(True)
    torch.testing.assert_close(got, want)
    assert all(p.grad is None for p in tiny.model.parameters())


# ---- SAE latents -----------------------------------------------------------------------------


def _sae(lm, site="resid.1", d_sae=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(lm.d_model, d_sae, site=site, model_name=lm.name))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(lm.d_model, d_sae, generator=g) / lm.d_model**0.5)
        sae.W_dec.copy_(sae.W_enc.T)
        sae.b_enc.fill_(-0.1)
    return sae


def test_error_term_table_with_and_without_error(tiny):
    task = build_task(tiny, pairs())
    t = error_term_table(tiny, task, _sae(tiny))
    for which in ("clean", "corrupted"):
        assert t["with_error"][f"max_abs_logit_change_{which}"] < 1e-4
        assert t["with_error"][which] == pytest.approx(t["model"][which], abs=1e-4)
        assert t["without_error"][f"max_abs_logit_change_{which}"] > 1e-2
    assert abs(t["without_error"]["difference"] - t["model"]["difference"]) > 1e-2


@pytest.mark.parametrize("keep_error", [True, False])
def test_latent_and_error_scores_decompose_the_residual_attribution(tiny, keep_error):
    """Σ_i Δf_i ∂m/∂f_i + Δε·∂m/∂ε = Δx·∂m/∂x at the SAE site (with the error term)."""
    task = build_task(tiny, pairs(), metric="logprob_diff")
    sae = _sae(tiny)
    res = sae_attribution(tiny, task, sae, keep_error=keep_error)
    assert res.scores.shape == (len(task.positions), 256)
    if keep_error:
        resid = attribution_patching(tiny, task, ["resid"], layers=[1]).effect[0, 0]
        torch.testing.assert_close(res.scores.sum(1) + res.error_scores, resid, atol=1e-4, rtol=1e-4)
    else:
        assert res.error_scores is None and res.scores.abs().sum() > 0
    top = res.top(5)
    assert len(top) == 5 and {"latent", "layer", "position", "score", "activation", "description"} <= set(
        top[0]
    )
    assert abs(top[0]["score"]) == pytest.approx(res.scores.abs().max().item())
    p, i = task.positions.index(top[0]["position"]), top[0]["latent"]
    # activation is the mean clean latent activation over pairs, recomputed with the SAE directly
    from deltalens import Read

    rd = Read((1, "resid"))
    with intervene(tiny, [rd]), torch.no_grad():
        task.forward(tiny, task.clean_ids, task.mask)
    f = sae.encode(rd.value)[:, task.positions[p], i]
    real = task.mask[:, task.positions[p]].bool()
    assert top[0]["activation"] == pytest.approx(f[real].mean().item(), abs=1e-5)


def test_direct_effect_only_where_logits_are_read(tiny):
    task = build_task(tiny, pairs())
    last = _sae(tiny, site=f"resid.{tiny.n_layers - 1}")
    direct = sae_attribution(tiny, task, last, mode="direct")
    indirect = sae_attribution(tiny, task, last, mode="indirect")
    torch.testing.assert_close(
        direct.scores, indirect.scores, atol=1e-5, rtol=1e-4
    )  # nothing after the last layer
    mid = sae_attribution(tiny, task, _sae(tiny), mode="direct")
    assert mid.scores[:-1].abs().max() == 0 and mid.scores[-1].abs().max() > 0


def test_sae_site_errors(tiny, tmp_path):
    task = build_task(tiny, pairs())
    with pytest.raises(ConfigError, match="SAE d_in=32 does not match tiny-llama's d_model=64"):
        sae_attribution(tiny, task, SAE(SAEConfig(32, 64, site="resid.1")))
    with pytest.raises(
        ConfigError, match="SAE site resid.9 does not exist in tiny-llama: the model has 4 layers"
    ):
        sae_attribution(tiny, task, _sae(tiny, site="resid.9"))
    with pytest.raises(ConfigError, match="trained at resid.1 but site resid.2 was asked for"):
        sae_attribution(tiny, task, _sae(tiny), site="resid.2")
    assert sae_attribution(tiny, task, _sae(tiny), site="resid.2", force_site=True).site == Site(2, "resid")
    res = sae_attribution(tiny, task, _sae(tiny))
    paths = res.save_all(tmp_path / "sae")
    back = SAEAttribution.load(tmp_path / "sae")
    torch.testing.assert_close(back.scores, res.scores)
    assert json.loads(paths["top"].read_text())[0]["description"] is None
    assert res.latent_heatmap(tmp_path / "h.png", pair=0).stat().st_size > 0
    assert res.latent_heatmap_at(tmp_path / "end.png", task.positions[-1]).stat().st_size > 0
    with pytest.raises(ConfigError, match="position 99 is not in this attribution's grid"):
        res.latent_heatmap_at(tmp_path / "x.png", 99)


# ---- faithfulness ----------------------------------------------------------------------------


def test_component_faithfulness_endpoints_match_independent_ablation(tiny):
    task = build_task(tiny, pairs())
    ex = activation_patching(tiny, task, ["attn_out", "mlp_out"], progress=False)
    curve = faithfulness_curve(tiny, task, ex, ks=[1, 3])
    n = curve.n_nodes
    assert (
        curve.ks[-1] == n
        and curve.faithfulness[-1] == pytest.approx(1.0)
        and curve.completeness[-1] == pytest.approx(0.0)
    )
    assert curve.f_model == pytest.approx(task.run_metric(tiny, "clean").mean().item(), abs=1e-5)
    # F(∅) by hand: every attn/MLP output at every prompt position replaced by its mean over both runs
    from deltalens.circuits import cache_run

    sites = sweep_sites(tiny, ["attn_out", "mlp_out"], None)
    c, _ = cache_run(tiny, task, "clean", sites)
    k, _ = cache_run(tiny, task, "corrupted", sites)
    real = task.mask.bool()
    ivs = []
    for s in sites:
        both = torch.cat([c[s][real], k[s][real]])
        cols = torch.cat([real.nonzero()[:, 1]] * 2)
        mean = torch.stack(
            [
                both[cols == j].mean(0) if (cols == j).any() else torch.zeros(tiny.d_model)
                for j in range(task.width)
            ]
        )
        ivs.append(Replace(s, mean))
    with intervene(tiny, ivs):
        f_empty = task.run_metric(tiny, "clean").mean().item()
    assert curve.f_empty == pytest.approx(f_empty, abs=1e-4)
    with pytest.raises(ConfigError, match="resid nodes overlap"):
        faithfulness_curve(tiny, task, activation_patching(tiny, task, ["resid"], layers=[0], progress=False))


def test_sae_faithfulness_keeps_model_and_ablates_to_mean(tiny, tmp_path):
    task = build_task(tiny, pairs())
    sae = _sae(tiny)
    res = sae_attribution(tiny, task, sae)
    curve = faithfulness_curve(tiny, task, res, sae=sae, ks=[1, 10, 100])
    assert curve.n_nodes == len(task.positions) * (256 + 1)
    assert curve.f_model == pytest.approx(task.run_metric(tiny, "clean").mean().item(), abs=1e-4)
    assert curve.faithfulness[-1] == pytest.approx(1.0)
    # every SAE node ablated = decode(mean f) + mean ε = the site's mean activation over both runs
    from deltalens.circuits import cache_run

    c, _ = cache_run(tiny, task, "clean", [Site(1, "resid")])
    k, _ = cache_run(tiny, task, "corrupted", [Site(1, "resid")])
    real = task.mask.bool()
    both = torch.cat([c[Site(1, "resid")][real], k[Site(1, "resid")][real]])
    cols = torch.cat([real.nonzero()[:, 1]] * 2)
    mean = torch.stack(
        [
            both[cols == j].mean(0) if (cols == j).any() else torch.zeros(tiny.d_model)
            for j in range(task.width)
        ]
    )
    with intervene(tiny, [Replace((1, "resid"), mean)]):
        f_empty = task.run_metric(tiny, "clean").mean().item()
    assert curve.f_empty == pytest.approx(f_empty, abs=1e-4)
    assert curve.plot(tmp_path / "f.png").stat().st_size > 0
    with pytest.raises(ConfigError, match="needs the SAE object"):
        faithfulness_curve(tiny, task, res)


# ---- real lane -------------------------------------------------------------------------------


@pytest.mark.real
def test_smollm2_solves_capitals_and_attribution_tracks_exact_patching(smollm):
    task = build_task(smollm, bundled_pairs("capitals"), limit=4)
    clean, corr = task.run_metric(smollm, "clean"), task.run_metric(smollm, "corrupted")
    assert (clean > 3).all() and (corr < -3).all(), (clean, corr)
    ex = activation_patching(smollm, task, ["attn_out", "mlp_out"], progress=False)
    at = attribution_patching(smollm, task, ["attn_out", "mlp_out"])
    r = pearson(ex.normalised, at.normalised)
    assert r >= 0.8, r
    # the country information moves to the last token through attention late in the network
    top = ex.top(1)[0]
    assert top["component"] in ("attn_out", "mlp_out") and top["normalised"] > 0.5
