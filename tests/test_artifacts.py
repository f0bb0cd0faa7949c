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


def _diff_pair(tmp_path: Path) -> tuple[str, str, str]:
    import torch
    from tiny import save_tiny, tiny_model

    lm = tiny_model("llama")
    b = save_tiny(lm, tmp_path / "models" / "base")
    with torch.no_grad():
        lm.model.model.layers[1].self_attn.o_proj.weight += 0.1
    f = save_tiny(lm, tmp_path / "models" / "ft")
    with torch.no_grad():
        lm.model.model.layers[2].mlp.down_proj.weight += 0.1
    return b, f, save_tiny(lm, tmp_path / "models" / "ft2")


def test_diff_results_roundtrip(tmp_path: Path) -> None:
    import pytest
    import torch

    from deltalens.diff.activations import ActivationDiff, DifferenceLens, diff_activations
    from deltalens.diff.outputs import OutputDiff, diff_outputs
    from deltalens.diff.series import SeriesDiff, diff_series
    from deltalens.diff.weights import diff_weights
    from deltalens.errors import DataFormatError

    b, f, f2 = _diff_pair(tmp_path)
    w = diff_weights(b, f, progress=False, figures=False)
    back = roundtrip(w, tmp_path / "w")
    assert back == w and back.overview["n_changed"] == 1 and back["summary"] == w.overview
    assert set(back.directions) == set(w.directions)
    assert all(torch.equal(back.directions[k], w.directions[k]) for k in w.directions)
    assert (tmp_path / "w" / "norms.json").exists() and (tmp_path / "w" / "logit_lens.json").exists()

    a = diff_activations(b, f, ["Hello there", "Why is the sky blue?"], max_new_tokens=4,
                         lens_texts=["The quick brown fox."], figures=False, progress=False)
    back = roundtrip(a, tmp_path / "a")
    assert back == a and back.lens == a.lens and isinstance(back.lens, DifferenceLens)
    assert roundtrip(a.lens, tmp_path / "lens") == a.lens

    o = diff_outputs(b, f, ["The quick brown fox.", "What is the capital of France?"], figures=False, progress=False)
    assert roundtrip(o, tmp_path / "o") == o

    s = diff_series([f, f2], base=b, kinds=["weights", "outputs"], texts=["The quick brown fox."], figures=False,
                    progress=False)
    back = roundtrip(s, tmp_path / "s")
    assert back == s and len(back.rows) == 3 and (tmp_path / "s" / "trajectory.csv").exists()

    # another kind in the file is refused by name
    with pytest.raises(DataFormatError, match="not a valid output diff"):
        OutputDiff.load(tmp_path / "w")
    with pytest.raises(DataFormatError, match="not a valid activation similarity"):
        ActivationDiff.load(tmp_path / "o")
    assert SeriesDiff.load(tmp_path / "s" / "trajectory.json") == s


def test_dpo_series_record_roundtrip(tmp_path: Path) -> None:
    import json

    from deltalens.diff.organisms import DATA_CONVENTION, DPOSeries, DPOSeriesConfig, read_series

    st = DPOSeries(name="s", base={"spec": "tiny", "name": "tiny", "weights_hash": "ab"},
                   scorer={"name": "regex:e", "pattern": "e"}, config=DPOSeriesConfig().to_dict(), config_hash="cd",
                   checkpoints=[str(tmp_path / "M1")], data=[str(tmp_path / "D0.jsonl"), str(tmp_path / "D1.jsonl")],
                   iterations=[{"iteration": 1, "data": "D0", "n_pairs": 2}], scores=[0.5, 1.5])
    back = roundtrip(st, tmp_path)
    assert back == st and back.data_convention == DATA_CONVENTION and read_series(tmp_path) == st
    old = {k: v for k, v in json.loads((tmp_path / "series.json").read_text()).items() if k != "data_convention"}
    (tmp_path / "series.json").write_text(json.dumps({**old, "kind": "dpo_series"}))
    assert read_series(tmp_path).data_convention is None  # a series from before the naming convention


def test_diff_results_written_before_typing_still_load(tmp_path: Path) -> None:
    """results.json of the former dict results (kind 'weight_diff' …) loads as the typed result."""
    import json

    from deltalens.diff.outputs import OutputDiff, diff_outputs

    b, f, _ = _diff_pair(tmp_path)
    o = diff_outputs(b, f, ["The quick brown fox."], figures=False, progress=False)
    o.save(tmp_path / "o")
    d = json.loads((tmp_path / "o" / "results.json").read_text())
    d["kind"] = "output_diff"
    d.pop("schema")
    d.pop("config")
    (tmp_path / "o" / "results.json").write_text(json.dumps(d))
    old = OutputDiff.load(tmp_path / "o")
    assert old.mean_kl == o.mean_kl and old.rose_most == o.rose_most
    from deltalens.info import describe

    assert describe(tmp_path / "o")["kind"] == "output diff"

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
