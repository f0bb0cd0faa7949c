"""Cluster latents (UMAP + DBSCAN/HDBSCAN), analyse the clusters, select representatives.

**Feature vectors.** Latent ``i`` of a collection (:mod:`.collect`) is described by

* ``profile`` — its activation profile over the prompts, ``v_i = max[:, i]`` (``mean[:, i]`` with
  ``profile_stat="mean"``), or
* ``decoder`` — its decoder direction ``v_i = W_dec[i]``,

normalised to unit length, ``u_i = v_i / ‖v_i‖``, so Euclidean distances are cosine distances:
``‖u_i − u_j‖² = 2 − 2 cos(v_i, v_j)``.

**Embedding.** UMAP (McInnes et al. 2018, ``umap-learn``) maps the ``u_i`` to ``n_components``
dimensions with ``n_neighbors`` (capped at ``n − 1``), ``min_dist`` and ``random_state = seed``
(single-threaded, so a fixed seed gives the same embedding and labels on every run); with
``reducer="none"`` the ``u_i`` are clustered directly. The 2-D map is the embedding itself when
``n_components = 2``, else a second seeded 2-D UMAP.

**Clusters.** scikit-learn's ``HDBSCAN(min_cluster_size, min_samples)`` or ``DBSCAN(eps,
min_samples)`` on the embedding; label ``−1`` is noise. Labels are renumbered canonically: by size
(largest first), ties by the smallest latent id.

**Analysis** of cluster ``C`` (:func:`analyze_clusters`):

* ``cohesion(C) = (1/(|C|(|C|−1))) Σ_{i≠j∈C} cos(v_i, v_j) = (‖Σ_{i∈C} u_i‖² − |C|) / (|C|(|C|−1))``
  (mean pairwise cosine similarity of the members' feature vectors; ``None`` for ``|C| < 2``);
* driving prompts: ``s_p(C) = (1/|C|) Σ_{i∈C} max[p, i] / max_s max[s, i]`` (mean normalised
  activation), the ``top_prompts`` largest;
* driving tokens: ``t_v(C) = (1/|C|) Σ_{i∈C} M[v, i] / Σ_v' M[v', i]`` (mean share of each member's
  activation mass on token id ``v``), the ``top_tokens`` largest.

**Selection** (:func:`select_features`): ``features_per_cluster`` latents per cluster —
``central``: largest ``cos(u_i, ū_C)`` to the cluster's mean unit vector ``ū_C``;
``max_activation``: largest ``max_s max[s, i]``; ``firing_rate``: largest prompt firing rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, DataFormatError
from ..stage import StageConfig, StageResult, at_least, in_range, one_of, option, register_result

FEATURES = ("profile", "decoder")
PROFILE_STATS = ("max", "mean")
REDUCERS = ("umap", "none")
ALGORITHMS = ("hdbscan", "dbscan")
STRATEGIES = ("central", "max_activation", "firing_rate")
MIN_LATENTS = 4


@dataclass
class ClusterConfig(StageConfig):
    """How latents are embedded and clustered (recorded in ``cluster.json``)."""

    features: str = option(
        "profile", flag="--features", help="profile (activations over prompts) or decoder."
    )
    profile_stat: str = option(
        "max", flag="--profile-stat", help="Profile of a latent: max or mean per prompt."
    )
    reducer: str = option("umap", flag="--reducer", help="umap, or none (cluster the unit vectors).")
    n_components: int = option(2, flag="--n-components", help="UMAP dimensions clustered.")
    n_neighbors: int = option(15, flag="--n-neighbors", help="UMAP neighbours (capped at n − 1).")
    min_dist: float = option(0.1, flag="--min-dist", help="UMAP minimum distance.")
    algorithm: str = option("hdbscan", flag="--algorithm", help="hdbscan or dbscan (scikit-learn).")
    min_cluster_size: int = option(3, flag="--min-cluster-size", help="HDBSCAN smallest cluster.")
    min_samples: int = option(2, flag="--min-samples", help="DBSCAN/HDBSCAN core-point neighbours.")
    eps: float = option(0.5, flag="--eps", help="DBSCAN neighbourhood radius (embedding units).")
    seed: int = option(0, flag="--seed", help="UMAP random state.")

    def validate(self) -> None:
        one_of(self, "features", FEATURES)
        one_of(self, "profile_stat", PROFILE_STATS)
        one_of(self, "reducer", REDUCERS)
        one_of(self, "algorithm", ALGORITHMS)
        at_least(self, "n_components", 2)
        at_least(self, "n_neighbors", 2)
        at_least(self, "min_cluster_size", 2)
        at_least(self, "min_samples", 1)
        in_range(self, "min_dist", 0, 1)
        if not self.eps > 0:
            raise ConfigError(f"--eps must be > 0, got {self.eps!r}")


@dataclass
class AnalyzeConfig(StageConfig):
    """How much of each cluster's drivers is reported."""

    top_prompts: int = option(5, flag="--top-prompts", help="Driving prompts per cluster.")
    top_tokens: int = option(8, flag="--top-tokens", help="Driving tokens per cluster.")

    def validate(self) -> None:
        at_least(self, "top_prompts", 0)
        at_least(self, "top_tokens", 0)


@dataclass
class SelectConfig(StageConfig):
    """Which latents represent each cluster."""

    features_per_cluster: int = option(2, flag="--features-per-cluster", help="Latents chosen per cluster.")
    strategy: str = option("central", flag="--strategy", help="central, max_activation or firing_rate.")
    include_noise: bool = option(
        False, flag="--include-noise", help="Also choose from the noise points (as one more group)."
    )
    max_features: int | None = option(None, flag="--max-features", help="Stop after this many latents.")

    def validate(self) -> None:
        at_least(self, "features_per_cluster", 1)
        at_least(self, "max_features", 1)
        one_of(self, "strategy", STRATEGIES)


# ---- results ---------------------------------------------------------------------------------
@register_result
@dataclass
class ClusterResult(StageResult):
    """Labels and the 2-D map of the clustered latents (``latents`` are original SAE ids)."""

    KIND: ClassVar[str] = "inverse clustering"
    FILENAME: ClassVar[str] = "cluster.json"

    latents: list[int]
    labels: list[int]
    embedding: list[list[float]]
    config: dict[str, Any]
    seconds: float = 0.0

    @property
    def n_clusters(self) -> int:
        return len({lab for lab in self.labels if lab >= 0})

    def members(self, cluster: int) -> list[int]:
        return [i for i, lab in zip(self.latents, self.labels) if lab == cluster]

    def label_of(self) -> dict[int, int]:
        return dict(zip(self.latents, self.labels))

    def summary(self) -> dict[str, Any]:
        sizes = np.bincount([lab for lab in self.labels if lab >= 0]) if self.n_clusters else []
        return {
            "latents": len(self.latents),
            "clusters": self.n_clusters,
            "noise": int(sum(lab < 0 for lab in self.labels)),
            "sizes": [int(s) for s in sizes][:20],
            "features": self.config.get("features"),
            "reducer": self.config.get("reducer"),
            "algorithm": self.config.get("algorithm"),
            "seed": self.config.get("seed"),
        }


@register_result
@dataclass
class ClusterAnalysis(StageResult):
    """Per cluster: size, cohesion, members, driving prompts and tokens (module docstring)."""

    KIND: ClassVar[str] = "inverse cluster analysis"
    FILENAME: ClassVar[str] = "analysis.json"

    clusters: list[dict[str, Any]]
    noise: int
    config: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "clusters": len(self.clusters),
            "noise": self.noise,
            "largest": [
                {k: c[k] for k in ("cluster", "size", "cohesion")}
                | {"tokens": [t["token"] for t in c["top_tokens"][:4]]}
                for c in self.clusters[:8]
            ],
        }


@register_result
@dataclass
class Selection(StageResult):
    """The chosen latents: ``selected`` rows ``{latent, cluster, rank, score}``."""

    KIND: ClassVar[str] = "inverse selection"
    FILENAME: ClassVar[str] = "select.json"

    selected: list[dict[str, Any]]
    config: dict[str, Any]

    @property
    def latents(self) -> list[int]:
        return [int(r["latent"]) for r in self.selected]

    def summary(self) -> dict[str, Any]:
        return {
            "selected": len(self.selected),
            "latents": self.latents[:40],
            "strategy": self.config.get("strategy"),
        }


# ---- feature vectors and UMAP ----------------------------------------------------------------
def _kept(coll: Any, latents: Any) -> list[int]:
    from .collect import check_latent

    if latents is None:
        ids = list(range(int(coll.d_sae)))
    elif hasattr(latents, "kept"):
        ids = list(latents.kept)
    else:
        ids = [check_latent(i, int(coll.d_sae)) for i in latents]
    return sorted(set(int(i) for i in ids))


def feature_vectors(coll: Any, latents: list[int], config: ClusterConfig, sae: Any = None) -> np.ndarray:
    """``[n, dim]`` unit feature vectors ``u_i`` of ``latents`` (module docstring); a latent whose
    vector is zero keeps a zero row."""
    if config.features == "decoder":
        if sae is None:
            raise ConfigError("--features decoder needs the SAE (its decoder directions)")
        V = sae.W_dec.detach().float().cpu().numpy()[latents].astype(np.float64)
    else:
        M = coll.max if config.profile_stat == "max" else coll.mean
        V = np.asarray(M[:, latents].toarray(), dtype=np.float64).T
    n = np.linalg.norm(V, axis=1, keepdims=True)
    return np.divide(V, n, out=np.zeros_like(V), where=n > 0)


_JIT_CACHED = False


def _umap_module() -> Any:
    """``umap`` with its module-level numba kernels set to cache their machine code on disk, so
    the compilation (tens of seconds) is paid once per installation instead of once per process."""
    global _JIT_CACHED
    import umap

    if not _JIT_CACHED:
        try:
            from numba.core.registry import CPUDispatcher
            from umap import layouts, umap_, utils

            for mod in (umap_, layouts, utils):
                for obj in vars(mod).values():
                    if isinstance(obj, CPUDispatcher) and obj._cache.__class__.__name__ == "NullCache":
                        obj.enable_caching()
        except Exception:  # noqa: BLE001 - caching is an optimisation; UMAP works without it
            pass
        _JIT_CACHED = True
    return umap


def umap_embed(X: np.ndarray, n_components: int, n_neighbors: int, min_dist: float, seed: int) -> np.ndarray:
    """Seeded, single-threaded UMAP of the rows of ``X`` (Euclidean on unit vectors)."""
    import warnings

    umap = _umap_module()
    k = max(2, min(n_neighbors, len(X) - 1))
    init = "spectral" if len(X) > n_components + 2 else "random"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state", spectral fallbacks
        model = umap.UMAP(
            n_components=n_components, n_neighbors=k, min_dist=min_dist, metric="euclidean",
            random_state=seed, transform_seed=seed, n_jobs=1, init=init,
        )  # fmt: skip
        return np.asarray(model.fit_transform(X.astype(np.float32)), dtype=np.float64)


def canonical_labels(labels: np.ndarray, latents: list[int]) -> np.ndarray:
    """Relabel clusters by size (largest first), ties by their smallest latent id; −1 stays noise."""
    out = np.full(len(labels), -1, dtype=np.int64)
    groups = [(lab, np.flatnonzero(labels == lab)) for lab in sorted(set(labels.tolist())) if lab >= 0]
    groups.sort(key=lambda g: (-len(g[1]), min(latents[j] for j in g[1])))
    for new, (_, idx) in enumerate(groups):
        out[idx] = new
    return out


def cluster_latents(
    coll: Any, latents: Any = None, config: ClusterConfig | None = None, *, sae: Any = None
) -> ClusterResult:
    """Embed and cluster ``latents`` (ids, a :class:`~.filter.FilterResult`, or all) of ``coll``
    (module docstring)."""
    from sklearn.cluster import DBSCAN, HDBSCAN

    cfg = config or ClusterConfig()
    t0 = time.time()
    ids = _kept(coll, latents)
    if len(ids) < MIN_LATENTS:
        raise DataFormatError(
            f"clustering needs at least {MIN_LATENTS} latents, got {len(ids)} "
            "(loosen the filter bands or collect more prompts)"
        )
    U = feature_vectors(coll, ids, cfg, sae)
    if cfg.reducer == "umap":
        Z = umap_embed(U, cfg.n_components, cfg.n_neighbors, cfg.min_dist, cfg.seed)
        Y = Z if cfg.n_components == 2 else umap_embed(U, 2, cfg.n_neighbors, cfg.min_dist, cfg.seed)
    else:
        from sklearn.decomposition import PCA

        Z = U
        Y = PCA(2, random_state=cfg.seed).fit_transform(U) if U.shape[1] > 2 else U
    if cfg.algorithm == "hdbscan":
        est = HDBSCAN(min_cluster_size=cfg.min_cluster_size, min_samples=cfg.min_samples, copy=True)
    else:
        est = DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples)
    labels = canonical_labels(est.fit_predict(Z), ids)
    return ClusterResult(
        latents=ids,
        labels=[int(v) for v in labels],
        embedding=[[float(a), float(b)] for a, b in np.asarray(Y)[:, :2]],
        config=cfg.to_dict(),
        seconds=time.time() - t0,
    )


# ---- analysis --------------------------------------------------------------------------------
def cohesion(U: np.ndarray) -> float | None:
    """Mean pairwise cosine similarity of unit rows ``U`` (module docstring); ``None`` below 2 rows."""
    n = len(U)
    if n < 2:
        return None
    s = U.sum(0)
    return float((s @ s - (U * U).sum()) / (n * (n - 1)))


def _token_share(coll: Any, members: list[int]) -> np.ndarray:
    M = coll.token_mass[:, members].tocsc().astype(np.float64)
    tot = np.asarray(M.sum(axis=0)).ravel()
    inv = np.divide(1.0, tot, out=np.zeros_like(tot), where=tot > 0)
    return np.asarray(M @ inv[:, None]).ravel() / len(members)


def analyze_clusters(
    coll: Any,
    clustering: ClusterResult,
    config: AnalyzeConfig | None = None,
    *,
    tokenizer: Any = None,
    sae: Any = None,
) -> ClusterAnalysis:
    """Size, cohesion, driving prompts and tokens of every cluster (module docstring)."""
    cfg = config or AnalyzeConfig()
    ccfg = ClusterConfig.from_dict(clustering.config)
    peak = coll.max_activation
    out = []
    for c in range(clustering.n_clusters):
        mem = clustering.members(c)
        U = feature_vectors(coll, mem, ccfg, sae)
        prof = np.asarray(coll.max[:, mem].toarray(), dtype=np.float64)
        sp_ = (prof / np.where(peak[mem] > 0, peak[mem], 1.0)).mean(1)
        top_p = np.argsort(-sp_, kind="stable")[: cfg.top_prompts]
        share = _token_share(coll, mem)
        top_t = np.argsort(-share, kind="stable")[: cfg.top_tokens]
        out.append(
            {
                "cluster": c,
                "size": len(mem),
                "cohesion": cohesion(U),
                "latents": mem,
                "mean_max_activation": float(peak[mem].mean()),
                "mean_firing_rate": float(coll.firing_rate_prompts()[mem].mean()),
                "top_prompts": [
                    {"prompt": int(p), "text": coll.prompts[p], "score": float(sp_[p])}
                    for p in top_p
                    if sp_[p] > 0
                ],
                "top_tokens": [
                    {
                        "id": int(v),
                        "token": tokenizer.decode([int(v)]) if tokenizer is not None else str(int(v)),
                        "score": float(share[v]),
                    }
                    for v in top_t
                    if share[v] > 0
                ],
            }
        )
    noise = int(sum(lab < 0 for lab in clustering.labels))
    return ClusterAnalysis(out, noise, cfg.to_dict())


# ---- selection --------------------------------------------------------------------------------
def select_features(
    coll: Any, clustering: ClusterResult, config: SelectConfig | None = None, *, sae: Any = None
) -> Selection:
    """``features_per_cluster`` representatives of every cluster (module docstring), clusters in
    label order (largest first)."""
    cfg = config or SelectConfig()
    ccfg = ClusterConfig.from_dict(clustering.config)
    peak = coll.max_activation
    fr = coll.firing_rate_prompts()
    groups = list(range(clustering.n_clusters)) + ([-1] if cfg.include_noise else [])
    rows: list[dict[str, Any]] = []
    for c in groups:
        mem = clustering.members(c)
        if not mem:
            continue
        if cfg.strategy == "central" and c >= 0:
            U = feature_vectors(coll, mem, ccfg, sae)
            m = U.mean(0)
            score = U @ (m / max(np.linalg.norm(m), 1e-12))
        elif cfg.strategy == "firing_rate":
            score = fr[mem]
        else:
            score = peak[mem]
        order = sorted(range(len(mem)), key=lambda j: (-float(score[j]), mem[j]))
        for r, j in enumerate(order[: cfg.features_per_cluster]):
            rows.append({"latent": int(mem[j]), "cluster": int(c), "rank": r, "score": float(score[j])})
    if cfg.max_features is not None:
        rows = rows[: cfg.max_features]
    return Selection(rows, cfg.to_dict())
