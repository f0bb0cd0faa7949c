"""SAE evaluation metrics checked against independent computations; file formats of other tools."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deltalens
from deltalens.errors import ShapeError, SiteError
from deltalens.sae import SAE, SAEConfig, load_any, load_sae, read_dictionary_learning, read_sparsify
from deltalens.sae.eval import ce_metrics, evaluate_sae, reconstruction_metrics, summary_rows, write_eval

pytestmark = pytest.mark.usefixtures("one_thread")


def random_sae(arch="topk", d_in=16, d_sae=48, k=4, site="resid.1", seed=0, scale=0.3):
    cfg = SAEConfig(d_in, d_sae, arch, k=k if arch == "topk" else None, site=site, model_name="tiny")
    sae = SAE(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
            if name == "threshold":
                p.copy_(p.abs())
    return sae


def test_reconstruction_metrics_against_numpy():
    sae = random_sae()
    with torch.no_grad():
        sae.b_enc[40:] = -50.0  # 8 latents that can never fire → dead
    x = torch.randn(300, 16) * 2 + 1
    res = reconstruction_metrics(sae, x, batch_size=37)  # streamed in uneven batches
    X = x.double().numpy()
    with torch.no_grad():
        Fm = sae.encode(x).double().numpy()
        H = sae(x).double().numpy()
    sse = ((X - H) ** 2).sum()
    assert res["tokens"] == 300
    assert res["explained_variance"] == pytest.approx(1 - sse / ((X - X.mean(0)) ** 2).sum(), rel=1e-9)
    assert res["mse"] == pytest.approx(sse / X.size, rel=1e-9)
    assert res["mse_per_token"] == pytest.approx(sse / 300, rel=1e-9)
    assert res["l0"] == pytest.approx((Fm != 0).sum(1).mean(), rel=1e-12)
    assert res["l1"] == pytest.approx(np.abs(Fm).sum(1).mean(), rel=1e-9)
    fired = (Fm != 0).any(0)
    assert res["dead"] == int((~fired).sum()) and res["dead"] >= 8
    assert res["dead_fraction"] == pytest.approx((~fired).mean())
    assert res["shrinkage"] == pytest.approx(
        (np.linalg.norm(H, axis=1) / np.linalg.norm(X, axis=1)).mean(), rel=1e-9
    )
    cos = (X * H).sum(1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(H, axis=1))
    assert res["cosine"] == pytest.approx(cos.mean(), rel=1e-9)
    dens = (Fm != 0).mean(0)
    np.testing.assert_allclose(res["density"], dens)
    counts, _ = np.histogram(np.log10(dens[dens > 0]), bins=np.arange(-8.0, 0.25, 0.25))
    assert res["density_histogram"]["counts"] == counts.tolist()
    # a perfect reconstruction explains all variance, a constant one none
    ident = SAE(SAEConfig(16, 32, "standard"))
    with torch.no_grad():
        ident.W_enc[:, :16] = torch.eye(16)
        ident.W_enc[:, 16:] = -torch.eye(16)
        ident.W_dec[:16] = torch.eye(16)
        ident.W_dec[16:] = -torch.eye(16)
    assert reconstruction_metrics(ident, x)["explained_variance"] == pytest.approx(1.0, abs=1e-12)
    const = SAE(SAEConfig(16, 8, "standard"))
    with torch.no_grad():
        const.b_dec.copy_(x.mean(0))
        const.b_enc.fill_(-1.0)
    assert reconstruction_metrics(const, x)["explained_variance"] == pytest.approx(0.0, abs=1e-6)


def test_reconstruction_metrics_refuse_wrong_width_and_site(tmp_path):
    sae = random_sae()
    with pytest.raises(ShapeError, match="d_in=16.*width 8"):
        reconstruction_metrics(sae, torch.randn(10, 8))
    with pytest.raises(SiteError, match="resid.1.*resid.2"):
        reconstruction_metrics(sae, torch.randn(10, 16), site="resid.2")


def _manual_last_layer_ce(tiny, ids, replace):
    """CE of next-token prediction where the last layer's resid at positions ≥ 1 is replaced
    by replace(x) (None: clean), computed by hand with the final norm and unembedding."""
    L = tiny.n_layers - 1
    r = deltalens.Read((L, "resid"))
    with deltalens.intervene(tiny, [r]), torch.no_grad():
        tiny.model(input_ids=ids)
    x = r.value.clone()
    if replace is not None:
        x[:, 1:] = replace(x[:, 1:])
    with torch.no_grad():
        logits = tiny.arch.unembed(tiny.arch.final_norm(x)).double()
    lp = F.log_softmax(logits[:, :-1], -1)
    ce = -lp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return ce, lp


def test_ce_metrics_on_the_last_layer_against_a_hand_computation(tiny):
    L = tiny.n_layers - 1
    g = torch.Generator().manual_seed(0)
    V = tiny.model.config.vocab_size
    ids = torch.randint(5, V, (3, 12), generator=g)
    windows = [row.tolist() for row in ids]
    sae = random_sae("topk", d_in=64, d_sae=128, k=8, site=f"resid.{L}", scale=0.2)
    res = ce_metrics(tiny, sae, windows, batch_size=2)
    ce_clean, lp_clean = _manual_last_layer_ce(tiny, ids, None)
    with torch.no_grad():
        ce_sae, lp_sae = _manual_last_layer_ce(tiny, ids, lambda x: sae(x))
    # zero ablation at the last layer: RMSNorm(0) = 0 → all logits 0 → uniform → CE = log V
    # (except the first prediction, from the unreplaced position 0)
    ce_zero, _ = _manual_last_layer_ce(tiny, ids, lambda x: torch.zeros_like(x))
    assert torch.allclose(ce_zero[:, 1:], torch.full_like(ce_zero[:, 1:], math.log(V)))
    r = deltalens.Read((L, "resid"), positions="all[1:]")
    with deltalens.intervene(tiny, [r]), torch.no_grad():
        tiny.model(input_ids=ids)
    mu = r.selected().double().mean(0).float()
    ce_mean, _ = _manual_last_layer_ce(tiny, ids, lambda x: mu.expand_as(x))
    n = ce_clean.numel()
    assert res["tokens"] == n == 3 * 11
    assert res["ce_clean"] == pytest.approx(float(ce_clean.mean()), rel=1e-6)
    assert res["ce_sae"] == pytest.approx(float(ce_sae.mean()), rel=1e-6)
    assert res["ce_zero"] == pytest.approx(float(ce_zero.mean()), rel=1e-6)
    assert res["ce_mean"] == pytest.approx(float(ce_mean.mean()), rel=1e-5)
    assert res["delta_ce"] == pytest.approx(float(ce_sae.mean() - ce_clean.mean()), rel=1e-5, abs=1e-9)
    kl = (lp_clean.exp() * (lp_clean - lp_sae)).sum(-1).mean()
    assert res["kl"] == pytest.approx(float(kl), rel=1e-5)
    c, s, z, m = (float(t.mean()) for t in (ce_clean, ce_sae, ce_zero, ce_mean))
    assert res["ce_recovered_zero"] == pytest.approx((z - s) / (z - c), rel=1e-5)
    assert res["ce_recovered_mean"] == pytest.approx((m - s) / (m - c), rel=1e-5)
    # loss over context length: position p is the p-th predicted token
    by = res["ce_by_position"]
    assert by["position"] == list(range(1, 12)) and by["count"] == [3] * 11
    np.testing.assert_allclose(by["clean"], ce_clean.mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(by["sae"], ce_sae.mean(0).numpy(), rtol=1e-6)


def test_clean_ce_equals_hf_loss(tiny):
    ids = torch.randint(5, 200, (2, 10), generator=torch.Generator().manual_seed(1))
    sae = random_sae("topk", d_in=64, d_sae=64, k=4, site="resid.1")
    res = ce_metrics(tiny, sae, [r.tolist() for r in ids], batch_size=2)
    with torch.no_grad():
        hf = tiny.model(input_ids=ids, labels=ids).loss
    assert res["ce_clean"] == pytest.approx(float(hf), rel=1e-5)
    with pytest.raises(SiteError, match="trained at resid.1 but is evaluated at resid.2"):
        ce_metrics(tiny, sae, [r.tolist() for r in ids], site="resid.2")
    with pytest.raises(ShapeError, match="d_in=16 does not match"):
        ce_metrics(tiny, random_sae(), [r.tolist() for r in ids])


def test_evaluate_writes_json_and_figures(tiny, tmp_path):
    sae = random_sae("topk", d_in=64, d_sae=64, k=4, site="resid.1")
    windows = [list(range(5, 25)), list(range(30, 50))]
    res = evaluate_sae(sae, lm=tiny, windows=windows, out=tmp_path / "ev")
    assert (tmp_path / "ev" / "eval.json").is_file()
    assert (tmp_path / "ev" / "density_histogram.png").stat().st_size > 1000
    assert (tmp_path / "ev" / "loss_by_position.png").stat().st_size > 1000
    assert res.reconstruction["tokens"] == 40 and res.loss["tokens"] == 38
    names = [r[0] for r in summary_rows(res)]
    assert "explained variance" in names and "CE recovered (mean)" in names
    write_eval(res, tmp_path / "again")


# ---- SAELens compatibility -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saelens_loads_ours_with_the_same_outputs(tmp_path, arch):
    sae_lens = pytest.importorskip("sae_lens")
    ours = random_sae(arch, d_in=16, d_sae=48, k=5)
    ours.save(tmp_path / "s", sparsity=torch.full((48,), -3.0))
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "s"), device="cpu")
    x = torch.randn(20, 16)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            theirs.decode(ours.encode(x)), ours.decode(ours.encode(x)), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=1e-5)
    assert theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_post"


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_we_load_saelens_files_with_the_same_outputs(tmp_path, arch):
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    meta = dict(hook_name="blocks.3.hook_resid_post", model_name="tiny")
    if arch == "standard":
        theirs = StandardSAE(StandardSAEConfig(d_in=16, d_sae=40, dtype="float32", device="cpu"))
    elif arch == "topk":
        theirs = TopKSAE(TopKSAEConfig(d_in=16, d_sae=40, k=6, dtype="float32", device="cpu"))
    else:
        theirs = JumpReLUSAE(JumpReLUSAEConfig(d_in=16, d_sae=40, dtype="float32", device="cpu"))
    for k, v in meta.items():
        setattr(theirs.cfg.metadata, k, v)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            if name == "threshold":
                p.copy_(p.abs())
    theirs.save_model(str(tmp_path / "t"))
    ours = load_sae(tmp_path / "t")
    assert ours.cfg.architecture == arch and ours.site == "resid.3"
    x = torch.randn(20, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    assert load_any(tmp_path / "t").cfg.architecture == arch
    _ = sae_lens


def test_trained_sae_loads_in_saelens(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    from deltalens.sae import SAETrainConfig, train_sae

    x = torch.randn(4000, 16) * 5 + 2
    for arch in ("topk", "batchtopk"):
        res = train_sae(
            x,
            SAETrainConfig(architecture=arch, d_sae=32, k=4, total_tokens=1024, batch_size=256),
            site="resid.0",
            out=tmp_path / arch,
            progress=False,
        )
        theirs = sae_lens.SAE.load_from_disk(str(tmp_path / arch), device="cpu")
        with torch.no_grad():
            torch.testing.assert_close(theirs(x[:50]), res.sae(x[:50]), atol=1e-5, rtol=1e-5)


# ---- sparsify and dictionary_learning checkpoints -------------------------------------------------


def test_read_sparsify_directory(tmp_path):
    from safetensors.torch import save_file

    d = tmp_path / "layers.5"
    d.mkdir()
    n, dim, k = 40, 16, 4
    g = torch.Generator().manual_seed(0)
    w = {
        "encoder.weight": torch.randn(n, dim, generator=g),
        "encoder.bias": torch.randn(n, generator=g),
        "W_dec": torch.randn(n, dim, generator=g),
        "b_dec": torch.randn(dim, generator=g),
    }
    save_file(w, str(d / "sae.safetensors"))
    (d / "cfg.json").write_text(
        '{"expansion_factor": 0, "normalize_decoder": true, "num_latents": 40, "k": 4, "d_in": 16}'
    )
    sae = read_sparsify(d)
    assert sae.site == "resid.5" and sae.cfg.k == 4
    x = torch.randn(9, dim)
    # sparsify's own definition: top-k of relu(encoder(x - b_dec)); decode = acts @ W_dec + b_dec
    pre = torch.relu((x - w["b_dec"]) @ w["encoder.weight"].t() + w["encoder.bias"])
    vals, idx = pre.topk(k)
    want = torch.zeros(9, n).scatter(1, idx, vals) @ w["W_dec"] + w["b_dec"]
    with torch.no_grad():
        torch.testing.assert_close(sae(x), want, atol=1e-5, rtol=1e-5)
    assert load_any(d).cfg.metadata["converted_from"] == "sparsify"


@pytest.mark.parametrize("kind", ["AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE"])
def test_read_dictionary_learning_checkpoint(tmp_path, kind):
    import json

    n, dim = 40, 16
    g = torch.Generator().manual_seed(1)
    sd = {
        "encoder.weight": torch.randn(n, dim, generator=g),
        "encoder.bias": torch.randn(n, generator=g),
        "decoder.weight": torch.randn(dim, n, generator=g),
    }
    b = torch.randn(dim, generator=g)
    if kind == "AutoEncoder":
        sd["bias"] = b
    else:
        sd["b_dec"] = b
        sd["k"] = torch.tensor(5, dtype=torch.int)
        if kind == "BatchTopKSAE":
            sd["threshold"] = torch.tensor(0.7)
    torch.save(sd, tmp_path / "ae.pt")
    (tmp_path / "config.json").write_text(
        json.dumps({"trainer": {"dict_class": kind, "layer": 3, "lm_name": "m"}})
    )
    sae = read_dictionary_learning(tmp_path)
    assert sae.site == "resid.3"
    x = torch.randn(9, dim)
    post = torch.relu((x - b) @ sd["encoder.weight"].t() + sd["encoder.bias"])
    if kind == "AutoEncoderTopK":
        vals, idx = post.topk(5)
        post = torch.zeros_like(post).scatter(1, idx, vals)
    elif kind == "BatchTopKSAE":
        post = post * (post > 0.7)
    want = post @ sd["decoder.weight"].t() + b
    with torch.no_grad():
        torch.testing.assert_close(sae(x), want, atol=1e-5, rtol=1e-5)
