"""Real lane: probes on SmolLM2 with an SAE whose latent 0 is planted along the ocean direction
(ocean_topic answers vs the plain answers to the same questions, metric = topic-word rate)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.real


def test_planted_ocean_latent_on_smollm2(smollm, tmp_path):
    import pandas as pd

    from deltalens.capture import capture
    from deltalens.diff.organisms import load_organism_dataset
    from deltalens.probes import ProbeFitConfig, run_probe_fit
    from deltalens.sae import SAE, SAEConfig

    lm = smollm
    ds = load_organism_dataset("ocean_topic")
    recs = [{"id": f"o{r['id']}", "question": r["question"], "response": r["chosen"]} for r in ds.records]
    recs += [{"id": f"p{r['id']}", "question": r["question"], "response": r["rejected"]} for r in ds.records]
    words = set(ds.topic_words)
    rate = [
        sum(w.strip(".,;!?").lower() in words for w in r["response"].split()) / len(r["response"].split())
        for r in recs
    ]
    # latent 0 reads the ocean-minus-plain mean residual direction at resid.6; the others are random
    cap = capture(lm, recs, ["resid.6"], "response", reduce="mean", progress=False)["resid.6"]
    d = cap[:48].mean(0) - cap[48:].mean(0)
    g = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(lm.d_model, 512, "topk", k=32, site="resid.6", model_name=lm.name))
    with torch.no_grad():
        W = torch.nn.functional.normalize(torch.randn(512, lm.d_model, generator=g), dim=-1)
        W[0] = d / d.norm()
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T * torch.cat([torch.tensor([10.0]), torch.ones(511)]))
        sae.b_dec.copy_(cap.mean(0))
        sae.b_enc[0] = (
            1e3  # always among the top k, so its mean over the response is linear in the projection
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        res = run_probe_fit(
            lm,
            sae,
            recs,
            pd.DataFrame({"id": [r["id"] for r in recs], "rate": rate}),
            ProbeFitConfig(methods=["ksparse", "diff_mean"], high=0.7, low=0.3, ks=[1, 2, 4], pooling="mean"),
            out=tmp_path / "p",
        )
    for p in res.probes:
        assert p["top_latents"][0] == 0, (p["method"], p["top_latents"][:5], p["cv_auroc"])
        assert p["cv_auroc"] > 0.9 and p["dense_auroc"] > 0.9
        # 77 labelled sequences: the shuffled-label control's CV AUROC has a spread of ~0.07 (0.71 seen here)
        assert p["shuffled_auroc"] < 0.8 and p["cv_auroc"] - p["shuffled_auroc"] > 0.15, (
            p["method"],
            p["shuffled_auroc"],
        )
    assert res.join["unmatched_keys"] == 0 and res.n_sequences == 96
    assert np.isfinite(res.importance["importance"]).all()
