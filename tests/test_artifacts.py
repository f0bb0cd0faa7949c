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
def test_activation_store_roundtrip_and_info(tiny, tmp_path: Path) -> None:
    import torch

    import deltalens
    from deltalens.capture import CaptureConfig
    from deltalens.store import ActivationStore

    texts = ["The quick brown fox.", "Hello there", "Why is the sky blue?"]
    cfg = CaptureConfig(sites=["resid.1", "mlp_out.-1"], batch_size=2, val_fraction=0.3)
    mem = deltalens.capture(tiny, texts, cfg, progress=False)
    deltalens.capture(tiny, texts, cfg, store=tmp_path / "s", progress=False, dataset_name="texts")
    back = ActivationStore.open(tmp_path / "s")
    assert back.sites == list(mem) and back.complete and back.n_sequences == 3
    for site in mem:  # (batches differ: in memory longest first, a store in input order)
        torch.testing.assert_close(back.read(site), mem[site], atol=1e-5, rtol=1e-5)
    idx = back.index()
    assert idx["seq_id"].tolist() == mem.seq_ids.tolist() and idx["position"].tolist() == mem.positions.tolist()
    assert CaptureConfig.from_dict(back.manifest["config"]) == cfg.replace(sites=["resid.1", "mlp_out.3"])
    d = describe(tmp_path / "s")
    assert d["kind"] == "activation store" and d["rows"] == len(idx) and d["sites"] == ["resid.1", "mlp_out.3"]
    assert "stray_files" not in d
    d = describe(tmp_path / "s" / "shards" / "resid.1" / "000000.safetensors")
    assert d["kind"] == "safetensors" and d["tensors"] == {"acts": [len(idx), tiny.d_model]}


# == steering ==

# == diffing ==

# == SAEs ==

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
