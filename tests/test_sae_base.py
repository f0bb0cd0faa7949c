from __future__ import annotations

import pytest
import torch

import deltalens
from deltalens.errors import DataFormatError, ShapeError
from deltalens.sae import SAE, SAEConfig, load_sae


def _random(arch, d_in=16, d_sae=64, k=None):
    cfg = SAEConfig(d_in, d_sae, arch, k=k, site="resid.1", model_name="tiny")
    sae = SAE(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return sae


@pytest.mark.parametrize("arch,k", [("standard", None), ("topk", 5), ("jumprelu", None)])
def test_encode_matches_the_formulas(arch, k):
    sae = _random(arch, k=k)
    x = torch.randn(10, 16)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if arch == "standard":
        want = pre.clamp(min=0)
    elif arch == "topk":
        want = torch.zeros_like(pre)
        for i in range(len(pre)):
            idx = pre[i].argsort(descending=True)[:k]
            want[i, idx] = pre[i, idx].clamp(min=0)
    else:
        want = torch.where(pre > sae.threshold, pre.clamp(min=0), torch.zeros_like(pre))
    torch.testing.assert_close(sae.encode(x), want)
    torch.testing.assert_close(sae(x), want @ sae.W_dec + sae.b_dec)
    if arch == "topk":
        assert ((sae.encode(x) != 0).sum(-1) <= k).all()


@pytest.mark.parametrize("arch,k", [("standard", None), ("topk", 5), ("jumprelu", None)])
def test_save_load_round_trip(tmp_path, arch, k):
    sae = _random(arch, k=k)
    sae.save(tmp_path / "sae", sparsity=torch.full((64,), -2.0))
    back = load_sae(tmp_path / "sae")
    x = torch.randn(7, 16)
    torch.testing.assert_close(back.encode(x), sae.encode(x))
    assert back.site == "resid.1" and back.cfg.model_name == "tiny" and back.cfg.k == k
    assert deltalens.Site.parse("blocks.1.hook_resid_post") == deltalens.Site.parse(back.site)


def test_bad_files_and_shapes(tmp_path):
    with pytest.raises(DataFormatError, match="not a SAELens SAE directory"):
        load_sae(tmp_path)
    with pytest.raises(ShapeError, match="needs k"):
        SAEConfig(4, 8, "topk")
    sae = _random("standard")
    with pytest.raises(ShapeError, match="width 3, expected d_in=16"):
        sae.encode(torch.randn(2, 3))


def test_sae_satisfies_the_protocol():
    from deltalens.sae import SAELike

    sae = _random("topk", k=4)
    assert isinstance(sae, SAELike)
    assert not isinstance(object(), SAELike)
