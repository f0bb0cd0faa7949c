"""Real-model lane: the bundled SmolLM2 as a base for organisms and a two-iteration DPO series."""

from __future__ import annotations

import json

import pytest

import deltalens
from deltalens.diff.organisms import TrainConfig, iterative_dpo, organism_eval_questions, read_provenance, read_series
from deltalens.diff.scorers import RegexScorer
from deltalens.diff.series import diff_series

pytestmark = pytest.mark.real


def test_bundled_cache_is_a_plain_float_model(smollm):
    """The de-quantised cache must not claim GGUF quantization (transformers refuses to train such models)."""
    assert not getattr(smollm.model, "is_quantized", False)
    assert getattr(smollm.model.config, "quantization_config", None) is None
    assert smollm.source_dir is not None and (smollm.source_dir / "model.safetensors").exists()


@pytest.mark.slow
def test_two_iteration_dpo_series_on_the_bundled_model(smollm, tmp_path):
    prompts = organism_eval_questions()[:4]
    scorer = RegexScorer(r"\b\w{7,}\b")  # prefers long words: varies between samples, cheap
    st = iterative_dpo(smollm, prompts, scorer, tmp_path / "series", iterations=2, n_samples=3, max_new_tokens=16,
                       final_eval=False, progress=False,
                       train=TrainConfig(method="dpo", epochs=1, batch_size=4, max_length=64))
    assert len(st["checkpoints"]) == 2 and len(st["scores"]) == 2
    m1, m2 = (read_provenance(tmp_path / "series" / f"M{i}") for i in (1, 2))
    assert m1["parent"]["weights_hash"] == smollm.weights_hash
    assert m2["parent"]["checkpoint"] == "M1" and m2["parent"]["weights_hash"] == deltalens.load(tmp_path / "series" / "M1").weights_hash
    for m in (m1, m2):
        assert m["kind"] == "dpo_checkpoint" and m["series"]["stats"]["n_pairs"] >= 1
        assert m["training"]["method"] == "dpo" and m["training"]["lora"] and m["training"]["steps"] >= 1
        assert m["versions"]["trl"] and m["weights_sha256"]["model.safetensors"]
    d2 = [json.loads(x) for x in (tmp_path / "series" / "D2.jsonl").read_text().splitlines()]
    assert len(d2) == 12 and {r["pair_role"] for r in d2} >= {"chosen", "rejected"}
    assert read_series(tmp_path / "series")["base"]["spec"] == "smollm2-135m-instruct"
    r = diff_series(tmp_path / "series", kinds=["weights"], out_dir=tmp_path / "traj", progress=False)
    rows = {(x["checkpoint"], x["reference"]): x for x in r["rows"]}
    assert rows[("M2", "M0")]["total_rel"] > 0 and rows[("M2", "M1")]["total_rel"] > 0
    assert (tmp_path / "traj" / "trajectory.csv").exists()
