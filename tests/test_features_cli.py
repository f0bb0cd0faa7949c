"""The features CLI as a user runs it (subprocess, tiny model on disk) and the demo stage."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from deltalens.experiment import Experiment
from deltalens.features import RECORD_KEYS, SPECIFIC_COLUMNS, UNIVERSAL_COLUMNS
from features_helpers import ASST, planted_sae

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


def run_here(capsys, *args):
    """The same CLI in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from deltalens.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def on_disk(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiny.model.save_pretrained(root / "model")
    tiny.tokenizer.save_pretrained(root / "model")
    noise = [
        tiny.tokenizer.convert_tokens_to_ids(tiny.tokenizer.tokenize(w)[0]) for w in [" the", " is", "?"]
    ]
    sae, info = planted_sae(tiny, noise)
    sae.save(root / "sae")
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"content": q, "label": lab}) + "\n"
            for q, lab in [
                ("What is the capital of France?", "geo"),
                ("Why is the sky blue?", "science"),
                ("Tell me a story.", "creative"),
            ]
        )
    )
    return root, info


def test_both_writes_the_seed_outputs(on_disk):
    root, info = on_disk
    feats = root / "features.csv"
    feats.write_text("feature_id,source\n0,smol_trainer3_layer0\n1,smol_trainer3_layer0\n")
    out = root / "results"
    r = run(
        "features",
        "both",
        "--sae",
        f"smol_trainer3_layer0={root / 'sae'}",
        "--model",
        str(root / "model"),
        "--prompts-path",
        str(root / "prompts.jsonl"),
        "--threshold",
        "0.3",
        "--activation-threshold",
        "0.01",
        "--features-csv",
        str(feats),
        "--universal-output",
        str(out / "universal.csv"),
        "--specific-output",
        str(out / "specific.csv"),
        "--record-prompts",
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    with open(out / "universal.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == UNIVERSAL_COLUMNS
    assert [(x[0], x[4], x[5], x[6]) for x in rows[1:]] == [(str(ASST), "3", "smol_trainer3_layer0", "asst")]
    with open(out / "specific.csv", newline="") as fh:
        srows = list(csv.DictReader(fh))
    assert list(srows[0]) == SPECIFIC_COLUMNS and len(srows) == 3 * 2 * 2  # prompts × features × token types
    recs = [json.loads(x) for x in (out / "specific_activeprompts.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(tuple(x) == RECORD_KEYS for x in recs)
    assert {(x["model"], x["layer"], x["feature_id"], x["token_type"]) for x in recs} == {
        ("smol", 0, 0, "asst")
    }
    assert (out / "universal_activeprompts.jsonl").exists()
    assert "universal features" in r.stdout and "smol_trainer3_layer0" in r.stdout
    from deltalens.info import describe

    d = describe(out / "universal.csv")
    assert (
        d["kind"] == "universal features CSV"
        and d["rows"] == 1
        and d["active_prompts"].endswith("universal_activeprompts.jsonl")
    )
    assert describe(out / "specific.csv")["kind"] == "specific features CSV"


def test_cli_errors_are_one_line(on_disk, capsys):
    root, _ = on_disk
    empty = root / "empty.jsonl"
    empty.write_text("")
    r = run(
        "features",
        "universal",
        "--sae",
        str(root / "sae"),
        "--model",
        str(root / "model"),
        "--prompts-path",
        str(empty),
        "--universal-output",
        str(root / "u.csv"),
        cwd=root,
    )
    assert r.returncode == 2 and f"{empty}: no prompts found (the file is empty)" in r.stderr
    assert "Traceback" not in r.stderr and not (root / "u.csv").exists()
    feats = root / "bad.csv"
    feats.write_text("feature_id,source\n0,tiny_trainer0_layer0\n9999,tiny_trainer0_layer0\n")
    code, _, err = run_here(
        capsys,
        "features",
        "specific",
        "--sae",
        str(root / "sae"),
        "--model",
        str(root / "model"),
        "--model-alias",
        "tiny",
        "--features-csv",
        str(feats),
        "--prompts-path",
        str(root / "prompts.jsonl"),
        "--specific-output",
        str(root / "s.csv"),
    )
    assert code == 2 and "Traceback" not in err
    assert (
        f"{feats}:3: feature_id 9999 is out of range for tiny_trainer0_layer0 (d_sae=6: valid ids 0..5)"
        in " ".join(err.split())
    )
    assert not (root / "s.csv").exists()
    code, _, err = run_here(
        capsys, "features", "specific", "--sae", str(root / "sae"), "--model", str(root / "model")
    )
    assert code == 2 and "needs --features-csv" in err


def test_firing_dashboard_and_evolution_commands(on_disk, capsys):
    root, _ = on_disk
    data = root / "pairs.jsonl"
    data.write_text(
        json.dumps({"question": "Why is the sky blue?", "response": "assistant says the sky is blue?"})
        + "\n"
        + json.dumps({"question": "Hello", "response": "Hi, the end."})
        + "\n"
    )
    code, out, err = run_here(
        capsys,
        "features",
        "firing",
        "--sae",
        str(root / "sae"),
        "--model",
        str(root / "model"),
        "--data",
        str(data),
        "--out",
        str(root / "firing.safetensors"),
    )
    assert code == 0, err
    from deltalens.features import FiringStats

    st = FiringStats.load(root / "firing.safetensors")
    assert st.dead.nonzero().flatten().tolist() == [2] and st.prompt_only.nonzero().flatten().tolist() == [1]
    assert (root / "firing.parquet").exists()
    code, out, err = run_here(
        capsys,
        "features",
        "dashboard",
        "--sae",
        str(root / "sae"),
        "--model",
        str(root / "model"),
        "--data",
        str(data),
        "--features",
        "0,1",
        "--out",
        str(root / "dash"),
    )
    assert code == 0, err
    d = json.loads((root / "dash" / "features" / "0.json").read_text())
    assert d["index"] == 0 and d["activations"] and d["pos_str"]
    code, out, err = run_here(
        capsys,
        "features",
        "evolution",
        "--sae",
        f"M0={root / 'sae'}",
        "--sae",
        f"M1={root / 'sae'}",
        "--model",
        str(root / "model"),
        "--data",
        str(data),
        "--out",
        str(root / "evo"),
    )
    assert code == 0, err
    assert "latents by status" in out
    summary = json.loads((root / "evo" / "summary.json").read_text())
    assert summary["iterations"] == ["M0", "M1"] and summary["status_counts"]["dead"] == 1
    assert summary["status_counts"]["stable"] == 5
    from deltalens.info import describe

    assert describe(root / "firing.safetensors")["kind"] == "SAE firing statistics"
    assert describe(root / "firing.safetensors")["prompt_only"] == 1
    assert describe(root / "dash")["latents"] == 2
    assert describe(root / "evo")["status_counts"]["dead"] == 1


def test_demo_stage_runs_and_skips(tiny, tmp_path):
    from deltalens.demo import DemoContext
    from deltalens.demo.features import STAGE

    console = Console(record=True, width=200)
    ctx = DemoContext(lm=tiny, exp=Experiment(tmp_path / "demo"), console=console, fast=True)
    STAGE.run(ctx)
    assert "skipped" in console.export_text(clear=False) and "sae stage" in console.export_text(clear=False)
    noise = [
        tiny.tokenizer.convert_tokens_to_ids(tiny.tokenizer.tokenize(w)[0]) for w in [" the", " is", "?"]
    ]
    sae, _ = planted_sae(tiny, noise)
    ctx.state.update(sae=sae, sae_site="embed")
    ctx.state["generations"] = [
        {"question": "Why is the sky blue?", "response": "assistant: it scatters the light."},
        {"question": "Hello", "response": "assistant<script>alert(1)</script>"},
    ]
    STAGE.run(ctx)
    text = console.export_text(clear=False)
    assert "most universal latents of tiny_trainer0_layer0" in text and "24/24" in text
    assert "1 dead latents" in text and "prompt-only" in text
    assert ctx.exp.universal_features_path("demo_universal").exists()
    assert list(ctx.state["universal_features"].feature_id) == [ASST]
    assert (ctx.exp.dashboard_dir("tiny_trainer0_layer0", "demo_questions") / "index.json").exists()
    # the report renders the feature section, escaping model/data text
    from deltalens.report.html import render_report

    html = render_report(ctx.exp)
    assert "SAE features" in html and "tiny_trainer0_layer0" in html and "universal features" in html
    assert "background:rgba(255,140,0,1.00)" in html  # the firing token of a top example
    assert "<script>alert" not in html and "&lt;" in html


def _dictionary_learning_dir(sae, root: Path, trainer: int, lm_name: str) -> Path:
    """The planted SAE as a dictionary_learning trainer directory (``trainer_<n>/ae.pt`` + ``config.json``)."""
    import torch

    d = root / "resid_post_layer_0" / f"trainer_{trainer}"
    d.mkdir(parents=True)
    torch.save(
        {
            "encoder.weight": sae.W_enc.detach().T.contiguous(),
            "encoder.bias": sae.b_enc.detach(),
            "decoder.weight": sae.W_dec.detach().T.contiguous(),
            "bias": sae.b_dec.detach(),
        },
        d / "ae.pt",
    )
    (d / "config.json").write_text(
        json.dumps(
            {
                "trainer": {
                    "dict_class": "AutoEncoder",
                    "submodule_name": "embed",
                    "lm_name": lm_name,
                    "layer": 0,
                }
            }
        )
    )
    return d


def test_universal_reads_dictionary_learning_trainers(on_disk, tiny, capsys, tmp_path):
    """The seed's SAEs are dictionary_learning trainers: read them, and name the source with
    the trainer index of their ``trainer_<n>`` directory."""
    root, info = on_disk
    from deltalens.sae import load_sae

    d = _dictionary_learning_dir(load_sae(root / "sae"), tmp_path / "dl", 2, str(root / "model"))
    out = tmp_path / "u.csv"
    code, stdout, err = run_here(
        capsys,
        "features",
        "universal",
        "--sae",
        str(d),
        "--model-alias",
        "smol",
        "--prompts-path",
        str(root / "prompts.jsonl"),
        "--threshold",
        "0.3",
        "--universal-output",
        str(out),
    )
    assert code == 0, err
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(int(r["feature_id"]), r["source"], r["token"]) for r in rows] == [
        (ASST, "smol_trainer2_layer0", "asst")
    ]
    from deltalens.features import UniversalFeatures

    back = UniversalFeatures.load(out)
    assert back.table.source.tolist() == ["smol_trainer2_layer0"] and back.n_prompts == 3


def test_weights_command_writes_table_and_header(on_disk, capsys, tmp_path):
    root, _ = on_disk
    code, out, err = run_here(
        capsys,
        "features",
        "weights",
        "--sae",
        f"M1={root / 'sae'}",
        "--reference",
        str(root / "sae"),
        "--out",
        str(tmp_path / "w.parquet"),
    )
    assert code == 0, err
    from deltalens.features import WeightMetrics

    m = WeightMetrics.load(tmp_path / "w.parquet")
    assert (
        m.d_sae == 6
        and m.meta["config"]["sae"].startswith("M1=")
        and bool((m.dec_cos_ref[[0, 1]] > 0.999).all())
    )
    assert "weight metrics of" in out and (tmp_path / "w.json").is_file()
