"""Output diff: KL against an independent computation, rising tokens, positions, vocabularies."""

from __future__ import annotations

import pytest
import torch

import deltalens
from deltalens.diff.outputs import diff_outputs
from tiny import save_tiny as save
from tiny import tiny_model, tiny_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital is Paris.",
    "I love reading books about science and art.",
    "Numbers: 1 2 3 4 5",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("outpair")
    base = tiny_model("llama")
    b = save(base, root / "base")
    B = deltalens.load(b)
    # raise one token's logit everywhere: add the mean final-normed hidden state to its unembedding row
    with torch.no_grad():
        hs = []
        for t in TEXTS:
            h = B.model(input_ids=torch.tensor([B.encode(t)]), output_hidden_states=True).hidden_states[-1][0]
            hs.append(h)
        hbar = torch.cat(hs).mean(0)
        target = B.tokenizer.convert_tokens_to_ids("Ġcapital")
        base.model.lm_head.weight[target] += 3.0 * hbar / hbar.norm() ** 2 * 4
    f = save(base, root / "ft")
    return b, f, target


def test_kl_of_a_model_with_itself_is_zero(pair):
    r = diff_outputs(pair[0], pair[0], TEXTS, progress=False, figures=False)
    assert r["mean_kl"] == 0.0 and all(v == 0.0 for v in r["per_input_kl"].values())
    assert r["mean_logprob_change"] == 0.0


def test_kl_matches_an_independent_computation(pair, tmp_path):
    B, F = deltalens.load(pair[0]), deltalens.load(pair[1])
    r = diff_outputs(B, F, TEXTS, out_dir=tmp_path, progress=False)
    kls, dps = [], []
    with torch.no_grad():
        for t in TEXTS:
            ids = torch.tensor([F.encode(t)])
            lp_f = torch.log_softmax(F.model(input_ids=ids).logits[0].double(), -1)
            lp_b = torch.log_softmax(B.model(input_ids=ids).logits[0].double(), -1)
            kls.append(torch.nn.functional.kl_div(lp_b, lp_f, log_target=True, reduction="none").sum(-1))
            dps.append(lp_f.exp() - lp_b.exp())
    kl = torch.cat(kls)
    assert r["n_positions"] == len(kl)
    assert r["mean_kl"] == pytest.approx(float(kl.mean()), rel=1e-4)
    assert r["mean_kl"] > 0
    top = torch.cat(dps).mean(0).topk(5).indices
    assert [t for t, _ in r["rose_most"][:5]] == F.token_str(top)
    assert r["rose_most"][0][0] == F.token_str([pair[2]])[0]  # the planted token rose most
    assert r["top_contexts"][0]["kl"] == pytest.approx(float(kl.max()), rel=1e-4)
    assert r["top_contexts"][0]["ft_top"][0][0] == " capital"
    assert (tmp_path / "results.json").exists() and (tmp_path / "rose_most.png").exists()


def test_positions_select_response_predictions(pair):
    pairs = [
        ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "Hello there friend"),
        ("<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n", "Because."),
    ]
    F = deltalens.load(pair[1])
    n_resp = sum(len(F.encode(r, formatted=True)) for _, r in pairs)
    r = diff_outputs(pair[0], F, pairs, positions="response", progress=False, figures=False)
    assert r["n_positions"] == n_resp
    r2 = diff_outputs(pair[0], F, pairs, positions="prompt[-1]", progress=False, figures=False)
    assert r2["n_positions"] == 2 and all(not c["in_response"] for c in r2["top_contexts"])


def test_vocabulary_mismatch_is_renormalised(pair, tmp_path):
    lm = tiny_model("llama")
    tok = type(tiny_tokenizer()).from_pretrained(pair[0])
    tok.add_tokens(["<reef>", "<tide>"])
    lm.model.resize_token_embeddings(len(tok), mean_resizing=False)
    lm.model.save_pretrained(tmp_path / "ft")
    tok.save_pretrained(tmp_path / "ft")
    r = diff_outputs(pair[0], str(tmp_path / "ft"), TEXTS + ["a <reef> here"], progress=False, figures=False)
    assert r["vocab_note"] and "renormalised" in r["vocab_note"]
    assert r["skipped_inputs"] == 1  # the text with an added token cannot be fed to the base
    assert r["mean_kl"] == pytest.approx(
        0.0, abs=1e-6
    )  # shared rows unchanged: same renormalised distributions
