"""Real lane: token types of SmolLM2's chat template and the SAE latents at them, against
an independent computation with output_hidden_states."""

from __future__ import annotations

import pytest
import torch

from deltalens.data import bundled_prompts
from deltalens.features import firing_stats, make_sources, specific_features
from deltalens.features.universal import FeatureRef

pytestmark = pytest.mark.real


def _sae(lm, layer):
    from deltalens.sae import SAE, SAEConfig

    g = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(lm.d_model, lm.d_model * 8, "topk", k=32, site=f"resid.{layer}", model_name=lm.name))
    with torch.no_grad():
        W = torch.nn.functional.normalize(torch.randn(sae.d_sae, lm.d_model, generator=g), dim=-1)
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T)
    return sae


def test_latents_at_asst_and_newline_match_output_hidden_states(smollm):
    lm = smollm
    assert lm.token_types == {"asst": -2, "newline": -1}
    prompts = bundled_prompts("chat_prompts")[:6]
    sae = _sae(lm, 3)
    [src] = make_sources(lm, [sae])
    assert src.name == "smollm2_trainer0_layer3"
    feats = list(range(0, sae.d_sae, 97))
    res = specific_features(
        [src], prompts, [FeatureRef(f, src.name) for f in feats], activation_threshold=0.0, progress=False
    )
    t = res.table
    for i, p in enumerate(prompts):
        ids = lm.encode(lm.format_chat(p.text), formatted=True)
        toks = lm.token_str(ids)
        assert toks[-3:] == ["ass", "istant", "\n"]  # asst = the token that ends the role word
        with torch.no_grad():
            hs = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[4][0]
        for tok, pos in (("asst", -2), ("newline", -1)):
            want = sae.encode(hs[pos])[feats]
            got = t[(t.prompt_idx == i) & (t.token == tok)].sort_values("feature_id").activation.to_numpy()
            torch.testing.assert_close(torch.tensor(got, dtype=torch.float32), want, atol=1e-4, rtol=1e-4)


def test_firing_stats_on_generations_find_prompt_only_latents(smollm):
    lm = smollm
    data = [
        {"question": p.text, "response": r}
        for p, r in zip(
            bundled_prompts("chat_prompts")[:4],
            ["I am an AI assistant.", "Paris is the capital of France.", "Sure, here is a poem.", "Yes."],
        )
    ]
    st = firing_stats(lm, _sae(lm, 3), data, progress=False)
    assert st.n_response_tokens > 0 and st.n_sequences == 4
    po = st.prompt_only
    # prompt-only latents fire somewhere in prompts, never in responses
    assert bool(((st.fire_prompt_tokens > 0) & (st.fire_response_tokens == 0) == po).all())
    assert int(st.fire_tokens.sum()) == st.n_tokens * 32  # TopK-32 with positive pre-activations
