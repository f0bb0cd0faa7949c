"""Every family of the architecture table: sites resolve, and captured activations equal
HF's output_hidden_states (an independent computation) on the same left-padded batch."""

from __future__ import annotations

import pytest
import torch

import deltalens
from deltalens.generate import left_pad, position_ids
from tiny import FAMILIES, tiny_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello there",
    "What is the capital of France? Paris.",
]


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request):
    return tiny_model(request.param)


def _hf_hidden(lm, texts):
    seqs = [lm.encode(t) for t in texts]
    ids, mask = left_pad(seqs, lm.tokenizer.pad_token_id)
    with torch.no_grad():
        out = lm.model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True
        )
    return out.hidden_states, mask.bool()


def test_all_sites_resolve(lm):
    a = lm.arch
    assert a.n_layers == 4 and a.d_model == 64
    for layer in range(a.n_layers):
        for comp in ("resid_pre", "resid", "attn_out", "mlp_out"):
            module, kind = a.module_for(layer, comp)
            assert isinstance(module, torch.nn.Module) and kind in ("pre", "forward")
        assert a.attn(layer) is not None and a.mlp(layer) is not None
        assert a.param_names(layer), "weight names must resolve for weight diffs"
    assert a.module_for(0, "embed")[0] is a.embed
    assert a.unembed.weight.shape[0] == lm.vocab_size


def test_resid_equals_hidden_states(lm):
    hs, mask = _hf_hidden(lm, TEXTS)
    n = lm.n_layers
    sites = [(L, "resid") for L in range(n)] + [(L, "resid_pre") for L in range(n)]
    acts = deltalens.capture(lm, TEXTS, sites, "all", progress=False)
    for L in range(n):
        want_post = hs[L + 1][mask]
        got_post = acts[(L, "resid")]
        if L == n - 1:  # HF applies the final norm to its last entry; deltalens does not
            got_post = lm.arch.final_norm(got_post)
        torch.testing.assert_close(got_post, want_post, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(acts[(L, "resid_pre")], hs[L][mask], atol=1e-5, rtol=1e-5)


def test_attn_and_mlp_outputs_sum_to_the_block_update(lm):
    """attn_out + mlp_out is exactly what block L adds to the residual stream."""
    sites = [(L, c) for L in range(lm.n_layers) for c in ("resid_pre", "resid", "attn_out", "mlp_out")]
    acts = deltalens.capture(lm, TEXTS, sites, "all", progress=False)
    for L in range(lm.n_layers):
        update = acts[(L, "resid")] - acts[(L, "resid_pre")]
        torch.testing.assert_close(acts[(L, "attn_out")] + acts[(L, "mlp_out")], update, atol=1e-4, rtol=1e-4)


def test_embed_site_is_the_embedding_output(lm):
    acts = deltalens.capture(lm, TEXTS[:1], [(0, "embed")], "all", progress=False)
    ids = torch.tensor([lm.encode(TEXTS[0])])
    with torch.no_grad():
        want = lm.arch.embed(ids)[0]
    torch.testing.assert_close(acts["embed"], want)


def test_capture_is_independent_of_padding(lm):
    """Each text alone (no padding) gives the same rows as the padded batch."""
    batch = deltalens.capture(lm, TEXTS, [(2, "resid")], "all", progress=False)
    for i, t in enumerate(TEXTS):
        alone = deltalens.capture(lm, [t], [(2, "resid")], "all", progress=False)
        torch.testing.assert_close(
            batch[(2, "resid")][batch.seq_ids == i], alone[(2, "resid")], atol=1e-5, rtol=1e-4
        )
