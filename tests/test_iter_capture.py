"""iter_capture: the streaming form of capture (one CaptureBatch per forward)."""

from __future__ import annotations

import torch

import deltalens
from deltalens.capture import iter_capture

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello there",
    "Why is the sky blue? Light scatters.",
    "Yes",
]


def test_batches_hold_the_same_rows_as_capture(tiny):
    data = [
        {"question": q, "response": r}
        for q, r in zip(TEXTS, ["Fine.", "No thanks", "", "Paris is the capital"])
    ]
    ref = deltalens.capture(tiny, data, [(1, "resid"), (2, "mlp_out")], "all", progress=False)
    batches = list(
        iter_capture(tiny, data, [(1, "resid"), (2, "mlp_out")], "all", batch_size=3, progress=False)
    )
    assert len(batches) == 2
    seq = torch.cat([b.seq_ids for b in batches])
    pos = torch.cat([b.positions for b in batches])
    order = torch.argsort(seq * 1000 + pos)
    for site in [(1, "resid"), (2, "mlp_out")]:
        rows = torch.cat([b[site] for b in batches])[order]
        torch.testing.assert_close(rows, ref[site], atol=1e-5, rtol=1e-5)
    assert seq[order].tolist() == ref.seq_ids.tolist()
    assert pos[order].tolist() == ref.positions.tolist()
    assert torch.cat([b.token_ids for b in batches])[order].tolist() == ref.token_ids.tolist()
    assert torch.cat([b.is_response for b in batches])[order].tolist() == ref.is_response.tolist()
    # per-row sequence facts
    for b in batches:
        for s, pl, sl in zip(b.seq_ids.tolist(), b.prompt_lens.tolist(), b.seq_lens.tolist()):
            assert sl == int(ref.n_selected[s])
            assert pl == int((~ref.is_response[ref.seq_ids == s]).sum())
        assert sorted(b.batch_ids.tolist()) == sorted(set(b.seq_ids.tolist()))


def test_token_type_rows_match_the_positions_language(tiny):
    data = [{"question": q, "response": "ok"} for q in TEXTS]
    ref = deltalens.capture(tiny, data, [2], "asst", progress=False)
    got = list(iter_capture(tiny, data, [2], "all", batch_size=2, progress=False))
    rows = {}
    for b in got:
        m = b.token_type_mask("asst", tiny.token_types)
        for s, x in zip(b.seq_ids[m].tolist(), b[(2, "resid")][m]):
            rows[s] = x
    assert sorted(rows) == list(range(len(TEXTS)))
    torch.testing.assert_close(
        torch.stack([rows[i] for i in range(len(TEXTS))]), ref[(2, "resid")], atol=1e-5, rtol=1e-5
    )


def test_hooks_are_gone_between_batches(tiny):
    it = iter_capture(tiny, TEXTS, [1], "all", batch_size=2, progress=False)
    next(it)
    # HF may install its own output-recording hooks; none of ours is left between batches
    for m in tiny.model.modules():
        for h in list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values()):
            assert "deltalens" not in getattr(h, "__module__", ""), h
    rest = list(it)
    assert len(rest) == 1
