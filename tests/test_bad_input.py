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

# == features ==


def _tiny_inputs(tmp: Path) -> dict[str, str]:
    """A tiny model, an SAE of it and three prompts on disk."""
    import json

    from tiny import save_tiny, tiny_model

    from deltalens.sae import SAE, SAEConfig

    lm = tiny_model()
    model = save_tiny(lm, tmp / "model")
    SAE(SAEConfig(lm.d_model, 8, "standard", site="resid.1", model_name=model)).save(tmp / "sae")
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"content": q, "label": "x"}) + "\n"
                                               for q in ("Hi?", "Why?", "Tell me.")))
    return {"model": model, "sae": str(tmp / "sae"), "prompts": str(tmp / "prompts.jsonl")}


def _not_utf8_prompts(tmp: Path) -> dict[str, str]:
    names = _tiny_inputs(tmp)
    (tmp / "latin1.jsonl").write_bytes(b'{"content": "caf\xe9?"}\n')
    return {**names, "bad": str(tmp / "latin1.jsonl")}


def _broken_dictionary_learning(tmp: Path) -> dict[str, str]:
    import torch

    names = _tiny_inputs(tmp)
    d = tmp / "dl" / "trainer_1"
    d.mkdir(parents=True)
    torch.save({"W": torch.zeros(2, 2)}, d / "ae.pt")
    (d / "config.json").write_text('{"trainer": {"dict_class": "AutoEncoder", "layer": 1}}')
    return {**names, "dl": str(d)}


CASES += [
    Case("features-universal-prompts-not-utf8",
         ["features", "universal", "--sae", "{sae}", "--model", "{model}", "--prompts-path", "{bad}",
          "--universal-output", "{tmp}/out/u.csv"],
         "{bad}: not valid UTF-8 at byte 16", _not_utf8_prompts),
    Case("features-universal-no-such-sae",
         ["features", "universal", "--sae", "{tmp}/nope", "--model", "{model}", "--prompts-path", "{prompts}",
          "--universal-output", "{tmp}/out/u.csv"],
         "{tmp}/nope: no such SAE directory", _tiny_inputs),
    Case("features-universal-threshold-out-of-range",
         ["features", "universal", "--sae", "{tmp}/sae", "--threshold", "1.5", "--universal-output", "{tmp}/out/u.csv"],
         "--threshold must be in [0, 1], got 1.5"),
    Case("features-specific-needs-features-csv",
         ["features", "specific", "--sae", "{tmp}/sae", "--specific-output", "{tmp}/out/s.csv"],
         "'features specific' needs --features-csv"),
    Case("features-universal-broken-dictionary-learning-checkpoint",
         ["features", "universal", "--sae", "{dl}", "--model", "{model}", "--prompts-path", "{prompts}",
          "--universal-output", "{tmp}/out/u.csv"],
         "{dl}/ae.pt: not a dictionary_learning SAE (keys: W)", _broken_dictionary_learning),
    Case("features-dashboard-context-not-two-ints",
         ["features", "dashboard", "--sae", "{tmp}/sae", "--context", "12", "--out", "{tmp}/out"],
         "--context must be two integers 'before,after'"),
    Case("features-evolution-model-count",
         ["features", "evolution", "--sae", "A={tmp}/a", "--sae", "B={tmp}/b", "--model", "m1", "--model", "m2",
          "--model", "m3", "--out", "{tmp}/out"],
         "--model: give one model or one per SAE (2), got 3"),
]

# == circuits ==


def _pairs(tmp: Path, lines: list[str]) -> dict[str, str]:
    from tiny import save_tiny, tiny_model

    model = save_tiny(tiny_model(), tmp / "model")
    (tmp / "pairs.jsonl").write_text("".join(line + "\n" for line in lines))
    return {"model": model, "pairs": str(tmp / "pairs.jsonl")}


# equal token lengths in the tiny tokenizer; " Italy" is five tokens there, " France" one
_GOOD_PAIR = ('{"clean": "The capital of France is", "corrupted": "The capital of dog is", "clean_answer": " Paris", '
              '"corrupted_answer": " the"}')
_LONG_PAIR = ('{"clean": "The capital of France is", "corrupted": "The capital of Italy is", "clean_answer": " Paris", '
              '"corrupted_answer": " the"}')

CASES += [
    Case("patch-pairs-of-unequal-token-lengths",
         ["patch", "--pairs", "{pairs}", "--model", "{model}", "--out", "{tmp}/out"],
         "{pairs}:2: clean and corrupted prompts have unequal token lengths",
         lambda tmp: _pairs(tmp, [_GOOD_PAIR, _LONG_PAIR])),
    Case("patch-malformed-pairs-jsonl",
         ["patch", "--pairs", "{pairs}", "--model", "{model}", "--out", "{tmp}/out"],
         "{pairs}:2: invalid JSON",
         lambda tmp: _pairs(tmp, [_GOOD_PAIR, '{"clean": "The capital of'])),
    Case("patch-unknown-component",
         ["patch", "--components", "resid,heads", "--out", "{tmp}/out"],
         "--components must be one of resid, attn_out, mlp_out; got 'heads'"),
    Case("patch-layer-out-of-range",
         ["patch", "--pairs", "{pairs}", "--model", "{model}", "--layers", "9", "--out", "{tmp}/out"],
         "--layers: layer 9 is out of range: the model has 4 layers", lambda tmp: _pairs(tmp, [_GOOD_PAIR])),
    Case("attribute-unknown-method",
         ["attribute", "--method", "shap", "--out", "{tmp}/out"],
         "--method must be one of attribution, ig; got 'shap'"),
    Case("attribute-no-such-sae",
         ["attribute", "--pairs", "{pairs}", "--model", "{model}", "--components", "none", "--sae", "{tmp}/nope",
          "--out", "{tmp}/out"],
         "{tmp}/nope: no such SAE directory", lambda tmp: _pairs(tmp, [_GOOD_PAIR])),
]


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
