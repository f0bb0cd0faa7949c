"""The hook mechanism: interventions, positions under KV caching, rows, cleanup."""

from __future__ import annotations

import pytest
import torch

import deltalens
from deltalens import Ablate, Add, Read, Replace, Splice, intervene
from deltalens.errors import PositionSpecError, ShapeError, SiteError
from deltalens.generate import left_pad, position_ids
from tiny import tiny_model

PROMPTS = [  # decreasing token length, so generate's length sort keeps input order
    "Tell me a story about a brave mouse who lived in a big old house.",
    "Why is the sky blue?",
    "Hello",
]


def _forward(lm, texts, **kw):
    seqs = [lm.encode(t) for t in texts]
    ids, mask = left_pad(seqs, lm.tokenizer.pad_token_id)
    with torch.no_grad():
        return lm.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), **kw), mask


def _no_hooks_left(lm):
    for m in lm.model.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            # HF may install its own output-recording hooks; ours are gone if none is a deltalens closure
            for h in list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values()):
                assert "deltalens" not in getattr(h, "__module__", ""), h


def test_read_matches_output_hidden_states(tiny):
    r = Read((1, "resid"))
    with intervene(tiny, [r]):
        out, mask = _forward(tiny, PROMPTS, output_hidden_states=True)
    torch.testing.assert_close(r.value[mask.bool()], out.hidden_states[2][mask.bool()])
    assert r.selected().shape == (int(mask.sum()), tiny.d_model)


def test_add_changes_only_selected_positions(tiny):
    v = torch.randn(tiny.d_model)
    before, after = Read((1, "resid"), "all"), Read((1, "resid"), "all")
    with intervene(tiny, [before, Add((1, "resid"), v, coef=3.0, positions="prompt[-1]"), after]):
        _, mask = _forward(tiny, PROMPTS)
    diff = after.value - before.value
    L = mask.shape[1]
    for b in range(len(PROMPTS)):
        assert torch.allclose(diff[b, -1], 3.0 * v, atol=1e-5)  # last prompt token (left padded)
        assert diff[b, : L - 1].abs().max() == 0


def test_hooks_removed_after_exception(tiny):
    base, _ = _forward(tiny, PROMPTS[:1])
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(tiny, [Add((2, "resid"), torch.ones(tiny.d_model), coef=50.0)]):
            raise RuntimeError("boom")
    _no_hooks_left(tiny)
    again, _ = _forward(tiny, PROMPTS[:1])
    torch.testing.assert_close(base.logits, again.logits)


def test_validation_errors_before_any_forward(tiny):
    with pytest.raises(
        SiteError,
        match=r"layer 9 is out of range: this model has 4 layers \(valid: 0\.\.3, or -4\.\.-1 counting from the end\)",
    ):
        with intervene(tiny, [Read((9, "resid"))]):
            pass
    with pytest.raises(ShapeError, match="width 10 but the model's d_model is 64"):
        with intervene(tiny, [Add((1, "resid"), torch.ones(10))]):
            pass
    with pytest.raises(SiteError, match="unknown component 'resid_post'"):
        Read((1, "resid_post"))
    with pytest.raises(PositionSpecError):
        Read((1, "resid"), "respones")


def test_replace_full_residual_transplants_the_run(tiny):
    """Replacing the whole residual at a layer with another run's makes the outputs equal."""
    a, b = ["Tell me a story about a brave mouse."], ["Tell me a story about a brave house."]
    assert len(tiny.encode(a[0])) == len(tiny.encode(b[0]))
    donor = Read((2, "resid"))
    with intervene(tiny, [donor]):
        out_b, _ = _forward(tiny, b)
    with intervene(tiny, [Replace((2, "resid"), donor.value)]):
        patched, _ = _forward(tiny, a)
    torch.testing.assert_close(patched.logits, out_b.logits)


def test_replace_where_patches_a_different_position_in_each_row(tiny):
    """Replace(where=[R, L]) = per-row position sets; equals one single-row patch per row."""
    a, b = ["Tell me a story about a brave mouse."], ["Tell me a story about a brave house."]
    donor = Read((1, "resid"))
    with intervene(tiny, [donor]):
        _forward(tiny, b)
    T = donor.value.shape[1]
    where = torch.zeros(3, T, dtype=torch.bool)
    where[0, T - 1] = True  # row 0 patches the last position, row 1 the one before, row 2 nothing
    where[1, T - 2] = True
    vals = donor.value.expand(3, -1, -1)
    r = Read((1, "resid"))
    with intervene(tiny, [Replace((1, "resid"), vals, where=where), r]):
        batched, _ = _forward(tiny, a * 3)
    plain, _ = _forward(tiny, a)
    torch.testing.assert_close(batched.logits[2], plain.logits[0], atol=1e-5, rtol=1e-5)
    for row, pos in ((0, T - 1), (1, T - 2)):
        with intervene(tiny, [Replace((1, "resid"), donor.value, positions=f"all[{pos}]")]):
            single, _ = _forward(tiny, a)
        torch.testing.assert_close(batched.logits[row], single.logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r.value[row, pos], donor.value[0, pos])
    # with rows=: the mask and values are looked up by global row id
    with intervene(tiny, [Replace((1, "resid"), vals[:1], rows=[1], where=where[:1])]):
        rowed, _ = _forward(tiny, a * 2)
    torch.testing.assert_close(rowed.logits[0], plain.logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rowed.logits[1], batched.logits[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ShapeError, match="where has 2 rows but values have 3"):
        Replace((1, "resid"), vals, where=where[:2])


def test_ablate_direction_and_zero(tiny):
    d = torch.randn(tiny.d_model)
    r = Read((1, "mlp_out"))
    with intervene(tiny, [Ablate((1, "mlp_out"), d, positions="all"), r]):
        _, mask = _forward(tiny, PROMPTS)
    proj = r.value[mask.bool()] @ (d / d.norm())
    assert proj.abs().max() < 1e-4
    z = Read((1, "attn_out"))
    with intervene(tiny, [Ablate((1, "attn_out"), positions="prompt[0]"), z]):
        _, mask = _forward(tiny, PROMPTS[:1])
    assert z.value[0, 0].abs().max() == 0 and z.value[0, 1].abs().max() > 0


class LinearSAE(torch.nn.Module):
    """A random ReLU SAE (enough for splicing tests; the SAE package has the real ones)."""

    def __init__(self, d_in, d_sae, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.d_in = d_in
        self.W_enc = torch.nn.Parameter(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        self.W_dec = torch.nn.Parameter(torch.randn(d_sae, d_in, generator=g) / d_sae**0.5)
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))

    def encode(self, x):
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f):
        return f @ self.W_dec + self.b_dec


def test_splice_with_error_term_reproduces_logits_and_passes_gradients(tiny):
    sae = LinearSAE(tiny.d_model, 128)
    base, _ = _forward(tiny, PROMPTS)
    sp = Splice((2, "resid"), sae, record=True)
    with intervene(tiny, [sp]):
        seqs = [tiny.encode(t) for t in PROMPTS]
        ids, mask = left_pad(seqs, tiny.tokenizer.pad_token_id)
        out = tiny.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
        out.logits[:, -1].sum().backward()
    torch.testing.assert_close(out.logits, base.logits, atol=1e-4, rtol=1e-4)
    assert sp.latents[0].grad is not None and sp.latents[0].grad.abs().sum() > 0
    assert sp.errors[0].grad is not None and sp.errors[0].grad.abs().sum() > 0
    with intervene(tiny, [Splice((2, "resid"), sae, keep_error=False)]):
        no_err, _ = _forward(tiny, PROMPTS)
    assert (no_err.logits - base.logits).abs().max() > 1e-2


def test_splice_edit_error_replaces_the_error_term(tiny):
    sae = LinearSAE(tiny.d_model, 128)
    sp = Splice((2, "resid"), sae, record=True)
    with intervene(tiny, [sp]):
        _forward(tiny, PROMPTS[:1])
    no_err_read, zero_err_read = Read((2, "resid")), Read((2, "resid"))
    with intervene(tiny, [Splice((2, "resid"), sae, keep_error=False), no_err_read]):
        _forward(tiny, PROMPTS[:1])
    with intervene(tiny, [Splice((2, "resid"), sae, edit_error=torch.zeros_like), zero_err_read]):
        _forward(tiny, PROMPTS[:1])
    torch.testing.assert_close(zero_err_read.value, no_err_read.value)
    assert (zero_err_read.value - (sae.decode(sp.latents[0]) + sp.errors[0])).abs().max() > 1e-2
    with pytest.raises(ShapeError, match="edit_error needs keep_error=True"):
        Splice((2, "resid"), sae, keep_error=False, edit_error=torch.zeros_like)


def test_splice_refuses_wrong_width_and_site(tiny):
    with pytest.raises(ShapeError, match="SAE d_in=32 does not match"):
        with intervene(tiny, [Splice((1, "resid"), LinearSAE(32, 64))]):
            pass
    sae = LinearSAE(tiny.d_model, 64)
    sae.site = "resid.2"
    with pytest.raises(SiteError, match="trained at resid.2 but is spliced at resid.1"):
        with intervene(tiny, [Splice((1, "resid"), sae)]):
            pass


def _steering_run(lm, prompts, v, coef, positions, use_cache):
    """Greedy generation with Reads before and after an Add at the same site."""
    before, after = Read((1, "resid"), "all"), Read((1, "resid"), "all")
    with intervene(lm, [before, Add((1, "resid"), v, coef=coef, positions=positions), after]):
        if use_cache:
            gens = deltalens.generate(lm, prompts, max_new_tokens=6, batch_size=8, progress=False)
        else:
            gens = None
    return gens, before, after


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_response_steering_touches_every_generated_token_and_no_prompt_token(family):
    """Under KV caching, batch of 3, left padding: the Add lands on every response token
    and on no prompt token; a cache-free forward over the final sequences agrees."""
    lm = tiny_model(family)
    v = torch.randn(lm.d_model)
    coef = 2.5
    gens, before, after = _steering_run(lm, PROMPTS, v, coef, "response", use_cache=True)
    steps = len(before.values)
    assert steps >= 2, "generation must run KV-cached steps"
    # prefill: all prompt columns untouched
    assert (after.values[0] - before.values[0]).abs().max() == 0
    # every later step: exactly one new column per row, steered by coef * v
    for s in range(1, steps):
        d = after.values[s] - before.values[s]
        assert d.shape[1] == 1
        torch.testing.assert_close(d[:, 0], (coef * v).expand(len(PROMPTS), -1), atol=1e-5, rtol=1e-5)

    # no cache: one forward over prompt + response with the true boundary
    full = [g.prompt_ids + g.response_ids for g in gens]
    plens = [g.prompt_len for g in gens]
    ids, mask = left_pad(full, lm.tokenizer.pad_token_id)
    b2, a2 = Read((1, "resid"), "all"), Read((1, "resid"), "all")
    with intervene(lm, [b2, Add((1, "resid"), v, coef=coef, positions="response"), a2]):
        with deltalens.batch_info(lm, prompt_lens=plens):
            with torch.no_grad():
                lm.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
    diff = a2.value - b2.value
    L = ids.shape[1]
    for b, g in enumerate(gens):
        start = L - len(full[b])
        prompt_cols = range(start, start + g.prompt_len)
        resp_cols = range(start + g.prompt_len, L)
        assert all(diff[b, c].abs().max() == 0 for c in prompt_cols)
        for c in resp_cols:
            torch.testing.assert_close(diff[b, c], coef * v, atol=1e-5, rtol=1e-5)
        # the KV-cached steered residuals equal the cache-free ones, token by token
        kv = after.full()[b]  # [P_pad + steps, d] for this row
        P = before.values[0].shape[1]
        p_start = P - g.prompt_len
        n = g.prompt_len + min(g.response_len, steps - 1)
        torch.testing.assert_close(
            kv[p_start : p_start + n], a2.value[b, start : start + n], atol=1e-4, rtol=1e-4
        )


def test_rows_restrict_an_intervention_to_those_inputs(tiny):
    v = torch.randn(tiny.d_model)
    before, after = Read((1, "resid")), Read((1, "resid"))
    with intervene(tiny, [before, Add((1, "resid"), v, coef=2.0, rows=[1]), after]):
        deltalens.generate(tiny, PROMPTS, max_new_tokens=3, progress=False)
    for x0, x1 in zip(before.values, after.values):
        d = (x1 - x0).abs().amax(dim=(1, 2))
        assert d[0] == 0 and d[2] == 0 and d[1] > 0


def test_per_row_vectors_equal_separate_interventions(tiny):
    vs = torch.randn(3, tiny.d_model)
    coefs = torch.tensor([1.0, -2.0, 0.5])
    r1 = Read((2, "resid"))
    with intervene(tiny, [Add((1, "resid"), vs, coef=coefs, rows=[0, 1, 2]), r1]):
        _forward(tiny, PROMPTS)
    r2 = Read((2, "resid"))
    with intervene(tiny, [Add((1, "resid"), vs[i], coef=float(coefs[i]), rows=[i]) for i in range(3)] + [r2]):
        _forward(tiny, PROMPTS)
    torch.testing.assert_close(r1.value, r2.value)


def test_intervention_sites_named_like_saelens(tiny):
    r = Read("blocks.1.hook_resid_post")
    assert r.site == deltalens.Site(1, "resid")
    assert deltalens.Site(3, "mlp_out").hook_name == "blocks.3.hook_mlp_out"
    assert deltalens.Site.parse("attn_out.2") == deltalens.Site(2, "attn_out")
    assert deltalens.Site.parse((2, "resid_pre")) == deltalens.Site(2, "resid_pre")


def test_one_site_resolver_accepts_negative_layers_everywhere(tiny):
    from deltalens.hooks import Site

    for spec in (
        "resid.-1",
        -1,
        (-1, "resid"),
        ("resid", 3),
        "resid.3",
        "blocks.3.hook_resid_post",
        Site(-1),
    ):
        assert Site.parse(spec).resolve(tiny) == Site(3, "resid"), spec
    assert Site.parse("mlp_out.-4").resolve(tiny) == Site(0, "mlp_out")
    assert Site.parse("embed").resolve(tiny) == Site(0, "embed")
    assert Site.resolve_all(tiny, ["resid.-1", "resid.3", 1, "mlp_out.-1"]) == [
        Site(3),
        Site(1),
        Site(3, "mlp_out"),
    ]
    assert Site.resolve_all(tiny, (2, "attn_out")) == [Site(2, "attn_out")]
    with pytest.raises(
        SiteError, match=r"layer -5 is out of range: this model has 4 layers \(valid: 0\.\.3, or -4\.\.-1"
    ):
        Site.parse("resid.-5").resolve(tiny)
    assert Site(-2).resolve(10) == Site(8)
    # hooks resolve through it too: a read at resid.-1 is the last block's output, early exit at -1 works
    r, r3 = Read("resid.-1"), Read("resid.3")
    ids = torch.tensor([tiny.encode(PROMPTS[1])])
    with intervene(tiny, [r, r3], stop_at="resid.-1"):
        try:
            tiny.model(input_ids=ids)
        except deltalens.hooks.StopForward:
            pass
    assert r.site == Site(3) and torch.equal(r.value, r3.value)
