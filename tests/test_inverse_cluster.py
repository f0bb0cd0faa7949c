"""Clustering, cluster analysis and selection of latents on a planted collection.

The planted collection has two groups of 15 latents with disjoint prompt profiles (group A fires
only on prompts 0–19, group B only on 20–39) and disjoint token masses (A on token 3, B on token 7),
so the right clustering, driving prompts and driving tokens are known in advance.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from deltalens.inverse.cluster import (
    AnalyzeConfig,
    ClusterAnalysis,
    ClusterConfig,
    ClusterResult,
    SelectConfig,
    Selection,
    analyze_clusters,
    cluster_latents,
    cohesion,
    select_features,
)
from deltalens.inverse.collect import CollectResult

N, D, V = 40, 30, 12
A, B = list(range(15)), list(range(15, 30))


def planted_collection(seed: int = 0) -> CollectResult:
    rng = np.random.default_rng(seed)
    M = np.zeros((N, D), np.float32)
    M[:20, :15] = rng.uniform(0.5, 2, (20, 15)) * (rng.random((20, 15)) < 0.8)
    M[20:, 15:] = rng.uniform(0.5, 2, (20, 15)) * (rng.random((20, 15)) < 0.8)
    T = np.zeros((V, D), np.float32)
    T[3, :15] = M[:, :15].sum(0) * 0.9
    T[7, 15:] = M[:, 15:].sum(0) * 0.9
    T[1, :] = M.sum(0) * 0.1  # a shared token, minor everywhere
    return CollectResult(
        N, D, "planted", "resid.0", {"activation_threshold": 0.0},
        prompts=[f"prompt {i}" for i in range(N)], n_tokens=np.full(N, 5),
        max=sp.csr_matrix(M), mean=sp.csr_matrix(M / 3), argmax=sp.csr_matrix((M > 0).astype(np.int64)),
        token_mass=sp.csr_matrix(T), firing_rate_tokens=(M > 0).mean(0),
    )  # fmt: skip


def _ari(a, b) -> float:
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(a, b)


@pytest.mark.parametrize("algorithm", ["hdbscan", "dbscan"])
def test_planted_groups_recovered_and_reproducible(algorithm):
    coll = planted_collection()
    cfg = ClusterConfig(algorithm=algorithm, eps=1.0, seed=3)
    r1 = cluster_latents(coll, None, cfg)
    r2 = cluster_latents(coll, None, cfg)
    assert r1.labels == r2.labels and r1.embedding == r2.embedding  # fixed seed: identical runs
    truth = [0] * 15 + [1] * 15
    assert r1.n_clusters == 2 and _ari(truth, r1.labels) == 1.0
    assert r1.labels[0] == 0  # canonical: equal sizes, the cluster holding latent 0 comes first


def test_decoder_directions_clustered():
    coll = planted_collection()
    g = torch.Generator().manual_seed(0)
    c1, c2 = torch.randn(16, generator=g), torch.randn(16, generator=g)

    class Dec:  # only W_dec is read
        W_dec = torch.stack(
            [c1 + 0.15 * torch.randn(16, generator=g) for _ in A]
            + [c2 + 0.15 * torch.randn(16, generator=g) for _ in B]
        )

    res = cluster_latents(coll, None, ClusterConfig(features="decoder"), sae=Dec())
    assert _ari([0] * 15 + [1] * 15, res.labels) == 1.0


def test_analysis_finds_the_driving_prompts_and_tokens(tiny):
    coll = planted_collection()
    res = cluster_latents(coll, None, ClusterConfig())
    an = analyze_clusters(coll, res, AnalyzeConfig(top_prompts=20, top_tokens=2), tokenizer=tiny.tokenizer)
    by_first = {c["latents"][0]: c for c in an.clusters}
    ca, cb = by_first[0], by_first[15]
    assert {p["prompt"] for p in ca["top_prompts"]} <= set(range(20))
    assert {p["prompt"] for p in cb["top_prompts"]} <= set(range(20, 40))
    assert [t["id"] for t in ca["top_tokens"]] == [3, 1] and ca["top_tokens"][0]["score"] == pytest.approx(
        0.9
    )
    assert cb["top_tokens"][0]["token"] == tiny.tokenizer.decode([7])
    # cohesion = mean pairwise cosine, against the direct O(n²) sum
    U = coll.max[:, A].toarray().T
    U = U / np.linalg.norm(U, axis=1, keepdims=True)
    C = U @ U.T
    assert ca["cohesion"] == pytest.approx((C.sum() - np.trace(C)) / (15 * 14))
    assert cohesion(U[:1]) is None


def test_selection_and_round_trips(tmp_path):
    coll = planted_collection()
    res = cluster_latents(coll, list(range(D)), ClusterConfig())
    sel = select_features(coll, res, SelectConfig(features_per_cluster=3, strategy="max_activation"))
    peak = coll.max_activation
    for c, grp in ((res.labels[0], A), (res.labels[15], B)):
        want = sorted(grp, key=lambda i: -peak[i])[:3]
        assert [r["latent"] for r in sel.selected if r["cluster"] == c] == want
    central = select_features(coll, res, SelectConfig(features_per_cluster=1, max_features=1))
    assert len(central.latents) == 1 and central.latents[0] in A
    an = analyze_clusters(coll, res)
    for obj, cls in ((res, ClusterResult), (an, ClusterAnalysis), (sel, Selection)):
        obj.save(tmp_path)
        assert cls.load(tmp_path).to_dict() == obj.to_dict()
    from deltalens.info import describe

    d = describe(tmp_path / "cluster.json")
    assert d["kind"] == "inverse clustering" and d["clusters"] == 2


def test_too_few_latents_is_refused():
    from deltalens.errors import DataFormatError

    with pytest.raises(DataFormatError, match="clustering needs at least 4 latents, got 2"):
        cluster_latents(planted_collection(), [1, 2])
