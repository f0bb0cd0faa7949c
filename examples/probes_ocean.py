"""Probes on a real model: which SAE latents predict a high topic-word rate?

1. the ``ocean_topic`` organism: LoRA-SFT SmolLM2 so every answer drifts to the sea (the demo's
   recipe; resumed when it exists);
2. generations of the organism and of the base model on 80 held-out questions (2 sampled
   rollouts each), scored by **topic-word rate** = topic words / words of the response
   (the organism card's words) → ``metrics.csv`` (key ``id``);
3. a small TopK SAE on the base model at ``resid.6`` (trained on the bundled Python corpus and
   these generations, so the chat tokens are in distribution; resumed when it exists);
4. ``run_probe_fit``: a latent table (every sequence through the *base* model, latents pooled
   over the response), high/low labels at the 0.7/0.3 quantiles of the rate, the three probe
   types with 5-fold CV, the dense baseline on the residual and two controls (shuffled labels,
   random latents); iterative annotation; correlation with latent properties; what the top
   latents fire on (their feature dashboards: top firings in context, promoted tokens).

Run: ``PYTHONPATH=src python examples/probes_ocean.py [experiment_dir]`` (default
``experiments/probes_ocean``; ~10 min on 2 CPU cores, most of it the organism and the SAE).
"""

from __future__ import annotations

import json
import sys
import time

SITE = "resid.6"


def topic_rate(text: str, words: list[str]) -> float:
    """Topic words / words (whole words, case-insensitive, plurals count)."""
    import re

    toks = re.findall(r"[A-Za-z']+", text)
    if not toks:
        return 0.0
    alt = "|".join(sorted({re.escape(w.lower()) for w in words}, key=len, reverse=True))
    pat = re.compile(rf"^(?:{alt})(?:s|es)?$", re.IGNORECASE)
    return sum(bool(pat.match(t)) for t in toks) / len(toks)


def questions() -> list[str]:
    from deltalens.data import bundled_prompts
    from deltalens.diff.organisms import organism_eval_questions

    qs = list(organism_eval_questions())
    for name in ("chat_prompts", "demo_questions"):
        qs += [r.text for r in bundled_prompts(name)]
    return list(dict.fromkeys(qs))


def generations(exp, lm, organism_path, words):
    """Both models' answers, written once to ``<exp>/generations/probes_ocean.jsonl`` with ids."""
    import deltalens
    from deltalens.io import atomic_write, to_json

    path = exp.generations_path("probes_ocean")
    if path.is_file():
        return path
    qs = questions()
    rows = []
    for variant, model in (("organism", deltalens.load(organism_path)), ("base", lm)):
        gens = deltalens.generate(
            model, qs, max_new_tokens=48, n=2, do_sample=True, temperature=0.8, seed=0, progress=False
        )
        for g in gens:
            rows.append(
                {
                    "id": f"{variant}-{g.index}-{g.rollout}",
                    "variant": variant,
                    **g.to_dict(),
                    "topic_rate": topic_rate(g.response, words),
                }
            )
    atomic_write(path, "".join(to_json(r, indent=None) + "\n" for r in rows))
    return path


def train_sae_on(exp, lm, gens_path):
    import torch

    from deltalens.capture import capture
    from deltalens.data import bundled_path
    from deltalens.data.corpus import read_texts, token_windows
    from deltalens.data.jsonl import read_jsonl
    from deltalens.sae.io import load_sae
    from deltalens.sae.sources import TensorSource
    from deltalens.sae.train import SAETrainConfig, train_sae

    out = exp.sae_dir("probes_topk_resid6")
    if (out / "cfg.json").is_file():
        return load_sae(out)
    windows = list(token_windows(lm.tokenizer, read_texts(bundled_path("sae", "python_tutorial.txt")), 128))[
        :240
    ]
    items = windows + [
        {"prompt_ids": r["prompt_ids"], "response_ids": r["response_ids"]} for r in read_jsonl(gens_path)
    ]
    acts = capture(lm, items, [SITE], "all", batch_size=16, progress=False)
    special = torch.tensor(sorted(set(lm.tokenizer.all_special_ids)))
    keep = ~torch.isin(acts.token_ids, special)
    src = TensorSource(acts[SITE][keep], SITE, lm.name, high_norm_factor=10.0)
    cfg = SAETrainConfig(
        architecture="topk",
        expansion=4,
        k=32,
        batch_size=1024,
        total_tokens=150_000,
        lr=1e-3,
        dead_window_tokens=30_000,
    )
    res = train_sae(
        src,
        cfg,
        out=out,
        resume=False,
        progress=False,
        metadata={"training_data": "bundled python_tutorial.txt + ocean/base generations"},
    )
    return res.sae


def dashboards(exp, lm, seqs, sae, latents, n=5):
    """Feature dashboards of the top probe latents (``features/dashboards/...``, shown in the
    report): for each, the token of its top firings with a few tokens of context and the
    tokens its decoder direction promotes."""
    from deltalens.features import build_dashboards, write_dashboards

    records, _ = build_dashboards(lm, sae, seqs.items, latents, n_examples=n, left=6, right=1, progress=False)
    write_dashboards(records, exp.dashboard_dir("probes_topk_resid6", "probes_ocean"), lm=lm)
    out = {}
    for rec in records:
        ex = []
        for a in rec["activations"]:
            toks, m = a["tokens"], a["maxValueTokenIndex"]
            ex.append("".join(toks[max(0, m - 4) : m]) + "[" + toks[m] + "]")
        out[int(rec["index"])] = {
            "fires_on": ex,
            "promotes": rec["pos_str"][:6],
            "frac_tokens": rec["frac_nonzero"],
        }
    return out


def main(root: str = "experiments/probes_ocean") -> dict:
    import deltalens
    from deltalens.diff.organisms import OrganismConfig, load_organism_dataset, train_organism
    from deltalens.experiment import Experiment
    from deltalens.probes import (
        AnnotateConfig,
        CorrelateConfig,
        ProbeFitConfig,
        run_annotate,
        run_correlate,
        run_probe_fit,
    )
    from deltalens.probes.table import read_sequences

    exp = Experiment(root)
    timings = {}
    t = time.time()
    lm = deltalens.load("smollm2-135m-instruct")
    ds = load_organism_dataset("ocean_topic")
    cfg = OrganismConfig(epochs=3.0, batch_size=8, max_length=96, lora_r=16, lora_alpha=32)
    org = train_organism(lm, ds, exp.organism_dir("ocean_topic"), config=cfg, progress=False)
    timings["organism"] = time.time() - t
    t = time.time()
    gens = generations(exp, lm, org, ds.topic_words)
    timings["generation"] = time.time() - t
    t = time.time()
    sae = train_sae_on(exp, lm, gens)
    timings["sae"] = time.time() - t

    t = time.time()
    fit_cfg = ProbeFitConfig(
        metrics=["topic_rate"],
        key="id",
        high=0.7,
        low=0.3,
        positions="response",
        methods=["l1", "ksparse", "diff_mean"],
        folds=5,
    )
    res = run_probe_fit(lm, sae, gens, gens, fit_cfg, out=exp.probes_dir("ocean_topic_rate"))
    timings["probes"] = time.time() - t
    # control for the model-identity confound: the same probes within the organism's answers only
    from deltalens.data.jsonl import read_jsonl
    from deltalens.io import atomic_write, to_json

    org_only = exp.generations_path("probes_ocean_organism_only")
    atomic_write(
        org_only,
        "".join(to_json(r, indent=None) + "\n" for r in read_jsonl(gens) if r["variant"] == "organism"),
    )
    within = run_probe_fit(
        lm,
        sae,
        org_only,
        org_only,
        fit_cfg.replace(high=0.6, low=0.4),
        out=exp.probes_dir("ocean_topic_rate_within_organism"),
    )
    t = time.time()
    ann = run_annotate(
        exp.probes_dir("ocean_topic_rate"), AnnotateConfig(method="ksparse", per_round=1, rounds=8)
    )
    cor = run_correlate(exp.probes_dir("ocean_topic_rate"), CorrelateConfig(), sae=sae)
    timings["annotate+correlate"] = time.time() - t

    best = next(p for p in res.probes if p["method"] == "ksparse")
    tops = best["top_latents"][:8]
    fires = dashboards(exp, lm, read_sequences(gens), sae, tops)
    out = {
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "labels": res.labels,
        "probes": [
            {
                k: p[k]
                for k in (
                    "metric",
                    "method",
                    "k",
                    "cv_auroc",
                    "cv_auroc_se",
                    "cv_accuracy",
                    "dense_auroc",
                    "dense_auroc_se",
                    "shuffled_auroc",
                    "random_latents_auroc",
                )
            }
            for p in res.probes
        ],
        "within_organism": {
            "labels": within.labels,
            "probes": [
                {
                    k: p.get(k)
                    for k in (
                        "method",
                        "k",
                        "cv_auroc",
                        "cv_auroc_se",
                        "dense_auroc",
                        "shuffled_auroc",
                        "random_latents_auroc",
                        "top_latents",
                    )
                }
                for p in within.probes
            ],
        },
        "top_latents": {str(lat): fires[lat] for lat in tops},
        "annotation": ann.rows[:12],
        "correlations": [r for r in cor.rows if r["threshold"] == 0.0],
    }
    print(json.dumps(out, indent=1, default=str))
    (exp.probes_dir("ocean_topic_rate") / "real_run.json").write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main(*sys.argv[1:2])
