from __future__ import annotations

import json
import re

import pytest
import torch

import deltalens
from deltalens import ActivationStore
from deltalens.errors import SiteError, StoreMismatchError
from deltalens.generate import left_pad, position_ids
from tiny import tiny_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello there",
    "Why is the sky blue? Light scatters.",
]


def _hidden(lm, ids_list, prompt_lens=None):
    ids, mask = left_pad(ids_list, lm.tokenizer.pad_token_id)
    with torch.no_grad():
        hs = lm.model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True
        ).hidden_states
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
        torch.testing.assert_close(
            last[(2, "resid")][i], resp[min(3, g.response_len) - 1], atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            first_prompt[(2, "resid")][i], hs[3][i, start + g.prompt_len - 1], atol=1e-5, rtol=1e-5
        )
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
    store = deltalens.capture(
        tiny,
        texts,
        [(1, "resid"), (2, "resid")],
        store=tmp_path / "s",
        batch_size=4,
        val_fraction=0.3,
        progress=False,
    )
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
    store.init(
        model={"name": tiny.name, "spec": tiny.spec, "weights_hash": tiny.weights_hash},
        sites=[(1, "resid")],
        d_model=tiny.d_model,
        positions="all",
        reduce=None,
        shard_mb=0.002,
    )
    # simulate a kill part-way: the manifest was last committed after the first shards (the later
    # shard files stay on disk, unlisted, as after a kill between a shard write and its commit)
    deltalens.capture(tiny, texts, [(1, "resid")], store=store, batch_size=4, progress=False)
    m = json.loads((tmp_path / "s" / "store.json").read_text())
    keep = next(
        k for k in range(1, len(m["shards"]) + 1) if sum(s["n_sequences"] for s in m["shards"][:k]) >= 12
    )
    m["shards"] = m["shards"][:keep]
    m["n_rows"] = sum(s["n_rows"] for s in m["shards"])
    m["n_sequences"] = sum(s["n_sequences"] for s in m["shards"])
    m["complete"] = False
    (tmp_path / "s" / "store.json").write_text(json.dumps(m))
    done_before = m["n_sequences"]
    assert done_before == 12 and len(m["shards"]) > 1
    resumed = deltalens.capture(
        tiny, texts, [(1, "resid")], store=tmp_path / "s", batch_size=4, progress=False
    )
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


# ---- reliability: data fingerprint, settings, writer lock, interrupted writes ------------------
def _meta(tiny):
    return {"name": tiny.name, "spec": tiny.spec, "weights_hash": tiny.weights_hash}


def test_other_or_longer_data_into_a_store_is_refused_and_overwrite_recreates(tiny, tmp_path):
    from deltalens.capture import CaptureConfig

    s = tmp_path / "s"
    deltalens.capture(tiny, TEXTS, [(1, "resid")], store=s, progress=False, dataset_name="a.txt")
    m = json.loads((s / "store.json").read_text())
    assert m["data"]["n_inputs"] == 3 and len(m["data"]["fingerprint"]) == 16
    assert m["config"]["sites"] == ["resid.1"] and m["config"]["batch_size"] == 16
    before = {p: p.read_bytes() for p in s.rglob("*") if p.is_file()}
    # the same data again: nothing to do (a complete store is returned as is)
    assert deltalens.capture(tiny, TEXTS, [(1, "resid")], store=s, progress=False).n_sequences == 3
    for other in (TEXTS[::-1], TEXTS + ["a longer file: one more line"], ["x"] + TEXTS[1:]):
        with pytest.raises(
            StoreMismatchError, match=r"data fingerprint differs: a\.txt \(3 inputs, token fingerprint"
        ):
            deltalens.capture(tiny, other, [(1, "resid")], store=s, progress=False)
    with pytest.raises(StoreMismatchError, match=r"max_length None vs 4"):
        deltalens.capture(
            tiny, TEXTS, CaptureConfig(sites=["resid.1"], max_length=4), store=s, progress=False
        )
    assert {p: p.read_bytes() for p in s.rglob("*") if p.is_file()} == before
    st = deltalens.capture(
        tiny, TEXTS + ["one more"], [(1, "resid")], store=s, overwrite=True, progress=False
    )
    assert st.n_sequences == 4 and st.complete and st.manifest["data"]["n_inputs"] == 4
    full = deltalens.capture(tiny, TEXTS + ["one more"], [(1, "resid")], progress=False)
    torch.testing.assert_close(st.read(1), full[1])


def test_capture_config_is_recorded_with_resolved_sites_and_batch_size_may_change(tiny, tmp_path):
    from deltalens.capture import CaptureConfig

    texts = [f"{t} number {i}" for i in range(4) for t in TEXTS]
    cfg = CaptureConfig(sites=["resid.-1", "mlp_out.1"], positions="all[1:]", batch_size=4, shard_mb=0.002)
    st = deltalens.capture(tiny, texts, cfg, store=tmp_path / "s", progress=False)
    m = st.manifest
    assert m["sites"] == ["resid.3", "mlp_out.1"] and m["config"]["sites"] == ["resid.3", "mlp_out.1"]
    assert m["config"]["positions"] == "all[1:]" and m["config"]["shard_mb"] == 0.002
    # a kill after two shards; resume with another batch size and another spelling of the same site
    m["shards"] = m["shards"][:2]
    m["n_rows"] = sum(s["n_rows"] for s in m["shards"])
    m["n_sequences"] = sum(s["n_sequences"] for s in m["shards"])
    m["complete"] = False
    (tmp_path / "s" / "store.json").write_text(json.dumps(m))
    again = deltalens.capture(
        tiny,
        texts,
        cfg.replace(sites=["resid.3", "mlp_out.1"], batch_size=2),
        store=tmp_path / "s",
        progress=False,
    )
    ref = deltalens.capture(tiny, texts, cfg, progress=False)
    assert again.complete and again.n_sequences == len(texts)
    torch.testing.assert_close(again.read("resid.3"), ref["resid.3"], atol=1e-5, rtol=1e-5)


def test_capture_keyword_api_and_config_agree(tiny):
    from deltalens.capture import CaptureConfig
    from deltalens.errors import ConfigError

    a = deltalens.capture(
        tiny, TEXTS, [(1, "resid")], "prompt[-2:]", reduce="mean", batch_size=2, progress=False
    )
    b = deltalens.capture(
        tiny,
        TEXTS,
        CaptureConfig(sites=["resid.1"], positions="prompt[-2:]", reduce="mean", batch_size=2),
        progress=False,
    )
    torch.testing.assert_close(a[1], b[1])
    with pytest.raises(ConfigError, match="--reduce must be one of none, mean, last; got 'median'"):
        deltalens.capture(tiny, TEXTS, [1], reduce="median", progress=False)
    with pytest.raises(ConfigError, match="--batch-size must be ≥ 1, got 0"):
        deltalens.capture(tiny, TEXTS, [1], batch_size=0, progress=False)
    with pytest.raises(ConfigError, match=r"--val-fraction must be in \[0, 1\)"):
        CaptureConfig(val_fraction=1.0)
    assert CaptureConfig.from_dict(CaptureConfig(sites=[6, (2, "mlp_out")]).to_dict()).sites == [
        "resid.6",
        "mlp_out.2",
    ]
    with pytest.raises(TypeError, match="not both"):
        deltalens.capture(tiny, TEXTS, CaptureConfig(sites=["resid.1"]), reduce="mean", progress=False)


def test_a_spec_that_selects_nothing_or_a_bad_setting_writes_nothing(tiny, tmp_path):
    from deltalens.errors import ConfigError, PositionSpecError

    for spec, kind in (
        ("response[:5]", "plain texts"),
        ("response[5:2]", "plain texts"),
        ("prompt[7:3]", "plain texts"),
    ):
        with pytest.raises(
            PositionSpecError,
            match=rf"positions '{re.escape(spec)}' select no token of any of the 3 inputs .*{kind}",
        ):
            deltalens.capture(tiny, TEXTS, [1], spec, store=tmp_path / "s", progress=False)
    pairs = [("What is it?", "A fox.")] * 2
    with pytest.raises(PositionSpecError, match=r"prompt\+response records"):
        deltalens.capture(tiny, pairs, [1], "response[5:2]", store=tmp_path / "s", progress=False)
    with pytest.raises(ConfigError):
        deltalens.capture(tiny, TEXTS, [1], store=tmp_path / "s", batch_size=0, progress=False)
    with pytest.raises(SiteError, match="or -4..-1 counting from the end"):
        deltalens.capture(tiny, TEXTS, [9], store=tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()
    # in memory, an empty selection is a valid (empty) answer
    assert deltalens.capture(tiny, TEXTS, [1], "response", progress=False)[1].shape == (0, tiny.d_model)


def test_writer_lock_refuses_a_second_writer_and_is_released(tiny, tmp_path):
    import os

    from deltalens.errors import StoreBusyError

    s = tmp_path / "s"
    first = ActivationStore(s)
    first.init(model=_meta(tiny), sites=[1], d_model=tiny.d_model, positions="all", reduce=None)
    with pytest.raises(
        StoreBusyError,
        match=rf"{re.escape(str(s))} is being written by process {os.getpid()}; stores are single-writer",
    ):
        deltalens.capture(tiny, TEXTS, [1], store=s, progress=False)
    with pytest.raises(StoreBusyError):
        ActivationStore(s).lock()
    first.close()
    st = deltalens.capture(tiny, TEXTS, [1], store=s, progress=False)
    assert st.complete and st._lock_fd is None
    ActivationStore(s).lock()  # released after finish


def test_resume_cleans_temp_files_of_an_interrupted_write_and_info_counts_them(tiny, tmp_path):
    from deltalens.info import describe

    texts = [f"{t} number {i}" for i in range(6) for t in TEXTS]
    s = tmp_path / "s"
    from deltalens.capture import CaptureConfig

    cfg = CaptureConfig(sites=["resid.1"], batch_size=4, shard_mb=0.002)
    deltalens.capture(tiny, texts, cfg, store=s, progress=False)
    m = json.loads((s / "store.json").read_text())
    size_all = describe(s)["size_mb"]
    m["shards"] = m["shards"][:1]
    m["n_rows"], m["n_sequences"], m["complete"] = (
        m["shards"][0]["n_rows"],
        m["shards"][0]["n_sequences"],
        False,
    )
    (s / "store.json").write_text(json.dumps(m))
    # what a kill inside a shard write leaves behind
    (s / "shards" / "resid.1" / ".000001.safetensors.abc123.safetensors").write_bytes(b"\0" * 5000)
    (s / "index" / ".000001.parquet.xyz.parquet").write_bytes(b"\0" * 10)
    (s / ".store.json.k2j.tmp").write_text("{")
    d = describe(s)
    n_unlisted = len(list((s / "shards" / "resid.1").glob("0*.safetensors"))) - 1
    assert d["stray_files"] == 3 + 2 * n_unlisted and d["size_mb"] <= size_all and not d["complete"]
    st = deltalens.capture(tiny, texts, cfg, store=s, progress=False)
    assert st.complete and st.stray_files() == [] and "stray_files" not in describe(s)
    assert not list(s.rglob(".*.safetensors")) and not list(s.rglob(".*.tmp"))
    torch.testing.assert_close(
        st.read(1), deltalens.capture(tiny, texts, cfg, progress=False)[1], atol=1e-5, rtol=1e-5
    )
    (s / "index" / "000001.parquet").unlink()
    assert describe(s)["missing_files"] == 1


def test_a_truncated_manifest_is_not_a_valid_store(tiny, tmp_path):
    from deltalens.errors import DataFormatError

    s = tmp_path / "s"
    deltalens.capture(tiny, TEXTS, [1], store=s, progress=False)
    text = (s / "store.json").read_text()
    (s / "store.json").write_text(text[:40])
    with pytest.raises(
        DataFormatError,
        match=rf"not a valid activation store: {re.escape(str(s))} \(store.json: invalid JSON",
    ):
        ActivationStore(s)
    (s / "store.json").write_text('{"sites": []}')
    with pytest.raises(DataFormatError, match="store.json lacks d_model"):
        ActivationStore.open(s)
    st = deltalens.capture(tiny, TEXTS, [1], store=s, overwrite=True, progress=False)
    assert st.complete and st.n_sequences == 3
