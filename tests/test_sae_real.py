"""Real lane: SAE training on the fly and CE evaluation on the bundled SmolLM2."""

from __future__ import annotations

import pytest
import torch

from deltalens.data import bundled_path
from deltalens.data.corpus import read_texts, token_windows
from deltalens.sae import SAETrainConfig, Trainer, train_saes
from deltalens.sae.eval import ce_metrics, reconstruction_metrics
from deltalens.sae.sources import ModelSource


@pytest.mark.real
def test_on_the_fly_training_and_ce_eval_on_smollm(smollm):
    windows = list(
        token_windows(
            smollm.tokenizer, read_texts(bundled_path("sae", "python_tutorial.txt")), 64, max_windows=48
        )
    )
    assert all(len(w["prompt_ids"]) == 64 for w in windows)
    src = ModelSource(smollm, windows[:40], ["resid.2"], batch_sequences=8, buffer_tokens=1024)
    cfg = SAETrainConfig(
        expansion=2, k=16, total_tokens=8192, batch_size=256, lr=2e-3, norm_sample_tokens=1024
    )
    res = train_saes(
        src, {"l2": Trainer(cfg, smollm.d_model, site="resid.2", model_name=smollm.name)}, progress=False
    )["l2"]
    sae = res.sae
    held = windows[40:]
    src_eval = ModelSource(smollm, held, ["resid.2"], repeat=False)
    rec = reconstruction_metrics(sae, src_eval.for_site("resid.2"), n_tokens=10**6)
    assert rec["tokens"] > 400 and rec["explained_variance"] > 0.5 and rec["l0"] <= 16
    loss = ce_metrics(smollm, sae, held[:4], batch_size=4)
    ids = torch.tensor([w["prompt_ids"] for w in held[:4]])
    with torch.no_grad():
        hf = smollm.model(input_ids=ids, labels=ids).loss
    assert loss["ce_clean"] == pytest.approx(float(hf), rel=1e-4)
    assert loss["ce_zero"] > loss["ce_sae"] > loss["ce_clean"] - 0.05
    assert 0.0 < loss["ce_recovered_zero"] <= 1.05
