"""Real run of the inverse pipeline: a TopK SAE on SmolLM2-135M-Instruct (resid.6), 20 live latents.

    python examples/inverse_real.py

1. The SAE: the one ``deltalens demo`` trains (TopK, k=32, 4x, resid.6, on the bundled Python
   tutorial + chat prompts); trained here the same way when ``experiments/inverse-real`` has none.
2. ``run_experiment``: collect 240 prompts (bundled chat prompts, demo questions, Python-tutorial
   lines), filter (fires on 1–50 % of prompts), cluster (UMAP + HDBSCAN over activation profiles),
   select 20 latents, EPO for each (``init=top_context``, 8 tokens, reported prompt = highest
   activation with CE ≤ the collection's 90th percentile), offline explanations, figures.
3. Controls: (a) the starting windows themselves, scored as text before any optimisation;
   (b) EPO from random prompts (same settings) on the first 5 latents.

Acceptance per latent: the reported prompt survives re-tokenisation, its activation ≥ the latent's
maximum over the collection prompts, its CE ≤ the 90th percentile of the collection prompts' CE.
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import torch

import deltalens
from deltalens.experiment import Experiment
from deltalens.inverse import get_default_config, optimize_feature, run_experiment, update_config
from deltalens.inverse.pipeline import acceptance, top_contexts
from deltalens.inverse.score import LatentTarget, score_ids
from deltalens.inverse.tokens import encode_plain
from deltalens.io import write_json

EXP = Experiment.named("inverse-real")
SITE = "resid.6"
N_LATENTS = 20
N_CONTROL = 5


def train_sae(lm):
    """The demo's SAE recipe (deltalens/demo/sae.py, full size)."""
    from deltalens.capture import capture
    from deltalens.data import bundled_path, bundled_prompts
    from deltalens.data.corpus import read_texts, token_windows
    from deltalens.sae.sources import TensorSource
    from deltalens.sae.train import SAETrainConfig, train_sae

    windows = list(token_windows(lm.tokenizer, read_texts(bundled_path("sae", "python_tutorial.txt")), 128))
    items = windows[:-16][:240]
    for r in bundled_prompts("chat_prompts"):
        items.append(
            {"prompt_ids": lm.encode(lm.format_chat(r.text, r.system), formatted=True), "response_ids": []}
        )
    acts = capture(lm, items, [SITE], "all", batch_size=16, progress=False)
    special = torch.tensor(sorted(set(lm.tokenizer.all_special_ids)))
    keep = ~torch.isin(acts.token_ids, special)
    src = TensorSource(acts[SITE][keep], SITE, lm.name, high_norm_factor=10.0)
    cfg = SAETrainConfig(
        architecture="topk", expansion=4, k=32, batch_size=1024, total_tokens=120_000, lr=1e-3,
        dead_window_tokens=30_000,
    )  # fmt: skip
    res = train_sae(src, cfg, out=EXP.sae_dir("topk_resid6"), resume=False, progress=False,
                    metadata={"training_data": "bundled python_tutorial.txt + chat prompts"})  # fmt: skip
    print(f"trained {res.sae} on {res.tokens} tokens in {res.seconds:.0f} s")


def window_control(lm, sae, coll, latents, length, p90):
    """The starting windows (init=top_context) scored as text, before any optimisation."""
    out = {}
    for i in latents:
        best = None
        for w in top_contexts(lm, coll, i, length):
            if len(w) < 2 or encode_plain(lm, lm.tokenizer.decode(w)) != w:
                continue
            s = score_ids(lm, LatentTarget(sae, i), [w], skip=1)
            a, c = float(s.activation[0]), float(s.ce[0])
            ok = a >= coll.max_activation[i] and c <= p90
            if best is None or (ok, a) > (best["ok"], best["activation"]):
                best = {"activation": a, "ce": c, "ok": bool(ok), "text": lm.tokenizer.decode(w)}
        out[i] = best
    return out


def main() -> None:
    t0 = time.time()
    torch.manual_seed(0)
    lm = deltalens.load("smollm2-135m-instruct")
    sae_dir = EXP.sae_dir("topk_resid6")
    if not (sae_dir / "cfg.json").is_file():
        train_sae(lm)
    custom = {
        "name": "smollm2_topk_resid6",
        "model": "smollm2-135m-instruct",
        "sae": str(sae_dir),
        "data": {
            "sources": ["chat_prompts", "demo_questions", "python_tutorial"],
            "n_prompts": 240,
            "max_length": 48,
            "filtering": {"sparsity_min": 0.01, "sparsity_max": 0.5},
        },
        "clustering": {"selection": {"max_features": N_LATENTS}},
        "optimization": {
            "init": "top_context",
            "length": 8,
            "steps": 8,
            "population": 8,
            "candidates": 16,
            "top_k": 32,
            "batch_size": 128,
            "max_ce_percentile": 90,
        },  # fmt: skip
        "output": {"experiment": "inverse-real"},
    }
    cfg = update_config(get_default_config(), custom)
    from deltalens.sae.io import load_sae

    sae = load_sae(sae_dir)
    first = run_experiment(cfg, lm=lm, sae=sae, stages=["cluster"], progress=True)
    n_c = first.clustering.n_clusters
    per = max(1, math.ceil(N_LATENTS / max(n_c, 1)))
    cfg = update_config(cfg, {"clustering": {"selection": {"features_per_cluster": per}}})
    res = run_experiment(cfg, lm=lm, sae=sae, progress=True)
    coll, rows = res.collection, res.optimize_summary.rows
    p90 = coll.ce_percentile(90)
    print(f"collection: {coll.summary()}")
    print(f"filter: kept {len(res.filtered.kept)}; {n_c} clusters; features_per_cluster {per}")
    print(f"selected {len(res.selection.latents)} latents: {res.selection.latents}")
    for r in rows:
        print(
            f"latent {r['latent']:5d}  act {r['activation']:7.3f} (coll max {r['collection_max']:7.3f})  "
            f"CE {r['ce']:5.2f} (p90 {r['collection_ce_p90']:.2f})  survives {r['survives']}  "
            f"found {r['found']}  {r['text']!r}"
        )
    fr = res.optimize_summary.fractions()
    print(f"EPO (top_context init): found {fr['found']:.0%} of {len(rows)}; survives {fr['survives']:.0%}; "
          f"activation ≥ max {fr['meets_activation']:.0%}; CE ≤ p90 {fr['meets_ce']:.0%}")  # fmt: skip

    ids = [r["latent"] for r in rows]
    win = window_control(lm, sae, coll, ids, cfg["optimization"]["length"], p90)
    n_win = sum(bool(w and w["ok"]) for w in win.values())
    print(f"control (a) starting windows alone: {n_win}/{len(ids)} meet both criteria")

    ctl_cfg = dict(cfg["optimization"], init="random")
    ctl = []
    for i in ids[:N_CONTROL]:
        r = optimize_feature(lm, sae, i, ctl_cfg, collection=coll)
        r.save(res.run_dir / "control_random_init" / f"latent_{i}")
        ctl.append(acceptance(r))
        a = ctl[-1]
        print(f"control (b) random init, latent {i}: act {a['activation']:.3f} / max {a['collection_max']:.3f}, "
              f"CE {a['ce']:.2f}, found {a['found']}, {a['text']!r}")  # fmt: skip
    n_ctl = sum(bool(a["found"]) for a in ctl)
    print(f"control (b) EPO from random prompts: found {n_ctl}/{len(ctl)}")
    expl = res.explanations.explanations
    rs = [e["simulation"]["r"] for e in expl if e["simulation"]["r"] is not None]
    print(f"explanations: mean simulation r {np.mean(rs):.3f} over {len(rs)} latents with a defined r")
    for e in expl[:6]:
        print(f"  {e['index']}: {e['description']}  (r={e['simulation']['r']})")
    write_json(
        res.run_dir / "real_run.json",
        {
            "rows": rows, "fractions": fr, "collection_ce_p90": p90,
            "window_control": {str(k): v for k, v in win.items()}, "window_control_found": n_win,
            "random_init_control": ctl, "random_init_found": n_ctl,
            "mean_simulation_r": float(np.mean(rs)) if rs else None,
            "seconds": time.time() - t0, "threads": torch.get_num_threads(),
        },
    )  # fmt: skip
    print(f"figures: {json.dumps({k: str(v) for k, v in res.figures.items()})}")
    print(f"total {time.time() - t0:.0f} s on {torch.get_num_threads()} threads → {res.run_dir}")


if __name__ == "__main__":
    sys.exit(main())
