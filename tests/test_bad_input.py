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
CASES += [
    Case("steer-variant-without-model", ["extract", "-e", "{tmp}/exp", "--trait", "instruction/pirate", "--model-variant", "base"],
         "set models.base in"),
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
