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

# == features ==


def _universal_features(recorded: bool = True):
    import pandas as pd

    from deltalens.features import UNIVERSAL_COLUMNS, UniversalFeatures

    table = pd.DataFrame([[3, 0.5, 1.25, 0.0, 2, "smol_trainer2_layer0", "asst", ""],
                          [7, 0.125, 0.75, -0.5, 1, "smol_trainer2_layer0", "newline", "https://x/7"]],
                         columns=UNIVERSAL_COLUMNS)
    recs = [{"model": "smol", "layer": 0, "feature_id": 3, "prompt": "Hi, \"you\"", "label": "", "activation": 0.5,
             "token_type": "asst"}] if recorded else []
    return UniversalFeatures(table, recs, 3, 0.3, 0.01, recorded, annotation_columns=True, meta={"config": {"a": 1}})


def test_universal_features_roundtrip(tmp_path: Path) -> None:
    import pandas as pd

    from deltalens.features import UNIVERSAL_COLUMNS

    r = _universal_features()
    back = roundtrip(r, tmp_path)
    pd.testing.assert_frame_equal(back.table[UNIVERSAL_COLUMNS], r.table)
    assert back.table["chat_desc"].tolist() == ["", ""]  # hand-annotation columns survive a load
    assert back.records == r.records and back.meta == r.meta
    assert (back.n_prompts, back.threshold, back.activation_threshold, back.recorded, back.annotation_columns) == (3, 0.3, 0.01, True, True)
    # the CSV keeps the seed's schema (annotated), and the CSV path loads too
    from deltalens.features import UNIVERSAL_COLUMNS_ANNOTATED, UniversalFeatures

    assert (tmp_path / "universal_features.csv").read_text().splitlines()[0] == ",".join(UNIVERSAL_COLUMNS_ANNOTATED)
    csv_path, jsonl = r.write(tmp_path / "named" / "u.csv")
    assert jsonl == tmp_path / "named" / "u_activeprompts.jsonl" and (tmp_path / "named" / "u.json").is_file()
    pd.testing.assert_frame_equal(UniversalFeatures.load(csv_path).table[UNIVERSAL_COLUMNS], r.table)
    assert describe(tmp_path / "named" / "u.json")["kind"] == UniversalFeatures.KIND


def test_specific_features_roundtrip_and_kind_refusal(tmp_path: Path) -> None:
    import pandas as pd
    import pytest

    from deltalens.errors import DataFormatError
    from deltalens.features import SPECIFIC_COLUMNS, SpecificFeatures, UniversalFeatures

    table = pd.DataFrame([[0, "What?", "geo", 3, 0.5, "smol_trainer2_layer0", "asst", ""],
                          [1, "Why, though?", "", 3, 0.0, "smol_trainer2_layer0", "asst", ""]], columns=SPECIFIC_COLUMNS)
    r = SpecificFeatures(table, [], 2, 0.01, False)
    back = roundtrip(r, tmp_path)
    pd.testing.assert_frame_equal(back.table, r.table)
    assert (back.n_prompts, back.activation_threshold, back.recorded, back.records) == (2, 0.01, False, [])
    with pytest.raises(DataFormatError, match="not a valid universal features"):
        UniversalFeatures.load(tmp_path / "specific_features.json")


def test_weight_metrics_roundtrip(tmp_path: Path) -> None:
    import torch

    from deltalens.features import weight_metrics
    from deltalens.sae import SAE, SAEConfig

    torch.manual_seed(0)
    a, b = SAE(SAEConfig(8, 5, "jumprelu")), SAE(SAEConfig(8, 5, "standard"))
    m = weight_metrics(a, b)
    back = roundtrip(m, tmp_path)
    for name in ("dec_norm", "enc_norm", "b_enc", "threshold", "dec_cos_ref", "dec_max_cos", "dec_partner", "enc_partner"):
        assert torch.equal(getattr(back, name), getattr(m, name)), name
    assert (tmp_path / "weight_metrics.parquet").is_file()


def test_firing_stats_roundtrip(tmp_path: Path) -> None:
    import torch

    from deltalens.features import FiringConfig, FiringStats

    st = FiringStats.empty(4, FiringConfig(activation_threshold=0.1, n_bins=8, top_k=2, max_position=4))
    f = torch.tensor([[0.0, 0.5, 2.0, 0.0], [0.2, 0.0, 3.0, 0.0]])
    st.update(f, torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([False, True]), torch.tensor([2, 2]),
              n_sequences=1)
    back = roundtrip(st, tmp_path)
    assert back.config == st.config and back.n_tokens == st.n_tokens == 2
    assert all(torch.equal(back.tensors[k], v) for k, v in st.tensors.items())
    assert (tmp_path / "firing_stats.parquet").is_file()


def test_evolution_roundtrip(tmp_path: Path) -> None:
    import torch

    from deltalens.features import EvolutionConfig, feature_evolution
    from deltalens.sae import SAE, SAEConfig

    torch.manual_seed(0)
    saes = [SAE(SAEConfig(8, 6, "jumprelu")) for _ in range(3)]
    rates = torch.tensor([[0.1, 0, 0.2, 0, 0.3, 0], [0.1, 0.2, 0, 0, 0.3, 0], [0, 0.2, 0, 0, 0.3, 0.1]])
    ev = feature_evolution(saes, ["M0", "M1", "M2"], rates, EvolutionConfig(0.5, 0.0))
    back = roundtrip(ev, tmp_path)
    assert back.names == ev.names and back.status == ev.status and back.config == ev.config
    for name in ("cos_prev", "cos_first", "dec_norm", "enc_norm", "threshold", "firing_rate", "born_at", "died_at",
                 "first_change", "n_changes", "changed_back_at"):
        assert torch.equal(torch.nan_to_num(getattr(back, name), 9.0), torch.nan_to_num(getattr(ev, name), 9.0)), name


def test_feature_dashboards_roundtrip(tmp_path: Path) -> None:
    from deltalens.features import FeatureDashboards

    rec = {"index": 4, "maxActApprox": 1.5, "frac_nonzero": 0.25, "pos_str": ["a", "\n"], "activations": [
        {"tokens": ["x", "y"], "values": [0.0, 1.5], "maxValue": 1.5, "maxValueTokenIndex": 1}]}
    d = FeatureDashboards([rec, {**rec, "index": 0}], {"model": "tiny"})
    back = roundtrip(d, tmp_path / "dash")
    assert back == d and (tmp_path / "dash" / "features" / "4.json").is_file()


# == circuits ==


def _patching_result():
    import torch

    from deltalens.circuits import PatchingResult

    return PatchingResult("attribution_patching", "denoising", "logit_diff", ["attn_out", "mlp_out"], [0, 1], [3, 4],
                          ["▁of", "▁is"], 2.5, -0.5, torch.arange(8, dtype=torch.float32).reshape(2, 2, 2) / 4,
                          None, 0.25, {"task": {"n": 2}})


def test_patching_result_roundtrip(tmp_path: Path) -> None:
    import pytest
    import torch

    from deltalens.circuits import FaithfulnessCurve, PatchingResult
    from deltalens.errors import DataFormatError

    r = _patching_result()
    path = r.save(tmp_path)
    assert path == tmp_path / PatchingResult.FILENAME
    back = PatchingResult.load(tmp_path)
    assert torch.equal(back.values, r.values) and back.labels == r.labels and back.meta == r.meta
    assert (back.method, back.direction, back.clean, back.corrupted) == (r.method, r.direction, 2.5, -0.5)
    assert PatchingResult.load(r.save(tmp_path / "exact.json")).components == r.components
    assert describe(path)["kind"] == "circuits attribution_patching (denoising)"
    with pytest.raises(DataFormatError, match="not a valid circuits.faithfulness"):
        FaithfulnessCurve.load(path)


def test_faithfulness_curve_roundtrip(tmp_path: Path) -> None:
    from deltalens.circuits import FaithfulnessCurve

    c = FaithfulnessCurve("component", [1, 2, 4], 4, 2.0, -1.0, [0.5, 1.0, 2.0], [1.5, 0.0, -1.0], 0.5, {"m": 1})
    path = c.save(tmp_path)
    back = FaithfulnessCurve.load(path)
    assert back == c and back.faithfulness == c.faithfulness
    assert describe(path)["kind"] == "circuits faithfulness curve"


def test_sae_attribution_roundtrip(tmp_path: Path) -> None:
    import torch

    from deltalens.circuits import SAEAttribution
    from deltalens.hooks import Site

    g = torch.Generator().manual_seed(0)
    r = SAEAttribution(Site(1, "resid"), "denoising", "indirect", True, "logit_diff", [2, 3], ["a", "b"], 1.0, 0.0,
                       torch.randn(2, 5, generator=g), torch.randn(2, generator=g), torch.rand(2, 5, generator=g),
                       torch.rand(2, 5, generator=g), {"model": {"clean": 1.0, "corrupted": 0.0, "difference": 1.0}},
                       seconds=0.5, meta={"x": 1})
    path = r.save(tmp_path, k=3)
    back = SAEAttribution.load(tmp_path)
    assert back.site == r.site and back.error_table == r.error_table and back.meta == r.meta
    assert all(torch.equal(getattr(back, k), getattr(r, k)) for k in ("scores", "error_scores", "act_clean", "act_corrupted"))
    assert describe(path.parent)["kind"] == "circuits SAE attribution"


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
