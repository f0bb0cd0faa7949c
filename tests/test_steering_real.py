"""Real-model lane: the bundled SmolLM2-135M-Instruct."""

from __future__ import annotations

import pytest
import torch

import deltalens
from deltalens.steering import Candidate, Term, generate_sweep

pytestmark = pytest.mark.real


def test_batched_sweep_equals_generate_on_smollm(smollm):
    from deltalens.data.traits import load_trait
    from deltalens.vectors import reference_norms

    qs = load_trait("instruction/enthusiasm").steering_questions[:6]
    g = torch.Generator().manual_seed(0)
    d = torch.randn(smollm.d_model, generator=g)
    d /= d.norm()
    n = reference_norms(smollm, [8, 14])

    def raw(layer, v, coef):
        return Term(v, coef, layer=layer, coef_mode="raw")

    configs = [
        Candidate(),
        Candidate((raw(8, d * n[8], 0.3),)),
        Candidate((raw(14, d * n[14], -0.3), raw(8, d * n[8], 0.1))),
    ]
    out = generate_sweep(smollm, qs, configs, max_new_tokens=12, progress=False)
    for c, cfg in enumerate(configs):
        ivs = [
            deltalens.Add((t.at_layer, "resid"), t.vector.vector, t.coef, positions="response")
            for t in cfg.terms
        ]
        with deltalens.intervene(smollm, ivs):
            ref = deltalens.generate(smollm, qs, max_new_tokens=12, progress=False)
        assert [x.response_ids for x in out[c]] == [x.response_ids for x in ref]
    assert out[1][0].response_ids != out[0][0].response_ids


def test_pirate_vector_steers_smollm(smollm, tmp_path):
    """Extract the pirate vector, steer one mid layer: the offline judge's trait score rises."""
    from deltalens.data.traits import load_trait
    from deltalens.experiment import Experiment
    from deltalens.judges import TraitInfo
    from deltalens.steering.evaluate import EvalSettings, evaluate_candidates
    from deltalens.steering.extraction import ExtractConfig, extract
    from deltalens.steering.pipeline import offline_judge
    from deltalens.steering.results import ResultsLog

    exp = Experiment(tmp_path / "exp")
    trait = load_trait("instruction/pirate")
    res = extract(
        smollm,
        exp,
        trait,
        ExtractConfig(
            variant="instruct",
            position="response[:]",
            methods=["probe"],
            layers=[12],
            max_new_tokens=16,
            batch_size=44,
        ),
        progress=False,
    )
    v = res.vectors["probe"][12]
    assert v.meta["val_accuracy"] >= 0.8
    judge = offline_judge(smollm, exp, trait, "instruct", progress=False)
    assert judge.classifier.meta["cv_accuracy"] >= 0.7
    settings = EvalSettings(trait.steering_questions[:8], max_new_tokens=24)
    recs = evaluate_candidates(
        smollm,
        [Candidate.baseline(), Candidate.single(v, 0.27)],
        settings,
        judge,
        TraitInfo.from_trait(trait),
        ResultsLog(tmp_path / "r.jsonl"),
        progress=False,
    )
    base, steered = recs
    assert steered.trait_mean > base.trait_mean + 10, (base.trait_mean, steered.trait_mean)
