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
def _steer_model(tmp: Path) -> dict[str, str]:
    """A tiny model (d_model 64) recorded as the experiment's instruct variant, a vector file of
    width 8 filed as instruction/pirate, and a control vector of width 8."""
    import torch

    from deltalens.experiment import Experiment
    from deltalens.vectors import TraitVector, export_gguf
    from tiny import save_tiny, tiny_model

    model = save_tiny(tiny_model("llama"), tmp / "model")
    exp = Experiment(tmp / "exp")
    exp.save_config({"name": "exp", "models": {"instruct": model}})
    meta = {"trait": "instruction/pirate", "variant": "instruct", "positions": "response[:4]", "component": "resid",
            "layer": 1, "method": "mean_diff"}
    TraitVector(torch.ones(8), meta).save(exp.vector_path("instruction/pirate", "instruct", "response[:4]", "resid", "mean_diff", 1))
    export_gguf({1: torch.ones(8)}, tmp / "cv.gguf", "other")
    return {"model": model, "exp": str(exp.root), "gguf": str(tmp / "cv.gguf")}


CASES += [
    Case("steer-variant-without-model", ["extract", "-e", "{tmp}/exp", "--trait", "instruction/pirate", "--model-variant", "base"],
         "set models.base in"),
    Case("extract-unknown-method", ["extract", "-e", "{tmp}/exp", "--trait", "instruction/pirate", "--methods", "mean_diff,svm"],
         "--methods must be one of mean_diff, probe, pca; got 'svm'"),
    Case("extract-val-fraction", ["extract", "-e", "{tmp}/exp", "--trait", "instruction/pirate", "--val-fraction", "1.5"],
         "--val-fraction must be in [0, 1), got 1.5"),
    Case("steer-coef-mode", ["steer", "-e", "{tmp}/exp", "--vector-from-trait", "instruction/pirate", "--coef-mode", "huge"],
         "--coef-mode must be one of relative, raw; got 'huge'"),
    Case("steer-max-new-tokens", ["steer", "-e", "{tmp}/exp", "--vector-from-trait", "instruction/pirate", "--max-new-tokens", "0"],
         "--max-new-tokens must be ≥ 1, got 0"),
    Case("steer-vector-width", ["steer", "-e", "{exp}", "--vector-from-trait", "instruction/pirate", "--position", "response[:4]",
                                "--layers", "1", "--subset", "1", "--max-new-tokens", "2"],
         "has width 8, the model", _steer_model),
    Case("import-gguf-width", ["import-gguf", "{gguf}", "-e", "{exp}", "--trait", "instruction/pirate"],
         "control vector width 8 does not match d_model 64", _steer_model),
    Case("import-gguf-trait", ["import-gguf", "{gguf}", "-e", "{exp}", "--trait", "pirate"],
         "--trait 'pirate': give a trait id <format>/<name>", _steer_model),
    Case("export-gguf-missing-layer", ["export-gguf", "-e", "{exp}", "--trait", "instruction/pirate", "--position", "response[:4]",
                                       "--layers", "3", "--out", "{tmp}/x/out.gguf"],
         "no vectors for layers [3] (have [1])", _steer_model),
    Case("generate-max-new-tokens", ["generate", "--prompt", "hi", "--max-new-tokens", "-5"], "--max-new-tokens must be ≥ 1, got -5"),
    Case("generate-batch-size", ["generate", "--prompt", "hi", "--batch-size", "0"], "--batch-size must be ≥ 1, got 0"),
    Case("generate-unwritable-out", ["generate", "--prompt", "hi", "--out", "{tmp}/blocker/out.jsonl"], "is not a directory",
         lambda tmp: (tmp / "blocker").write_text("a file") and {}),
]

# == diffing ==

# == SAEs ==

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
