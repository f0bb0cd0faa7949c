"""Crosscoder: training on paired activations, per-model decoder norms, latent classes, files."""

from __future__ import annotations

import pytest
import torch

from deltalens.errors import ShapeError
from deltalens.sae import SAETrainConfig
from deltalens.sae.crosscoder import Crosscoder, train_crosscoder
from deltalens.sae.sources import StoreSource

pytestmark = pytest.mark.usefixtures("one_thread")


def paired(n=16000, d=24, n_shared=24, n_base=8, n_ft=8, seed=0):
    """Two 'models' on the same tokens: shared features (own direction in each model),
    features only the base model represents, and features only the fine-tune represents.
    Model B's activations are 3× larger (the per-model normalisation must absorb that)."""
    g = torch.Generator().manual_seed(seed)

    def dirs(m):
        D = torch.randn(m, d, generator=g)
        return D / D.norm(dim=1, keepdim=True)

    Sa, Sb, Ba, Fb = dirs(n_shared), dirs(n_shared), dirs(n_base), dirs(n_ft)
    n_all = n_shared + n_base + n_ft
    on = torch.rand(n, n_all, generator=g) < 3 / n_all
    c = on * (0.5 + torch.rand(n, n_all, generator=g))
    cs, cb, cf = c[:, :n_shared], c[:, n_shared : n_shared + n_base], c[:, n_shared + n_base :]
    xa = cs @ Sa + cb @ Ba
    xb = 3.0 * (cs @ Sb + cf @ Fb)
    return torch.stack([xa, xb], 1), (Sa, Sb, Ba, Fb)


def test_crosscoder_recovers_shared_and_exclusive_latents(tmp_path):
    x, (Sa, Sb, Ba, Fb) = paired()
    cfg = SAETrainConfig(
        architecture="batchtopk", d_sae=96, k=3, total_tokens=90_000, batch_size=256, lr=3e-3
    )
    res = train_crosscoder(
        x, cfg, model_names=["base", "ft"], site="resid.3", out=tmp_path / "cc", progress=False
    )
    cc = res.crosscoder
    with torch.no_grad():
        x_hat = cc(x[:4000])
        for m in range(2):
            xm = x[:4000, m]
            ev = 1 - (xm - x_hat[:, m]).pow(2).sum() / (xm - xm.mean(0)).pow(2).sum()
            assert ev > 0.75
        l0 = (cc.encode(x[:4000]) > 0).sum(1).float().mean()
    assert 1.5 < float(l0) < 5  # calibrated threshold gives mean L0 ≈ k
    labels = res.classes["labels"]
    W = cc.W_dec.detach()

    def best(D, m):
        cos = torch.nn.functional.normalize(W[:, m], dim=-1) @ D.t()  # [S, n]
        return cos.argmax(0), cos.max(0).values

    r = res.classes["relative_norm"]
    med = {}
    for name, D, m in (("base-only", Ba, 0), ("ft-only", Fb, 1), ("shared", Sa, 0)):
        idx, quality = best(D, m)
        ok = quality > 0.8
        assert int(ok.sum()) >= len(D) * 3 // 4, name  # the features are learned
        med[name] = float(r[idx[ok]].median())
    # relative decoder norm ‖d_ft‖/(‖d_base‖+‖d_ft‖) orders the three kinds of features
    # (short training: the decoder of the absent model has not decayed to zero everywhere yet)
    assert med["base-only"] + 0.1 < med["shared"] < med["ft-only"] - 0.05
    assert med["base-only"] < 0.3 and 0.4 < med["shared"] < 0.6
    # labels follow the bands
    for lab, v in zip(labels, r.tolist()):
        if lab != "dead":
            want = (
                "base-only" if v < 0.1 else "ft-only" if v > 0.9 else "shared" if 0.4 <= v <= 0.6 else "other"
            )
            assert lab == want
    assert res.classes["counts"]["shared"] >= 20
    # shared latents: both decoder vectors point at their model's direction of the same feature
    idx, _ = best(Sa, 0)
    cos_b = torch.nn.functional.normalize(W[idx, 1], dim=-1) @ Sb.t()
    assert float(cos_b.diagonal().median()) > 0.8
    # files: reload gives the same function and classes
    back = Crosscoder.load(tmp_path / "cc")
    with torch.no_grad():
        torch.testing.assert_close(back(x[:100]), cc(x[:100]))
    assert back.classify()["counts"] == cc.classify()["counts"]
    assert back.cfg.model_names == ["base", "ft"] and back.cfg.site == "resid.3"
    with pytest.raises(ShapeError, match="2 models, 24"):
        cc(torch.randn(3, 24))


def test_crosscoder_from_two_stores(tiny, tmp_path):
    import deltalens
    from tests_helpers_tiny import perturbed

    other = perturbed(tiny)
    texts = [f"shared tokens for both models number {i}" for i in range(24)]
    sa = deltalens.capture(tiny, texts, ["resid.2"], "all", store=tmp_path / "a", progress=False)
    sb = deltalens.capture(other, texts, ["resid.2"], "all", store=tmp_path / "b", progress=False)
    src = StoreSource([sa, sb], "resid.2", split=None, high_norm_factor=None)
    b = next(src.batches(32))
    assert isinstance(b, list) and len(b) == 2 and b[0].shape == (32, 64)
    # rows are aligned: the same token of the same sequence in both stores
    ra, rb = sa.read("resid.2"), sb.read("resid.2")
    i = int(torch.cdist(b[0][:1], ra).argmin())
    torch.testing.assert_close(b[1][0], rb[i])
    res = train_crosscoder(
        src, SAETrainConfig(d_sae=64, k=4, total_tokens=64 * 8, batch_size=64), progress=False
    )
    assert res.crosscoder.cfg.n_models == 2 and sum(res.classes["counts"].values()) == 64
