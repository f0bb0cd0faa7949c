"""capture() with early exit vs a full HF forward with output_hidden_states=True.

Workload: 64 texts × 128 tokens on the bundled SmolLM2-135M (30 layers), batch 16,
site resid.6. Baseline: the usual approach — a full forward with
``output_hidden_states=True`` and picking ``hidden_states[7]`` at the real tokens.
Target: capture ≥ 2.5× the baseline's tokens/s.

    python benchmarks/capture.py
"""

from __future__ import annotations

import torch
from _common import bench_texts, best_of, report

import deltalens
from deltalens.generate import left_pad, position_ids


def main() -> None:
    lm = deltalens.load("smollm2-135m-instruct")
    texts = bench_texts(lm, 64, 128)
    seqs = [lm.encode(t) for t in texts]
    n_tok = sum(len(s) for s in seqs)
    bs = 16

    def baseline() -> None:
        out = []
        with torch.no_grad():
            for k in range(0, len(seqs), bs):
                ids, mask = left_pad(seqs[k : k + bs], lm.tokenizer.pad_token_id)
                hs = lm.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=position_ids(mask),
                    output_hidden_states=True,
                ).hidden_states
                out.append(hs[7][mask.bool()])
        torch.cat(out)

    def ours() -> None:
        deltalens.capture(lm, texts, [(6, "resid")], "all", batch_size=bs, progress=False)

    # same numbers first
    acts = deltalens.capture(lm, texts[:bs], [(6, "resid")], "all", batch_size=bs, progress=False)
    ids, mask = left_pad(seqs[:bs], lm.tokenizer.pad_token_id)
    with torch.no_grad():
        hs = lm.model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True
        ).hidden_states
    ref = hs[7][mask.bool()]
    order = torch.argsort(acts.seq_ids, stable=True)
    assert torch.allclose(acts[(6, "resid")][order], ref, atol=1e-4), (
        "capture differs from output_hidden_states"
    )

    t_base = best_of(baseline, repeat=3)
    t_ours = best_of(ours, repeat=3)
    report(
        "capture resid.6 (early exit) vs full forward with output_hidden_states",
        t_base / t_ours,
        2.5,
        f"{n_tok / t_ours:,.0f} tok/s vs {n_tok / t_base:,.0f} tok/s ({n_tok} tokens, batch {bs}, "
        f"{torch.get_num_threads()} threads)",
    )


if __name__ == "__main__":
    main()
