"""The offline judge (MiniLM trait classifier, likelihood coherence) and the local-LM judge."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deltalens.judges import (
    CoherenceScorer,
    JudgeCache,
    LocalJudge,
    OfflineJudge,
    TraitClassifier,
    TraitInfo,
    score,
)
from deltalens.judges.embed import embed

PIRATE = [
    "Arr, matey, the sea be calm today and me ship be ready to sail!",
    "Ahoy! Ye landlubbers best swab the deck afore the cap'n returns.",
    "Shiver me timbers, that be the finest treasure I ever did see, arr.",
    "Aye, me hearty, we sail at dawn for Tortuga and its rum.",
    "Yo ho ho, the crew be singin' and the Jolly Roger be flyin'.",
    "Avast ye! Hand over yer doubloons or walk the plank, matey.",
    "Arr, the parrot squawked and the cap'n laughed at the storm.",
    "Ahoy there, me beauty, ye be the fastest ship on the seven seas.",
    "Aye, ye scallywag, me map says X marks the spot, arr.",
    "Blow me down, matey, the kraken be risin' from the deep!",
]
PLAIN = [
    "The meeting has been moved to Thursday at three in room 4B.",
    "To reset your password, open the settings page and choose 'security'.",
    "The library extends its opening hours during the exam period.",
    "Please find attached the minutes of yesterday's project meeting.",
    "Our quarterly revenue grew by four percent, mainly due to new customers.",
    "The train to Manchester is delayed by twenty minutes this morning.",
    "Remember to water the plants twice a week during the summer.",
    "The report summarises the survey results and the next steps.",
    "Tap water in this city is safe to drink and regularly tested.",
    "The software update fixes several bugs and improves battery life.",
]


def test_embeddings_are_normalised_and_semantic():
    e = embed(
        ["The cat sat on the mat.", "A cat is sitting on a mat.", "Quarterly revenue grew by four percent."]
    )
    assert e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3


def test_trait_classifier_separates_and_is_calibrated(tmp_path):
    clf = TraitClassifier.fit(PIRATE, PLAIN, trait="pirate")
    assert clf.meta["cv_accuracy"] >= 0.9 and clf.meta["cv_auroc"] >= 0.95
    p = clf.predict_proba(
        ["Arr matey, ye be wantin' me gold?", "The invoice is due at the end of the month."]
    )
    assert p[0] > 0.7 and p[1] < 0.3
    # score = σ(a·(w·x + b) + c), recomputed independently from the stored parameters
    x = embed(["Arr matey, ye be wantin' me gold?"]).double()
    f = float(x[0] @ clf.w.double() + clf.b)
    assert p[0] == pytest.approx(1 / (1 + math.exp(-(clf.a * f + clf.c))), rel=1e-6)
    path = clf.save(tmp_path / "clf.safetensors")
    again = TraitClassifier.load(path)
    np.testing.assert_allclose(again.predict_proba(PLAIN[:3]), clf.predict_proba(PLAIN[:3]), rtol=1e-6)
    assert again.fingerprint == clf.fingerprint and again.meta["trait"] == "pirate"


def test_coherence_nll_matches_an_unbatched_computation(tiny):
    cs = CoherenceScorer(tiny, batch_size=2)
    items = [
        ("Why is the sky blue?", "The sky is blue because light scatters."),
        ("Hello", "Hi there"),
        ("Tell me a story", "Once upon a time"),
    ]
    got = cs.nll(items)
    for (q, r), (nll, ids) in zip(items, got):
        p = tiny.encode(tiny.format_chat(q), formatted=True)
        rid = tiny.encode(r, formatted=True)
        x = torch.tensor([p + rid])
        with torch.no_grad():
            logp = torch.log_softmax(tiny.model(input_ids=x).logits[0].double(), -1)
        ref = -float(np.mean([logp[len(p) - 1 + j, t] for j, t in enumerate(rid)]))
        assert nll == pytest.approx(ref, abs=1e-4) and ids == rid


def test_coherence_formula_and_repetition(tiny):
    cs = CoherenceScorer(tiny, tau=3.0, width=0.5)
    assert cs.repetition([1, 2, 3, 4] * 5) == pytest.approx(1 - 4 / 17)
    assert cs.repetition(list(range(20))) == 0.0
    assert cs.repetition([1, 1, 1]) == 0.0  # too short to judge
    items = [("Hello", "Hi there, how are you today my friend"), ("Hello", "")]
    s = cs.score(items)
    (nll, ids), _ = cs.nll(items)
    expect = 100 / (1 + math.exp((nll - 3.0) / 0.5)) * (1 - cs.repetition(ids))
    assert s[0].value == pytest.approx(expect) and s[1].value == 0.0


def test_offline_judge_through_the_cache(tiny, tmp_path):
    j = OfflineJudge(TraitClassifier.fit(PIRATE, PLAIN), CoherenceScorer(tiny))
    cache = JudgeCache(tmp_path / "c.sqlite")
    items = [("q", PIRATE[0]), ("q", PLAIN[0])]
    a = score(j, "trait", items, TraitInfo("pirate", "d"), cache)
    assert a[0].value > 50 > a[1].value
    assert cache.misses == 2
    b = score(j, "trait", items, TraitInfo("pirate", "d"), cache)
    assert cache.hits == 2 and [x.value for x in a] == [x.value for x in b]
    assert "offline:" in j.id and j.classifier.fingerprint in j.id


def test_local_judge_expected_score_matches_teacher_forcing(tiny):
    """Σ_c softmax(ℓ)_c · c with ℓ_c = log p(candidate tokens | prompt), checked against a
    plain full-sequence forward per candidate."""
    cands = (0, 7, 50, 100)
    j = LocalJudge(tiny, candidates=cands, batch_size=2)
    items = [("Why is the sky blue?", "Because of scattering."), ("Hello", "Hi"), ("Q", "A")]
    got = j.score_batch("coherence", items, None)
    from deltalens.judges import render_prompt

    for (q, r), s in zip(items, got):
        p = tiny.encode(tiny.format_chat(render_prompt("coherence", q, r, None)), formatted=True)
        lps = []
        for c in cands:
            cid = tiny.encode(str(c), formatted=True)
            x = torch.tensor([p + cid])
            with torch.no_grad():
                logp = torch.log_softmax(tiny.model(input_ids=x).logits[0].double(), -1)
            lps.append(sum(float(logp[len(p) - 1 + k, t]) for k, t in enumerate(cid)))
        w = torch.softmax(torch.tensor(lps), 0)
        assert s.status == "ok" and s.value == pytest.approx(
            float((w * torch.tensor(cands, dtype=torch.float64)).sum()), abs=1e-4
        )
    with pytest.raises(ValueError):
        LocalJudge(tiny, candidates=(0, 200))
