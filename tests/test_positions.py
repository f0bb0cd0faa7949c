from __future__ import annotations

import pytest
import torch

from deltalens.errors import PositionSpecError
from deltalens.positions import Geometry, Positions


def sel(spec, lengths, prompt_lens, token_types=None):
    """Selected real-token indices per row, for left-padded rows of given lengths."""
    m = Positions.parse(spec).mask_for_lengths(lengths, prompt_lens, token_types)
    L = m.shape[1]
    out = []
    for b, n in enumerate(lengths):
        cols = m[b].nonzero().flatten().tolist()
        out.append([c - (L - n) for c in cols])
    return out


def test_examples_from_the_seeds():
    lengths, plens = [10, 7], [6, 3]  # row 0: 6 prompt + 4 response; row 1: 3 + 4
    assert sel("all", lengths, plens) == [list(range(10)), list(range(7))]
    assert sel("prompt", lengths, plens) == [list(range(6)), [0, 1, 2]]
    assert sel("prompt[-1]", lengths, plens) == [[5], [2]]
    assert sel("response", lengths, plens) == [[6, 7, 8, 9], [3, 4, 5, 6]]
    assert sel("response[:]", lengths, plens) == [[6, 7, 8, 9], [3, 4, 5, 6]]
    assert sel("response[:2]", lengths, plens) == [[6, 7], [3, 4]]
    assert sel("response[1:3]", lengths, plens) == [[7, 8], [4, 5]]
    assert sel("response[2:10]", lengths, plens) == [[8, 9], [5, 6]]
    assert sel("response[-1]", lengths, plens) == [[9], [6]]
    assert sel("all[-1]", lengths, plens) == [[9], [6]]
    assert sel("prompt[0]|response[0]", lengths, plens) == [[0, 6], [0, 3]]
    assert sel("response[:5]", [4], [4]) == [[]]  # no response: nothing selected


def test_token_types_resolve_from_prompt_end():
    tt = {"asst": -2, "newline": -1}
    assert sel("asst", [10], [6], tt) == [[4]]
    assert sel("newline", [10], [6], tt) == [[5]]
    assert sel("asst|newline", [10], [6], tt) == [[4, 5]]
    with pytest.raises(PositionSpecError, match="endheader.*available: asst, newline"):
        sel("endheader", [10], [6], tt)
    with pytest.raises(PositionSpecError, match="no chat template"):
        sel("asst", [10], [6], {})


def test_slugs_follow_the_seed_layout():
    assert Positions.parse("response[:5]").slug == "response__5"
    assert Positions.parse("response[:]").slug == "response_all"
    assert Positions.parse("response[:15]").slug == "response__15"
    assert Positions.parse("prompt[-1]").slug == "prompt_-1"
    assert Positions.parse("response[2:10]").slug == "response_2_10"
    assert Positions.parse("asst|newline").slug == "asst+newline"


@pytest.mark.parametrize(
    "spec, col, msg",
    [
        ("respnse[:5]", 0, "unknown region 'respnse'"),
        ("response[:x]", 10, "expected an integer or ']'"),
        ("response[:5", 11, "expected an integer or ']'"),
        ("prompt[-1]]", 10, "unexpected ']'"),
        ("response[::2]", 10, "slice steps are not supported"),
        ("asst[0]", 4, "takes no index"),
        ("", 0, "empty spec"),
        ("all|", 4, "expected a region"),
    ],
)
def test_bad_specs_point_at_the_offending_character(spec, col, msg):
    with pytest.raises(PositionSpecError) as exc:
        Positions.parse(spec)
    text = str(exc.value)
    assert msg in text
    first, pointer = text.split("\n")[:2]
    prefix = len("invalid position spec '")
    assert first == f"invalid position spec '{spec}'"
    assert pointer.index("^") == prefix + col


def test_kv_cached_steps_see_absolute_response_indices():
    """A generation step (one new column) resolves response[i] by its index in the response."""
    # two rows, left padded: row 0 has 5 prompt tokens, row 1 has 3; after 4 steps
    full = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1, 1]])
    geom = Geometry.from_mask(full, width=1, prompt_len=torch.tensor([5, 3]))
    # the single column is the 4th generated token for both rows (index 3)
    assert Positions.parse("response[3]").mask(geom).tolist() == [[True], [True]]
    assert Positions.parse("response[:3]").mask(geom).tolist() == [[False], [False]]
    assert Positions.parse("prompt").mask(geom).tolist() == [[False], [False]]
    assert Positions.parse("all").mask(geom).tolist() == [[True], [True]]
