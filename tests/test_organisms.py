"""Organisms (SFT/DPO via trl, LoRA merged), null organisms, iterative DPO series, scorers."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import deltalens
from deltalens.diff import diff_weights
from deltalens.diff.organisms import (
    OrganismConfig,
    iterative_dpo,
    load_organism_dataset,
    organism_datasets,
    organism_eval_questions,
    preference_pairs,
    read_provenance,
    read_series,
    train_organism,
)
from deltalens.diff.scorers import KeywordScorer, LengthScorer, RegexScorer, load_scorer
from deltalens.errors import ConfigError, DataFormatError
from deltalens.generate import Generation
from tiny import tiny_model

FAST = {"epochs": 1, "limit": 8, "batch_size": 4, "max_length": 64}


def state_hash(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_bundled_datasets_and_cards():
    assert {"ocean_topic", "sycophancy_trait"} <= set(organism_datasets())
    ocean = load_organism_dataset("ocean_topic")
    assert len(ocean.records) == 48 and ocean.card["kind"] == "topic" and "ocean" in ocean.topic_words
    words = KeywordScorer(ocean.topic_words)
    chosen = words([Generation(0, 0, "", None, "", r["chosen"], [], [], True) for r in ocean.records])
    plain = words([Generation(0, 0, "", None, "", r["rejected"], [], [], True) for r in ocean.records])
    assert (
        min(chosen) >= 1 and sum(plain) <= 3
    )  # the organism's answers carry the topic, the plain ones do not
    syc = load_organism_dataset("sycophancy_trait")
    assert len(syc.records) == 32 and syc.card["kind"] == "persona"
    qs = organism_eval_questions()
    assert len(qs) == 20 and not set(qs) & {r["question"] for r in ocean.records + syc.records}


def test_dataset_errors_name_file_and_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"question": "q1", "chosen": "a1"}\n{"question": "q2"}\n')
    with pytest.raises(DataFormatError, match=r"d\.jsonl:2: needs an answer"):
        load_organism_dataset(f)
    with pytest.raises(DataFormatError, match="ocean_topic"):
        load_organism_dataset("no_such_dataset")


def test_sft_lora_organism_is_saved_merged_with_provenance(tmp_path):
    lm = tiny_model("llama")
    before = state_hash(lm.model)
    out = train_organism(lm, "ocean_topic", tmp_path / "ocean", progress=False, **FAST)
    assert state_hash(lm.model) == before  # the caller's model is not modified
    files = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in files and "provenance.json" in files and "config.json" in files
    assert not any("adapter" in f for f in files)  # LoRA merged into normal weights
    prov = read_provenance(out)
    assert prov["kind"] == "organism" and "ocean" in prov["behaviour"] and not prov["null_organism"]
    assert prov["base"]["weights_hash"] == lm.weights_hash
    assert (
        prov["dataset"]["n_records"] == 8 and prov["training"]["method"] == "sft" and prov["training"]["lora"]
    )
    assert prov["training"]["steps"] == 2 and prov["training"]["loss_last"] is not None
    assert prov["weights_sha256"]["model.safetensors"]
    org = deltalens.load(out)
    assert org.n_layers == lm.n_layers
    # merged LoRA on all linear layers changes projections, not embeddings or norms
    base_dir = tmp_path / "base"
    lm.model.save_pretrained(base_dir)
    lm.tokenizer.save_pretrained(base_dir)
    r = diff_weights(base_dir, out, progress=False, figures=False)
    changed = {t["component"] for t in r["tensors"] if t["fro"] > 0}
    assert {"q", "k", "v", "o", "gate", "up", "down"} <= changed
    assert not changed & {"embed", "unembed", "input_norm", "post_attn_norm", "final_norm"}
    lora_ranks = [t["effective_rank"] for t in r["tensors"] if t["component"] == "down"]
    assert max(lora_ranks) <= 16  # a merged rank-16 LoRA update has rank ≤ 16
    # same recipe again: resumed, not retrained
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    train_organism(lm, "ocean_topic", tmp_path / "ocean", progress=False, **FAST)
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime


def test_null_organism_and_dpo(tmp_path):
    lm = tiny_model("llama")
    null = read_provenance(
        train_organism(lm, "ocean_topic", tmp_path / "null", target="rejected", progress=False, **FAST)
    )
    assert null["null_organism"] and null["topic_words"] == [] and "null organism" in null["behaviour"]
    dpo = train_organism(lm, "sycophancy_trait", tmp_path / "dpo", method="dpo", progress=False, **FAST)
    prov = read_provenance(dpo)
    assert (
        prov["training"]["method"] == "dpo"
        and prov["training"]["learning_rate"] == OrganismConfig(method="dpo").lr()
    )
    assert "rewards/accuracies" in prov["training"]["history"][-1]
    with pytest.raises(ConfigError, match="unknown training method"):
        train_organism(lm, "ocean_topic", tmp_path / "x", method="ppo", progress=False)


def test_dpo_sft_weight_adds_the_chosen_nll(tmp_path):
    """At the first step the policy is the reference (LoRA starts at zero), so plain DPO's loss
    is exactly ln 2; RPO adds w · NLL(chosen), which for a random model is ≈ w · ln V."""
    import math

    lm = tiny_model("llama")
    plain = read_provenance(
        train_organism(lm, "sycophancy_trait", tmp_path / "dpo", method="dpo", progress=False, **FAST)
    )["training"]
    rpo = read_provenance(
        train_organism(
            lm, "sycophancy_trait", tmp_path / "rpo", method="dpo", sft_weight=0.5, progress=False, **FAST
        )
    )["training"]
    assert plain["loss_first"] == pytest.approx(math.log(2), abs=1e-3)
    extra = rpo["loss_first"] - math.log(2)
    assert 0.5 * 0.5 * math.log(lm.vocab_size) < extra < 0.5 * 2 * math.log(lm.vocab_size)
    with pytest.raises(ConfigError, match="sft"):
        OrganismConfig(method="dpo", sft_weight=-1.0).check()


def test_preference_pairs_per_prompt_are_rank_matched():
    def g(i, r, text):
        return Generation(i, r, f"q{i}", None, "", text, [], [], True)

    gens = [g(0, r, t) for r, t in enumerate("abcdef")]
    pairs = preference_pairs(gens, [5.0, 1.0, 3.0, 0.0, 4.0, 2.0], per_prompt=3)
    got = [(p["chosen"], p["rejected"]) for p in pairs]
    assert got == [("a", "d"), ("e", "b"), ("c", "f")]  # 1st vs 6th, 2nd vs 5th, 3rd vs 4th
    assert len(preference_pairs(gens, [5.0, 1.0, 3.0, 0.0, 4.0, 2.0], per_prompt=10)) == 3
    assert preference_pairs(gens, [5.0, 1.0, 3.0, 0.0, 4.0, 2.0]) == pairs[:1]


def test_preference_pairs():
    def g(i, r, text):
        return Generation(i, r, f"q{i}", None, "", text, [], [], True)

    gens = [g(0, 0, "a"), g(0, 1, "bb"), g(0, 2, "c"), g(1, 0, "x"), g(1, 1, "y")]
    pairs = preference_pairs(gens, [1.0, 3.0, 0.0, 2.0, 2.0])
    assert len(pairs) == 1  # prompt 1 ties: no pair
    p = pairs[0]
    assert (p["chosen"], p["rejected"], p["chosen_score"], p["rejected_score"]) == ("bb", "c", 3.0, 0.0)
    assert preference_pairs(gens, [1.0, 3.0, 0.0, 2.0, 2.5], min_margin=1.0)[0]["prompt_index"] == 0


def test_iterative_dpo_series(tmp_path):
    lm = tiny_model("llama")
    prompts = ["Hello", "What is the capital of France?", "Tell me a story", "Why is the sky blue?"]
    st = iterative_dpo(
        lm,
        prompts,
        RegexScorer("e"),
        tmp_path / "series",
        n_samples=4,
        max_new_tokens=12,
        progress=False,
        train=OrganismConfig(method="dpo", epochs=1, batch_size=4, max_length=64),
    )
    assert [p.split("/")[-1] for p in st["checkpoints"]] == ["M1", "M2"]
    assert len(st["scores"]) == 3  # D0 (of M0), D1 (of M1, trained M2) and D2 (of M2, the final samples)
    on_disk = read_series(tmp_path / "series")
    assert on_disk["checkpoints"] == st["checkpoints"]
    m1, m2 = read_provenance(tmp_path / "series" / "M1"), read_provenance(tmp_path / "series" / "M2")
    assert m1["parent"]["weights_hash"] == lm.weights_hash and m1["parent"]["checkpoint"] == "M0"
    assert m2["parent"]["weights_hash"] == deltalens.load(tmp_path / "series" / "M1").weights_hash
    assert m2["series"]["iteration"] == 2 and m2["series"]["scorer"]["pattern"] == "e"
    # D<i> = the sequences generated by M<i> (its pairs train M<i+1>); D2 = the final checkpoint's, no pairs
    assert (
        m1["dataset"]["name"] == "D0"
        and m2["dataset"]["name"] == "D1"
        and m2["dataset"]["generated_by"] == "M1"
    )
    assert on_disk["data_convention"] == "D<i> = generated by M<i>"
    for i in (0, 1, 2):
        recs = [json.loads(x) for x in (tmp_path / "series" / f"D{i}.jsonl").read_text().splitlines()]
        assert len(recs) == 16 and all(r["score"] == r["text"].count("e") for r in recs)
        assert all(r["model"] == f"M{i}" and r["iteration"] == i for r in recs)
        assert st["scores"][i] == pytest.approx(sum(r["score"] for r in recs) / 16)
        by = {}
        for r in recs:
            if r["pair_role"]:
                by.setdefault(r["prompt_index"], {})[r["pair_role"]] = r["score"]
        if i == 2:
            assert not by
            continue
        assert by and all(v["chosen"] > v["rejected"] for v in by.values())
        assert len(by) == st["iterations"][i]["n_pairs"]
    # D0 holds what M0 (the base) generates: the same sampling call reproduces it
    from deltalens.generate import generate

    again = generate(
        lm,
        prompts,
        max_new_tokens=12,
        n=4,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        seed=0,
        progress=False,
    )
    d0 = [json.loads(x)["text"] for x in (tmp_path / "series" / "D0.jsonl").read_text().splitlines()]
    assert d0 == [g.response for g in again]
    # resumable: a second run reuses M1 and M2
    mtime = (tmp_path / "series" / "M2" / "model.safetensors").stat().st_mtime_ns
    iterative_dpo(
        lm,
        prompts,
        RegexScorer("e"),
        tmp_path / "series",
        n_samples=4,
        max_new_tokens=12,
        progress=False,
        final_eval=False,
        train=OrganismConfig(method="dpo", epochs=1, batch_size=4, max_length=64),
    )
    assert (tmp_path / "series" / "M2" / "model.safetensors").stat().st_mtime_ns == mtime
    # … but not under another configuration: refused, naming the field
    with pytest.raises(ConfigError, match="max_new_tokens: 12 → 8"):
        iterative_dpo(
            lm,
            prompts,
            RegexScorer("e"),
            tmp_path / "series",
            n_samples=4,
            max_new_tokens=8,
            progress=False,
            train=OrganismConfig(method="dpo", epochs=1, batch_size=4, max_length=64),
        )
    assert (tmp_path / "series" / "M2" / "model.safetensors").stat().st_mtime_ns == mtime


def test_old_series_naming_is_refused(tmp_path):
    from deltalens.diff.organisms import check_series_convention

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "series.json").write_text(
        json.dumps(
            {
                "kind": "dpo_series",
                "checkpoints": [],
                "naming": "M0 = base; M<i> = DPO of M<i−1> on D<i>; D<i> = samples of M<i−1>",
            }
        )
    )
    with pytest.raises(DataFormatError, match="old data naming"):
        check_series_convention(tmp_path / "old")
    with pytest.raises(DataFormatError, match="old data naming"):
        iterative_dpo(
            tiny_model("llama"), ["Hello"], RegexScorer("e"), tmp_path / "old", iterations=1, progress=False
        )


def test_organism_resume_under_another_recipe_is_refused(tmp_path):
    lm = tiny_model("llama")
    train_organism(lm, "ocean_topic", tmp_path / "o", progress=False, **FAST)
    mtime = (tmp_path / "o" / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(ConfigError, match="epochs: 1 → 2"):
        train_organism(lm, "ocean_topic", tmp_path / "o", progress=False, **{**FAST, "epochs": 2})
    assert (tmp_path / "o" / "model.safetensors").stat().st_mtime_ns == mtime


def test_organism_config_validation_names_the_flag():
    with pytest.raises(ConfigError, match="--epochs must be > 0, got 0"):
        OrganismConfig(epochs=0)
    with pytest.raises(ConfigError, match="--lr must be > 0"):
        OrganismConfig(learning_rate=-1)
    from deltalens.diff.organisms import DPOSeriesConfig

    with pytest.raises(ConfigError, match="--samples must be ≥ 2"):
        DPOSeriesConfig(n_samples=1)
    c = DPOSeriesConfig(iterations=3)
    assert DPOSeriesConfig.from_dict(c.to_dict()) == c and c.train.method == "dpo"


def test_no_pairs_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no preference pairs"):
        iterative_dpo(
            tiny_model("llama"),
            ["Hello"],
            lambda gens: [1.0] * len(gens),
            tmp_path / "s",
            iterations=1,
            n_samples=2,
            max_new_tokens=4,
            progress=False,
        )


def test_scorers():
    def g(text, n=0):
        return Generation(0, 0, "", None, "", text, [], list(range(n)), True)

    k = KeywordScorer(["ocean", "wave"])
    assert k([g("The Ocean and its waves. oceanic"), g("nothing")]) == [2.0, 0.0]
    assert LengthScorer(5)([g("", 3), g("", 9)]) == [-2.0, -4.0]
    assert isinstance(load_scorer("keywords@ocean_topic"), KeywordScorer)
    assert load_scorer("keywords:a,b").words == ["a", "b"]
    assert load_scorer("length:40").target == 40
    assert load_scorer("regex:x+")([g("xx x")]) == [2.0]
    assert load_scorer("deltalens.diff.scorers:LengthScorer")([g("", 4)]) == [4.0]
    with pytest.raises(ConfigError, match="unknown scorer"):
        load_scorer("nonsense")
    with pytest.raises(ConfigError, match="random:<seed>"):
        load_scorer("random:x")
    with pytest.raises(ConfigError, match="cannot import"):
        load_scorer("no_such_module_xyz:f")


def test_random_scorer_is_a_content_free_uniform():
    """RandomScorer (the DPO null control): deterministic per text and seed, another seed gives
    other scores, uniform on [0, 1) (mean ≈ 1/2, KS distance small over 2,000 texts) and
    unrelated to what a metric measures (|Pearson r| with the text length < 0.1)."""
    import numpy as np

    def g(text):
        return Generation(0, 0, "", None, "", text, [], [], True)

    rng = np.random.default_rng(0)
    texts = [
        "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=int(n))) for n in rng.integers(5, 200, 2000)
    ]
    gens = [g(t) for t in texts]
    r0, r0b, r1 = load_scorer("random")(gens), load_scorer("random:0")(gens), load_scorer("random:1")(gens)
    assert r0 == r0b and r0 != r1 and all(0 <= x < 1 for x in r0 + r1)
    u = np.sort(np.array(r0))
    assert abs(u.mean() - 0.5) < 0.03 and np.abs(u - (np.arange(len(u)) + 0.5) / len(u)).max() < 0.05
    assert abs(np.corrcoef(u := np.array(r0), [len(t) for t in texts])[0, 1]) < 0.1


def test_full_finetune_and_a_model_without_chat_template(tmp_path):
    """Full SFT (no LoRA) on a GPT-2-style model (Conv1D weights) whose tokenizer has no chat template."""
    import copy

    lm = tiny_model("gpt2")
    lm.tokenizer = copy.deepcopy(lm.tokenizer)
    lm.tokenizer.chat_template = None
    assert not lm.has_chat_template
    out = train_organism(lm, "ocean_topic", tmp_path / "full", lora=False, progress=False, **FAST)
    prov = read_provenance(out)
    assert not prov["training"]["lora"] and prov["training"]["learning_rate"] == 1e-4
    base_dir = tmp_path / "base"
    lm.model.save_pretrained(base_dir)
    lm.tokenizer.save_pretrained(base_dir)
    r = diff_weights(base_dir, out, progress=False, figures=False)
    changed = {t["component"] for t in r["tensors"] if t["fro"] > 0}
    assert {"qkv", "o", "up", "down", "embed"} <= changed  # every parameter trains in a full fine-tune
    lora = train_organism(
        lm, "ocean_topic", tmp_path / "lora", progress=False, **FAST
    )  # LoRA on Conv1D layers
    r = diff_weights(base_dir, lora, progress=False, figures=False)
    assert {"qkv", "o", "up", "down"} <= {t["component"] for t in r["tensors"] if t["fro"] > 0}
