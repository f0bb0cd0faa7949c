"""Through the CLI on a tiny random base/instruct pair: natural vectors extracted from the base
model (``--model-variant base``, named in the experiment's config.yaml) and applied to the
instruct model; ``extract --rollouts N``; ``deltalens combine`` (all four strategies)."""

from __future__ import annotations

import json

import pytest
import yaml

from deltalens.vectors import VectorSet
from test_steer_cli import run

POS = "response[:3]"

pytestmark = pytest.mark.slow  # CLI subprocesses + offline-judge training: ~3.5 min on 2 cores


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from tiny import tiny_model

    root = tmp_path_factory.mktemp("pair")
    dirs = {}
    for variant, seed in (("base", 1), ("instruct", 2)):
        lm = tiny_model("llama", seed=seed)
        d = root / f"tiny-{variant}"
        lm.model.save_pretrained(d)
        lm.tokenizer.save_pretrained(d)
        dirs[variant] = d
    exp = root / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(
        yaml.safe_dump(
            {"name": "exp", "models": {k: str(v) for k, v in dirs.items()}, "application": "instruct"}
        )
    )
    return root, dirs, exp


def _extract(exp, trait, variant, *extra):
    r = run(
        "extract", "-e", str(exp), "--trait", trait, "--model-variant", variant, "--position", POS,
        "--methods", "mean_diff", "--layers", "1-2", "--max-new-tokens", "4", *extra,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r


def test_base_variant_vectors_are_applied_to_the_instruct_model(pair):
    from deltalens.models import load

    _, dirs, exp = pair
    _extract(exp, "natural/pirate", "base")
    vdir = exp / "vectors" / "natural" / "pirate" / "base" / "response__3" / "resid" / "mean_diff"
    vs = VectorSet.load(vdir)
    base_hash, inst_hash = load(str(dirs["base"])).weights_hash, load(str(dirs["instruct"])).weights_hash
    assert base_hash != inst_hash
    assert {v.meta.get("weights_hash") for v in vs.values()} == {base_hash}  # extracted from the base model
    r = run(
        "steer", "-e", str(exp), "--vector-from-trait", "natural/pirate", "--extraction-variant", "base",
        "--position", POS, "--method", "mean_diff", "--layers", "1", "--coefficients", "0.1",
        "--subset", "2", "--max-new-tokens", "3",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    log = exp / "steering" / "natural" / "pirate" / "base" / "response__3" / "results.jsonl"
    recs = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    assert {x["weights_hash"] for x in recs} == {inst_hash}  # steering ran on the instruct model
    single = [x for x in recs if x["kind"] == "single"]
    assert single and single[0]["terms"][0]["vector"]["fingerprint"] == vs[1].fingerprint()
    assert any(x["kind"] == "prompted" for x in recs)  # the prompting baseline (instruction counterpart)


def test_extract_rollouts_through_the_cli(pair):
    _, _, exp = pair
    _extract(exp, "instruction/pirate", "instruct", "--rollouts", "2", "--seed", "3", "--regenerate")
    rdir = exp / "responses" / "instruction" / "pirate" / "instruct"
    pos = [json.loads(x) for x in (rdir / "pos.jsonl").read_text().splitlines() if x.strip()]
    n = 44  # scenarios per polarity
    assert len(pos) == 2 * n
    per = {}
    for g in pos:
        per.setdefault(g.get("index", g.get("scenario")), set()).add(g["rollout"])
    assert len(per) == n and all(v == {0, 1} for v in per.values())
    vs = VectorSet.load(
        exp / "vectors" / "instruction" / "pirate" / "instruct" / "response__3" / "resid" / "mean_diff"
    )
    assert vs[1].meta.get("n_pos") == 2 * n or vs[1].meta.get("rollouts") == 2


def test_combine_all_four_strategies_through_the_cli(pair):
    _, _, exp = pair
    common = ["--method", "mean_diff", "--layers", "1,2", "--coefficients", "0.05,0.1", "--subset", "2",
              "--max-new-tokens", "3"]  # fmt: skip
    for trait, variant in (("natural/pirate", "base"), ("instruction/pirate", "instruct")):
        if not (exp / "vectors" / trait / variant / "response__3").is_dir():
            _extract(exp, trait, variant)
        r = run("steer", "-e", str(exp), "--vector-from-trait", trait, "--extraction-variant", variant,
                "--position", POS, *common)  # fmt: skip
        assert r.returncode == 0, r.stderr
    r = run(
        "combine", "-e", str(exp), "--natural", "natural/pirate", "--natural-variant", "base",
        "--natural-position", POS, "--instruction", "instruction/pirate", "--instruction-variant", "instruct",
        "--instruction-position", POS, "--subset", "2", "--max-new-tokens", "3", "--multipliers", "0.5,1.0",
        "--min-coherence", "0",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads(next((exp / "steering").rglob("combinations.json")).read_text())
    configs = [row["config"] for row in res["rows"]]
    for k in (1, 2, 3, 4):
        assert any(f"strategy {k}" in c for c in configs), configs
    assert any("best single" in c for c in configs)
    s4 = next(row for row in res["rows"] if "strategy 4" in row["config"])
    assert "+" in str(s4["layers"])  # the ensemble steers two layers
