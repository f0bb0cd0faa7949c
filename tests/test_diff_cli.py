"""`deltalens diff …` / `deltalens organism …` as a user runs them, and series trajectories."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deltalens.diff.organisms import OrganismConfig, iterative_dpo
from deltalens.diff.scorers import RegexScorer
from deltalens.diff.series import diff_series
from tiny import save_tiny as save
from tiny import tiny_model

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(*args):
    """A subprocess, as a user runs it (used for the error path: exit status 2, one line)."""
    env = dict(os.environ, COLUMNS="200", PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "deltalens", *args], capture_output=True, text=True, env=env, timeout=600
    )


class Result:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


@pytest.fixture
def cli(capsys, monkeypatch):
    """The same entry point in-process (no interpreter start-up per command)."""
    from deltalens.cli import main

    monkeypatch.setenv("COLUMNS", "200")

    def call(*args):
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return call


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    lm = tiny_model("llama")
    b = save(lm, root / "base")
    with torch.no_grad():
        lm.model.model.layers[1].self_attn.o_proj.weight += 0.1
    f = save(lm, root / "ft")
    g = save(tiny_model("gpt2"), root / "gpt2")
    return b, f, g


def test_diff_weights_cli(dirs, tmp_path, cli):
    r = cli("diff", "weights", dirs[0], dirs[1], "--out", str(tmp_path / "w"))
    assert r.returncode == 0, r.stderr
    assert "1 of 39 tensors changed" in r.stdout and "model.layers.1.self_attn.o_proj.weight" in r.stdout
    d = json.loads((tmp_path / "w" / "norms.json").read_text())
    assert [t["name"] for t in d["tensors"] if t["fro"] > 0] == ["model.layers.1.self_attn.o_proj.weight"]
    assert (tmp_path / "w" / "logit_lens.json").exists() and (
        tmp_path / "w" / "relative_heatmap.png"
    ).exists()


def test_mismatch_is_one_line_error(dirs, tmp_path):
    r = run("diff", "weights", dirs[0], dirs[2], "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert "architecture (llama vs gpt2)" in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "x").exists()


def test_outputs_and_activations_cli(dirs, tmp_path, cli):
    texts = tmp_path / "t.txt"
    texts.write_text("The quick brown fox.\nWhat is the capital of France?\n")
    r = cli("diff", "outputs", dirs[0], dirs[1], "--data", str(texts), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "mean KL(ft‖base)" in r.stdout and (tmp_path / "o" / "results.json").exists()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"question": "Hello there"}\n{"question": "Why is the sky blue?"}\n')
    r = cli(
        "diff",
        "activations",
        dirs[0],
        dirs[1],
        "--prompts",
        str(prompts),
        "--max-new-tokens",
        "6",
        "--lens-texts",
        str(texts),
        "--out",
        str(tmp_path / "a"),
    )
    assert r.returncode == 0, r.stderr
    assert "replay similarity" in r.stdout and "activation-difference lens" in r.stdout
    d = json.loads((tmp_path / "a" / "results.json").read_text())
    assert d["n_prompts"] == 2 and d["per_layer_similarity"]["mean"][0] == pytest.approx(
        1.0
    )  # layer 0 unchanged
    assert d["per_layer_similarity"]["mean"][1] < 1.0
    r = cli("organism", "datasets")
    assert r.returncode == 0 and "ocean_topic" in r.stdout and "sycophancy_trait" in r.stdout


def test_series_trajectory(tmp_path, cli):
    lm = tiny_model("llama")
    prompts = ["Hello", "What is the capital of France?", "Tell me a story"]
    iterative_dpo(
        lm,
        prompts,
        RegexScorer("e"),
        tmp_path / "series",
        n_samples=3,
        max_new_tokens=10,
        progress=False,
        train=OrganismConfig(method="dpo", epochs=1, batch_size=4, max_length=64, learning_rate=5e-3),
    )
    base = save(lm, tmp_path / "M0")
    r = diff_series(
        tmp_path / "series",
        base=base,
        prompts=prompts,
        texts=["The quick brown fox."],
        max_new_tokens=6,
        out_dir=tmp_path / "traj",
        progress=False,
    )
    rows = {(x["checkpoint"], x["reference"]): x for x in r["rows"]}
    assert set(rows) == {("M1", "M0"), ("M2", "M0"), ("M2", "M1")}
    assert all(x["total_rel"] > 0 and x["mean_kl"] > 0 for x in rows.values())
    assert 0 < rows[("M1", "M0")]["mean_similarity"] <= 1
    assert r["scores"] and len(r["scores"]) == 3
    # the trajectory row of M1 vs M0 is the plain weight diff of the pair
    from deltalens.diff import diff_weights

    w = diff_weights(base, str(tmp_path / "series" / "M1"), progress=False, figures=False)
    assert rows[("M1", "M0")]["total_rel"] == pytest.approx(w["summary"]["total_rel"], rel=1e-9)
    with open(tmp_path / "traj" / "trajectory.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3
    for f in ("trajectory.json", "trajectory_total_rel.png", "per_layer_rel.png", "trajectory_scores.png"):
        assert (tmp_path / "traj" / f).exists(), f
    r = cli(
        "diff",
        "series",
        str(tmp_path / "series"),
        "--base",
        base,
        "--kinds",
        "weights",
        "--out",
        str(tmp_path / "t2"),
    )
    assert r.returncode == 0, r.stderr
    assert "trajectory" in r.stdout and "M2" in r.stdout


def test_info_describes_diff_results(dirs, tmp_path, cli):
    assert (
        cli("diff", "weights", dirs[0], dirs[1], "--out", str(tmp_path / "w"), "--no-figures").returncode == 0
    )
    r = cli("info", str(tmp_path / "w"), "--json")
    d = json.loads(r.stdout)
    assert d["kind"] == "weight diff" and d["tensors_changed"] == "1/39"
    assert d["top_by_rel"] == ["model.layers.1.self_attn.o_proj.weight"]


def test_report_section_escapes_model_text(dirs, tmp_path):
    from deltalens import Experiment
    from deltalens.diff import diff_weights
    from deltalens.diff.outputs import diff_outputs
    from deltalens.report.html import build_report

    exp = Experiment(tmp_path / "exp")
    exp.save_config({"name": "exp"})
    diff_weights(dirs[0], dirs[1], out_dir=exp.weight_diff_dir("pair"), progress=False)
    diff_outputs(
        dirs[0],
        dirs[1],
        ["<script>alert(1)</script> the quick brown fox"],
        out_dir=exp.output_diff_dir("pair"),
        progress=False,
    )
    html = build_report(exp).read_text()
    assert "<h2>Model diff</h2>" in html and "weights: pair" in html and "highest-KL contexts" in html
    assert "<script>alert(1)" not in html and "&lt;script&gt;" in html


def _strip_tokenizer(d):
    from deltalens.models.loading import TOKENIZER_FILES

    for f in (*TOKENIZER_FILES, "special_tokens_map.json", "merges.txt", "chat_template.jinja"):
        (Path(d) / f).unlink(missing_ok=True)
    return d


def test_checkpoints_without_tokenizer_files(dirs, tmp_path, cli):
    """Intermediate checkpoints usually ship no tokenizer: the weight lens reads the other model's, or
    token ids with a warning when neither has one; outputs/activations borrow the other's tokenizer."""
    import shutil

    ft = _strip_tokenizer(shutil.copytree(dirs[1], tmp_path / "ft_notok"))
    r = cli("diff", "weights", dirs[0], str(ft), "--out", str(tmp_path / "w"), "--no-figures")
    assert r.returncode == 0, r.stderr
    lens = json.loads((tmp_path / "w" / "logit_lens.json").read_text())
    toks = [t for t, _ in lens["layers"]["1"]["resid_mean"]["pos"]]
    assert toks and not any(t.startswith("<id ") for t in toks)
    base = _strip_tokenizer(shutil.copytree(dirs[0], tmp_path / "base_notok"))
    r = cli("diff", "weights", str(base), str(ft), "--out", str(tmp_path / "w2"), "--no-figures")
    assert r.returncode == 0, r.stderr
    lens = json.loads((tmp_path / "w2" / "logit_lens.json").read_text())
    assert all(t.startswith("<id ") for t, _ in lens["layers"]["1"]["resid_mean"]["pos"])
    assert "token ids" in r.stdout + r.stderr
    r = cli(
        "diff",
        "weights",
        str(base),
        str(ft),
        "--tokenizer",
        dirs[0],
        "--out",
        str(tmp_path / "w3"),
        "--no-figures",
    )
    assert r.returncode == 0, r.stderr
    lens = json.loads((tmp_path / "w3" / "logit_lens.json").read_text())
    assert not any(t.startswith("<id ") for t, _ in lens["layers"]["1"]["resid_mean"]["pos"])
    texts = tmp_path / "t.txt"
    texts.write_text("The quick brown fox.\n")
    r = cli("diff", "outputs", dirs[0], str(ft), "--data", str(texts), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr


def test_organism_commands(dirs, tmp_path, cli):
    """`organism train` and `organism dpo-series` end to end on a tiny model (D<i> = generated by M<i>)."""
    r = cli(
        "organism",
        "train",
        "--data",
        "ocean_topic",
        "--base",
        dirs[0],
        "--limit",
        "4",
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--max-length",
        "48",
        "--out",
        str(tmp_path / "org"),
    )
    assert r.returncode == 0, r.stderr
    assert "organism" in r.stdout and (tmp_path / "org" / "provenance.json").exists()
    r = cli(
        "organism",
        "train",
        "--data",
        "ocean_topic",
        "--base",
        dirs[0],
        "--limit",
        "4",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--max-length",
        "48",
        "--out",
        str(tmp_path / "org"),
    )
    assert (
        r.returncode == 2 and "max_steps: 1 → 2" in r.stderr
    )  # another recipe into the same directory: refused
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"question": "Hello there"}\n{"question": "Why is the sky blue?"}\n')
    r = cli(
        "organism",
        "dpo-series",
        "--base",
        dirs[0],
        "--scorer",
        "regex:e",
        "--prompts",
        str(prompts),
        "-n",
        "1",
        "--samples",
        "3",
        "--max-new-tokens",
        "8",
        "--out",
        str(tmp_path / "s"),
    )
    assert r.returncode == 0, r.stderr
    assert "D0=" in r.stdout and "D1=" in r.stdout
    assert {p.name for p in (tmp_path / "s").iterdir()} >= {"M1", "D0.jsonl", "D1.jsonl", "series.json"}
    rec = json.loads((tmp_path / "s" / "D1.jsonl").read_text().splitlines()[0])
    assert rec["model"] == "M1" and isinstance(rec["text"], str) and rec["pair_role"] is None
