"""``deltalens circuit transcoders`` and ``deltalens circuit graph`` as a user runs them: a
tiny model saved as a Hugging Face directory, transcoders trained on a text file (resumed per
layer), the graph of one prompt (files, schema, ``deltalens info``) and its bad inputs."""

from __future__ import annotations

import json

import pytest

from test_cli import run

TEXT = "\n".join(
    f"The capital of {c} is {p}. People in {c} like the city of {p} in the sun."
    for c, p in [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo")] * 6
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("graph_inputs")
    tiny.model.save_pretrained(d / "model")
    tiny.tokenizer.save_pretrained(d / "model")
    (d / "corpus.txt").write_text(TEXT)
    return d


def test_transcoders_then_graph_then_info(inputs, tmp_path):
    d = inputs
    tdir = tmp_path / "tc"
    base = ["circuit", "transcoders", "--model", str(d / "model"), "--data", str(d / "corpus.txt")]
    base += ["--tokens", "2048", "--context-len", "16", "--k", "4", "--epochs", "20", "--out", str(tdir)]
    r = run(*base)
    assert r.returncode == 0, r.stderr
    header = json.loads((tdir / "transcoders.json").read_text())
    assert header["kind"] == "circuits.transcoders" and sorted(header["layers"]) == ["0", "1", "2", "3"]
    for m in header["layers"].values():
        assert 0 <= m["nmse"] < 1.0 and 0 < m["l0"] <= 4
    for i in range(4):
        cfg = json.loads((tdir / f"layer_{i}" / "cfg.json").read_text())
        assert cfg["metadata"]["hook_name_out"] == f"blocks.{i}.hook_mlp_out"

    # a run killed after layer 1: only layers 2 and 3 are trained again
    stamp = {i: (tdir / f"layer_{i}" / "sae_weights.safetensors").stat().st_mtime_ns for i in range(4)}
    for i in ("2", "3"):
        del header["layers"][i]
    (tdir / "transcoders.json").write_text(json.dumps(header))
    r = run(*base)
    assert r.returncode == 0, r.stderr
    now = {i: (tdir / f"layer_{i}" / "sae_weights.safetensors").stat().st_mtime_ns for i in range(4)}
    assert now[0] == stamp[0] and now[1] == stamp[1] and now[2] != stamp[2] and now[3] != stamp[3]
    # a resume under other settings is refused
    r = run(*[a if a != "4" else "8" for a in base])
    assert r.returncode == 2 and "another configuration" in r.stderr and "Traceback" not in r.stderr

    out = tmp_path / "graph"
    g = ["circuit", "graph", "--model", str(d / "model"), "--transcoders", str(tdir)]
    g += ["--prompt", "The capital of France is", "--max-feature-nodes", "16", "--batch-size", "8"]
    r = run(*g, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "top path" in r.stdout and "replacement" in r.stdout
    for f in ("graph.json", "circuit.json", "edges.parquet", "circuit.svg", "graph_summary.json"):
        assert (out / f).stat().st_size > 0, f
    from deltalens.circuits.graph_json import validate_graph_json

    doc = json.loads((out / "graph.json").read_text())
    validate_graph_json(doc)
    assert doc["metadata"]["prompt"] == "The capital of France is"
    summary = json.loads((out / "graph_summary.json").read_text())
    path = summary["top_path"]
    assert path[-1]["type"] == "logit" and path[0]["type"] in ("token", "latent", "error")
    assert 0 < summary["scores"]["completeness"] <= 1

    from deltalens.info import describe

    info = describe(tdir)
    assert info["kind"] == "circuits.transcoders" and info["layers"] == "4/4"
    assert describe(out)["kind"] == "circuits.circuit"


def test_graph_bad_inputs(inputs, tmp_path):
    d = inputs
    r = run("circuit", "graph", "--model", str(d / "model"), "--transcoders", str(tmp_path / "none"))
    assert r.returncode == 2 and "no transcoders here" in r.stderr and "Traceback" not in r.stderr
    r = run("circuit", "graph", "--transcoders", str(tmp_path), "--node-threshold", "2")
    assert r.returncode == 2 and "--node-threshold" in r.stderr
    assert not any(tmp_path.iterdir())
