"""Steering configurations as work units on a Ray local cluster: the records equal the local
(batched, in-process) run; a re-run computes only the missing configurations."""

from __future__ import annotations

import json

import pytest
import torch

from deltalens.judges import CoherenceScorer, JudgeCache, OfflineJudge, TraitClassifier, TraitInfo
from deltalens.models import load
from deltalens.scale.backends import BackendConfig
from deltalens.steering.evaluate import Candidate, EvalSettings, evaluate_candidates
from deltalens.steering.results import ResultsLog
from deltalens.vectors import TraitVector
from tiny import save_tiny, tiny_model

QUESTIONS = ["Tell me about the sea.", "What is your name?"]


def _judge(lm):
    clf = TraitClassifier.fit(
        ["Arr matey ye be", "Ahoy me hearty", "Shiver me timbers arr", "Yo ho ho matey", "Avast ye dogs"],
        [
            "The meeting is at three.",
            "Reset your password.",
            "The library is open.",
            "Water the plants.",
            "The train is late.",
        ],
    )
    return OfflineJudge(clf, CoherenceScorer(lm))


def _candidates(lm):
    g = torch.Generator().manual_seed(0)
    cands = [Candidate.baseline()]
    for layer in (1, 2):
        v = TraitVector(torch.randn(lm.d_model, generator=g), {"layer": layer, "method": "mean_diff"})
        cands += [Candidate.single(v, c) for c in (0.5, 1.0, 2.0, 4.0)]
    return cands  # 9 configurations


def _records(path):
    return {r["key"]: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False
    )  # one local cluster, both runs
    yield
    ray.shutdown()


def test_ray_steering_sweep_equals_local_and_reruns_only_missing(ray_cluster, tmp_path):
    lm = load(save_tiny(tiny_model("llama"), tmp_path / "tiny"))
    cands = _candidates(lm)
    settings = EvalSettings(QUESTIONS, max_new_tokens=4, max_rows=2)  # one configuration per chunk
    info = TraitInfo(name="pirate", definition="talks like a pirate")
    judge = _judge(lm)

    def run(name, backend, subset=None):
        log = ResultsLog(tmp_path / name / "results.jsonl")
        cache = JudgeCache(tmp_path / name / "cache.sqlite")
        recs = evaluate_candidates(
            lm,
            cands if subset is None else subset,
            settings,
            judge,
            info,
            log,
            cache=cache,
            progress=False,
            backend=backend,
        )
        cache.close()
        return recs, log

    local, _ = run("local", None)
    ray_cfg = BackendConfig(backend="ray", workers=2)
    # a first Ray run that stopped after 3 configurations (its records are on disk) …
    run("ray", ray_cfg, subset=cands[:3])
    # … is resumed: only the 6 missing configurations are computed
    remote, log = run("ray", ray_cfg)
    assert log.appended == len(cands) - 3
    a, b = _records(tmp_path / "local" / "results.jsonl"), _records(tmp_path / "ray" / "results.jsonl")
    assert set(a) == set(b) and len(a) == 9
    for k in a:  # every field of every record but the time it was written
        a[k].pop("created", None), b[k].pop("created", None)
        assert a[k] == b[k], k
    assert [r.key for r in remote] == [r.key for r in local]
    assert len({r.responses[0]["response"] for r in local}) > 1  # steering changed the outputs
