"""Bad input across the CLI: each case exits with status 2, prints one line on stderr that names
the file/line/value at fault, shows no traceback, and leaves the output tree unchanged byte for byte.

Cases run in-process (``deltalens.cli.main``) on tiny random models saved to disk, so the table
stays fast. A case is ``Case(id, argv, expect, setup)``: ``setup(tmp)`` writes the inputs and
returns a dict of names → paths that ``argv`` may use as ``{name}``; ``expect`` is a substring
the error line must contain (after ``{name}`` substitution).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deltalens.cli import main


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: str
    setup: Callable[[Path], dict[str, str]] = field(default=lambda tmp: {})


def tree_digest(root: Path) -> dict[str, str]:
    """``relative path → sha256`` of every file below ``root`` (directories as ``<dir>``)."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_case(case: Case, tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str, str]:
    names = {"tmp": str(tmp), **case.setup(tmp)}
    argv = [a.format(**names) for a in case.argv]
    before = tree_digest(tmp)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    after = tree_digest(tmp)
    assert after == before, f"{case.id}: the output tree changed: {sorted(set(after) ^ set(before)) or 'contents'}"
    return int(exc.value.code or 0), out, err.strip(), case.expect.format(**names)


# ---- the table ----------------------------------------------------------------------------------
# Each area appends its cases in its own section below; keep them small (tiny models, short inputs).

CASES: list[Case] = []

# == core (capture, generate, info, stores) ==

# == steering ==

# == diffing ==

# == SAEs ==


def _corrupt_sae(tmp: Path) -> dict[str, str]:
    """A SAELens directory whose weights file is not safetensors, and a store-like directory."""
    import json

    d = tmp / "inputs" / "sae"
    d.mkdir(parents=True)
    (d / "cfg.json").write_text(json.dumps({"architecture": "topk", "d_in": 8, "d_sae": 16, "k": 2}))
    (d / "sae_weights.safetensors").write_bytes(b"this is not a safetensors file")
    return {"sae": str(d)}


def _series_without_models(tmp: Path) -> dict[str, str]:
    d = tmp / "inputs" / "series"
    d.mkdir(parents=True)
    (d / "D0.jsonl").write_text('{"text": "a generated sequence"}\n')
    return {"series": str(d)}


_TRAIN = ["sae", "train", "--store", "{tmp}/no_store", "--out", "{tmp}/out"]
CASES += [
    Case("sae-train-k0", [*_TRAIN, "--k", "0"], "--k must be ≥ 1, got 0"),
    Case("sae-train-k-list-0", [*_TRAIN, "--k", "16,0"], "--k must be ≥ 1, got 0"),
    Case("sae-train-k-not-int", [*_TRAIN, "--k", "16,x"], "--k: cannot read '16,x'"),
    Case("sae-train-expansion0", [*_TRAIN, "--expansion", "0"], "--expansion must be ≥ 1, got 0"),
    Case("sae-train-batch0", [*_TRAIN, "--batch-size", "0"], "--batch-size must be ≥ 1, got 0"),
    Case("sae-train-tokens0", [*_TRAIN, "--tokens", "0"], "--tokens must be ≥ 1, got 0"),
    Case("sae-train-lr0", [*_TRAIN, "--lr", "0"], "--lr must be > 0, got 0.0"),
    Case("sae-train-arch", [*_TRAIN, "--arch", "gated"], "unknown SAE architecture 'gated'"),
    Case("sae-train-no-store", _TRAIN, "{tmp}/no_store: not an activation store"),
    Case("sae-train-no-data", ["sae", "train", "--out", "{tmp}/out"], "give exactly one of --store DIR or --data CORPUS"),
    Case("sae-eval-corrupt-weights", ["sae", "eval", "{sae}", "--store", "{tmp}/no_store"],
         "not a valid SAE: {sae}/sae_weights.safetensors (", _corrupt_sae),
    Case("sae-eval-not-an-sae", ["sae", "eval", "{tmp}", "--store", "{tmp}/no_store"], "not a valid SAE: {tmp} ("),
    Case("sae-eval-windows0", ["sae", "eval", "{tmp}", "--data", "x.txt", "--windows", "0"], "--windows must be ≥ 1, got 0"),
    Case("sae-eval-nothing", ["sae", "eval", "{tmp}"], "give --store (reconstruction metrics) and/or --data"),
    Case("sae-iterate-bad-name", ["sae", "iterate", "--series", "{tmp}", "--names", "M0D0,X1"], "--names: 'X1' is not a run name"),
    Case("sae-iterate-branch", ["sae", "iterate", "--series", "{tmp}", "--branch", "MX"], "--branch must be one of MD, M0D, both"),
    Case("sae-iterate-no-series", ["sae", "iterate", "--series", "{tmp}/nope", "--out", "{tmp}/out"], "{tmp}/nope: not a series directory"),
    Case("sae-iterate-no-model", ["sae", "iterate", "--series", "{series}", "--out", "{tmp}/out"],
         "no iteration with both a model and data", _series_without_models),
    Case("sae-iterate-nothing", ["sae", "iterate"], "give --series DIR_OR_NAME, or one --store per run"),
    Case("sae-crosscoder-one-store", ["sae", "crosscoder", "--store", "{tmp}", "--out", "{tmp}/out"], "at least two --store"),
]

# == features ==

# == circuits ==


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err, expect = run_case(case, tmp_path, capsys)
    assert code == 2, f"{case.id}: exit {code}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"{case.id}: expected one line on stderr, got {len(lines)}:\n{err}"
    assert expect in err, f"{case.id}: {expect!r} not in {err!r}"


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 0  # raised to 40 once every area has added its cases

# == probes ==


def _probe_inputs(tmp: Path, metrics: str = "id,score\ns0,1.0\ns1,2.0\ns2,3.0\ns3,4.0\ns4,5.0\ns5,6.0\n") -> dict[str, str]:
    """Sequences (a D<i>-style JSONL with ids), a metrics CSV and a placeholder SAE path."""
    import json

    d = tmp / "inputs"
    d.mkdir(parents=True, exist_ok=True)
    (d / "D1.jsonl").write_text("".join(json.dumps({"id": f"s{i}", "question": "q", "response": f"answer {i}"}) + "\n"
                                        for i in range(6)))
    (d / "m.csv").write_text(metrics)
    return {"seqs": str(d / "D1.jsonl"), "metrics": str(d / "m.csv"), "sae": str(d / "sae")}


def _probe_fit_dir(tmp: Path) -> dict[str, str]:
    """A saved `probes fit` output over a 12-latent table, and an SAE of another width."""
    import numpy as np
    import pandas as pd

    from deltalens.probes import ProbeFitConfig, fit_table, table_from_arrays
    from deltalens.sae import SAE, SAEConfig
    from deltalens.sae.io import save_sae

    rng = np.random.default_rng(0)
    X = (rng.random((40, 12)) < 0.4) * rng.exponential(1.0, (40, 12))
    df = pd.DataFrame({"id": [str(i) for i in range(40)], "score": X[:, 2] + rng.normal(0, 0.1, 40)})
    res = fit_table(table_from_arrays(X), df, ProbeFitConfig(methods=["diff_mean"], folds=3, controls=False))
    res.save(tmp / "inputs" / "probe")
    save_sae(SAE(SAEConfig(8, 24, "topk", k=2, site="resid.1")), tmp / "inputs" / "sae24")
    return {"probe": str(tmp / "inputs" / "probe"), "sae": str(tmp / "inputs" / "sae24")}


def _probe_model_and_narrow_sae(tmp: Path) -> dict[str, str]:
    from deltalens.sae import SAE, SAEConfig
    from deltalens.sae.io import save_sae
    from tests.tiny import save_tiny, tiny_model

    names = _probe_inputs(tmp)
    names["model"] = save_tiny(tiny_model("llama"), tmp / "inputs" / "model")
    save_sae(SAE(SAEConfig(32, 48, "topk", k=2, site="resid.1")), tmp / "inputs" / "sae32")
    names["sae"] = str(tmp / "inputs" / "sae32")
    return names


_FIT = ["probes", "fit", "--sequences", "{seqs}", "--metrics", "{metrics}", "--sae", "{sae}", "--folds", "2",
        "--out", "{tmp}/out"]

CASES += [
    Case("probes-key-missing", [*_FIT, "--key", "seq"], "{metrics}: key column 'seq' not found (columns: id, score)",
         _probe_inputs),
    Case("probes-no-key-matches", _FIT, "{metrics}: no key in column 'id' matches a sequence",
         lambda tmp: _probe_inputs(tmp, "id,score\nx0,1\nx1,2\nx2,3\n")),
    Case("probes-constant-metric", _FIT, "{metrics}: metric 'score' is constant (2 for all 6 sequences)",
         lambda tmp: _probe_inputs(tmp, "id,score\n" + "".join(f"s{i},2\n" for i in range(6)))),
    Case("probes-single-class", [*_FIT, "--label-mode", "threshold", "--high", "10", "--low", "3"],
         "{metrics}: metric 'score' gives a single class after labelling (0 high ≥ 10, 3 low ≤ 3)", _probe_inputs),
    Case("probes-metric-column-missing", [*_FIT, "--metric", "plddt"], "{metrics}: metric column 'plddt' not found",
         _probe_inputs),
    Case("probes-metric-not-numeric", [*_FIT, "--metric", "score"], "metric column 'score' is not numeric (value 'high')",
         lambda tmp: _probe_inputs(tmp, "id,score\ns0,high\ns1,2\n")),
    Case("probes-no-numeric-metric", _FIT, "no numeric metric column besides the key 'id' (non-numeric: score; e.g. 'high')",
         lambda tmp: _probe_inputs(tmp, "id,score\ns0,high\ns1,2\n")),
    Case("probes-bad-method", [*_FIT, "--method", "l1,svm"], "--method must be one of l1, ksparse, diff_mean; got 'svm'",
         _probe_inputs),
    Case("probes-low-above-high", [*_FIT, "--low", "0.9"], "--low 0.9 must not be above --high 0.8", _probe_inputs),
    Case("probes-metrics-missing", ["probes", "fit", "--sequences", "{seqs}", "--metrics", "{tmp}/none.csv", "--sae", "{sae}",
                                    "--out", "{tmp}/out"], "{tmp}/none.csv: metrics file not found", _probe_inputs),
    Case("probes-sae-width-vs-model", [*_FIT, "--model", "{model}"], "has d_in=32 but", _probe_model_and_narrow_sae),
    Case("probes-sae-width-vs-table", ["probes", "correlate", "{probe}", "--sae", "{sae}"],
         "the SAE has d_sae=24 but the latent table has 12 latents", _probe_fit_dir),
    Case("probes-annotate-not-a-fit", ["probes", "annotate", "{tmp}"], "not a valid probe fit: {tmp}/probe.json (no such file)"),
    Case("probes-annotate-unknown-metric", ["probes", "annotate", "{probe}", "--metric", "plddt"],
         "has no labels for metric 'plddt' (has score)", _probe_fit_dir),
    Case("probes-compare-one", ["probes", "compare", "{probe}", "--method", "diff_mean", "--out", "{tmp}/cmp"],
         "need at least two probes to compare", _probe_fit_dir),
]
