from __future__ import annotations

import pytest
import torch

import deltalens
from deltalens.errors import ModelSpecError
from deltalens.models.loading import _chat_token_types
from tiny import tiny_model


def test_unknown_specs_are_explained(tmp_path):
    with pytest.raises(ModelSpecError, match="not a bundled name \\(smollm2-135m-instruct, gemma3-270m\\)"):
        deltalens.load("definitely-not-a-model")
    with pytest.raises(ModelSpecError, match="GGUF file not found"):
        deltalens.load(str(tmp_path / "x.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSpecError, match="has no config.json"):
        deltalens.load(str(tmp_path / "empty"))
    with pytest.raises(ModelSpecError, match="no such model directory"):
        deltalens.load("./does/not/exist")
    with pytest.raises(ModelSpecError, match="unknown dtype 'fp8'"):
        deltalens.load("smollm2-135m-instruct", dtype="fp8")


def test_local_directory_round_trip(tmp_path):
    lm = tiny_model("qwen2")
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    back = deltalens.load(str(tmp_path / "m"))
    assert (
        back.arch.family == "llama" and back.n_layers == 4 and back.token_types == {"asst": -2, "newline": -1}
    )
    ids = torch.tensor([lm.encode("Hello there")])
    with torch.no_grad():
        torch.testing.assert_close(back.model(ids).logits, lm.model(ids).logits)
    assert len(back.weights_hash) == 16
    assert back.weights_hash != tiny_model("qwen2", seed=5).weights_hash


def test_token_types_of_a_llama3_style_template(tok):
    class T:  # a Llama-3-style generation prompt on the tiny BPE vocabulary
        chat_template = "x"
        all_special_ids = tok.all_special_ids

        def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=False):
            s = "".join(f"<|im_start|>{m['role']}<|im_end|>\n\n{m['content']}" for m in msgs)
            return s + ("<|im_start|>assistant<|im_end|>\n\n" if add_generation_prompt else "")

        def __call__(self, text, add_special_tokens=False):
            return tok(text, add_special_tokens=add_special_tokens)

        def decode(self, ids):
            return tok.decode(ids).replace("<|im_end|>", "<|end_header_id|>")

    tt = _chat_token_types(T())
    assert set(tt) == {"asst", "endheader", "newline"}
    assert tt["asst"] == tt["endheader"] - 1 and tt["newline"] == tt["endheader"] + 1


@pytest.mark.real
def test_bundled_smollm2(smollm):
    assert smollm.arch.family == "llama" and smollm.n_layers == 30 and smollm.d_model == 576
    assert smollm.token_types == {"asst": -2, "newline": -1}
    assert smollm.meta["source_gguf"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    g = deltalens.generate(smollm, ["What is the capital of France?"], max_new_tokens=12, progress=False)[0]
    assert "Paris" in g.response


@pytest.mark.real
def test_bundled_capture_equals_output_hidden_states(smollm):
    texts = ["The quick brown fox jumps over the lazy dog.", "Hello world"]
    acts = deltalens.capture(
        smollm, texts, [(0, "resid"), (14, "resid"), (29, "resid")], "all", progress=False
    )
    for i, t in enumerate(texts):
        ids = torch.tensor([smollm.encode(t)])
        with torch.no_grad():
            hs = smollm.model(ids, output_hidden_states=True).hidden_states
        rows = acts.seq_ids == i
        for layer in (0, 14):
            got, want = acts[(layer, "resid")][rows], hs[layer + 1][0]
            assert (got - want).abs().max() <= 1e-5 * want.abs().max() + 1e-5
        last = smollm.arch.final_norm(acts[(29, "resid")][rows])
        assert (last - hs[30][0]).abs().max() <= 1e-5 * hs[30][0].abs().max() + 1e-5


@pytest.mark.real
@pytest.mark.slow
def test_bundled_gemma3_base():
    lm = deltalens.load("gemma3-270m")
    assert lm.arch.family == "gemma" and lm.n_layers == 18 and lm.d_model == 640
    assert not lm.has_chat_template and lm.token_types == {}
    text = "The capital of France is Paris."
    acts = deltalens.capture(
        lm, [text], [(3, "resid"), (3, "resid_pre"), (3, "attn_out"), (3, "mlp_out")], progress=False
    )
    with torch.no_grad():
        hs = lm.model(torch.tensor([lm.encode(text)]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(acts[(3, "resid")], hs[4][0])
    update = acts[(3, "attn_out")] + acts[(3, "mlp_out")]
    torch.testing.assert_close(update, acts[(3, "resid")] - acts[(3, "resid_pre")], atol=1e-2, rtol=1e-4)
    g = deltalens.generate(lm, ["The capital of France is"], max_new_tokens=6, progress=False)[0]
    assert g.prompt == "The capital of France is" and g.response_len > 0
