"""Evolution over a synthetic three-iteration series, weight metrics against numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deltalens.errors import ConfigError, ShapeError
from deltalens.features import EvolutionConfig, feature_evolution, firing_rates_from_sparsity, weight_metrics
from deltalens.features.evolution import STATUSES
from deltalens.io import read_safetensors_metadata
from deltalens.sae import SAE, SAEConfig

D_IN, D_SAE = 16, 8
BORN, DIES, BACK, DEAD, CHANGED, BORN_DIES = 0, 1, 2, 3, 4, 5  # 6, 7 stay put


def _sae(W_dec: torch.Tensor, thr: torch.Tensor) -> SAE:
    sae = SAE(SAEConfig(D_IN, D_SAE, "jumprelu", site="resid.1"))
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(W_dec.T * 2)
        sae.threshold.copy_(thr)
    return sae


def _orth(v: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    r = torch.randn(v.shape, generator=g)
    r = r - (r @ v) / (v @ v) * v
    return r / r.norm() * v.norm()


@pytest.fixture()
def series():
    g = torch.Generator().manual_seed(0)
    W0 = torch.nn.functional.normalize(torch.randn(D_SAE, D_IN, generator=g), dim=-1)
    W1 = W0 + 0.02 * torch.randn(D_SAE, D_IN, generator=g)  # small drift: cos > 0.99
    W2 = W1 + 0.02 * torch.randn(D_SAE, D_IN, generator=g)
    W1[BACK] = _orth(W0[BACK], g)  # changes at M1 …
    W2[BACK] = W0[BACK] * 1.1  # … and goes back at M2
    W1[CHANGED] = _orth(W0[CHANGED], g)  # changes at M1 and stays
    W2[CHANGED] = W1[CHANGED]
    thr = [torch.full((D_SAE,), 0.1 * (t + 1)) for t in range(3)]
    saes = [_sae(W, th) for W, th in zip((W0, W1, W2), thr)]
    rates = torch.full((3, D_SAE), 0.01)
    rates[0, BORN] = 0.0  # born at M1
    rates[2, DIES] = 0.0  # dies at M2
    rates[:, DEAD] = 0.0  # never alive
    rates[0, BORN_DIES] = rates[2, BORN_DIES] = 0.0  # born at M1, dead again at M2
    return saes, rates


def test_three_iteration_series_is_classified(series, tmp_path):
    saes, rates = series
    ev = feature_evolution(saes, ["M0D0", "M1D1", "M2D2"], rates, EvolutionConfig(change_threshold=0.9))
    assert ev.status == [
        "born",
        "died",
        "changed_back",
        "dead",
        "changed",
        "born_then_died",
        "stable",
        "stable",
    ]
    assert ev.born_at.tolist() == [1, -1, -1, -1, -1, 1, -1, -1]
    assert ev.died_at.tolist() == [-1, 2, -1, -1, -1, 2, -1, -1]
    assert ev.first_change.tolist() == [-1, -1, 1, -1, 1, -1, -1, -1]
    assert ev.changed_back_at.tolist() == [-1, -1, 2, -1, -1, -1, -1, -1]
    assert ev.n_changes.tolist() == [0, 0, 2, 0, 1, 0, 0, 0]  # BACK: M0→M1 and M1→M2 both below 0.9
    # cosines against an independent computation
    W = [s.W_dec.detach().numpy() for s in saes]
    for t in (1, 2):
        want = (W[t] * W[t - 1]).sum(1) / np.linalg.norm(W[t], axis=1) / np.linalg.norm(W[t - 1], axis=1)
        np.testing.assert_allclose(ev.cos_prev[t].numpy(), want, rtol=1e-5, atol=1e-6)
    # trajectories
    np.testing.assert_allclose(ev.threshold[:, 0].numpy(), [0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(ev.dec_norm[2, BACK].numpy(), 1.1, rtol=1e-5)
    rows = ev.summary_table()
    assert [r["alive"] for r in rows] == [5, 7, 5]
    assert [r["born"] for r in rows] == [0, 2, 0] and [r["died"] for r in rows] == [0, 0, 2]
    assert [r["changed"] for r in rows] == [0, 2, 1] and [r["changed_back"] for r in rows] == [0, 0, 1]
    assert ev.counts() == {
        **{s: 0 for s in STATUSES},
        "born": 1,
        "died": 1,
        "changed_back": 1,
        "dead": 1,
        "changed": 1,
        "born_then_died": 1,
        "stable": 2,
    }
    paths = ev.save_all(tmp_path / "evo")
    frame = __import__("pandas").read_parquet(paths["latents"])
    assert frame.status.tolist() == ev.status
    assert frame.born_at.tolist()[BORN] == "M1D1" and frame.changed_back_at.tolist()[BACK] == "M2D2"
    summary = json.loads(paths["summary"].read_text())
    assert summary["status_counts"]["changed_back"] == 1 and summary["iterations"] == ["M0D0", "M1D1", "M2D2"]
    assert read_safetensors_metadata(paths["trajectories"])["kind"] == "deltalens.feature_evolution"
    for key in ("counts_png", "cos_png", "threshold_png", "firing_rate_png", "dec_norm_png"):
        assert paths[key].stat().st_size > 1000


def test_without_firing_rates_only_directions(series):
    saes, _ = series
    ev = feature_evolution(saes)
    assert ev.names == ["M0", "M1", "M2"]
    assert ev.status[BACK] == "changed_back" and ev.status[CHANGED] == "changed"
    assert set(ev.status) <= {"changed_back", "changed", "stable"}
    assert ev.alive is None and "alive" not in ev.summary_table()[0]


def test_firing_rates_from_sparsity_files(series, tmp_path):
    saes, rates = series
    dirs = []
    for t, s in enumerate(saes):
        d = tmp_path / f"m{t}"
        s.save(d, sparsity=torch.log10(rates[t] + 1e-10))  # SAELens's convention
        dirs.append(d)
    got = firing_rates_from_sparsity(dirs)
    np.testing.assert_allclose(got.numpy(), rates.numpy(), rtol=1e-4, atol=0)
    ev = feature_evolution(saes, None, got)
    assert ev.status[BORN] == "born" and ev.status[DEAD] == "dead"
    (dirs[1] / "sparsity.safetensors").unlink()
    assert firing_rates_from_sparsity(dirs) is None


def test_evolution_errors(series):
    saes, rates = series
    with pytest.raises(ConfigError, match="at least two SAEs"):
        feature_evolution(saes[:1])
    other = SAE(SAEConfig(D_IN, D_SAE + 1))
    with pytest.raises(ShapeError, match=r"SAE 'M1' has d_in=16, d_sae=9 but 'M0' has d_in=16, d_sae=8"):
        feature_evolution([saes[0], other])
    with pytest.raises(ShapeError, match=r"firing rates have shape \(2, 8\), expected \[3, 8\]"):
        feature_evolution(saes, None, rates[:2])


def test_weight_metrics_against_numpy(series):
    saes, _ = series
    m = weight_metrics(saes[1], saes[0])
    W1, W0 = saes[1].W_dec.detach().numpy(), saes[0].W_dec.detach().numpy()
    E1, E0 = saes[1].W_enc.detach().numpy().T, saes[0].W_enc.detach().numpy().T

    def cos(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    np.testing.assert_allclose(m.dec_cos_ref.numpy(), cos(W1, W0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.enc_cos_ref.numpy(), cos(E1, E0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.dec_norm.numpy(), np.linalg.norm(W1, axis=1), rtol=1e-6)
    np.testing.assert_allclose(m.enc_norm.numpy(), np.linalg.norm(E1, axis=1), rtol=1e-6)
    U = W1 / np.linalg.norm(W1, axis=1, keepdims=True)
    S = U @ U.T
    np.fill_diagonal(S, -np.inf)
    np.testing.assert_allclose(m.dec_max_cos.numpy(), S.max(1), rtol=1e-5)
    assert m.dec_partner.tolist() == S.argmax(1).tolist()
    # blocked computation gives the same partners
    small = weight_metrics(saes[1], block_size=3)
    assert small.dec_partner.tolist() == m.dec_partner.tolist()
    np.testing.assert_allclose(m.threshold.numpy(), 0.2, rtol=1e-6)
    assert m.to_frame().columns.tolist()[:3] == ["latent", "dec_norm", "enc_norm"]
    with pytest.raises(ShapeError, match="latents must be aligned"):
        weight_metrics(saes[0], SAE(SAEConfig(D_IN, 4)))
