"""Faults a long capture meets: ``kill -9`` at seeded points, a second writer on the same store.

``deltalens capture`` runs as a subprocess on a tiny random model saved to disk, with small shards
so a run writes many. After every kill the store is either absent or a valid, resumable store;
re-running the same command finishes it, and the result equals an uninterrupted capture exactly
(activations bit for bit, the same token index).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deltalens.store import LOCK, ActivationStore
from tiny import save_tiny, tiny_model

SRC = str(Path(__file__).resolve().parents[1] / "src")
WORDS = "the quick brown fox jumps over lazy dog capital of france is paris science history art".split()
SITES = "1,resid.-1"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    model = save_tiny(tiny_model("llama"), root / "tiny")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(400)]
    data = root / "inputs.txt"
    data.write_text("\n".join(lines) + "\n")
    return root, model, data


def _cmd(model: str, data: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "deltalens",
        "capture",
        "--data",
        str(data),
        "--out",
        str(out),
        "--model",
        model,
        "--sites",
        SITES,
        "--batch-size",
        "4",
        "--shard-mb",
        "0.02",
    ]


def _env() -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
        TQDM_DISABLE="1",
    )


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Poll until ``pred()`` holds (True) or the process has exited (False)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            return pred()
        time.sleep(0.01)
    raise TimeoutError("condition not reached")


def _committed(path: Path) -> int:
    try:
        return json.loads((path / "store.json").read_text())["n_sequences"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def _contents(path: Path) -> tuple[dict[str, torch.Tensor], object]:
    st = ActivationStore.open(path)
    assert st.complete
    return {str(s): st.read(s) for s in st.sites}, st.index()


def _assert_same(a: Path, b: Path) -> None:
    acts_a, idx_a = _contents(a)
    acts_b, idx_b = _contents(b)
    assert acts_a.keys() == acts_b.keys() == {"resid.1", "resid.3"}
    for k in acts_a:
        assert torch.equal(acts_a[k], acts_b[k]), k
    assert idx_a.equals(idx_b)


def _valid_or_absent(path: Path) -> None:
    if (path / "store.json").exists():
        m = json.loads((path / "store.json").read_text())  # atomic: never half-written
        assert m["n_sequences"] == sum(s["n_sequences"] for s in m["shards"])
        for s in m["shards"]:
            for site in m["sites"]:
                assert (path / "shards" / site / f"{s['name']}.safetensors").is_file()


def test_kill_9_at_seeded_points_then_resume_equals_an_uninterrupted_run(setup):
    root, model, data = setup
    ref = root / "reference"
    r = subprocess.run(_cmd(model, data, ref), env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads((ref / "store.json").read_text())
    assert len(m["shards"]) > 20 and m["sites"] == [
        "resid.1",
        "resid.3",
    ]  # resid.-1 recorded as the last layer

    out = root / "killed"
    first_shard = out / "shards" / "resid.1" / "000000.safetensors"
    rng = random.Random(1234)
    kills = 0
    for leg in range(3):
        p = _start(_cmd(model, data, out))
        if leg == 0:
            running = _wait_for(first_shard.exists, p)  # the first shard is on disk
        else:  # once the resumed run has committed a shard of its own, after a seeded delay
            n0 = _committed(out)
            running = _wait_for(lambda: _committed(out) > n0, p)  # noqa: B023
            time.sleep(rng.uniform(0.0, 0.4))
            running = running and p.poll() is None
        if running:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(timeout=60)
        _valid_or_absent(out)
    assert kills >= 1
    assert 0 < _committed(out) < 400 or kills < 3, "the kills landed mid-capture"
    r = subprocess.run(_cmd(model, data, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _assert_same(ref, out)
    st = ActivationStore.open(out)
    assert st.stray_files() == [], "temporary files of interrupted writes are cleaned on resume"


def test_a_second_writer_is_refused_and_the_first_store_is_intact(setup):
    root, model, data = setup
    out = root / "shared"
    a = _start(_cmd(model, data, out))
    try:
        assert _wait_for(lambda: (out / "store.json").exists(), a), a.communicate()[1]
        a.send_signal(signal.SIGSTOP)  # A holds the writer lock mid-capture
        b = subprocess.run(_cmd(model, data, out), env=_env(), capture_output=True, text=True, timeout=300)
    finally:
        a.send_signal(signal.SIGCONT)
    assert b.returncode == 2, b.stderr
    assert f"is being written by process {a.pid}; stores are single-writer" in b.stderr
    assert "Traceback" not in b.stderr and len(b.stderr.strip().splitlines()) == 1
    _, err = a.communicate(timeout=300)
    assert a.returncode == 0, err
    ref = root / "reference"
    if not (ref / "store.json").exists():
        r = subprocess.run(_cmd(model, data, ref), env=_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    _assert_same(ref, out)
    assert (
        out / LOCK
    ).exists()  # the file stays; the kernel lock went with the process (the kill test resumes after kills)
    st = ActivationStore(out)
    st.lock()  # free again
    st.close()


def _sae_train(store: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "deltalens", "sae", "train", "--store", str(store), "--sites", "resid.1",
        "--arch", "topk", "--k", "4", "--expansion", "2", "--tokens", "40000", "--batch-size", "64",
        "--checkpoint-every", "640", "--out", str(out),
    ]  # fmt: skip


def _checkpoints(out: Path) -> int:
    d = out / "checkpoints"
    return len([p for p in d.iterdir() if p.name.startswith("step_")]) if d.is_dir() else 0


def test_sae_train_killed_at_seeded_points_resumes_to_the_same_weights(setup):
    """kill -9 of ``sae train`` after a checkpoint (twice, seeded delays), then the same command
    finishes the run: the SAE equals an uninterrupted run's bit for bit (the resumed stream is
    replayed with the same seed and the consumed batches are skipped)."""
    from safetensors.torch import load_file

    root, model, data = setup
    store = root / "sae_store"
    if not (store / "store.json").exists():
        cap = _cmd(model, data, store)[:-4]  # default shards
        assert subprocess.run(cap, env=_env(), capture_output=True, text=True).returncode == 0
    ref, out = root / "sae_ref", root / "sae_killed"
    r = subprocess.run(_sae_train(store, ref), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rng = random.Random(11)
    kills = 0
    for _ in range(2):
        p = _start(_sae_train(store, out))
        n0 = _checkpoints(out)
        running = _wait_for(lambda: _checkpoints(out) > n0, p)  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.3))
        if running and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.communicate()
        assert not (out / "sae_weights.safetensors").exists() or p.returncode == 0
    assert kills >= 1, "the kills landed after the run had finished"
    r = subprocess.run(_sae_train(store, out), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = load_file(str(ref / "sae_weights.safetensors")), load_file(str(out / "sae_weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
