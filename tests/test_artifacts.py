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
def _steering_records(log_path: Path):
    from deltalens.steering.results import ResultsLog, SteeringRecord

    log = ResultsLog(log_path)
    base = SteeringRecord("base", "baseline", "baseline", trait="instruction/pirate", judge="j", trait_mean=10.0,
                          coherence_mean=90.0, n=2, responses=[{"question": "q", "response": "r", "trait": 10.0}])
    recs = [SteeringRecord(f"k{L}{c}", "single", f"mean_diff L{L} c{c:g}", "instruction/pirate",
                           [{"layer": L, "coef": c, "coef_mode": "relative", "vector": {"fingerprint": "f"}}], L, c, "mean_diff",
                           "response", 4, "sha", 2, "j", 10.0 + 100 * c, 95.0 - 50 * c, 2, 0, {"ok": 2, "coherence_ok": 2},
                           meta={"search": "grid"}) for L in (1, 2) for c in (0.1, 0.4)]
    for r in [base, *recs]:
        log.append(r)
    return base, recs


def test_steering_record_roundtrip_and_old_lines(tmp_path: Path) -> None:
    import json

    from deltalens.steering.results import ResultsLog, SteeringRecord

    base, recs = _steering_records(tmp_path / "results.jsonl")
    log = ResultsLog(tmp_path / "results.jsonl")
    assert log.records == [base, *recs]
    assert SteeringRecord.from_dict(recs[0].to_dict()) == recs[0]
    assert "layer" not in base.to_dict() and recs[0].to_dict()["layer"] == 1
    # an older line: fewer keys, one this version does not know (kept and written back)
    old = {"key": "old", "kind": "single", "layer": 3, "coef": 0.2, "trait_mean": 40.0, "judge": "j", "legacy_field": [1]}
    with open(tmp_path / "results.jsonl", "a") as fh:
        fh.write(json.dumps(old) + "\n")
    r = ResultsLog(tmp_path / "results.jsonl").latest("old")
    assert r is not None and r.layer == 3 and r.coherence_mean is None and r.n == 0 and r.terms == []
    assert r.extra == {"legacy_field": [1]} and r.to_dict()["legacy_field"] == [1]
    assert r.delta(base) == 30.0 and not r.coherent(70.0)


def test_steering_run_roundtrip(tmp_path: Path) -> None:
    from deltalens.steering.runs import SteeringRun
    from deltalens.steering.search import checkpoint_summary, per_layer_table

    base, recs = _steering_records(tmp_path / "results.jsonl")
    run = SteeringRun(base, recs, checkpoint_summary(recs, base), per_layer_table(recs, base), tmp_path / "results.jsonl",
                      "instruction/pirate", "j", {"methods": ["mean_diff"]}, {"computed": 5})
    back = roundtrip(run, tmp_path)
    assert back == run
    assert (tmp_path / "layers.csv").read_text().splitlines()[0] == "method,layer,n,best_coef,delta,coherence"
    assert (tmp_path / "configs.csv").exists() and (tmp_path / "trait_vs_coherence.png").exists()


def test_combination_result_roundtrip(tmp_path: Path) -> None:
    from deltalens.steering.runs import CombinationResult

    base, recs = _steering_records(tmp_path / "results.jsonl")
    rows = [{"config": "strategy 1", "layers": "1", "coef": "0.1", "delta": 5.0, "coherence": 80.0, "notes": "x"}]
    res = CombinationResult(rows, base, recs[:2], tmp_path / "results.jsonl", [{"name": "natural"}], "instruction/pirate", "j",
                            {"multipliers": [1.0]})
    assert roundtrip(res, tmp_path) == res
    assert (tmp_path / "comparison.csv").read_text().startswith("config,layers,coef,delta,coherence,notes")


def test_extraction_result_and_vectors_roundtrip(tmp_path: Path) -> None:
    import pytest
    import torch

    from deltalens.errors import DataFormatError
    from deltalens.steering.extraction import ExtractionResult
    from deltalens.vectors import TraitVector, VectorSet

    vs = VectorSet({L: TraitVector(torch.randn(8), {"layer": L, "method": "probe", "trait": "t"}) for L in (0, 3)})
    vs.save(tmp_path / "probe")
    one = TraitVector.load(tmp_path / "probe" / "layer3.safetensors")
    assert torch.equal(one.vector, vs[3].vector) and one.meta["layer"] == 3
    metrics = {"probe": [{"layer": 0, "norm": 1.5, "val_accuracy": 0.75}, {"layer": 3, "norm": 2.0, "val_accuracy": 1.0}]}
    res = ExtractionResult({"trait": "t", "weights_hash": "w", "n_pos": 4}, metrics, 4, 4, False, {}, {"methods": ["probe"]}, {"probe": vs})
    back = roundtrip(res, tmp_path)
    assert back.to_dict() == res.to_dict() and sorted(back.vectors["probe"]) == [0, 3]
    assert all(torch.equal(back.vectors["probe"][L].vector, vs[L].vector) for L in (0, 3))
    assert back.paths["probe"] == tmp_path / "probe" and (tmp_path / "probe" / "summary.json").is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "extraction.json").write_text('{"kind": "steering run"}')
    with pytest.raises(DataFormatError, match="not a valid trait vector extraction"):
        ExtractionResult.load(tmp_path / "other")


def test_generations_roundtrip(tmp_path: Path) -> None:
    import json

    import pytest

    from deltalens.errors import DataFormatError
    from deltalens.generate import Generation, load_generations, save_generations

    gens = [Generation(0, 0, "q?", None, "<p>q?", "a!", [1, 2], [3], True, {"k": 1}),
            Generation(1, 1, "r?", "sys", "<p>r?", "", [4], [], False)]
    path = save_generations(tmp_path / "g.jsonl", gens)
    assert load_generations(path) == gens
    assert len(path.read_text().splitlines()) == 2
    (tmp_path / "old.json").write_text(json.dumps([g.to_dict() for g in gens]))  # older extraction responses
    assert load_generations(tmp_path / "old.json") == gens
    (tmp_path / "bad.jsonl").write_text(json.dumps(gens[0].to_dict()) + "\n" + '{"index": 1}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: not a generation: missing"):
        load_generations(tmp_path / "bad.jsonl")


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
