"""``deltalens circuit edges`` as a user runs it (subprocess, a tiny model saved as a Hugging
Face directory, a pairs file, SAE directories with an explanations file), then ``deltalens
info`` and the report section on what it wrote."""

from __future__ import annotations

import json

import pytest

from test_circuits_edges import RECS, SITES, make_sae
from test_cli import run


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("edges_inputs")
    tiny.model.save_pretrained(d / "model")
    tiny.tokenizer.save_pretrained(d / "model")
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECS))
    saes = []
    for i, s in enumerate(SITES[:2]):
        sae = make_sae(tiny, s, i, model_name=str(d / "model"))
        sae.save(d / f"sae{i}")
        saes.append(str(d / f"sae{i}"))
    (d / "sae0" / "explanations.json").write_text(
        json.dumps({str(j): f"latent {j} of resid.0" for j in range(16)})
    )
    return d, saes


def test_circuit_edges_commands_write_circuits_info_and_report(inputs, tmp_path):
    d, saes = inputs
    exp = tmp_path / "exp"
    base = [
        "circuit",
        "edges",
        "--model",
        str(d / "model"),
        "--pairs",
        str(d / "pairs.jsonl"),
        "-e",
        str(exp),
    ]
    r = run(*base, "--method", "eap-ig", "--steps", "3", "--budgets", "1,10,50")
    assert r.returncode == 0, r.stderr
    assert "CPR" in r.stdout and "top path" in r.stdout
    out = next(exp.rglob("edges_eap-ig_denoising"))
    for f in (
        "circuit.json",
        "edges.parquet",
        "circuit.svg",
        "circuit.html",
        "edge_budget.json",
        "top_edges.csv",
    ):
        assert (out / f).stat().st_size > 0, f
    budget = json.loads((out / "edge_budget.json").read_text())
    assert budget["budgets_percent"] == [1.0, 10.0, 50.0]

    r = run(*base, "--method", "feature", "--sae", ",".join(saes), "--max-nodes", "8")
    assert r.returncode == 0, r.stderr
    assert "latent descriptions filled" in r.stdout
    fc = next(exp.rglob("edges_feature_denoising"))
    header = json.loads((fc / "circuit.json").read_text())
    latents = [n for n in header["nodes"] if n["type"] == "latent" and n["site"] == "resid.0"]
    assert latents and all(n["description"] == f"latent {n['index']} of resid.0" for n in latents)
    assert {n["site"] for n in header["nodes"]} >= {"resid.0", "attn_out.1", "logits"}

    from deltalens.info import describe
    from deltalens.report.html import build_report

    info = describe(fc)
    assert info["kind"] == "circuits.circuit" and info["method"] == "feature_edges"
    html = build_report(exp).read_text()
    assert "Circuit edges" in html and "data:image/svg+xml;base64," in html and "CPR" in html


def test_latent_descriptions_from_dashboards(tmp_path):
    from deltalens.circuits.descriptions import latent_descriptions

    dash = tmp_path / "sae" / "dashboards"
    (dash / "features").mkdir(parents=True)
    index = {"kind": "feature dashboards", "features": [{"index": 3, "file": "features/3.json"}]}
    (dash / "index.json").write_text(json.dumps(index))
    rec = {
        "index": 3,
        "pos_str": [" Paris", " Rome"],
        "activations": [{"tokens": ["The", " France"], "maxValueTokenIndex": 1}],
    }
    (dash / "features" / "3.json").write_text(json.dumps(rec))
    assert latent_descriptions(tmp_path / "sae") == {3: "fires on ' France'; promotes ' Paris', ' Rome'"}
    assert latent_descriptions(tmp_path / "elsewhere") == {}
