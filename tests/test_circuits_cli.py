"""``deltalens patch`` / ``deltalens attribute`` as a user runs them (subprocess, a tiny
model saved as a Hugging Face directory, a pairs JSONL file, an SAE directory)."""

from __future__ import annotations

import json

import pytest
import torch

from test_circuits import RECS
from test_cli import run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("tiny_model")
    tiny.model.save_pretrained(d)
    tiny.tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("pairs") / "toy.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in RECS))
    return f


def test_patch_and_attribute_commands(model_dir, pairs_file, tmp_path, tiny):
    out = tmp_path / "patch"
    r = run(
        "patch", "--model", str(model_dir), "--pairs", str(pairs_file), "-c", "resid,mlp_out", "-o", str(out)
    )
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "circuits.patching" and res["components"] == ["resid", "mlp_out"]
    # the last layer's residual at the last position carries everything the logit difference reads
    assert res["normalised"][0][-1][-1] == pytest.approx(1.0, abs=1e-4)
    assert (out / "resid.png").stat().st_size > 0 and "top 10 sites" in r.stdout

    from deltalens.sae import SAE, SAEConfig

    sae = SAE(SAEConfig(tiny.d_model, 128, site="resid.2", model_name="tiny-llama"))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.2)
        sae.W_dec.copy_(sae.W_enc.T)
    sae.save(tmp_path / "sae")
    att = tmp_path / "att"
    r = run(
        "attribute",
        "--model",
        str(model_dir),
        "--pairs",
        str(pairs_file),
        "--sae",
        str(tmp_path / "sae"),
        "--compare-exact",
        "--faithfulness",
        "--k",
        "1,3",
        "-o",
        str(att),
    )
    assert r.returncode == 0, r.stderr
    corr = json.loads((att / "correlation.json").read_text())
    assert -1 <= corr["pearson_r"]["all"] <= 1
    top = json.loads((att / "sae_resid2_indirect_denoising" / "top_latents.json").read_text())
    assert len(top) == 25 and top[0]["layer"] == 2 and "description" in top[0]
    summary = json.loads((att / "sae_resid2_indirect_denoising" / "attribution.json").read_text())
    assert summary["error_table"]["with_error"]["max_abs_logit_change_clean"] < 1e-4
    assert "with and without the SAE error term" in r.stdout
    info = run("info", str(att / "results.json"), "--json")
    assert json.loads(info.stdout)["kind"] == "circuits attribution_patching (denoising)"


def test_cli_errors_are_one_line(model_dir, tmp_path, tiny):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(RECS[1]) + "\n" + json.dumps({**RECS[0], "corrupted": "The capital of Paris is"}) + "\n"
    )
    r = run("patch", "--model", str(model_dir), "--pairs", str(bad))
    assert (
        r.returncode == 2 and f"{bad}:2: clean and corrupted prompts have unequal token lengths" in r.stderr
    )
    assert "Traceback" not in r.stderr
    from deltalens.sae import SAE, SAEConfig

    SAE(SAEConfig(tiny.d_model, 32, site="resid.7")).save(tmp_path / "sae7")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(RECS[0]) + "\n")
    r = run("attribute", "--model", str(model_dir), "--pairs", str(good), "--sae", str(tmp_path / "sae7"))
    assert (
        r.returncode == 2 and "SAE site resid.7 does not exist in" in r.stderr and "Traceback" not in r.stderr
    )
