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
    assert (
        idx["seq_id"].tolist() == mem.seq_ids.tolist() and idx["position"].tolist() == mem.positions.tolist()
    )
    assert CaptureConfig.from_dict(back.manifest["config"]) == cfg.replace(sites=["resid.1", "mlp_out.3"])
    d = describe(tmp_path / "s")
    assert (
        d["kind"] == "activation store" and d["rows"] == len(idx) and d["sites"] == ["resid.1", "mlp_out.3"]
    )
    assert "stray_files" not in d
    d = describe(tmp_path / "s" / "shards" / "resid.1" / "000000.safetensors")
    assert d["kind"] == "safetensors" and d["tensors"] == {"acts": [len(idx), tiny.d_model]}


# == steering ==
def _steering_records(log_path: Path):
    from deltalens.steering.results import ResultsLog, SteeringRecord

    log = ResultsLog(log_path)
    base = SteeringRecord(
        "base",
        "baseline",
        "baseline",
        trait="instruction/pirate",
        judge="j",
        trait_mean=10.0,
        coherence_mean=90.0,
        n=2,
        responses=[{"question": "q", "response": "r", "trait": 10.0}],
    )
    recs = [
        SteeringRecord(
            f"k{L}{c}",
            "single",
            f"mean_diff L{L} c{c:g}",
            "instruction/pirate",
            [{"layer": L, "coef": c, "coef_mode": "relative", "vector": {"fingerprint": "f"}}],
            L,
            c,
            "mean_diff",
            "response",
            4,
            "sha",
            2,
            "j",
            10.0 + 100 * c,
            95.0 - 50 * c,
            2,
            0,
            {"ok": 2, "coherence_ok": 2},
            meta={"search": "grid"},
        )
        for L in (1, 2)
        for c in (0.1, 0.4)
    ]
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
    old = {
        "key": "old",
        "kind": "single",
        "layer": 3,
        "coef": 0.2,
        "trait_mean": 40.0,
        "judge": "j",
        "legacy_field": [1],
    }
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
    run = SteeringRun(
        base,
        recs,
        checkpoint_summary(recs, base),
        per_layer_table(recs, base),
        tmp_path / "results.jsonl",
        "instruction/pirate",
        "j",
        {"methods": ["mean_diff"]},
        {"computed": 5},
    )
    back = roundtrip(run, tmp_path)
    assert back == run
    assert (tmp_path / "layers.csv").read_text().splitlines()[0] == "method,layer,n,best_coef,delta,coherence"
    assert (tmp_path / "configs.csv").exists() and (tmp_path / "trait_vs_coherence.png").exists()


def test_combination_result_roundtrip(tmp_path: Path) -> None:
    from deltalens.steering.runs import CombinationResult

    base, recs = _steering_records(tmp_path / "results.jsonl")
    rows = [
        {"config": "strategy 1", "layers": "1", "coef": "0.1", "delta": 5.0, "coherence": 80.0, "notes": "x"}
    ]
    res = CombinationResult(
        rows,
        base,
        recs[:2],
        tmp_path / "results.jsonl",
        [{"name": "natural"}],
        "instruction/pirate",
        "j",
        {"multipliers": [1.0]},
    )
    assert roundtrip(res, tmp_path) == res
    assert (tmp_path / "comparison.csv").read_text().startswith("config,layers,coef,delta,coherence,notes")


def test_extraction_result_and_vectors_roundtrip(tmp_path: Path) -> None:
    import pytest
    import torch

    from deltalens.errors import DataFormatError
    from deltalens.steering.extraction import ExtractionResult
    from deltalens.vectors import TraitVector, VectorSet

    vs = VectorSet(
        {L: TraitVector(torch.randn(8), {"layer": L, "method": "probe", "trait": "t"}) for L in (0, 3)}
    )
    vs.save(tmp_path / "probe")
    one = TraitVector.load(tmp_path / "probe" / "layer3.safetensors")
    assert torch.equal(one.vector, vs[3].vector) and one.meta["layer"] == 3
    metrics = {
        "probe": [
            {"layer": 0, "norm": 1.5, "val_accuracy": 0.75},
            {"layer": 3, "norm": 2.0, "val_accuracy": 1.0},
        ]
    }
    res = ExtractionResult(
        {"trait": "t", "weights_hash": "w", "n_pos": 4},
        metrics,
        4,
        4,
        False,
        {},
        {"methods": ["probe"]},
        {"probe": vs},
    )
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

    gens = [
        Generation(0, 0, "q?", None, "<p>q?", "a!", [1, 2], [3], True, {"k": 1}),
        Generation(1, 1, "r?", "sys", "<p>r?", "", [4], [], False),
    ]
    path = save_generations(tmp_path / "g.jsonl", gens)
    assert load_generations(path) == gens
    assert len(path.read_text().splitlines()) == 2
    (tmp_path / "old.json").write_text(json.dumps([g.to_dict() for g in gens]))  # older extraction responses
    assert load_generations(tmp_path / "old.json") == gens
    (tmp_path / "bad.jsonl").write_text(json.dumps(gens[0].to_dict()) + "\n" + '{"index": 1}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: not a generation: missing"):
        load_generations(tmp_path / "bad.jsonl")


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

    a = diff_activations(
        b,
        f,
        ["Hello there", "Why is the sky blue?"],
        max_new_tokens=4,
        lens_texts=["The quick brown fox."],
        figures=False,
        progress=False,
    )
    back = roundtrip(a, tmp_path / "a")
    assert back == a and back.lens == a.lens and isinstance(back.lens, DifferenceLens)
    assert roundtrip(a.lens, tmp_path / "lens") == a.lens

    o = diff_outputs(
        b, f, ["The quick brown fox.", "What is the capital of France?"], figures=False, progress=False
    )
    assert roundtrip(o, tmp_path / "o") == o

    s = diff_series(
        [f, f2],
        base=b,
        kinds=["weights", "outputs"],
        texts=["The quick brown fox."],
        figures=False,
        progress=False,
    )
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

    st = DPOSeries(
        name="s",
        base={"spec": "tiny", "name": "tiny", "weights_hash": "ab"},
        scorer={"name": "regex:e", "pattern": "e"},
        config=DPOSeriesConfig().to_dict(),
        config_hash="cd",
        checkpoints=[str(tmp_path / "M1")],
        data=[str(tmp_path / "D0.jsonl"), str(tmp_path / "D1.jsonl")],
        iterations=[{"iteration": 1, "data": "D0", "n_pairs": 2}],
        scores=[0.5, 1.5],
    )
    back = roundtrip(st, tmp_path)
    assert back == st and back.data_convention == DATA_CONVENTION and read_series(tmp_path) == st
    old = {
        k: v for k, v in json.loads((tmp_path / "series.json").read_text()).items() if k != "data_convention"
    }
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


def _tiny_sae(arch: str = "topk"):
    import torch

    from deltalens.sae import SAE, SAEConfig

    g = torch.Generator().manual_seed(0)
    sae = SAE(
        SAEConfig(
            8,
            24,
            arch,
            k=3 if arch == "topk" else None,
            site="resid.1",
            model_name="tiny",
            metadata={"note": "planted"},
        )
    )
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

    res = train_sae(
        torch.randn(600, 8),
        SAETrainConfig(d_sae=16, k=2, total_tokens=256, batch_size=64),
        site="resid.1",
        out=tmp_path / "sae",
        progress=False,
    )
    back = SAETrainResult.load(tmp_path / "sae")
    assert back == res and back.config == res.config and back.history == res.history
    assert torch.equal(back.sparsity, res.sparsity) and torch.equal(back.sae.W_dec, res.sae.W_dec)
    assert describe(tmp_path / "sae" / "training.json")["kind"] == SAETrainResult.KIND
    # without the SAE beside it (just the JSON)
    bare = SAETrainResult(
        SAETrainConfig(architecture="relu", k=4), d_in=8, d_sae=16, history=[{"step": 1, "l0": 2.0}]
    )
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

    cfg = SAEIterateConfig(
        train=SAETrainConfig(d_sae=16, k=2, total_tokens=256, batch_size=64), names=["M0D0", "M1D1"]
    )
    res = train_iterative(
        [torch.randn(600, 8), torch.randn(600, 8)], cfg.names, tmp_path / "runs", cfg, progress=False
    )
    back = SAEIterateResult.load(tmp_path / "runs")
    assert back == res and back.names == ["M0D0", "M1D1"] and back.runs[1]["parent"] == "M0D0"
    assert describe(tmp_path / "runs" / "iterate.json")["kind"] == SAEIterateResult.KIND
    assert SAEIterateConfig.from_dict(back.config) == cfg


def test_crosscoder_roundtrip(tmp_path: Path) -> None:
    import torch

    from deltalens.sae import SAETrainConfig
    from deltalens.sae.crosscoder import CrosscoderResult, train_crosscoder

    x = torch.randn(800, 2, 8)
    res = train_crosscoder(
        x,
        SAETrainConfig(architecture="batchtopk", d_sae=16, k=2, total_tokens=256, batch_size=64),
        out=tmp_path / "cc",
        progress=False,
    )
    back = CrosscoderResult.load(tmp_path / "cc")
    assert back.config == res.config and back.history == res.history and back.tokens == res.tokens
    assert back.classes["counts"] == res.classes["counts"] and back.classes["labels"] == res.classes["labels"]
    assert torch.allclose(back.classes["relative_norm"], res.classes["relative_norm"].float())
    for k, v in res.crosscoder.state_dict().items():
        assert torch.equal(back.crosscoder.state_dict()[k], v), k
    assert describe(tmp_path / "cc")["kind"] == "crosscoder"
    assert describe(tmp_path / "cc" / "training.json")["kind"] == CrosscoderResult.KIND


# == features ==


def _universal_features(recorded: bool = True):
    import pandas as pd

    from deltalens.features import UNIVERSAL_COLUMNS, UniversalFeatures

    table = pd.DataFrame(
        [
            [3, 0.5, 1.25, 0.0, 2, "smol_trainer2_layer0", "asst", ""],
            [7, 0.125, 0.75, -0.5, 1, "smol_trainer2_layer0", "newline", "https://x/7"],
        ],
        columns=UNIVERSAL_COLUMNS,
    )
    recs = (
        [
            {
                "model": "smol",
                "layer": 0,
                "feature_id": 3,
                "prompt": 'Hi, "you"',
                "label": "",
                "activation": 0.5,
                "token_type": "asst",
            }
        ]
        if recorded
        else []
    )
    return UniversalFeatures(
        table, recs, 3, 0.3, 0.01, recorded, annotation_columns=True, meta={"config": {"a": 1}}
    )


def test_universal_features_roundtrip(tmp_path: Path) -> None:
    import pandas as pd

    from deltalens.features import UNIVERSAL_COLUMNS

    r = _universal_features()
    back = roundtrip(r, tmp_path)
    pd.testing.assert_frame_equal(back.table[UNIVERSAL_COLUMNS], r.table)
    assert back.table["chat_desc"].tolist() == ["", ""]  # hand-annotation columns survive a load
    assert back.records == r.records and back.meta == r.meta
    assert (
        back.n_prompts,
        back.threshold,
        back.activation_threshold,
        back.recorded,
        back.annotation_columns,
    ) == (3, 0.3, 0.01, True, True)
    # the CSV keeps the seed's schema (annotated), and the CSV path loads too
    from deltalens.features import UNIVERSAL_COLUMNS_ANNOTATED, UniversalFeatures

    assert (tmp_path / "universal_features.csv").read_text().splitlines()[0] == ",".join(
        UNIVERSAL_COLUMNS_ANNOTATED
    )
    csv_path, jsonl = r.write(tmp_path / "named" / "u.csv")
    assert jsonl == tmp_path / "named" / "u_activeprompts.jsonl" and (tmp_path / "named" / "u.json").is_file()
    pd.testing.assert_frame_equal(UniversalFeatures.load(csv_path).table[UNIVERSAL_COLUMNS], r.table)
    assert describe(tmp_path / "named" / "u.json")["kind"] == UniversalFeatures.KIND


def test_specific_features_roundtrip_and_kind_refusal(tmp_path: Path) -> None:
    import pandas as pd
    import pytest

    from deltalens.errors import DataFormatError
    from deltalens.features import SPECIFIC_COLUMNS, SpecificFeatures, UniversalFeatures

    table = pd.DataFrame(
        [
            [0, "What?", "geo", 3, 0.5, "smol_trainer2_layer0", "asst", ""],
            [1, "Why, though?", "", 3, 0.0, "smol_trainer2_layer0", "asst", ""],
        ],
        columns=SPECIFIC_COLUMNS,
    )
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
    for name in (
        "dec_norm",
        "enc_norm",
        "b_enc",
        "threshold",
        "dec_cos_ref",
        "dec_max_cos",
        "dec_partner",
        "enc_partner",
    ):
        assert torch.equal(getattr(back, name), getattr(m, name)), name
    assert (tmp_path / "weight_metrics.parquet").is_file()


def test_firing_stats_roundtrip(tmp_path: Path) -> None:
    import torch

    from deltalens.features import FiringConfig, FiringStats

    st = FiringStats.empty(4, FiringConfig(activation_threshold=0.1, n_bins=8, top_k=2, max_position=4))
    f = torch.tensor([[0.0, 0.5, 2.0, 0.0], [0.2, 0.0, 3.0, 0.0]])
    st.update(
        f,
        torch.tensor([0, 0]),
        torch.tensor([0, 1]),
        torch.tensor([False, True]),
        torch.tensor([2, 2]),
        n_sequences=1,
    )
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
    for name in (
        "cos_prev",
        "cos_first",
        "dec_norm",
        "enc_norm",
        "threshold",
        "firing_rate",
        "born_at",
        "died_at",
        "first_change",
        "n_changes",
        "changed_back_at",
    ):
        assert torch.equal(
            torch.nan_to_num(getattr(back, name), 9.0), torch.nan_to_num(getattr(ev, name), 9.0)
        ), name


def test_feature_dashboards_roundtrip(tmp_path: Path) -> None:
    from deltalens.features import FeatureDashboards

    rec = {
        "index": 4,
        "maxActApprox": 1.5,
        "frac_nonzero": 0.25,
        "pos_str": ["a", "\n"],
        "activations": [
            {"tokens": ["x", "y"], "values": [0.0, 1.5], "maxValue": 1.5, "maxValueTokenIndex": 1}
        ],
    }
    d = FeatureDashboards([rec, {**rec, "index": 0}], {"model": "tiny"})
    back = roundtrip(d, tmp_path / "dash")
    assert back == d and (tmp_path / "dash" / "features" / "4.json").is_file()


# == circuits ==


def _patching_result():
    import torch

    from deltalens.circuits import PatchingResult

    return PatchingResult(
        "attribution_patching",
        "denoising",
        "logit_diff",
        ["attn_out", "mlp_out"],
        [0, 1],
        [3, 4],
        ["▁of", "▁is"],
        2.5,
        -0.5,
        torch.arange(8, dtype=torch.float32).reshape(2, 2, 2) / 4,
        None,
        0.25,
        {"task": {"n": 2}},
    )


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

    c = FaithfulnessCurve(
        "component", [1, 2, 4], 4, 2.0, -1.0, [0.5, 1.0, 2.0], [1.5, 0.0, -1.0], 0.5, {"m": 1}
    )
    path = c.save(tmp_path)
    back = FaithfulnessCurve.load(path)
    assert back == c and back.faithfulness == c.faithfulness
    assert describe(path)["kind"] == "circuits faithfulness curve"


def test_sae_attribution_roundtrip(tmp_path: Path) -> None:
    import torch

    from deltalens.circuits import SAEAttribution
    from deltalens.hooks import Site

    g = torch.Generator().manual_seed(0)
    r = SAEAttribution(
        Site(1, "resid"),
        "denoising",
        "indirect",
        True,
        "logit_diff",
        [2, 3],
        ["a", "b"],
        1.0,
        0.0,
        torch.randn(2, 5, generator=g),
        torch.randn(2, generator=g),
        torch.rand(2, 5, generator=g),
        torch.rand(2, 5, generator=g),
        {"model": {"clean": 1.0, "corrupted": 0.0, "difference": 1.0}},
        seconds=0.5,
        meta={"x": 1},
    )
    path = r.save(tmp_path, k=3)
    back = SAEAttribution.load(tmp_path)
    assert back.site == r.site and back.error_table == r.error_table and back.meta == r.meta
    assert all(
        torch.equal(getattr(back, k), getattr(r, k))
        for k in ("scores", "error_scores", "act_clean", "act_corrupted")
    )
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
    return fit_table(
        t, df, ProbeFitConfig(methods=["ksparse", "diff_mean"], ks=[1, 2], folds=3, top=4), name="p"
    ), t


def test_probe_results_roundtrip(tmp_path: Path) -> None:
    import numpy as np

    from deltalens.probes import (
        AnnotateConfig,
        CompareConfig,
        CorrelateConfig,
        LatentTable,
        run_annotate,
        run_compare,
        run_correlate,
    )
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
    assert (
        AnnotationResult.load(tmp_path / "p") == ann
        and describe(tmp_path / "p" / "annotate.json")["kind"] == ann.KIND
    )
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
