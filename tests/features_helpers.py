"""SAEs with planted latents for the feature-analysis tests.

The SAE reads the ``embed`` site, where the activation of a token is exactly its
embedding row ``E[t]``. A latent that detects token ``X`` has encoder ``ŵ = E[X]/‖E[X]‖``
and bias ``b = −(E[X]·ŵ + max_{t≠X} E[t]·ŵ)/2``: it fires (ReLU) on ``X`` and on no other
token of the vocabulary, with activation ``E[X]·ŵ + b`` — a known number.
"""

from __future__ import annotations

import torch

from deltalens.sae import SAE, SAEConfig

ASST, PROMPT_ONLY, DEAD = 0, 1, 2


def token_detector(E: torch.Tensor, tok: int) -> tuple[torch.Tensor, float, float]:
    """(encoder column, bias, activation on ``tok``) of a latent that fires only on ``tok``."""
    w = E[tok] / E[tok].norm()
    proj = E @ w
    others = torch.cat([proj[:tok], proj[tok + 1 :]])
    assert proj[tok] > others.max(), "embedding rows are not separable; pick another token"
    b = -float(proj[tok] + others.max()) / 2
    return w, b, float(proj[tok]) + b


def planted_sae(lm, noise_tokens: list[int]) -> tuple[SAE, dict[str, object]]:
    """SAE at ``embed`` with latents: 0 = the ``asst`` header token, 1 = ``<|im_start|>``
    (prompt tokens only), 2 = never fires, 3.. = one per token of ``noise_tokens``."""
    E = lm.arch.embed.weight.detach().float()
    asst_tok = lm.encode(lm.format_chat("Hi"), formatted=True)[lm.token_types["asst"]]
    start_tok = lm.tokenizer.convert_tokens_to_ids("<|im_start|>")
    toks = [asst_tok, start_tok, None, *noise_tokens]
    d_sae = len(toks)
    sae = SAE(SAEConfig(lm.d_model, d_sae, "standard", site="embed", model_name=lm.name))
    acts = {}
    with torch.no_grad():
        for i, t in enumerate(toks):
            if t is None:
                sae.b_enc[i] = -1.0  # encoder column stays 0: never fires
                continue
            w, b, a = token_detector(E, t)
            sae.W_enc[:, i] = w
            sae.b_enc[i] = b
            sae.W_dec[i] = w
            acts[i] = a
    return sae, {"tokens": toks, "acts": acts, "asst_tok": asst_tok, "start_tok": start_tok}
