"""Causal experiments on a real model: do the SAE latents that predict the ocean topic cause it?

Builds on ``examples/probes_ocean.py`` (reused, resumed when its outputs exist): the
``ocean_topic`` organism (LoRA-SFT SmolLM2 whose answers drift to the sea), both models'
generations scored by **topic-word rate** (topic words / words), a TopK SAE on the *base* model at
``resid.6`` (trained on the bundled Python corpus and those generations — the base model reading
the organism's data, so it plays the role of ``M0D1``) and the L1 probe of high vs low topic rate.

Then :func:`deltalens.causal.run_causal` on 32 held-out questions × 2 sampled rollouts:

* **ablation** — zero-ablate the probe's top latents (those predicting a *high* rate) while the
  organism (``M1``) generates → the topic rate should fall;
* **steering** — add their decoder directions (× their typical activation × c, c ∈ {1, 2, 4})
  while the base model (``M0``) generates → the rate should rise;
* **null** — 8 random groups of the same size with matched firing rates per cell.

Run: ``PYTHONPATH=src python examples/causal_ocean.py [experiment_dir]`` (default
``experiments/probes_ocean``; ~10 min for the probes part when it does not exist yet, then ~10 min
on 2 CPU cores for the grid).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main(root: str = "experiments/probes_ocean") -> dict:
    from probes_ocean import generations, topic_rate, train_sae_on

    import deltalens
    from deltalens.causal import CausalConfig, run_causal
    from deltalens.diff.organisms import (
        OrganismConfig,
        load_organism_dataset,
        organism_eval_questions,
        train_organism,
    )
    from deltalens.experiment import Experiment
    from deltalens.probes import ProbeFitConfig, run_probe_fit

    exp = Experiment(root)
    t = time.time()
    lm = deltalens.load("smollm2-135m-instruct")
    ds = load_organism_dataset("ocean_topic")
    cfg = OrganismConfig(epochs=3.0, batch_size=8, max_length=96, lora_r=16, lora_alpha=32)
    org = train_organism(lm, ds, exp.organism_dir("ocean_topic"), config=cfg, progress=False)
    gens = generations(exp, lm, org, ds.topic_words)
    train_sae_on(exp, lm, gens)
    probe_dir = exp.probes_dir("ocean_topic_rate")
    if not (probe_dir / "probe.json").is_file():
        from deltalens.sae import load_any

        sae = load_any(exp.sae_dir("probes_topk_resid6"))
        fit = ProbeFitConfig(
            metrics=["topic_rate"], key="id", high=0.7, low=0.3, methods=["l1", "ksparse", "diff_mean"]
        )
        run_probe_fit(lm, sae, gens, gens, fit, out=probe_dir)
    prep = time.time() - t

    words = list(ds.topic_words)

    def rate(gs):
        return [topic_rate(g.response, words) for g in gs]

    # held-out questions: the organism's evaluation questions (not its training data)
    questions = list(organism_eval_questions())[:32]
    grid = CausalConfig(
        name="ocean",
        prompts=questions,
        models={0: "smollm2-135m-instruct", 1: str(org)},
        saes={"M0D1": str(exp.sae_dir("probes_topk_resid6"))},
        probes={"M0D1": str(probe_dir)},
        top_k=8,
        probe_method="l1",
        probe_direction="high",
        branches=["M0D"],
        iterations=[1],
        n=2,
        max_new_tokens=40,
        temperature=0.8,
        coefficients=[1.0, 2.0, 4.0],
        null_groups=8,
    )
    models = {"smollm2-135m-instruct": lm}

    def loader(spec):
        return models[spec] if spec in models else deltalens.load(spec)

    t = time.time()
    res = run_causal(grid, exp.causal_dir("ocean"), scorers={"topic_rate": rate}, loader=loader)
    keep = (
        "type",
        "group",
        "coef",
        "effect",
        "ci_low",
        "ci_high",
        "p",
        "null_mean",
        "null_low",
        "null_high",
        "z",
        "outside_null",
        "control_mean",
        "mean",
        "latents",
    )
    out = {
        "prep_s": round(prep, 1),
        "grid_s": round(time.time() - t, 1),
        "cells": res.cells,
        "controls": res.controls,
        "rows": [{k: r.get(k) for k in keep} for r in res.rows],
    }
    print(json.dumps(out, indent=1, default=str))
    (exp.causal_dir("ocean") / "real_run.json").write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main(*sys.argv[1:2])
