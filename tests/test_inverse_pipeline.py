"""The inverse pipeline: notebook stage functions and the batch run with its stage cache.

A tiny random model saved to disk, a random SAE at resid.1 and a prompt file; every stage runs
with small settings. The cache tests check that a finished stage is loaded — its function is not
called (it is replaced by one that fails) and its files keep their modification times.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from deltalens.errors import ConfigError
from deltalens.inverse import (
    InverseRun,
    analyze_clusters,
    collect_and_filter_data,
    get_default_config,
    optimize_feature,
    run_clustering,
    run_experiment,
    select_features,
    update_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")
# the modules (the package exports functions of the same names)
collect_mod = importlib.import_module("deltalens.inverse.collect")
optimize_mod = importlib.import_module("deltalens.inverse.optimize")

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "The dog sleeps in the sun.",
    "What is the capital of France? The capital of France is Paris.",
    "I love reading books about science, history and art.",
    "def add(a, b):\n    return a + b",
    "You are a helpful assistant. Answer the question briefly.",
    "Why is the sky blue? Light scatters in the air.",
    "Tell me a story about a brave mouse.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12",
    "hello there good morning thanks please",
    "Reading is fun! Books about art and history.",
    "The capital of France is Paris, a big old city.",
]


@pytest.fixture(scope="module")
def inputs(tiny, tmp_path_factory):
    from deltalens.sae import SAE, SAEConfig
    from deltalens.sae.io import save_sae
    from tiny import save_tiny

    root = tmp_path_factory.mktemp("inverse-pipeline")
    model = save_tiny(tiny, root / "model")
    torch.manual_seed(0)
    sae = SAE(SAEConfig(tiny.d_model, 24, "standard", site="resid.1"))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.4)
        sae.b_enc.fill_(-0.6)
        sae.W_dec.normal_()
    save_sae(sae, root / "sae")
    (root / "prompts.txt").write_text("\n".join(p.replace("\n", " ") for p in PROMPTS) + "\n")
    return {"model": model, "sae": str(root / "sae"), "prompts": str(root / "prompts.txt")}


def _config(inputs, out, **over):
    custom = {
        "model": inputs["model"],
        "sae": inputs["sae"],
        "data": {
            "sources": [inputs["prompts"]],
            "batch_size": 6,
            "filtering": {"sparsity_min": 0.05, "sparsity_max": 0.95},
        },
        "clustering": {
            "n_neighbors": 5,
            "min_cluster_size": 2,
            "min_samples": 1,
            "selection": {"features_per_cluster": 1, "strategy": "max_activation"},
        },
        "optimization": {
            "length": 3,
            "steps": 2,
            "population": 2,
            "candidates": 4,
            "top_k": 4,
            "max_latents": 2,
        },
        "explanation": {"n_explain": 2, "n_score_top": 1, "n_score_random": 2, "logit_tokens": 1},
        "output": {"dir": str(out)},
    }
    cfg = update_config(get_default_config(), custom)
    for k, v in over.items():
        cfg = update_config(cfg, v if isinstance(v, dict) else {k: v})
    return cfg


def _mtimes(d):
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in sorted(d.rglob("*")) if p.is_file()}


def _fail(*a, **k):
    raise AssertionError("a cached stage was recomputed")


def test_batch_run_then_every_stage_is_loaded_from_cache(inputs, tmp_path, monkeypatch):
    cfg = _config(inputs, tmp_path / "run")
    res = run_experiment(cfg)
    assert res.computed == ["collect", "filter", "cluster", "select", "optimize", "explain", "viz"]
    assert len(res.optimized) == 2 and res.optimize_summary.rows[0]["collection_max"] is not None
    assert [r.latent for r in res.optimized] == res.selection.latents[:2]
    assert {e["index"] for e in res.explanations.explanations} == set(res.selection.latents[:2])
    assert res.explanations.explanations[0]["description"].count("optimised prompt") == 1
    assert (tmp_path / "run" / "viz" / "cluster_map.html").is_file()
    before = _mtimes(tmp_path / "run")
    monkeypatch.setattr(collect_mod, "collect", _fail)
    monkeypatch.setattr(optimize_mod, "optimize", _fail)
    again = run_experiment(cfg)
    assert again.computed == [] and set(again.cached) == {
        "collect", "filter", "cluster", "select", "optimize", "explain", "viz",
    }  # fmt: skip
    assert _mtimes(tmp_path / "run") == before
    assert again.selection.latents == res.selection.latents
    assert [r.best for r in again.optimized] == [r.best for r in res.optimized]
    man = InverseRun.load(tmp_path / "run")
    assert all(v["done"] for v in man.stages.values())


def test_changed_settings_recompute_only_downstream_and_resume(inputs, tmp_path, monkeypatch):
    cfg = _config(inputs, tmp_path / "run")
    first = run_experiment(cfg, stages=["optimize"])  # upstream computed on demand
    assert first.computed == ["collect", "filter", "cluster", "select", "optimize"]
    d = tmp_path / "run"
    t_collect = (d / "collect" / "collect.json").stat().st_mtime_ns
    monkeypatch.setattr(collect_mod, "collect", _fail)
    changed = update_config(cfg, {"optimization": {"steps": 3}})
    second = run_experiment(changed, stages=["optimize"])
    assert second.computed == ["optimize"] and "collect" in second.cached
    assert all(len(r.history) == 3 for r in second.optimized)
    assert (d / "collect" / "collect.json").stat().st_mtime_ns == t_collect
    # kill -9 in the middle of the stage: one latent's result gone, the stage not finished
    lat = second.optimized[1].latent
    (d / "optimize" / f"latent_{lat}" / "optimize.json").unlink()
    man = InverseRun.load(d)
    man.stages["optimize"]["done"] = False
    man.save(d)
    keep = (d / "optimize" / f"latent_{second.optimized[0].latent}" / "optimize.json").stat().st_mtime_ns
    third = run_experiment(changed, stages=["optimize"])
    assert third.computed == ["optimize"]
    assert (
        d / "optimize" / f"latent_{second.optimized[0].latent}" / "optimize.json"
    ).stat().st_mtime_ns == keep
    assert (d / "optimize" / f"latent_{lat}" / "optimize.json").is_file()
    assert [r.best for r in third.optimized] == [r.best for r in second.optimized]  # same seed, same result


def test_pipeline_flags_and_no_cache(inputs, tmp_path):
    cfg = _config(inputs, tmp_path / "run", pipeline={"pipeline": {"run_prompt_optimization": False}})
    res = run_experiment(cfg)
    assert "optimize" not in res.computed and not (tmp_path / "run" / "optimize").exists()
    assert (
        res.explanations is not None
        and "optimised prompt" not in res.explanations.explanations[0]["description"]
    )
    t = (tmp_path / "run" / "collect" / "collect.json").stat().st_mtime_ns
    fresh = run_experiment(update_config(cfg, {"use_cached_data": False}), stages=["collect"])
    assert (
        fresh.computed == ["collect"]
        and (tmp_path / "run" / "collect" / "collect.json").stat().st_mtime_ns > t
    )


def test_notebook_stage_functions(inputs, tiny):
    from deltalens.sae.io import load_sae

    cfg = _config(inputs, "unused")
    sae = load_sae(inputs["sae"])
    coll, kept = collect_and_filter_data(tiny, sae, cfg["data"])
    assert coll.n_prompts == len(PROMPTS) and kept.kept
    clusters = run_clustering(coll, kept, cfg["clustering"])
    assert clusters.latents == kept.kept
    an = analyze_clusters(coll, clusters, cfg, tokenizer=tiny.tokenizer)  # the whole config works too
    assert sum(c["size"] for c in an.clusters) + an.noise == len(kept.kept)
    chosen = select_features(coll, clusters, cfg["clustering"])
    assert len(chosen.latents) == clusters.n_clusters  # features_per_cluster = 1
    opt = update_config(cfg, {"optimization": {"init": "top_context"}})["optimization"]
    r = optimize_feature(tiny, sae, chosen.latents[0], opt, collection=coll)
    assert r.reference["collection_max"] == pytest.approx(float(coll.max_activation[chosen.latents[0]]))
    assert r.best["survives"]


def test_unknown_keys_are_refused_with_their_path():
    base = get_default_config()
    with pytest.raises(ConfigError, match=r"unknown config key 'clustering\.umap_neighbours'"):
        update_config(base, {"clustering": {"umap_neighbours": 3}})
    with pytest.raises(ConfigError, match=r"unknown config key 'pipeline\.run_everything'"):
        update_config(base, {"pipeline": {"run_everything": True}})
    with pytest.raises(ConfigError, match="--min-dist must be in"):
        update_config(base, {"clustering": {"min_dist": 2.0}})


def test_report_section(inputs, tmp_path):
    from deltalens.experiment import Experiment
    from deltalens.report.html import render_report

    cfg = _config(inputs, None, output={"output": {"dir": None, "experiment": "inv-report"}})
    res = run_experiment(cfg)
    exp = Experiment.named("inv-report")
    assert res.run_dir == exp.inverse_dir("inverse")
    page = render_report(exp)
    assert "Inverse problems" in page and "optimised prompts: found" in page
    assert f"{sum(r['found'] for r in res.optimize_summary.rows)}/2" in page
    assert "cohesion = mean pairwise cosine" in page and "simulation r" in page
    assert "data:image/png;base64" in page
    # the interactive cluster map is inside the page, in a sandboxed frame (its markup escaped)
    frame = page.index("<iframe title='cluster map' sandbox='allow-scripts'")
    assert "srcdoc='&lt;!doctype html&gt;" in page[frame : frame + 300].lower()
    # a prompt's text is escaped in the heatmap (hover titles carry the values)
    tok = res.optimized[0].best["tokens"][0]
    import html

    assert html.escape(tok.replace("\n", "⏎"), quote=True) in page
