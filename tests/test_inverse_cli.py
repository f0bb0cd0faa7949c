"""``deltalens inverse …`` as a user runs it: a config file (relative paths), the batch run, stage
commands that load finished stages, shortcut flags, and ``deltalens info`` of the artifacts."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from deltalens.cli import main
from test_inverse_pipeline import inputs  # noqa: F401  (the module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(capsys, *argv) -> str:
    capsys.readouterr()
    try:
        main(list(argv))
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr()
    return capsys.readouterr().out


def test_run_then_stage_commands_and_info(inputs, tmp_path, capsys):  # noqa: F811
    for k in ("model", "sae"):
        shutil.copytree(inputs[k], tmp_path / k)
    shutil.copy(inputs["prompts"], tmp_path / "prompts.txt")
    cfg = {
        "name": "demo",
        "model": "model",
        "sae": "sae",
        "data": {"sources": ["prompts.txt"], "filtering": {"sparsity_min": 0.05, "sparsity_max": 0.95}},
        "clustering": {"n_neighbors": 5, "min_cluster_size": 2, "min_samples": 1},
        "optimization": {"length": 3, "steps": 2, "population": 2, "candidates": 4, "max_latents": 2},
        "explanation": {"n_explain": 2, "n_score_top": 1, "n_score_random": 2},
        "pipeline": {"run_visualization": False},
        "output": {"dir": "run"},
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    out = _cli(capsys, "inverse", "run", "--config", str(tmp_path / "exp.yaml"))
    run = tmp_path / "run"
    assert "stages computed: collect, filter, cluster, select, optimize, explain" in out
    assert "optimised prompts" in out and "found (survives" in out and "explanations" in out
    assert not (run / "viz").exists()  # its flag is off
    out = _cli(capsys, "inverse", "viz", "--config", str(tmp_path / "exp.yaml"))
    assert "stages computed: viz;" in out and (run / "viz" / "cluster_map.html").is_file()
    assert "loaded from cache: cluster, select, optimize, explain" in out
    # a stage command with a --set override recomputes that stage only
    out = _cli(capsys, "inverse", "cluster", "-c", str(tmp_path / "exp.yaml"), "--set", "clustering.seed=1")
    assert "stages computed: cluster, select;" in out and "collect" not in out.split("loaded")[0]
    # shortcut flags, no config file: explicit latents
    out = _cli(
        capsys, "inverse", "optimize", "--model", str(tmp_path / "model"), "--sae", str(tmp_path / "sae"),
        "--prompts", str(tmp_path / "prompts.txt"), "--latent", "3,5", "--set", "optimization.steps=1",
        "--set", "optimization.length=3", "--out", str(tmp_path / "flags"),
    )  # fmt: skip
    summ = json.loads((tmp_path / "flags" / "optimize" / "optimize_summary.json").read_text())
    assert [r["latent"] for r in summ["rows"]] == [3, 5]
    for path, kind in (
        (run, "inverse run"),
        (run / "collect", "inverse collection"),
        (run / "cluster" / "analysis.json", "inverse cluster analysis"),
        (run / "select", "inverse selection"),
        (run / "optimize", "inverse optimisation summary"),
        (run / "explain", "inverse explanations"),
    ):
        out = _cli(capsys, "info", str(path))
        assert kind in out, (path, out)
