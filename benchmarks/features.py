"""Firing statistics of an 8×-expansion SAE vs capture alone, and their memory bound.

Workload: the bundled prompt sets (chat_prompts + demo_questions, 60 chat-formatted
prompts) on the bundled SmolLM2-135M, site resid.15, batch 16. The SAE is a TopK SAE
(k = 64) with 8 × 576 = 4608 latents and fixed random unit decoder rows (encoder =
decoder transpose) — the shape and sparsity the SAE stage trains; statistics cost does
not depend on what the latents mean.

* Speed: ``firing_stats`` (forward with early exit + SAE encode + every statistic:
  rates, log-histograms, position histograms, sequence counts, top-20 examples) vs
  ``capture`` of the same site and tokens into memory. Target ≥ 0.5× capture's speed.
* Memory: peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` before each run)
  of ``firing_stats`` over the prompts once and repeated 8 times: bounded memory means
  the 8× run does not need more (printed; fails if it grows by more than 25 % of
  what holding the 8× run's latents densely would take).

    python benchmarks/features.py
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import torch  # noqa: I001
from _common import report

import deltalens  # before torch: sets a passive OpenMP wait policy for the shared CPU
from deltalens.data import bundled_prompts
from deltalens.features import FiringConfig, firing_stats
from deltalens.features.universal import prompt_inputs
from deltalens.sae import SAE, SAEConfig

SITE = "resid.15"


def make_sae(d_in: int, expansion: int = 8, k: int = 64) -> SAE:
    d_sae = d_in * expansion
    g = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(d_in, d_sae, "topk", k=k, site=SITE, model_name="smollm2-135m-instruct"))
    with torch.no_grad():
        W = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=-1)
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T)
    return sae


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def peak_rss_mb() -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main() -> None:
    lm = deltalens.load("smollm2-135m-instruct")
    sae = make_sae(lm.d_model)
    prompts = bundled_prompts("chat_prompts") + bundled_prompts("demo_questions")
    inputs = prompt_inputs(prompts)
    n_tok = sum(len(lm.encode(lm.format_chat(p.text), formatted=True)) for p in prompts)
    bs = 16
    cfg = FiringConfig(top_k=20)

    # the statistics are the dense computation's (checked on the same inputs first)
    st = firing_stats(lm, sae, inputs, config=cfg, batch_size=bs, progress=False)
    acts = deltalens.capture(lm, inputs, [SITE], "all", batch_size=bs, progress=False)
    f = sae.encode(acts[SITE])
    assert torch.equal(st.fire_tokens, (f > 0).sum(0)), "firing counts differ from the dense computation"
    assert st.n_tokens == n_tok == f.shape[0]

    def baseline() -> None:
        deltalens.capture(lm, inputs, [SITE], "all", batch_size=bs, progress=False)

    def ours() -> None:
        firing_stats(lm, sae, inputs, config=cfg, batch_size=bs, progress=False)

    # interleaved (A B A B …) so that load from other processes hits both alike; minimum of each
    baseline()
    ours()
    t_cap, t_ours = float("inf"), float("inf")
    for _ in range(4):
        t_cap = min(t_cap, timed(baseline))
        t_ours = min(t_ours, timed(ours))

    # memory: once vs 8 times the prompts
    can_reset = reset_peak()
    firing_stats(lm, sae, inputs, config=cfg, batch_size=bs, progress=False)
    peak1 = peak_rss_mb()
    reset_peak()
    st8 = firing_stats(lm, sae, inputs * 8, config=cfg, batch_size=bs, progress=False)
    peak8 = peak_rss_mb()
    dense8 = st8.n_tokens * sae.d_sae * 4 / 2**20
    state = sum(t.numel() * t.element_size() for t in st8.tensors.values()) / 2**20
    print(
        f"memory: peak RSS {peak1:.0f} MB over {st.n_tokens} tokens, {peak8:.0f} MB over {st8.n_tokens} tokens "
        f"(8x; dense latents of the 8x run would be {dense8:.0f} MB; statistics state {state:.1f} MB)"
        + ("" if can_reset else " [peak not resettable here: numbers are process peaks]")
    )
    if can_reset and peak8 - peak1 > 0.25 * dense8:
        raise SystemExit(f"memory grows with the dataset: {peak1:.0f} MB -> {peak8:.0f} MB")
    report(
        "features: firing stats (SAE 8x, TopK-64, resid.15) vs capture alone",
        t_cap / t_ours,
        0.5,
        f"{n_tok / t_ours:,.0f} tok/s vs {n_tok / t_cap:,.0f} tok/s ({n_tok} tokens of {len(prompts)} bundled prompts, "
        f"d_sae={sae.d_sae}, batch {bs}, {torch.get_num_threads()} threads)",
    )


if __name__ == "__main__":
    main()
