"""Every artifact type round-trips: ``save`` then ``load`` gives back an equal object (tensors
compared exactly, floats to the stored precision), and ``deltalens info`` recognises the saved file.

Each area appends its round-trips in its own section below.
"""

from __future__ import annotations

from pathlib import Path

from deltalens.info import describe
from deltalens.stage import StageResult


def roundtrip(result: StageResult, tmp_path: Path) -> StageResult:
    """Save ``result`` into ``tmp_path``, load it back with its own class, check ``info`` knows it."""
    path = result.save(tmp_path)
    back = type(result).load(tmp_path)
    d = describe(path)
    assert d["kind"] == result.KIND, d
    return back


# == core (stage base, generations, stores) ==

# == steering ==

# == diffing ==

# == SAEs ==


def _tiny_sae(arch: str = "topk"):
    import torch

    from deltalens.sae import SAE, SAEConfig

    g = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(8, 24, arch, k=3 if arch == "topk" else None, site="resid.1", model_name="tiny",
                        metadata={"note": "planted"}))
    for p in sae.parameters():
        p.data = torch.randn(p.shape, generator=g)
    return sae


def test_sae_directory_roundtrip(tmp_path: Path) -> None:
    import pytest
    import torch

    from deltalens.sae import load_sae, read_sparsity

    for arch in ("standard", "topk", "jumprelu"):
        sae = _tiny_sae(arch)
        sp = torch.linspace(-5, 0, 24)
        sae.save(tmp_path / arch, sparsity=sp)
        back = load_sae(tmp_path / arch)
        assert back.cfg.architecture == arch and back.site == "resid.1" and back.cfg.k == sae.cfg.k
        for k, v in sae.state_dict().items():
            assert torch.equal(back.state_dict()[k], v), k
        assert torch.equal(read_sparsity(tmp_path / arch), sp)
        assert describe(tmp_path / arch)["d_sae"] == 24
    # the vanilla ReLU SAE is "standard" (SAELens's name); a cfg.json saying "relu" still loads
    import json

    cfg = json.loads((tmp_path / "standard" / "cfg.json").read_text())
    (tmp_path / "standard" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "relu"}))
    assert load_sae(tmp_path / "standard").cfg.architecture == "standard"
    from deltalens.errors import DataFormatError

    (tmp_path / "topk" / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="not a valid SAE: .*sae_weights.safetensors"):
        load_sae(tmp_path / "topk")


def test_sae_training_result_roundtrip(tmp_path: Path) -> None:
    import torch

    from deltalens.sae import SAETrainConfig, SAETrainResult, train_sae

    res = train_sae(torch.randn(600, 8), SAETrainConfig(d_sae=16, k=2, total_tokens=256, batch_size=64), site="resid.1",
                    out=tmp_path / "sae", progress=False)
    back = SAETrainResult.load(tmp_path / "sae")
    assert back == res and back.config == res.config and back.history == res.history
    assert torch.equal(back.sparsity, res.sparsity) and torch.equal(back.sae.W_dec, res.sae.W_dec)
    assert describe(tmp_path / "sae" / "training.json")["kind"] == SAETrainResult.KIND
    # without the SAE beside it (just the JSON)
    bare = SAETrainResult(SAETrainConfig(architecture="relu", k=4), d_in=8, d_sae=16, history=[{"step": 1, "l0": 2.0}])
    assert bare.config.architecture == "standard"
    assert roundtrip(bare, tmp_path / "bare") == bare


def test_sae_eval_roundtrip(tmp_path: Path) -> None:
    import torch

    from deltalens.sae.eval import SAEEval, SAEEvalConfig, evaluate_sae

    sae = _tiny_sae()
    res = evaluate_sae(sae, SAEEvalConfig(batch_size=64), activations=torch.randn(200, 8))
    back = roundtrip(res, tmp_path)
    assert back == res and torch.equal(back.density, res.density)
    assert back.reconstruction["tokens"] == 200 and back.config["batch_size"] == 64
    only_loss = SAEEval("SAE(x)", "resid.1", 8, 24, "topk", loss={"ce_clean": 1.5, "ce_sae": 1.75})
    assert roundtrip(only_loss, tmp_path / "loss") == only_loss


def test_sae_iterate_result_roundtrip(tmp_path: Path) -> None:
    import torch

    from deltalens.sae import SAETrainConfig
    from deltalens.sae.iterative import SAEIterateConfig, SAEIterateResult, train_iterative

    cfg = SAEIterateConfig(train=SAETrainConfig(d_sae=16, k=2, total_tokens=256, batch_size=64), names=["M0D0", "M1D1"])
    res = train_iterative([torch.randn(600, 8), torch.randn(600, 8)], cfg.names, tmp_path / "runs", cfg, progress=False)
    back = SAEIterateResult.load(tmp_path / "runs")
    assert back == res and back.names == ["M0D0", "M1D1"] and back.runs[1]["parent"] == "M0D0"
    assert describe(tmp_path / "runs" / "iterate.json")["kind"] == SAEIterateResult.KIND
    assert SAEIterateConfig.from_dict(back.config) == cfg


def test_crosscoder_roundtrip(tmp_path: Path) -> None:
    import torch

    from deltalens.sae import SAETrainConfig
    from deltalens.sae.crosscoder import CrosscoderResult, train_crosscoder

    x = torch.randn(800, 2, 8)
    res = train_crosscoder(x, SAETrainConfig(architecture="batchtopk", d_sae=16, k=2, total_tokens=256, batch_size=64),
                           out=tmp_path / "cc", progress=False)
    back = CrosscoderResult.load(tmp_path / "cc")
    assert back.config == res.config and back.history == res.history and back.tokens == res.tokens
    assert back.classes["counts"] == res.classes["counts"] and back.classes["labels"] == res.classes["labels"]
    assert torch.allclose(back.classes["relative_norm"], res.classes["relative_norm"].float())
    for k, v in res.crosscoder.state_dict().items():
        assert torch.equal(back.crosscoder.state_dict()[k], v), k
    assert describe(tmp_path / "cc")["kind"] == "crosscoder"
    assert describe(tmp_path / "cc" / "training.json")["kind"] == CrosscoderResult.KIND


# == features ==

# == circuits ==


def test_stage_result_base_roundtrip_and_refuses_other_kinds(tmp_path: Path) -> None:
    from dataclasses import dataclass

    import pytest

    from deltalens.errors import DataFormatError
    from deltalens.stage import register_result

    @register_result
    @dataclass
    class _Toy(StageResult):
        KIND = "toy result (test)"
        FILENAME = "toy.json"
        values: list[float]
        name: str = "x"

    r = _Toy([1.0, 2.5], "planted")
    assert roundtrip(r, tmp_path) == r
    (tmp_path / "toy.json").write_text('{"kind": "something else"}')
    with pytest.raises(DataFormatError, match="not a valid toy result"):
        _Toy.load(tmp_path)

# == probes ==


def _probe_fit():
    import numpy as np
    import pandas as pd

    from deltalens.probes import ProbeFitConfig, fit_table, table_from_arrays

    rng = np.random.default_rng(0)
    X = (rng.random((80, 12)) < 0.3) * rng.exponential(1.0, (80, 12))
    m = 2 * X[:, 3] + rng.normal(0, 0.1, 80)
    t = table_from_arrays(X, dense=rng.normal(size=(80, 4)), meta={"sae": "planted", "site": "resid.1"})
    df = pd.DataFrame({"id": [str(i) for i in range(80)], "score": m})
    return fit_table(t, df, ProbeFitConfig(methods=["ksparse", "diff_mean"], ks=[1, 2], folds=3, top=4), name="p"), t


def test_probe_results_roundtrip(tmp_path: Path) -> None:
    import numpy as np

    from deltalens.probes import (AnnotateConfig, CompareConfig, CorrelateConfig, LatentTable, run_annotate, run_compare,
                                  run_correlate)
    from deltalens.probes.stages import AnnotationResult, CompareResult, CorrelationResult, ProbeFitResult

    res, t = _probe_fit()
    back = roundtrip(res, tmp_path / "p")
    assert back.probes == res.probes and back.labels == res.labels and back.join == res.join
    assert back.importance.shape == res.importance.shape
    np.testing.assert_allclose(back.importance["importance"], res.importance["importance"])
    tb = LatentTable.load(tmp_path / "p" / "table")
    assert tb.seq_ids == t.seq_ids and (tb.pooled["max"] != t.pooled["max"]).nnz == 0
    np.testing.assert_array_equal(tb.dense, t.dense)
    assert describe(tmp_path / "p" / "table")["kind"] == LatentTable.KIND
    ann = run_annotate(tmp_path / "p", AnnotateConfig(folds=3, rounds=2, k=1))
    assert AnnotationResult.load(tmp_path / "p") == ann and describe(tmp_path / "p" / "annotate.json")["kind"] == ann.KIND
    cor = run_correlate(tmp_path / "p", CorrelateConfig(thresholds=[0.0, 0.5], top=3, folds=3))
    cb = CorrelationResult.load(tmp_path / "p")
    assert cb.rows == cor.rows and cb.important == cor.important and len(cb.points) == len(cor.points)
    res.save(tmp_path / "q")
    cmp = run_compare([tmp_path / "p", tmp_path / "q"], CompareConfig(ks=[2]), out=tmp_path / "c")
    assert roundtrip(cmp, tmp_path / "c") == cmp
    for cls in (ProbeFitResult, AnnotationResult, CorrelationResult, CompareResult):
        import pytest

        from deltalens.errors import DataFormatError

        with pytest.raises(DataFormatError, match=f"not a valid {cls.KIND}"):
            cls.load(tmp_path / "nothing")
