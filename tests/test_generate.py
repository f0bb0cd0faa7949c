from __future__ import annotations

import pytest
import torch

import deltalens
from deltalens.errors import DataFormatError
from deltalens.generate import _eos_ids as eos_ids
from deltalens.generate import as_prompts, left_pad, position_ids

QUESTIONS = ["Why is the sky blue?", "Hello", "Tell me a story about a brave mouse.", "What is 2 + 2?"]


def _greedy_reference(lm, text_ids, max_new_tokens):
    """Token-by-token greedy decoding of one unpadded sequence without a KV cache."""
    ids = list(text_ids)
    eos = set(eos_ids(lm))
    out = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1]
        t = int(logits.argmax())
        if t in eos:
            break
        out.append(t)
        ids.append(t)
    return out


def test_batched_left_padded_generation_equals_unbatched_reference(tiny):
    gens = deltalens.generate(tiny, QUESTIONS, max_new_tokens=8, batch_size=3, progress=False)
    assert [g.index for g in gens] == [0, 1, 2, 3]
    for g, q in zip(gens, QUESTIONS):
        assert g.question == q
        assert g.prompt == tiny.format_chat(q)
        assert g.prompt_ids == tiny.encode(g.prompt, formatted=True)
        assert g.prompt.endswith("<|im_start|>assistant\n")
        ref = _greedy_reference(tiny, g.prompt_ids, 8)
        assert g.response_ids == ref
        assert g.response == tiny.tokenizer.decode(ref, skip_special_tokens=True)


def test_system_prompts_rollouts_and_seeded_sampling(tiny):
    gens = deltalens.generate(
        tiny,
        [{"question": "Hello", "system_prompt": "Be kind."}, "Why?"],
        n=3,
        do_sample=True,
        temperature=1.5,
        seed=7,
        max_new_tokens=6,
        progress=False,
    )
    assert [(g.index, g.rollout) for g in gens] == [(i, r) for i in range(2) for r in range(3)]
    assert gens[0].system == "Be kind." and "Be kind." in gens[0].prompt
    assert len({tuple(g.response_ids) for g in gens[:3]}) > 1, "rollouts should differ when sampling"
    again = deltalens.generate(
        tiny,
        [{"question": "Hello", "system_prompt": "Be kind."}, "Why?"],
        n=3,
        do_sample=True,
        temperature=1.5,
        seed=7,
        max_new_tokens=6,
        progress=False,
    )
    assert [g.response_ids for g in gens] == [g.response_ids for g in again]


def test_raw_text_mode_without_chat_template(tiny):
    g = deltalens.generate(tiny, ["The quick brown fox"], chat=False, max_new_tokens=4, progress=False)[0]
    assert g.prompt == "The quick brown fox" and "<|im_start|>" not in g.prompt


def test_generation_round_trips_through_dicts(tiny):
    g = deltalens.generate(tiny, ["Hello"], max_new_tokens=3, progress=False)[0]
    assert deltalens.Generation.from_dict(g.to_dict()) == g


def test_prompt_validation():
    with pytest.raises(DataFormatError, match="prompt 1: needs a 'question'"):
        as_prompts(["ok", {"answer": "x"}])
    with pytest.raises(DataFormatError, match="2 system prompts for 1 prompts"):
        as_prompts(["ok"], system=["a", "b"])


def test_left_pad_and_position_ids():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
