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

    assert (
        cli(
            "sae",
            "train",
            "--store",
            a,
            "--site",
            "resid.2",
            "--d-sae",
            64,
            "--k",
            4,
            "--tokens",
            1024,
            "--batch-size",
            64,
            "--out",
            tmp_path / "sae",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "trained SAEs" in out and "resid.2" in out
    sae = load_sae(tmp_path / "sae")
    assert sae.site == "resid.2" and sae.d_sae == 64

    assert cli("sae", "eval", tmp_path / "sae", "--store", a) == 0
    ev = json.loads((tmp_path / "sae" / "eval" / "eval.json").read_text())
    assert ev["reconstruction"]["tokens"] > 0 and 0 < ev["reconstruction"]["explained_variance"] <= 1
    assert "explained variance" in capsys.readouterr().out

    assert (
        cli(
            "sae",
            "iterate",
            "--store",
            a,
            "--store",
            b,
            "--site",
            "resid.2",
            "--k",
            4,
            "--expansion",
            1,
            "--tokens",
            640,
            "--batch-size",
            64,
            "--out",
            tmp_path / "series",
        )
        == 0
    )
    assert load_sae(tmp_path / "series" / "M1D1").cfg.metadata["deltalens_parent"] == "M0D0"
    assert "median cos(parent)" in capsys.readouterr().out

    assert (
        cli(
            "sae",
            "crosscoder",
            "--store",
            a,
            "--store",
            b,
            "--site",
            "resid.2",
            "--k",
            4,
            "--expansion",
            1,
            "--tokens",
            640,
            "--batch-size",
            64,
            "--out",
            tmp_path / "cc",
        )
        == 0
    )
    assert (
        "base-only" in capsys.readouterr().out
        and (tmp_path / "cc" / "crosscoder_weights.safetensors").is_file()
    )

    assert cli("sae", "convert", tmp_path / "sae", "--out", tmp_path / "copy") == 0
    assert load_sae(tmp_path / "copy").d_sae == 64

    # an SAE for another site is refused, naming both sites
    deltalens.capture(tiny, texts[:5], ["resid.1"], "all", store=tmp_path / "c", progress=False)
    assert cli("sae", "eval", tmp_path / "sae", "--store", tmp_path / "c", "--split", "all") == 2
    err = capsys.readouterr().err
    assert "resid.2" in err and "resid.1" in err
    assert cli("sae", "train", "--out", tmp_path / "x") == 2
    assert "--store" in capsys.readouterr().err


def _tiny_store(tiny, path):
    texts = [f"some words to encode, sentence {i} of the tiny corpus" for i in range(40)]
    return deltalens.capture(tiny, texts, ["resid.2"], "all", store=path, val_fraction=0.25, progress=False)


def test_resume_under_other_settings_is_refused(tiny, tmp_path, capsys):
    """Regression: a checkpoint made with --k 4 was silently continued with --k 8, and one made
    with --d-sae 64 died with a size-mismatch traceback under --d-sae 32."""
    from deltalens.sae import SAETrainConfig, Trainer
    from deltalens.sae.sources import TensorSource

    store = _tiny_store(tiny, tmp_path / "st")
    out = tmp_path / "run"
    # a checkpoint as `sae train --d-sae 64 --k 4 --tokens 1024 --batch-size 64` leaves it when interrupted
    t = Trainer(SAETrainConfig(d_sae=64, k=4, total_tokens=1024, batch_size=64), 64, site="resid.2", out=out)
    x = store.read("resid.2")
    t.initialize(x)
    it = TensorSource(x).batches(64)
    for _ in range(3):
        t.step(next(it))
    ck = t.checkpoint()
    before = sorted(p.name for p in ck.iterdir())
    base = [
        "sae",
        "train",
        "--store",
        store.path,
        "--site",
        "resid.2",
        "--tokens",
        1024,
        "--batch-size",
        64,
        "--out",
        out,
    ]
    capsys.readouterr()
    assert cli(*base, "--d-sae", 64, "--k", 8) == 2
    err = capsys.readouterr().err
    assert (
        "another configuration" in err
        and "k: 4 → 8" in err
        and "--overwrite" in err
        and "Traceback" not in err
    )
    assert cli(*base, "--d-sae", 32, "--k", 4) == 2
    err = capsys.readouterr().err
    assert "d_sae: 64 → 32" in err and "Traceback" not in err
    assert sorted(p.name for p in ck.iterdir()) == before and not (out / "cfg.json").exists()
    # the same settings continue the checkpoint; --overwrite starts afresh under new ones
    assert cli(*base, "--d-sae", 64, "--k", 4) == 0
    from deltalens.sae import SAETrainResult

    res = SAETrainResult.load(out)
    assert res.tokens == 1024 and res.config.k == 4 and res.sae is not None and res.sae.d_sae == 64
    assert (
        cli(*base, "--d-sae", 32, "--k", 8) == 2
    )  # a finished SAE is not replaced under other settings either
    assert "d_sae: 64 → 32" in capsys.readouterr().err
    assert cli(*base, "--d-sae", 32, "--k", 8, "--overwrite") == 0
    assert load_sae(out).d_sae == 32 and SAETrainResult.load(out).config.k == 8


def _series(tiny, root):
    """A dpo-series directory: M0/, M1/ (HF dirs) and D0/D1.jsonl (what each generated)."""
    from deltalens.io import write_json
    from tests_helpers_tiny import perturbed
    from tiny import save_tiny

    root.mkdir(parents=True)
    save_tiny(tiny, root / "M0")
    save_tiny(perturbed(tiny, scale=0.2), root / "M1")
    for i in range(2):
        with open(root / f"D{i}.jsonl", "w") as f:
            for j in range(12):
                rec = (
                    {
                        "iteration": i,
                        "question": f"what is {j} plus {i}?",
                        "response": f"the answer is {i + j}, of course",
                    }
                    if j % 2
                    else {"text": f"model {i} wrote sequence number {j} about the quick brown fox"}
                )
                f.write(json.dumps(rec) + "\n")
    write_json(root / "series.json", {"kind": "dpo_series", "name": root.name})
    return root


def test_iterate_reads_a_series_directory(tiny, tmp_path, capsys):
    """Regression: `sae iterate` took only stores; it now reads M<i>/ + D<i>.jsonl of a series
    and trains the seed's runs (both branches: M0D0, M1D1, M0D1) by default."""
    from deltalens.experiment import Experiment
    from deltalens.sae.iterative import SAEIterateResult, discover_series, series_windows

    exp = Experiment.named("itx")
    root = _series(tiny, exp.series_dir("dpo"))
    models, data = discover_series(root)
    assert sorted(models) == [0, 1] and sorted(data) == [0, 1]
    w = series_windows(tiny, data[1], context_len=48)
    assert len(w) == 12 and all(len(x["prompt_ids"]) + len(x["response_ids"]) <= 48 for x in w)
    assert any(x["response_ids"] for x in w)  # question + response records keep their parts
    args = [
        "--site",
        "resid.2",
        "--k",
        4,
        "--expansion",
        1,
        "--tokens",
        256,
        "--batch-size",
        64,
        "--context-len",
        48,
    ]
    assert cli("sae", "iterate", "--series", "dpo", "-e", "itx", *args) == 0
    out = exp.sae_series_dir("dpo")
    res = SAEIterateResult.load(out)
    assert sorted(res.names) == ["M0D0", "M0D1", "M1D1"] and res.names[0] == "M0D0"
    assert {r["name"]: r["parent"] for r in res.runs} == {"M0D0": None, "M1D1": "M0D0", "M0D1": "M0D0"}
    assert load_sae(out / "M1D1").cfg.metadata["deltalens_parent"] == "M0D0"
    assert res.runs[res.names.index("M1D1")]["model"].endswith("M1") and res.runs[-1]["data"].endswith(
        "D1.jsonl"
    )
    assert "M0D1" in capsys.readouterr().out
    # explicit runs, from a directory path; finished runs with the same settings are kept, not retrained
    mtime = (out / "M0D0" / "sae_weights.safetensors").stat().st_mtime_ns
    assert cli("sae", "iterate", "--series", root, "--names", "M0D0,M1D0", "--out", out, *args) == 0
    assert (out / "M0D0" / "sae_weights.safetensors").stat().st_mtime_ns == mtime
    assert load_sae(out / "M1D0").cfg.metadata["deltalens_parent"] == "M0D0"
    capsys.readouterr()
    assert cli("sae", "iterate", "--series", root, "--names", "M2D0", "--out", out, *args) == 2
    assert "needs model M2" in capsys.readouterr().err
