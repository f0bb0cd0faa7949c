"""The CLI as a user runs it: a subprocess, readable errors, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "deltalens", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_help_lists_core_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("models", "generate", "capture", "info", "demo"):
        assert cmd in r.stdout


def test_malformed_jsonl_names_file_and_line(tmp_path):
    f = tmp_path / "inputs.jsonl"
    f.write_text('{"text": "fine"}\n{"text": "broken",}\n')
    r = run("capture", "--data", str(f), "--out", str(tmp_path / "store"), "--model", "smollm2-135m-instruct")
    assert r.returncode == 2
    assert f"{f}:2: invalid JSON" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "store").exists()


def test_unknown_model_lists_bundled_names(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("hello\n")
    r = run("capture", "--data", str(f), "--out", str(tmp_path / "s"), "--model", "no-such-model")
    assert r.returncode == 2
    assert (
        "unknown model 'no-such-model'" in r.stderr
        and "smollm2-135m-instruct" in r.stderr
        and "gemma3-270m" in r.stderr
    )
    assert "Traceback" not in r.stderr


@pytest.mark.real
def test_capture_and_info_on_the_bundled_model(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("The quick brown fox.\nHello world, how are you?\n")
    r = run(
        "capture",
        "--data",
        str(f),
        "--out",
        str(tmp_path / "s"),
        "--sites",
        "resid.3,mlp_out.3",
        "--positions",
        "all",
    )
    assert r.returncode == 0, r.stderr
    info = run("info", str(tmp_path / "s"), "--json")
    d = json.loads(info.stdout)
    assert d["kind"] == "activation store" and d["sites"] == ["resid.3", "mlp_out.3"] and d["complete"]
    last = run(
        "capture", "--data", str(f), "--out", str(tmp_path / "s4"), "--sites", "resid.-1", "--reduce", "mean"
    )
    assert last.returncode == 0, last.stderr
    assert json.loads((tmp_path / "s4" / "store.json").read_text())["sites"] == [
        "resid.29"
    ]  # recorded resolved
    bad = run("capture", "--data", str(f), "--out", str(tmp_path / "s2"), "--sites", "resid.40")
    assert bad.returncode == 2 and "layer 40 is out of range" in bad.stderr and "0..29" in bad.stderr
    pos = run("capture", "--data", str(f), "--out", str(tmp_path / "s3"), "--positions", "response[:x]")
    assert (
        pos.returncode == 2 and "expected an integer or ']'" in pos.stderr and "Traceback" not in pos.stderr
    )
