"""``deltalens extract`` / ``steer`` / export as a user runs them (subprocesses), including a
``steer`` run killed mid-way and re-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random Llama saved as a model directory, and an experiment with pirate vectors."""
    from tiny import tiny_model

    root = tmp_path_factory.mktemp("cli")
    lm = tiny_model("llama")
    model_dir = root / "tiny-llama"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    exp = root / "exp"
    r = run(
        "extract",
        "--experiment",
        str(exp),
        "--trait",
        "instruction/pirate",
        "--model",
        str(model_dir),
        "--model-variant",
        "instruct",
        "--position",
        "response[:4]",
        "--methods",
        "mean_diff,probe",
        "--layers",
        "1-2",
        "--max-new-tokens",
        "6",
    )
    assert r.returncode == 0, r.stderr
    assert "instruction/pirate" in r.stdout and "mean_diff" in r.stdout
    return root, model_dir, exp


def env(**extra):
    e = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="200")
    e.setdefault("OMP_NUM_THREADS", "1")
    e.pop("OPENAI_API_KEY", None)
    e.update(extra)
    return e


def run(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "deltalens", *args], capture_output=True, text=True, env=env(), timeout=timeout
    )


COEFS = ",".join(f"{0.05 * k:.2f}" for k in range(1, 11))


def steer_args(exp):
    return [
        "steer",
        "--experiment",
        str(exp),
        "--vector-from-trait",
        "instruction/pirate",
        "--extraction-variant",
        "instruct",
        "--method",
        "mean_diff",
        "--position",
        "response[:4]",
        "--layers",
        "1,2",
        "--coefficients",
        COEFS,
        "--subset",
        "3",
        "--max-new-tokens",
        "4",
        "--max-rows",
        "3",
    ]


def results_file(exp):
    return Path(exp) / "steering" / "instruction" / "pirate" / "instruct" / "response__4" / "results.jsonl"


def test_killed_steer_rerun_does_not_recompute(setup):
    _, _, exp = setup
    path = results_file(exp)
    proc = subprocess.Popen(
        [sys.executable, "-m", "deltalens", *steer_args(exp)],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if path.exists() and len(path.read_text().splitlines()) >= 4:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed; make it longer"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    before = [json.loads(x) for x in path.read_text().splitlines() if x.strip().endswith("}")]
    done_keys = {r["key"] for r in before}
    total = 2 + 2 * 10  # baseline + prompting baseline + 2 layers × 10 coefficients
    assert 4 <= len(done_keys) < total
    r = run(*steer_args(exp))
    assert r.returncode == 0, r.stderr
    after = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    keys = [x["key"] for x in after]
    assert len(set(keys)) == total
    assert len(keys) == len(set(keys)), "a completed configuration was computed twice"
    assert f"{total - len(done_keys)} configurations computed, {len(done_keys)} reused" in r.stdout
    assert "checkpoint" in r.stdout and "max Δ coh≥70" in r.stdout
    # and a third run computes nothing
    r3 = run(*steer_args(exp))
    assert f"0 configurations computed, {total} reused" in r3.stdout


def test_export_gguf_and_import(setup, tmp_path):
    _, _, exp = setup
    out = tmp_path / "pirate.gguf"
    r = run(
        "export-gguf",
        "--experiment",
        str(exp),
        "--trait",
        "instruction/pirate",
        "--position",
        "response[:4]",
        "--layers",
        "1-2",
        "--coef",
        "2",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    from deltalens.experiment import Experiment
    from deltalens.steering.extraction import load_vector_set
    from deltalens.vectors import import_gguf

    dirs, hint = import_gguf(out)
    vs = load_vector_set(Experiment(exp), "instruction/pirate", "instruct", "response[:4]", "mean_diff")
    assert sorted(dirs) == [1, 2]
    for L in (1, 2):
        assert (dirs[L] - 2 * vs[L].vector).abs().max() < 1e-6
    r = run("import-gguf", str(out), "--experiment", str(exp), "--trait", "instruction/pirate")
    assert r.returncode == 0, r.stderr
    back = load_vector_set(Experiment(exp), "instruction/pirate", "imported", "response[:]", "gguf")
    assert sorted(back) == [1, 2] and (back[1].vector - dirs[1]).abs().max() == 0


def test_cli_errors_are_one_line(setup):
    _, model_dir, exp = setup
    r = run(
        "steer",
        "--experiment",
        str(exp),
        "--vector-from-trait",
        "instruction/pirate",
        "--method",
        "probe",
        "--position",
        "response[:9]",
        "--model",
        str(model_dir),
    )
    assert (
        r.returncode == 2
        and "no vectors in" in r.stderr
        and "deltalens extract" in r.stderr
        and "Traceback" not in r.stderr
    )
    r = run(
        "steer",
        "--experiment",
        str(exp),
        "--vector-from-trait",
        "instruction/pirate",
        "--position",
        "response[:4]",
        "--layers",
        "1",
        "--judge",
        "openai",
        "--subset",
        "1",
    )
    assert r.returncode == 2 and ("OPENAI_API_KEY" in r.stderr) and "Traceback" not in r.stderr
    r = run("extract", "--experiment", str(exp), "--trait", "instruction/nope")
    assert r.returncode == 2 and "unknown trait" in r.stderr


def test_info_describes_steering_artifacts(setup):
    _, _, exp = setup
    from deltalens.steering.describe import describe_steering

    vec = (
        Path(exp)
        / "vectors"
        / "instruction"
        / "pirate"
        / "instruct"
        / "response__4"
        / "resid"
        / "probe"
        / "layer1.safetensors"
    )
    d = describe_steering(vec)
    assert d["kind"] == "trait vector" and d["layer"] == 1 and d["method"] == "probe" and "val_accuracy" in d
    res = results_file(exp)
    if res.exists():
        d = describe_steering(res)
        assert d["kind"] == "steering results" and d["configurations"] >= 1
    r = run("info", str(vec))
    assert r.returncode == 0 and "trait vector" in r.stdout


def test_steer_grid_with_projection(setup):
    _, _, exp = setup
    r = run(
        "steer",
        "--experiment",
        str(exp),
        "--vector-from-trait",
        "instruction/pirate",
        "--method",
        "probe",
        "--position",
        "response[:4]",
        "--layers",
        "1",
        "--coefficients",
        "0.1,0.2",
        "--subset",
        "2",
        "--max-new-tokens",
        "3",
        "--project-layer",
        "2",
    )
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in results_file(exp).read_text().splitlines() if x.strip()]
    mine = [x for x in recs if x["n_questions"] == 2 and x["max_new_tokens"] == 3]
    assert {x.get("coef") for x in mine if x["kind"] == "single"} == {0.1, 0.2}
    assert all(isinstance(resp["projection"], float) for x in mine for resp in x["responses"])
    out = results_file(exp).parent
    assert (
        (out / "layers.csv").exists()
        and (out / "configs.csv").exists()
        and (out / "trait_vs_coherence.png").exists()
    )


def test_steer_on_a_ray_local_cluster_computes_only_new_configurations(setup):
    pytest.importorskip("ray")
    _, _, exp = setup
    args = steer_args(exp)
    args[args.index("--coefficients") + 1] = "0.7,0.9"  # 4 configurations no other test computed
    r = run(*args, "--backend", "ray", "--workers", "2")
    assert r.returncode == 0, r.stderr
    # 2 layers × 2 coefficients are new, plus the unsteered and the prompting baselines when no
    # earlier test computed them
    import re

    line = next((x for x in r.stdout.splitlines() if "configurations computed" in x), "")
    m = re.search(r"(\d+) configurations computed, (\d+) reused", line)
    assert m and int(m[1]) + int(m[2]) == 6 and int(m[1]) >= 4, line
    recs = [json.loads(x) for x in results_file(exp).read_text().splitlines() if x.strip()]
    new = [x for x in recs if x.get("coef") in (0.7, 0.9)]
    assert len(new) == 4 and all(len(x["responses"]) == 3 for x in new)
