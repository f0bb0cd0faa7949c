"""``deltalens sae …`` commands, run in process on stores captured from the tiny model."""

from __future__ import annotations

import json

import pytest

import deltalens
from deltalens.cli import main
from deltalens.sae import load_sae


def cli(*args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code


pytestmark = pytest.mark.usefixtures("one_thread")


def test_sae_commands_end_to_end(tiny, tmp_path, capsys):
    from tests_helpers_tiny import perturbed

    texts = [f"some words to encode, sentence {i} of the tiny corpus" for i in range(40)]
    a = tmp_path / "a"
    deltalens.capture(tiny, texts, ["resid.2"], "all", store=a, val_fraction=0.25, progress=False)
    b = tmp_path / "b"
    deltalens.capture(perturbed(tiny), texts, ["resid.2"], "all", store=b, val_fraction=0.25, progress=False)

    assert cli("sae", "train", "--store", a, "--site", "resid.2", "--d-sae", 64, "--k", 4, "--tokens", 1024,
               "--batch-size", 64, "--out", tmp_path / "sae") == 0
    out = capsys.readouterr().out
    assert "trained SAEs" in out and "resid.2" in out
    sae = load_sae(tmp_path / "sae")
    assert sae.site == "resid.2" and sae.d_sae == 64

    assert cli("sae", "eval", tmp_path / "sae", "--store", a) == 0
    ev = json.loads((tmp_path / "sae" / "eval" / "eval.json").read_text())
    assert ev["reconstruction"]["tokens"] > 0 and 0 < ev["reconstruction"]["explained_variance"] <= 1
    assert "explained variance" in capsys.readouterr().out

    assert cli("sae", "iterate", "--store", a, "--store", b, "--site", "resid.2", "--k", 4, "--expansion", 1,
               "--tokens", 640, "--batch-size", 64, "--out", tmp_path / "series") == 0
    assert load_sae(tmp_path / "series" / "M1D1").cfg.metadata["deltalens_parent"] == "M0D0"
    assert "median cos(parent)" in capsys.readouterr().out

    assert cli("sae", "crosscoder", "--store", a, "--store", b, "--site", "resid.2", "--k", 4, "--expansion", 1,
               "--tokens", 640, "--batch-size", 64, "--out", tmp_path / "cc") == 0
    assert "base-only" in capsys.readouterr().out and (tmp_path / "cc" / "crosscoder_weights.safetensors").is_file()

    assert cli("sae", "convert", tmp_path / "sae", "--out", tmp_path / "copy") == 0
    assert load_sae(tmp_path / "copy").d_sae == 64

    # an SAE for another site is refused, naming both sites
    deltalens.capture(tiny, texts[:5], ["resid.1"], "all", store=tmp_path / "c", progress=False)
    assert cli("sae", "eval", tmp_path / "sae", "--store", tmp_path / "c", "--split", "all") == 2
    err = capsys.readouterr().err
    assert "resid.2" in err and "resid.1" in err
    assert cli("sae", "train", "--out", tmp_path / "x") == 2
    assert "--store" in capsys.readouterr().err
