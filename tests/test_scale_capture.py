"""Capture sharded across a 2-process gloo world equals the one-process store row for row."""

from __future__ import annotations

import json

import pytest
import torch

from deltalens.capture import CaptureConfig, capture_to_store
from deltalens.errors import ConfigError, StoreMismatchError
from deltalens.scale.capture import _check_parts, part_name
from deltalens.scale.dist import World
from deltalens.store import PARTS, ActivationStore
from scale_helpers import TEXTS, capture_worker, spawn

# 8 inputs, 2 ranks × 4, batches of 2: each rank's batches are the one-process batches
CFG = dict(sites=["resid.1", "mlp_out.2"], batch_size=2, val_fraction=0.25, shard_mb=0.004)


def _reports(tmp, name):
    return [json.loads((tmp / f"{name}.rank{r}.json").read_text()) for r in range(2)]


def _assert_same_store(got: ActivationStore, ref: ActivationStore) -> None:
    assert got.complete and got.n_rows == ref.n_rows and got.n_sequences == ref.n_sequences
    for site in ref.sites:
        assert torch.equal(got.read(site), ref.read(site)), f"{site}: values differ"
    a, b = got.index(), ref.index()
    assert a.equals(b), "token index differs"
    assert len(got.shard_names()) > 2  # several shards per rank were merged
    assert not (got.path / PARTS).exists() and got.stray_files() == []


def test_two_process_capture_equals_one_process_and_resumes_per_rank(tiny, tmp_path):
    cfg = CaptureConfig(**CFG)
    ref = capture_to_store(tiny, TEXTS, cfg, tmp_path / "ref", progress=False)

    # per-rank resume (the second store): rank 0's part finished, rank 1's part killed after
    # its first shard
    out = tmp_path / "resume"
    capture_to_store(tiny, TEXTS, cfg, out / PARTS / part_name(0, 2), span=(0, 4), progress=False)
    p1 = out / PARTS / part_name(1, 2)
    capture_to_store(tiny, TEXTS, cfg, p1, span=(4, 8), progress=False)
    m = json.loads((p1 / "store.json").read_text())
    m["shards"] = m["shards"][:1]
    m["n_rows"], m["n_sequences"] = m["shards"][0]["n_rows"], m["shards"][0]["n_sequences"]
    m["complete"] = False
    (p1 / "store.json").write_text(json.dumps(m))
    done = m["n_sequences"]
    assert 0 < done < 4
    spawn(capture_worker, 2, [str(tmp_path / "two"), str(out)], CFG)

    got = ActivationStore(tmp_path / "two")
    _assert_same_store(got, ref)
    assert [r["sequences_forwarded"] for r in _reports(tmp_path, "two")] == [4, 4]
    assert got.index()["seq_id"].tolist() == ref.index()["seq_id"].tolist()
    forwarded = [r["sequences_forwarded"] for r in _reports(tmp_path, "resume")]
    assert forwarded == [0, 4 - done]  # only what was missing
    _assert_same_store(ActivationStore(out), ref)


def test_world_size_must_divide_the_inputs_and_parts_of_another_world_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="world size 2 does not divide the 7 inputs"):
        World(rank=1, size=2).span(7)
    assert World(rank=1, size=2).span(8) == (4, 8)
    (tmp_path / PARTS / part_name(0, 3)).mkdir(parents=True)
    with pytest.raises(StoreMismatchError, match="store shard from another run"):
        _check_parts(tmp_path, World(rank=0, size=2))
    _check_parts(tmp_path, World(rank=0, size=3))  # its own world's parts are fine


def test_a_part_of_another_span_is_refused(tiny, tmp_path):
    cfg = CaptureConfig(**CFG)
    capture_to_store(tiny, TEXTS, cfg, tmp_path / "p", span=(0, 4), progress=False)
    with pytest.raises(StoreMismatchError, match=r"span \[0, 4\] vs \[0, 2\]"):
        capture_to_store(tiny, TEXTS, cfg, tmp_path / "p", span=(0, 2), progress=False)
