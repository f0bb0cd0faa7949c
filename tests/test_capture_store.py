from __future__ import annotations

import json

import pytest
import torch

import deltalens
from deltalens import ActivationStore
from deltalens.errors import StoreMismatchError
from deltalens.generate import left_pad, position_ids
from tiny import tiny_model

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello there", "Why is the sky blue? Light scatters."]


def _hidden(lm, ids_list, prompt_lens=None):
    ids, mask = left_pad(ids_list, lm.tokenizer.pad_token_id)
    with torch.no_grad():
        hs = lm.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True).hidden_states
    return hs, mask


def test_per_token_rows_are_in_input_order_with_metadata(tiny):
    acts = deltalens.capture(tiny, TEXTS, [(1, "resid"), (2, "mlp_out")], "all", batch_size=2, progress=False)
    lens = [len(tiny.encode(t)) for t in TEXTS]
    assert acts.seq_ids.tolist() == [i for i, n in enumerate(lens) for _ in range(n)]
    assert acts.positions.tolist() == [p for n in lens for p in range(n)]
    assert acts.token_ids.tolist() == [t for s in TEXTS for t in tiny.encode(s)]
    assert acts.n_selected.tolist() == lens
    assert not acts.is_response.any()
    hs, mask = _hidden(tiny, [tiny.encode(t) for t in TEXTS])
    torch.testing.assert_close(acts[(1, "resid")], hs[2][mask.bool()], atol=1e-5, rtol=1e-5)
    assert (1, "resid") in acts and "mlp_out.2" in acts and (3, "resid") not in acts


def test_prompt_response_pairs_reductions_and_boundaries(tiny):
    gens = deltalens.generate(tiny, ["Hello", "Why is the sky blue?"], max_new_tokens=5, progress=False)
    per_tok = deltalens.capture(tiny, gens, [(2, "resid")], "response", progress=False)
    mean = deltalens.capture(tiny, gens, [(2, "resid")], "response", reduce="mean", progress=False)
    last = deltalens.capture(tiny, gens, [(2, "resid")], "response[:3]", reduce="last", progress=False)
    first_prompt = deltalens.capture(tiny, gens, [(2, "resid")], "prompt[-1]", progress=False)
    hs, mask = _hidden(tiny, [g.ids for g in gens])
    L = mask.shape[1]
    for i, g in enumerate(gens):
        start = L - len(g.ids)
        resp = hs[3][i, start + g.prompt_len :]
        torch.testing.assert_close(per_tok[(2, "resid")][per_tok.seq_ids == i], resp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mean[(2, "resid")][i], resp.mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(last[(2, "resid")][i], resp[min(3, g.response_len) - 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(first_prompt[(2, "resid")][i], hs[3][i, start + g.prompt_len - 1], atol=1e-5, rtol=1e-5)
    assert per_tok.is_response.all()
    assert per_tok.positions.min() >= min(g.prompt_len for g in gens)


def test_reduced_capture_drops_inputs_without_selected_tokens(tiny):
    data = [{"question": "Hello", "response": ""}, {"question": "Hi", "response": "Fine thanks"}]
    acts = deltalens.capture(tiny, data, [1], "response", reduce="mean", progress=False)
    assert acts.seq_ids.tolist() == [1]
    assert acts.n_selected[0] == 0 and acts.n_selected[1] > 0
    assert acts[1].shape == (1, tiny.d_model)


def test_token_type_positions(tiny):
    data = [{"question": q, "response": ""} for q in ["Hello", "Why is the sky blue?"]]
    acts = deltalens.capture(tiny, data, [1], "asst|newline", progress=False)
    toks = [tiny.tokenizer.decode([t]) for t in acts.token_ids.tolist()]
    assert toks == ["assistant", "\n"] * 2


def test_early_exit_skips_later_layers(tiny, monkeypatch):
    calls = []
    last = tiny.arch.layers[3]
    orig = last.forward
    monkeypatch.setattr(last, "forward", lambda *a, **k: calls.append(1) or orig(*a, **k))
    deltalens.capture(tiny, TEXTS, [(1, "resid")], progress=False)
    assert calls == []
    deltalens.capture(tiny, TEXTS, [(1, "resid")], early_exit=False, progress=False)
    assert len(calls) == 1


def test_store_round_trip_stream_and_index(tiny, tmp_path):
    texts = TEXTS * 7
    store = deltalens.capture(tiny, texts, [(1, "resid"), (2, "resid")], store=tmp_path / "s", batch_size=4,
                              val_fraction=0.3, progress=False)
    assert isinstance(store, ActivationStore) and store.complete
    mem = deltalens.capture(tiny, texts, [(1, "resid"), (2, "resid")], batch_size=4, progress=False)
    again = ActivationStore.open(tmp_path / "s")
    torch.testing.assert_close(again.read((2, "resid")), mem[(2, "resid")], atol=1e-5, rtol=1e-5)
    idx = again.index()
    assert list(idx.columns) == ["seq_id", "position", "token_id", "region", "token_type", "split"]
    assert idx["seq_id"].tolist() == mem.seq_ids.tolist()
    assert idx["token_id"].tolist() == mem.token_ids.tolist()
    assert set(idx["split"]) == {"train", "val"}
    n_val = int((idx["split"] == "val").sum())
    assert again.read(1, split="val").shape[0] == n_val
    # shuffled streaming visits every row exactly once per epoch
    rows = torch.cat(list(again.stream(1, batch_size=16, shuffle=True, seed=3)))
    assert rows.shape == (again.n_rows, tiny.d_model)
    ref = again.read(1)
    key = lambda t: sorted(map(tuple, t.round(decimals=4).tolist()))  # noqa: E731
    assert key(rows) == key(ref)
    assert not torch.equal(rows, ref), "shuffled order should differ from storage order"
    assert sum(len(b) for b in again.stream(1, 16, split="train")) == again.n_rows - n_val


def test_store_shards_resume_after_a_kill(tiny, tmp_path):
    texts = [f"{t} number {i}" for i in range(10) for t in TEXTS]
    store = ActivationStore(tmp_path / "s")
    # tiny shards: ~1 sequence each
    store.init(model={"name": tiny.name, "spec": tiny.spec, "weights_hash": tiny.weights_hash}, sites=[(1, "resid")],
               d_model=tiny.d_model, positions="all", reduce=None, shard_mb=0.002)
    # simulate a kill part-way: the manifest was last committed after the first shards (the later
    # shard files stay on disk, unlisted, as after a kill between a shard write and its commit)
    deltalens.capture(tiny, texts, [(1, "resid")], store=store, batch_size=4, progress=False)
    m = json.loads((tmp_path / "s" / "store.json").read_text())
    keep = next(k for k in range(1, len(m["shards"]) + 1) if sum(s["n_sequences"] for s in m["shards"][:k]) >= 12)
    m["shards"] = m["shards"][:keep]
    m["n_rows"] = sum(s["n_rows"] for s in m["shards"])
    m["n_sequences"] = sum(s["n_sequences"] for s in m["shards"])
    m["complete"] = False
    (tmp_path / "s" / "store.json").write_text(json.dumps(m))
    done_before = m["n_sequences"]
    assert done_before == 12 and len(m["shards"]) > 1
    resumed = deltalens.capture(tiny, texts, [(1, "resid")], store=tmp_path / "s", batch_size=4, progress=False)
    assert resumed.n_sequences == len(texts) and resumed.complete
    full = deltalens.capture(tiny, texts, [(1, "resid")], batch_size=4, progress=False)
    torch.testing.assert_close(resumed.read(1), full[1], atol=1e-5, rtol=1e-5)
    assert resumed.index()["seq_id"].tolist() == full.seq_ids.tolist()


def test_store_refuses_a_different_model_or_site_and_keeps_files(tiny, tmp_path):
    deltalens.capture(tiny, TEXTS, [(1, "resid")], store=tmp_path / "s", progress=False)
    before = {p: p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()}
    other = tiny_model("llama", seed=1)
    with pytest.raises(StoreMismatchError, match="holds a different capture.*nothing was overwritten"):
        deltalens.capture(other, TEXTS, [(1, "resid")], store=tmp_path / "s", progress=False)
    with pytest.raises(StoreMismatchError, match=r"sites \['resid.1'\] vs \['resid.2'\]"):
        deltalens.capture(tiny, TEXTS, [(2, "resid")], store=tmp_path / "s", progress=False)
    after = {p: p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert before == after
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("keep me")
    with pytest.raises(StoreMismatchError, match="not an activation store"):
        deltalens.capture(tiny, TEXTS, [1], store=tmp_path / "junk", progress=False)
    assert (tmp_path / "junk" / "x.txt").read_text() == "keep me"
