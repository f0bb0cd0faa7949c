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
_TINY: dict[str, str] = {}
_HELD: list = []  # writer locks held by setups (kept alive while their case runs)


def _tiny_dir() -> str:
    """A tiny random model saved once per session, outside every case's tmp tree."""
    if "path" not in _TINY:
        import tempfile

        from tiny import save_tiny, tiny_model

        _TINY["path"] = save_tiny(tiny_model("llama"), Path(tempfile.mkdtemp(prefix="deltalens-bad-input-")) / "tiny")
    return _TINY["path"]


def _texts(tmp: Path, name: str = "a.txt", lines: tuple[str, ...] = ("The quick brown fox.", "Hello there, friend.")) -> Path:
    p = tmp / name
    p.write_text("\n".join(lines) + "\n")
    return p


def _with_model(**files: Callable[[Path], Path]) -> Callable[[Path], dict[str, str]]:
    def setup(tmp: Path) -> dict[str, str]:
        out = {"model": _tiny_dir(), "data": str(_texts(tmp))}
        out.update({k: str(f(tmp)) for k, f in files.items()})
        return out

    return setup


def _bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name

    return make


def _store(tmp: Path, *, lines: tuple[str, ...] = ("The quick brown fox.", "Hello there, friend."), name: str = "s") -> Path:
    """A complete store captured from ``a.txt`` (library call; outside what the case writes)."""
    import deltalens
    from deltalens.capture import CaptureConfig
    from deltalens.data import read_capture_inputs

    data = _texts(tmp, "a.txt", lines)
    lm = deltalens.load(_tiny_dir())
    deltalens.capture(lm, read_capture_inputs(data), CaptureConfig(sites=["resid.1"]), store=tmp / name, source=data,
                      dataset_name=data.name, progress=False)
    return tmp / name


def _store_and_b(tmp: Path) -> dict[str, str]:
    s = _store(tmp)
    b = _texts(tmp, "b.txt", ("Another text entirely.", "Hello there, friend.", "A third line."))
    return {"model": _tiny_dir(), "data": str(tmp / "a.txt"), "store": str(s), "b": str(b)}


def _truncated_store(tmp: Path) -> dict[str, str]:
    s = _store(tmp)
    text = (s / "store.json").read_text()
    (s / "store.json").write_text(text[: len(text) // 2])
    return {"model": _tiny_dir(), "data": str(tmp / "a.txt"), "store": str(s)}


def _locked_store(tmp: Path) -> dict[str, str]:
    import os

    from deltalens.store import ActivationStore

    s = _store(tmp)
    st = ActivationStore(s)
    st.lock()  # another writer (this process, another open file) holds the store
    _HELD.append(st)
    return {"model": _tiny_dir(), "data": str(tmp / "a.txt"), "store": str(s), "pid": str(os.getpid())}


def _corrupt_safetensors(tmp: Path) -> Path:
    p = tmp / "v.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at al")
    return p


def _cap(*extra: str, data: str = "{data}", out: str = "{tmp}/store") -> list[str]:
    return ["capture", "--model", "{model}", "--data", data, "--out", out, "--sites", "resid.1", *extra]


_BAD_UTF8 = "caf\u00e9 ok\n".encode() + b"bad \xff byte\n"
CASES += [
    Case("core-capture-batch-size-0", _cap("--batch-size", "0"), "--batch-size must be ≥ 1, got 0", _with_model()),
    Case("core-capture-max-length-0", _cap("--max-length", "0"), "--max-length must be ≥ 1, got 0", _with_model()),
    Case("core-capture-val-fraction-1", _cap("--val-fraction", "1"), "--val-fraction must be in [0, 1), got 1.0", _with_model()),
    Case("core-capture-reduce-median", _cap("--reduce", "median"), "--reduce must be one of none, mean, last; got 'median'", _with_model()),
    Case("core-capture-store-dtype", _cap("--store-dtype", "int8"), "--store-dtype must be one of float32", _with_model()),
    Case("core-capture-shard-mb-0", _cap("--shard-mb", "0"), "--shard-mb must be > 0, got 0.0", _with_model()),
    Case("core-capture-site-out-of-range", _cap("--sites", "resid.9"),
         "layer 9 is out of range: this model has 4 layers (valid: 0..3, or -4..-1 counting from the end)", _with_model()),
    Case("core-capture-negative-site-out-of-range", _cap("--sites", "resid.-5"), "layer -5 is out of range", _with_model()),
    Case("core-capture-bad-site", _cap("--sites", "resid.six"), "cannot read site 'resid.six'", _with_model()),
    Case("core-capture-empty-slice", _cap("--positions", "response[5:2]"),
         "positions 'response[5:2]' select no token of any of the 2 inputs of {data}", _with_model()),
    Case("core-capture-response-of-plain-text", _cap("--positions", "response[:5]"),
         "positions 'response[:5]' select no token of any of the 2 inputs of {data} (plain texts: every token is prompt", _with_model()),
    Case("core-capture-non-utf8-txt", _cap(data="{bad}"), "{bad}:2: not valid UTF-8 at byte 13",
         _with_model(bad=_bytes("bad.txt", _BAD_UTF8))),
    Case("core-capture-non-utf8-jsonl", _cap(data="{bad}"), "{bad}:2: not valid UTF-8 at byte 36",
         _with_model(bad=_bytes("bad.jsonl", b'{"text": "fine line"}\n{"text": "bad \xc3("}\n'))),
    Case("core-capture-jsonl-column", _cap(data="{bad}"),
         "{bad}:2: invalid JSON at column 24 (Expecting value)",
         _with_model(bad=_bytes("bad.jsonl", b'{"text": "fine"}\n{"text": "fine",\r "x": }\n'))),
    Case("core-capture-missing-data", _cap(data="{tmp}/nope.txt"), "{tmp}/nope.txt: file not found", _with_model()),
    Case("core-capture-out-under-a-file", _cap(out="{data}/store"), "cannot write an activation store to {data}/store: {data} is not a directory",
         _with_model()),
    Case("core-capture-out-is-a-file", _cap(out="{data}"), "cannot write an activation store to {data}: it is a file", _with_model()),
    Case("core-capture-other-data-into-a-store", _cap(data="{b}", out="{store}"),
         "data fingerprint differs: a.txt (2 inputs, sha256", _store_and_b),
    Case("core-capture-other-settings-into-a-store", _cap("--max-length", "3", out="{store}"),
         "holds a different capture (max_length None vs 3)", _store_and_b),
    Case("core-capture-other-sites-into-a-store", _cap("--sites", "resid.2", out="{store}"),
         "sites ['resid.1'] vs ['resid.2']", _store_and_b),
    Case("core-capture-truncated-store-json", _cap(out="{store}"),
         "not a valid activation store: {store} (store.json: invalid JSON", _truncated_store),
    Case("core-capture-second-writer", _cap("--overwrite", out="{store}"),
         "{store} is being written by process {pid}; stores are single-writer", _locked_store),
    Case("core-info-truncated-store-json", ["info", "{store}"], "not a valid activation store: {store} (store.json: invalid JSON",
         _truncated_store),
    Case("core-info-corrupt-safetensors", ["info", "{f}"], "not a valid safetensors file: {f} (",
         lambda tmp: {"f": str(_corrupt_safetensors(tmp))}),
    Case("core-generate-non-utf8-prompts", ["generate", "--model", "{model}", "--prompts", "{bad}"], "{bad}:2: not valid UTF-8 at byte 13",
         _with_model(bad=_bytes("bad.txt", _BAD_UTF8))),
]

# == steering ==

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
