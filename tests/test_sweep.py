"""Batched steering sweeps: identical, row for row, to one configuration at a time."""

from __future__ import annotations

import pytest
import torch

import deltalens
from deltalens import Add, Read, intervene
from deltalens.errors import PositionSpecError
from deltalens.steering import Candidate, SweepStats, Term, generate_sweep
from tiny import tiny_model

PROMPTS = [
    "Tell me a story about a brave mouse who lived in a big old house.",
    "Why is the sky blue?",
    "Hello",
    "What is the capital of France? Answer briefly.",
    "Numbers: 0 1 2 3",
]


def _configs(d, seed=1):
    g = torch.Generator().manual_seed(seed)
    v1, v2 = torch.randn(d, generator=g), torch.randn(d, generator=g)
    return [
        Candidate(),  # unsteered baseline
        Candidate((_raw(1, v1, 2.0),)),
        Candidate((_raw(2, v2, -3.0),)),
        Candidate((_raw(1, v1, 1.0), _raw(3, v2, 2.0))),  # ensemble over two layers
        Candidate((_raw(0, v2, 0.5, "mlp_out"),)),
    ]


def _raw(layer, v, coef, component=None):
    return Term(v, coef, layer=layer, coef_mode="raw", component=component)


def _one_at_a_time(lm, cfg, positions, n_new):
    ivs = [Add((t.at_layer, t.at_component), t.vector.vector, t.coef, positions=positions) for t in cfg.terms]
    with intervene(lm, ivs):
        return deltalens.generate(lm, PROMPTS, max_new_tokens=n_new, batch_size=8, progress=False)


@pytest.mark.parametrize(
    "family,positions", [("llama", "response"), ("gemma3", "response[:3]"), ("qwen2", "all")]
)
def test_batched_sweep_equals_each_configuration_alone(family, positions):
    lm = tiny_model(family)
    configs = _configs(lm.d_model)
    st = SweepStats()
    out = generate_sweep(
        lm, PROMPTS, configs, max_new_tokens=10, positions=positions, progress=False, stats=st
    )
    assert st.shared_prefill == (positions != "all") and st.rows == len(configs) * len(PROMPTS)
    distinct = set()
    for c, cfg in enumerate(configs):
        ref = _one_at_a_time(lm, cfg, positions, 10)
        for p, (a, b) in enumerate(zip(out[c], ref)):
            assert a.response_ids == b.response_ids, (c, p)
            assert a.finished == b.finished and a.response == b.response and a.prompt_ids == b.prompt_ids
            assert a.meta["config"] == c
            distinct.add(tuple(a.response_ids))
    assert len(distinct) > len(PROMPTS)  # steering really changed outputs


def test_finished_rows_are_dropped_and_outputs_unchanged():
    """Make a frequent token an end-of-turn token so rows finish at different steps."""
    lm = tiny_model("llama", seed=3)
    configs = _configs(lm.d_model, seed=5)
    free = generate_sweep(lm, PROMPTS, configs, max_new_tokens=10, progress=False)
    # the 3rd token generated for prompt 1 under config 1 becomes an eos token
    stop = free[1][1].response_ids[2]
    lm.model.generation_config.eos_token_id = [lm.tokenizer.eos_token_id, stop]
    st = SweepStats()
    out = generate_sweep(lm, PROMPTS, configs, max_new_tokens=10, progress=False, stats=st)
    n_finished = sum(g.finished for row in out for g in row)
    assert 0 < n_finished < len(configs) * len(PROMPTS)
    # forwards with fewer rows: new tokens counted < rows * steps
    assert st.new_tokens < st.rows * 10
    for c, cfg in enumerate(configs):
        ref = _one_at_a_time(lm, cfg, "response", 10)
        for a, b in zip(out[c], ref):
            assert a.response_ids == b.response_ids and a.finished == b.finished
            assert stop not in a.response_ids


def test_chunks_of_configurations_give_the_same_outputs():
    lm = tiny_model("llama")
    configs = _configs(lm.d_model)
    whole = generate_sweep(lm, PROMPTS, configs, max_new_tokens=6, progress=False)
    chunked = generate_sweep(
        lm, PROMPTS, configs, max_new_tokens=6, max_rows=2 * len(PROMPTS), progress=False
    )
    assert [[g.response_ids for g in r] for r in whole] == [[g.response_ids for g in r] for r in chunked]


def test_sweep_steers_every_generated_token_and_no_prompt_token():
    """Inside the sweep's own decode loop (shared prefill, KV cache, left padding, rows of
    several configurations): the residual after the Add differs from before by exactly
    coef·v on every response token of steered rows, and by nothing on prompt tokens or
    unsteered rows."""
    lm = tiny_model("llama")
    v = torch.randn(lm.d_model)
    configs = [Candidate(), Candidate((_raw(1, v, 2.5),))]
    before, after = Read((1, "resid")), Read((2, "resid_pre"))  # resid_pre of 2 == resid of 1 after the Add
    with intervene(lm, [before, after]):
        out = generate_sweep(lm, PROMPTS, configs, max_new_tokens=5, progress=False)
    P = len(PROMPTS)
    # prefill (P rows, prompts only): untouched
    assert before.values[0].shape[0] == P
    torch.testing.assert_close(after.values[0], before.values[0], rtol=0, atol=0)
    # decode steps: rows 0..P-1 unsteered, P..2P-1 steered by exactly 2.5 v
    for b, a in zip(before.values[1:], after.values[1:]):
        assert b.shape[:2] == (2 * P, 1)
        assert (a[:P] - b[:P]).abs().max() == 0
        torch.testing.assert_close(a[P:, 0] - b[P:, 0], (2.5 * v).expand(P, -1), atol=1e-5, rtol=1e-5)
    assert len(before.values) == 1 + 4  # prefill + 4 decode steps for 5 tokens
    assert all(len(g.response_ids) == 5 for row in out for g in row)


def test_bad_arguments():
    lm = tiny_model("llama")
    with pytest.raises(PositionSpecError, match="select prompt tokens"):
        generate_sweep(lm, PROMPTS, [Candidate()], positions="all", share_prefill=True, progress=False)
    assert generate_sweep(lm, [], [Candidate()], progress=False) == [[]]
