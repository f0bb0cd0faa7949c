"""Protein LMs: ZymCTRL-style prompts, tag checks, generation that stops at <end>, residue positions."""

from __future__ import annotations

import pytest
import torch

from deltalens.errors import DataFormatError
from deltalens.protein.lm import (
    check_tag,
    generate_proteins,
    known_tags,
    load_protein_lm,
    residue_positions_ok,
    tag_prompts,
)
from deltalens.protein.records import STANDARD
from protein_helpers import tiny_protein_lm


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return load_protein_lm(tiny_protein_lm(tmp_path_factory.mktemp("plm") / "tiny"))


def test_tokenizer_one_token_per_residue_and_whole_tags(lm):
    assert residue_positions_ok(lm)
    ids = lm.tokenizer("famB<sep><start>MKV<end>", add_special_tokens=False)["input_ids"]
    assert lm.tokenizer.convert_ids_to_tokens(ids) == ["famB", "<sep>", "<start>", "M", "K", "V", "<end>"]
    assert lm.tokenizer.decode(ids, skip_special_tokens=True) == "MKV"
    assert known_tags(lm) == ["famA", "famB"]


def test_unknown_tag_is_refused(lm):
    assert check_tag(lm, "famA") == "famA"
    with pytest.raises(DataFormatError, match="tag 'famC' is not in the tokenizer of tiny"):
        tag_prompts(lm, ["famA", "famC"])


def test_generation_is_tag_conditioned_and_stops_at_end(lm):
    gens = generate_proteins(lm, ["famA", "famB"], n=3, max_new_tokens=24, seed=1)
    assert len(gens) == 6
    end = lm.tokenizer.convert_tokens_to_ids("<end>")
    for g in gens:
        assert g.prompt == ("famA" if g.index == 0 else "famB") + "<sep><start>"
        assert set(g.response) <= set(STANDARD + "X")
        assert end not in g.response_ids
        # one token per residue: response position k is residue k
        assert len(g.response_ids) == len(g.response)


def test_response_positions_address_residues(lm):
    """``response[:3]`` selects exactly the hidden states of the first three residues."""
    from deltalens.capture import capture

    g = max(generate_proteins(lm, ["famA"], n=8, max_new_tokens=12, seed=3), key=lambda g: len(g.response))
    assert len(g.response) >= 3
    cap = capture(lm, [g], "resid.0", "response[:3]", progress=False)
    ids = torch.tensor([g.prompt_ids + g.response_ids])
    with torch.no_grad():
        hs = lm.model(ids, output_hidden_states=True).hidden_states[1][0]
    p = len(g.prompt_ids)
    assert torch.allclose(cap["resid.0"], hs[p : p + 3], atol=1e-5)
    assert cap.token_ids.tolist() == g.response_ids[:3]
