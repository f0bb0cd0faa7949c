"""EPO candidate evaluation: batched vs one candidate at a time, same scores.

Workload: one EPO step's children — ``--candidates`` prompts of ``--length`` tokens (random single
swaps of a random clean-token prompt) — scored for an SAE latent's activation and the prompt's
cross-entropy (:func:`deltalens.inverse.score.score_ids`, one forward to the logits with a
``Read`` at the SAE's site) on the bundled SmolLM2-135M-Instruct.

* Measured: ``score_ids(..., batch_size=--batch)`` (what EPO runs).
* Baseline (same run): the same call with ``batch_size=1`` — one forward per candidate.
* The two must give the same activations and CEs (``|Δ| ≤ 1e-3``); the ratio is baseline / batched.

    python benchmarks/inverse.py [--sae DIR] [--candidates 256] [--length 8] [--batch 128]

Without ``--sae`` a random SAE of the model's width at resid.6 is used (the timing does not
depend on the SAE's weights).
"""

from __future__ import annotations

import argparse

import torch
from _common import best_of, report  # noqa: F401  (puts src on the path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sae", default=None)
    ap.add_argument("--candidates", type=int, default=256)
    ap.add_argument("--length", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--latent", type=int, default=0)
    args = ap.parse_args()

    import deltalens
    from deltalens.inverse.score import LatentTarget, score_ids
    from deltalens.inverse.tokens import allowed_tokens
    from deltalens.sae import SAE, SAEConfig, load_sae

    lm = deltalens.load("smollm2-135m-instruct")
    if args.sae:
        sae = load_sae(args.sae)
    else:
        torch.manual_seed(0)
        sae = SAE(SAEConfig(lm.d_model, 4 * lm.d_model, "topk", k=32, site="resid.6"))
        with torch.no_grad():
            sae.W_enc.normal_(0, lm.d_model**-0.5)
    target = LatentTarget(sae, args.latent)
    pool = allowed_tokens(lm).nonzero().flatten()
    g = torch.Generator().manual_seed(0)
    base = pool[torch.randint(0, len(pool), (args.length,), generator=g)]
    kids = base.repeat(args.candidates, 1)
    pos = torch.randint(0, args.length, (args.candidates,), generator=g)
    kids[torch.arange(args.candidates), pos] = pool[
        torch.randint(0, len(pool), (args.candidates,), generator=g)
    ]

    batched = score_ids(lm, target, kids, batch_size=args.batch)
    single = score_ids(lm, target, kids, batch_size=1)
    d_act = float(abs(batched.activation - single.activation).max())
    d_ce = float(abs(batched.ce - single.ce).max())
    assert d_act <= 1e-3 and d_ce <= 1e-3, f"batched and single scores differ: {d_act:g}, {d_ce:g}"
    t_b = best_of(lambda: score_ids(lm, target, kids, batch_size=args.batch), repeat=3)
    t_1 = best_of(lambda: score_ids(lm, target, kids, batch_size=1), repeat=1, warmup=0)
    report(
        "inverse EPO candidate evaluation",
        t_1 / t_b,
        5.0,
        f"{args.candidates} candidates × {args.length} tokens on {lm.name}, {torch.get_num_threads()} threads: "
        f"batched ({args.batch}/forward) {t_b:.2f} s vs one at a time {t_1:.2f} s; "
        f"max |Δ activation| {d_act:.1e}, max |Δ CE| {d_ce:.1e}",
    )


if __name__ == "__main__":
    main()
