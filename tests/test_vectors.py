"""Direction extraction, metrics, vector files, GGUF control vectors, reference norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltalens.errors import ConfigError, DataFormatError, ShapeError
from deltalens.vectors import (
    TraitVector,
    VectorSet,
    auroc,
    cohens_d,
    evaluate_direction,
    export_gguf,
    fit_direction,
    import_gguf,
    reference_norms,
)


def planted(n=120, d=32, sep=3.0, seed=0):
    """Two Gaussian classes that differ along one planted unit direction."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    base = torch.randn(2 * n, d, generator=g) * 1.0
    pos = base[:n] + sep / 2 * u
    neg = base[n:] - sep / 2 * u
    return pos, neg, u


def test_mean_diff_is_difference_of_means():
    pos, neg, _ = planted()
    d = fit_direction(pos, neg, "mean_diff")
    expect = pos.numpy().mean(0) - neg.numpy().mean(0)
    np.testing.assert_allclose(d.vector.numpy(), expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["probe", "pca"])
def test_methods_recover_the_planted_direction_on_one_scale(method):
    pos, neg, u = planted(n=200)
    d = fit_direction(pos, neg, method)
    cos = float(d.unit @ u)
    assert cos > 0.85, cos  # direction found, sign: positives project higher
    # scale convention: v = û · ((μ+ − μ−)·û)
    sep = float((pos.mean(0) - neg.mean(0)) @ d.unit)
    assert sep > 0
    torch.testing.assert_close(d.vector.norm(), torch.tensor(sep), rtol=1e-4, atol=1e-5)


def test_pca_on_unpaired_data_and_bad_shapes():
    pos, neg, u = planted(n=100)
    d = fit_direction(pos, neg[:70], "pca")
    assert float(d.unit @ u) > 0.8
    with pytest.raises(ShapeError):
        fit_direction(pos, neg[:, :5], "mean_diff")
    with pytest.raises(ConfigError, match="unknown method 'svm'"):
        fit_direction(pos, neg, "svm")


def test_metrics_match_independent_computation():
    from sklearn.metrics import roc_auc_score

    pos, neg, _ = planted(n=80, sep=1.5)
    d = fit_direction(pos[:60], neg[:60], "mean_diff")
    m = evaluate_direction(d, pos[:60], neg[:60], pos[60:], neg[60:])
    pv, nv = (pos[60:] @ d.unit).numpy(), (neg[60:] @ d.unit).numpy()
    assert m["val_auroc"] == pytest.approx(roc_auc_score(np.r_[np.ones(20), np.zeros(20)], np.r_[pv, nv]))
    s = np.sqrt((19 * pv.var(ddof=1) + 19 * nv.var(ddof=1)) / 38)
    assert m["val_separation"] == pytest.approx((pv.mean() - nv.mean()) / s, rel=1e-5)
    thr = ((pos[:60] @ d.unit).mean() + (neg[:60] @ d.unit).mean()) / 2
    acc = ((pv > float(thr)).sum() + (nv <= float(thr)).sum()) / 40
    assert m["val_accuracy"] == pytest.approx(acc)
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([1.0])) == 0.75
    assert np.isnan(cohens_d(torch.tensor([1.0]), torch.tensor([0.0, 1.0])))


def test_probe_accuracy_uses_its_decision_function():
    pos, neg, _ = planted(n=100, sep=4.0)
    d = fit_direction(pos[:80], neg[:80], "probe")
    m = evaluate_direction(d, pos[:80], neg[:80], pos[80:], neg[80:])
    logits = (torch.cat([pos[80:], neg[80:]]) - d.center) @ d.probe_w + d.probe_b
    expect = float(((logits > 0) == torch.tensor([True] * 20 + [False] * 20)).float().mean())
    assert m["val_accuracy"] == pytest.approx(expect)
    assert m["val_accuracy"] > 0.9


def test_vector_file_roundtrip(tmp_path):
    v = torch.randn(16)
    p = TraitVector(v, {"layer": 3, "method": "probe", "val_accuracy": 0.9, "trait": "x"}).save(
        tmp_path / "layer3.safetensors"
    )
    tv = TraitVector.load(p)
    torch.testing.assert_close(tv.vector, v)
    assert tv.layer == 3 and tv.method == "probe" and tv.meta["val_accuracy"] == 0.9
    assert tv.meta["format"] == "deltalens.vector/1"
    assert len(tv.fingerprint()) == 16 and tv.fingerprint() == TraitVector.load(p).fingerprint()
    with pytest.raises(ShapeError):
        TraitVector(torch.zeros(2, 3), {}).save(tmp_path / "bad.safetensors")
    from deltalens.io import save_tensors

    save_tensors(tmp_path / "other.safetensors", {"w": torch.zeros(3)})
    with pytest.raises(DataFormatError, match="not a deltalens vector file"):
        TraitVector.load(tmp_path / "other.safetensors")
    vs = VectorSet({L: TraitVector(torch.randn(16), {"layer": L}) for L in (2, 10)})
    back = VectorSet.load(vs.save(tmp_path / "set"))
    assert sorted(back) == [2, 10] and all(torch.equal(back[L].vector, vs[L].vector) for L in back)
    assert sorted(VectorSet.load(tmp_path / "set", layers=[10])) == [10] and back.width == 16


def test_gguf_control_vector_roundtrip_and_format(tmp_path):
    import gguf

    dirs = {5: torch.randn(64), 6: torch.randn(64)}
    p = export_gguf(dirs, tmp_path / "cv.gguf", "llama")
    got, hint = import_gguf(p)
    assert hint == "llama" and sorted(got) == [5, 6]
    for k in dirs:
        torch.testing.assert_close(got[k], dirs[k])
    # the raw file has repeng's / llama.cpp's fields
    r = gguf.GGUFReader(str(p))
    arch = bytes(r.get_field("general.architecture").parts[-1]).decode()
    assert arch == "controlvector"
    assert int(r.get_field("controlvector.layer_count").parts[-1][0]) == 2
    assert sorted(t.name for t in r.tensors) == ["direction.5", "direction.6"]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors)
    with pytest.warns(UserWarning, match="direction.0"):
        export_gguf({0: torch.randn(4)}, tmp_path / "zero.gguf", "llama")
    with pytest.raises(DataFormatError, match="not a readable GGUF"):
        (tmp_path / "junk.gguf").write_bytes(b"nope")
        import_gguf(tmp_path / "junk.gguf")


def test_reference_norms_match_hidden_states(tiny):
    from deltalens.data import bundled_prompts
    from deltalens.generate import left_pad, position_ids

    norms = reference_norms(tiny, [1, 2])  # not the last layer: HF applies the final norm there
    prompts = [r.text for r in bundled_prompts("chat_prompts")]
    tot = {1: 0.0, 2: 0.0}
    cnt = 0
    for p in prompts:
        ids = tiny.encode(tiny.format_chat(p), formatted=True)
        x, m = left_pad([ids], 0)
        with torch.no_grad():
            hs = tiny.model(
                input_ids=x, attention_mask=m, position_ids=position_ids(m), output_hidden_states=True
            ).hidden_states
        for L in tot:
            tot[L] += float(hs[L + 1][0, 1:].norm(dim=-1).sum())  # first token excluded
        cnt += len(ids) - 1
    for L in tot:
        assert norms[L] == pytest.approx(tot[L] / cnt, rel=1e-4)
