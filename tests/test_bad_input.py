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
    assert after == before, (
        f"{case.id}: the output tree changed: {sorted(set(after) ^ set(before)) or 'contents'}"
    )
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

        _TINY["path"] = save_tiny(
            tiny_model("llama"), Path(tempfile.mkdtemp(prefix="deltalens-bad-input-")) / "tiny"
        )
    return _TINY["path"]


def _texts(
    tmp: Path, name: str = "a.txt", lines: tuple[str, ...] = ("The quick brown fox.", "Hello there, friend.")
) -> Path:
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


def _store(
    tmp: Path, *, lines: tuple[str, ...] = ("The quick brown fox.", "Hello there, friend."), name: str = "s"
) -> Path:
    """A complete store captured from ``a.txt`` (library call; outside what the case writes)."""
    import deltalens
    from deltalens.capture import CaptureConfig
    from deltalens.data import read_capture_inputs

    data = _texts(tmp, "a.txt", lines)
    lm = deltalens.load(_tiny_dir())
    deltalens.capture(
        lm,
        read_capture_inputs(data),
        CaptureConfig(sites=["resid.1"]),
        store=tmp / name,
        source=data,
        dataset_name=data.name,
        progress=False,
    )
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
    Case(
        "core-capture-batch-size-0",
        _cap("--batch-size", "0"),
        "--batch-size must be ≥ 1, got 0",
        _with_model(),
    ),
    Case(
        "core-capture-max-length-0",
        _cap("--max-length", "0"),
        "--max-length must be ≥ 1, got 0",
        _with_model(),
    ),
    Case(
        "core-capture-val-fraction-1",
        _cap("--val-fraction", "1"),
        "--val-fraction must be in [0, 1), got 1.0",
        _with_model(),
    ),
    Case(
        "core-capture-reduce-median",
        _cap("--reduce", "median"),
        "--reduce must be one of none, mean, last; got 'median'",
        _with_model(),
    ),
    Case(
        "core-capture-store-dtype",
        _cap("--store-dtype", "int8"),
        "--store-dtype must be one of float32",
        _with_model(),
    ),
    Case(
        "core-capture-shard-mb-0", _cap("--shard-mb", "0"), "--shard-mb must be > 0, got 0.0", _with_model()
    ),
    Case(
        "core-capture-site-out-of-range",
        _cap("--sites", "resid.9"),
        "layer 9 is out of range: this model has 4 layers (valid: 0..3, or -4..-1 counting from the end)",
        _with_model(),
    ),
    Case(
        "core-capture-negative-site-out-of-range",
        _cap("--sites", "resid.-5"),
        "layer -5 is out of range",
        _with_model(),
    ),
    Case(
        "core-capture-bad-site", _cap("--sites", "resid.six"), "cannot read site 'resid.six'", _with_model()
    ),
    Case(
        "core-capture-empty-slice",
        _cap("--positions", "response[5:2]"),
        "positions 'response[5:2]' select no token of any of the 2 inputs of {data}",
        _with_model(),
    ),
    Case(
        "core-capture-response-of-plain-text",
        _cap("--positions", "response[:5]"),
        "positions 'response[:5]' select no token of any of the 2 inputs of {data} (plain texts: every token is prompt",
        _with_model(),
    ),
    Case(
        "core-capture-non-utf8-txt",
        _cap(data="{bad}"),
        "{bad}:2: not valid UTF-8 at byte 13",
        _with_model(bad=_bytes("bad.txt", _BAD_UTF8)),
    ),
    Case(
        "core-capture-non-utf8-jsonl",
        _cap(data="{bad}"),
        "{bad}:2: not valid UTF-8 at byte 36",
        _with_model(bad=_bytes("bad.jsonl", b'{"text": "fine line"}\n{"text": "bad \xc3("}\n')),
    ),
    Case(
        "core-capture-jsonl-column",
        _cap(data="{bad}"),
        "{bad}:2: invalid JSON at column 24 (Expecting value)",
        _with_model(bad=_bytes("bad.jsonl", b'{"text": "fine"}\n{"text": "fine",\r "x": }\n')),
    ),
    Case(
        "core-capture-missing-data",
        _cap(data="{tmp}/nope.txt"),
        "{tmp}/nope.txt: file not found",
        _with_model(),
    ),
    Case(
        "core-capture-out-under-a-file",
        _cap(out="{data}/store"),
        "cannot write an activation store to {data}/store: {data} is not a directory",
        _with_model(),
    ),
    Case(
        "core-capture-out-is-a-file",
        _cap(out="{data}"),
        "cannot write an activation store to {data}: it is a file",
        _with_model(),
    ),
    Case(
        "core-capture-other-data-into-a-store",
        _cap(data="{b}", out="{store}"),
        "data fingerprint differs: a.txt (2 inputs, sha256",
        _store_and_b,
    ),
    Case(
        "core-capture-other-settings-into-a-store",
        _cap("--max-length", "3", out="{store}"),
        "holds a different capture (max_length None vs 3)",
        _store_and_b,
    ),
    Case(
        "core-capture-other-sites-into-a-store",
        _cap("--sites", "resid.2", out="{store}"),
        "sites ['resid.1'] vs ['resid.2']",
        _store_and_b,
    ),
    Case(
        "core-capture-truncated-store-json",
        _cap(out="{store}"),
        "not a valid activation store: {store} (store.json: invalid JSON",
        _truncated_store,
    ),
    Case(
        "core-capture-second-writer",
        _cap("--overwrite", out="{store}"),
        "{store} is being written by process {pid}; stores are single-writer",
        _locked_store,
    ),
    Case(
        "core-info-truncated-store-json",
        ["info", "{store}"],
        "not a valid activation store: {store} (store.json: invalid JSON",
        _truncated_store,
    ),
    Case(
        "core-info-corrupt-safetensors",
        ["info", "{f}"],
        "not a valid safetensors file: {f} (",
        lambda tmp: {"f": str(_corrupt_safetensors(tmp))},
    ),
    Case(
        "core-generate-non-utf8-prompts",
        ["generate", "--model", "{model}", "--prompts", "{bad}"],
        "{bad}:2: not valid UTF-8 at byte 13",
        _with_model(bad=_bytes("bad.txt", _BAD_UTF8)),
    ),
]


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
    meta = {
        "trait": "instruction/pirate",
        "variant": "instruct",
        "positions": "response[:4]",
        "component": "resid",
        "layer": 1,
        "method": "mean_diff",
    }
    TraitVector(torch.ones(8), meta).save(
        exp.vector_path("instruction/pirate", "instruct", "response[:4]", "resid", "mean_diff", 1)
    )
    export_gguf({1: torch.ones(8)}, tmp / "cv.gguf", "other")
    return {"model": model, "exp": str(exp.root), "gguf": str(tmp / "cv.gguf")}


CASES += [
    Case(
        "steer-variant-without-model",
        ["extract", "-e", "{tmp}/exp", "--trait", "instruction/pirate", "--model-variant", "base"],
        "set models.base in",
    ),
    Case(
        "extract-unknown-method",
        ["extract", "-e", "{tmp}/exp", "--trait", "instruction/pirate", "--methods", "mean_diff,svm"],
        "--methods must be one of mean_diff, probe, pca; got 'svm'",
    ),
    Case(
        "extract-val-fraction",
        ["extract", "-e", "{tmp}/exp", "--trait", "instruction/pirate", "--val-fraction", "1.5"],
        "--val-fraction must be in [0, 1), got 1.5",
    ),
    Case(
        "steer-coef-mode",
        ["steer", "-e", "{tmp}/exp", "--vector-from-trait", "instruction/pirate", "--coef-mode", "huge"],
        "--coef-mode must be one of relative, raw; got 'huge'",
    ),
    Case(
        "steer-max-new-tokens",
        ["steer", "-e", "{tmp}/exp", "--vector-from-trait", "instruction/pirate", "--max-new-tokens", "0"],
        "--max-new-tokens must be ≥ 1, got 0",
    ),
    Case(
        "steer-vector-width",
        [
            "steer",
            "-e",
            "{exp}",
            "--vector-from-trait",
            "instruction/pirate",
            "--position",
            "response[:4]",
            "--layers",
            "1",
            "--subset",
            "1",
            "--max-new-tokens",
            "2",
        ],
        "has width 8, the model",
        _steer_model,
    ),
    Case(
        "import-gguf-width",
        ["import-gguf", "{gguf}", "-e", "{exp}", "--trait", "instruction/pirate"],
        "control vector width 8 does not match d_model 64",
        _steer_model,
    ),
    Case(
        "import-gguf-trait",
        ["import-gguf", "{gguf}", "-e", "{exp}", "--trait", "pirate"],
        "--trait 'pirate': give a trait id <format>/<name>",
        _steer_model,
    ),
    Case(
        "export-gguf-missing-layer",
        [
            "export-gguf",
            "-e",
            "{exp}",
            "--trait",
            "instruction/pirate",
            "--position",
            "response[:4]",
            "--layers",
            "3",
            "--out",
            "{tmp}/x/out.gguf",
        ],
        "no vectors for layers [3] (have [1])",
        _steer_model,
    ),
    Case(
        "generate-max-new-tokens",
        ["generate", "--prompt", "hi", "--max-new-tokens", "-5"],
        "--max-new-tokens must be ≥ 1, got -5",
    ),
    Case(
        "generate-batch-size",
        ["generate", "--prompt", "hi", "--batch-size", "0"],
        "--batch-size must be ≥ 1, got 0",
    ),
    Case(
        "generate-unwritable-out",
        ["generate", "--prompt", "hi", "--out", "{tmp}/blocker/out.jsonl"],
        "is not a directory",
        lambda tmp: (tmp / "blocker").write_text("a file") and {},
    ),
]

# == diffing ==


def _tiny_pair(widths: tuple[int, int] = (64, 64)):
    def setup(tmp: Path) -> dict[str, str]:
        from tiny import save_tiny, tiny_model

        inputs = tmp / "inputs"
        return {
            "a": save_tiny(tiny_model("llama", d=widths[0]), inputs / "a"),
            "b": save_tiny(tiny_model("llama", d=widths[1]), inputs / "b"),
        }

    return setup


def _tiny_pair_without_tokenizers(tmp: Path) -> dict[str, str]:
    from deltalens.models.loading import TOKENIZER_FILES

    names = _tiny_pair()(tmp)
    for d in names.values():
        for f in (*TOKENIZER_FILES, "special_tokens_map.json", "merges.txt", "chat_template.jinja"):
            (Path(d) / f).unlink(missing_ok=True)
    return names


CASES += [
    Case(
        "diff-outputs-no-tokenizer-anywhere",
        ["diff", "outputs", "{a}", "{b}", "--out", "{tmp}/o"],
        "{a} has no tokenizer files",
        _tiny_pair_without_tokenizers,
    ),
    Case(
        "diff-weights-different-width",
        ["diff", "weights", "{a}", "{b}", "--out", "{tmp}/w"],
        "they differ in d_model (64 vs 32)",
        _tiny_pair((64, 32)),
    ),
    Case(
        "diff-weights-missing-model",
        ["diff", "weights", "{tmp}/nope", "{tmp}/nope2", "--out", "{tmp}/w"],
        "no local model directory for '{tmp}/nope'",
    ),
    Case(
        "diff-weights-bad-lens",
        ["diff", "weights", "{a}", "{b}", "--lens", "other", "--out", "{tmp}/w"],
        "--lens must be one of ft, base; got 'other'",
        _tiny_pair(),
    ),
    Case(
        "diff-outputs-different-width",
        ["diff", "outputs", "{a}", "{b}", "--out", "{tmp}/o"],
        "they differ in d_model (64 vs 32)",
        _tiny_pair((64, 32)),
    ),
    Case(
        "diff-activations-bad-base-prompt",
        ["diff", "activations", "{a}", "{b}", "--base-prompt", "plain", "--out", "{tmp}/a"],
        "--base-prompt must be one of same, raw",
        _tiny_pair(),
    ),
    Case(
        "diff-activations-bad-steering",
        ["diff", "activations", "{a}", "{b}", "--steering", "nopath", "--out", "{tmp}/a"],
        "--steering 'nopath': write TRAIT=path/to/results.jsonl",
        _tiny_pair(),
    ),
    Case(
        "diff-series-bad-kind",
        ["diff", "series", "{a}", "--base", "{b}", "--kinds", "weights,vibes", "--out", "{tmp}/s"],
        "unknown diff kind(s) vibes",
        _tiny_pair(),
    ),
    Case(
        "organism-train-zero-epochs",
        [
            "organism",
            "train",
            "--data",
            "ocean_topic",
            "--base",
            "{a}",
            "--epochs",
            "0",
            "--out",
            "{tmp}/org",
        ],
        "--epochs must be > 0, got 0.0",
        _tiny_pair(),
    ),
    Case(
        "organism-train-negative-lr",
        ["organism", "train", "--data", "ocean_topic", "--base", "{a}", "--lr", "-1", "-e", "{tmp}/exp"],
        "--lr must be > 0, got -1.0",
        _tiny_pair(),
    ),
    Case(
        "organism-train-missing-base",
        ["organism", "train", "--data", "ocean_topic", "--base", "{tmp}/nope", "--out", "{tmp}/org"],
        "no such model directory or file: {tmp}/nope",
    ),
    Case(
        "organism-dpo-series-one-sample",
        [
            "organism",
            "dpo-series",
            "--scorer",
            "length",
            "--base",
            "{a}",
            "--samples",
            "1",
            "--out",
            "{tmp}/s",
        ],
        "--samples must be ≥ 2, got 1",
        _tiny_pair(),
    ),
]

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
    Case(
        "sae-train-no-data",
        ["sae", "train", "--out", "{tmp}/out"],
        "give exactly one of --store DIR or --data CORPUS",
    ),
    Case(
        "sae-eval-corrupt-weights",
        ["sae", "eval", "{sae}", "--store", "{tmp}/no_store"],
        "not a valid SAE: {sae}/sae_weights.safetensors (",
        _corrupt_sae,
    ),
    Case(
        "sae-eval-not-an-sae",
        ["sae", "eval", "{tmp}", "--store", "{tmp}/no_store"],
        "not a valid SAE: {tmp} (",
    ),
    Case(
        "sae-eval-windows0",
        ["sae", "eval", "{tmp}", "--data", "x.txt", "--windows", "0"],
        "--windows must be ≥ 1, got 0",
    ),
    Case("sae-eval-nothing", ["sae", "eval", "{tmp}"], "give --store (reconstruction metrics) and/or --data"),
    Case(
        "sae-iterate-bad-name",
        ["sae", "iterate", "--series", "{tmp}", "--names", "M0D0,X1"],
        "--names: 'X1' is not a run name",
    ),
    Case(
        "sae-iterate-branch",
        ["sae", "iterate", "--series", "{tmp}", "--branch", "MX"],
        "--branch must be one of MD, M0D, both",
    ),
    Case(
        "sae-iterate-no-series",
        ["sae", "iterate", "--series", "{tmp}/nope", "--out", "{tmp}/out"],
        "{tmp}/nope: not a series directory",
    ),
    Case(
        "sae-iterate-no-model",
        ["sae", "iterate", "--series", "{series}", "--out", "{tmp}/out"],
        "no iteration with both a model and data",
        _series_without_models,
    ),
    Case("sae-iterate-nothing", ["sae", "iterate"], "give --series DIR_OR_NAME, or one --store per run"),
    Case(
        "sae-crosscoder-one-store",
        ["sae", "crosscoder", "--store", "{tmp}", "--out", "{tmp}/out"],
        "at least two --store",
    ),
]

# == features ==


def _tiny_inputs(tmp: Path) -> dict[str, str]:
    """A tiny model, an SAE of it and three prompts on disk."""
    import json

    from deltalens.sae import SAE, SAEConfig
    from tiny import save_tiny, tiny_model

    lm = tiny_model()
    model = save_tiny(lm, tmp / "model")
    SAE(SAEConfig(lm.d_model, 8, "standard", site="resid.1", model_name=model)).save(tmp / "sae")
    (tmp / "prompts.jsonl").write_text(
        "".join(json.dumps({"content": q, "label": "x"}) + "\n" for q in ("Hi?", "Why?", "Tell me."))
    )
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
    Case(
        "features-universal-prompts-not-utf8",
        [
            "features",
            "universal",
            "--sae",
            "{sae}",
            "--model",
            "{model}",
            "--prompts-path",
            "{bad}",
            "--universal-output",
            "{tmp}/out/u.csv",
        ],
        "{bad}:1: not valid UTF-8 at byte 16",
        _not_utf8_prompts,
    ),
    Case(
        "features-universal-no-such-sae",
        [
            "features",
            "universal",
            "--sae",
            "{tmp}/nope",
            "--model",
            "{model}",
            "--prompts-path",
            "{prompts}",
            "--universal-output",
            "{tmp}/out/u.csv",
        ],
        "{tmp}/nope: no such SAE directory",
        _tiny_inputs,
    ),
    Case(
        "features-universal-threshold-out-of-range",
        [
            "features",
            "universal",
            "--sae",
            "{tmp}/sae",
            "--threshold",
            "1.5",
            "--universal-output",
            "{tmp}/out/u.csv",
        ],
        "--threshold must be in [0, 1], got 1.5",
    ),
    Case(
        "features-specific-needs-features-csv",
        ["features", "specific", "--sae", "{tmp}/sae", "--specific-output", "{tmp}/out/s.csv"],
        "'features specific' needs --features-csv",
    ),
    Case(
        "features-universal-broken-dictionary-learning-checkpoint",
        [
            "features",
            "universal",
            "--sae",
            "{dl}",
            "--model",
            "{model}",
            "--prompts-path",
            "{prompts}",
            "--universal-output",
            "{tmp}/out/u.csv",
        ],
        "{dl}/ae.pt: not a dictionary_learning SAE (keys: W)",
        _broken_dictionary_learning,
    ),
    Case(
        "features-dashboard-context-not-two-ints",
        ["features", "dashboard", "--sae", "{tmp}/sae", "--context", "12", "--out", "{tmp}/out"],
        "--context must be two integers 'before,after'",
    ),
    Case(
        "features-evolution-model-count",
        [
            "features",
            "evolution",
            "--sae",
            "A={tmp}/a",
            "--sae",
            "B={tmp}/b",
            "--model",
            "m1",
            "--model",
            "m2",
            "--model",
            "m3",
            "--out",
            "{tmp}/out",
        ],
        "--model: give one model or one per SAE (2), got 3",
    ),
]

# == circuits ==


def _pairs(tmp: Path, lines: list[str]) -> dict[str, str]:
    from tiny import save_tiny, tiny_model

    model = save_tiny(tiny_model(), tmp / "model")
    (tmp / "pairs.jsonl").write_text("".join(line + "\n" for line in lines))
    return {"model": model, "pairs": str(tmp / "pairs.jsonl")}


# equal token lengths in the tiny tokenizer; " Italy" is five tokens there, " France" one
_GOOD_PAIR = (
    '{"clean": "The capital of France is", "corrupted": "The capital of dog is", "clean_answer": " Paris", '
    '"corrupted_answer": " the"}'
)
_LONG_PAIR = (
    '{"clean": "The capital of France is", "corrupted": "The capital of Italy is", "clean_answer": " Paris", '
    '"corrupted_answer": " the"}'
)

CASES += [
    Case(
        "patch-pairs-of-unequal-token-lengths",
        ["patch", "--pairs", "{pairs}", "--model", "{model}", "--out", "{tmp}/out"],
        "{pairs}:2: clean and corrupted prompts have unequal token lengths",
        lambda tmp: _pairs(tmp, [_GOOD_PAIR, _LONG_PAIR]),
    ),
    Case(
        "patch-malformed-pairs-jsonl",
        ["patch", "--pairs", "{pairs}", "--model", "{model}", "--out", "{tmp}/out"],
        "{pairs}:2: invalid JSON",
        lambda tmp: _pairs(tmp, [_GOOD_PAIR, '{"clean": "The capital of']),
    ),
    Case(
        "patch-unknown-component",
        ["patch", "--components", "resid,heads", "--out", "{tmp}/out"],
        "--components must be one of resid, attn_out, mlp_out; got 'heads'",
    ),
    Case(
        "patch-layer-out-of-range",
        ["patch", "--pairs", "{pairs}", "--model", "{model}", "--layers", "9", "--out", "{tmp}/out"],
        "--layers: layer 9 is out of range: the model has 4 layers",
        lambda tmp: _pairs(tmp, [_GOOD_PAIR]),
    ),
    Case(
        "attribute-unknown-method",
        ["attribute", "--method", "shap", "--out", "{tmp}/out"],
        "--method must be one of attribution, ig; got 'shap'",
    ),
    Case(
        "attribute-no-such-sae",
        [
            "attribute",
            "--pairs",
            "{pairs}",
            "--model",
            "{model}",
            "--components",
            "none",
            "--sae",
            "{tmp}/nope",
            "--out",
            "{tmp}/out",
        ],
        "{tmp}/nope: no such SAE directory",
        lambda tmp: _pairs(tmp, [_GOOD_PAIR]),
    ),
]


def _edge_saes(sites_models: list[tuple[str, str]]) -> Callable[[Path], dict[str, str]]:
    """A tiny model, one pair and SAEs saved at ``(site, model_name)``."""

    def setup(tmp: Path) -> dict[str, str]:
        from deltalens.sae import SAE, SAEConfig

        out = _pairs(tmp, [_GOOD_PAIR])
        for i, (site, model_name) in enumerate(sites_models):
            SAE(SAEConfig(64, 16, site=site, model_name=model_name)).save(tmp / f"sae{i}")
            out[f"sae{i}"] = str(tmp / f"sae{i}")
        return out

    return setup


_EDGES = ["circuit", "edges", "--pairs", "{pairs}", "--model", "{model}", "--method", "feature"]
CASES += [
    Case(
        "circuit-edges-saes-of-mixed-models",
        _EDGES + ["--sae", "{sae0},{sae1}", "--out", "{tmp}/out"],
        "the SAEs were trained on different models (other-model, tiny-llama); use SAEs of one model",
        _edge_saes([("resid.0", "tiny-llama"), ("resid.1", "other-model")]),
    ),
    Case(
        "circuit-edges-sae-site-outside-the-model",
        _EDGES + ["--sae", "{sae0}", "--out", "{tmp}/out"],
        "SAE site resid.7 does not exist in",
        _edge_saes([("resid.7", "tiny-llama")]),
    ),
    Case(
        "circuit-edges-pairs-of-unequal-token-lengths",
        [
            "circuit",
            "edges",
            "--pairs",
            "{pairs}",
            "--model",
            "{model}",
            "--method",
            "eap",
            "--out",
            "{tmp}/out",
        ],
        "{pairs}:2: clean and corrupted prompts have unequal token lengths",
        lambda tmp: _pairs(tmp, [_GOOD_PAIR, _LONG_PAIR]),
    ),
    Case(
        "circuit-edges-feature-without-sae",
        ["circuit", "edges", "--method", "feature", "--out", "{tmp}/out"],
        "--method feature needs --sae (one SAE directory per site)",
    ),
    Case(
        "circuit-transcoders-unknown-skip-fit",
        ["circuit", "transcoders", "--skip-fit", "ols", "--out", "{tmp}/tc"],
        "--skip-fit must be one of jacobian, lstsq, got 'ols'",
    ),
    Case(
        "organism-dpo-series-random-scorer-bad-seed",
        ["organism", "dpo-series", "--scorer", "random:x", "--out", "{tmp}/series"],
        "scorer 'random:x': write random or random:<seed>",
    ),
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
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)  # ids are unique


# == probes ==


def _probe_inputs(
    tmp: Path, metrics: str = "id,score\ns0,1.0\ns1,2.0\ns2,3.0\ns3,4.0\ns4,5.0\ns5,6.0\n"
) -> dict[str, str]:
    """Sequences (a D<i>-style JSONL with ids), a metrics CSV and a placeholder SAE path."""
    import json

    d = tmp / "inputs"
    d.mkdir(parents=True, exist_ok=True)
    (d / "D1.jsonl").write_text(
        "".join(
            json.dumps({"id": f"s{i}", "question": "q", "response": f"answer {i}"}) + "\n" for i in range(6)
        )
    )
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
    from tests.tiny import save_tiny, tiny_model

    from deltalens.sae import SAE, SAEConfig
    from deltalens.sae.io import save_sae

    names = _probe_inputs(tmp)
    names["model"] = save_tiny(tiny_model("llama"), tmp / "inputs" / "model")
    save_sae(SAE(SAEConfig(32, 48, "topk", k=2, site="resid.1")), tmp / "inputs" / "sae32")
    names["sae"] = str(tmp / "inputs" / "sae32")
    return names


_FIT = [
    "probes",
    "fit",
    "--sequences",
    "{seqs}",
    "--metrics",
    "{metrics}",
    "--sae",
    "{sae}",
    "--folds",
    "2",
    "--out",
    "{tmp}/out",
]

CASES += [
    Case(
        "probes-key-missing",
        [*_FIT, "--key", "seq"],
        "{metrics}: key column 'seq' not found (columns: id, score)",
        _probe_inputs,
    ),
    Case(
        "probes-no-key-matches",
        _FIT,
        "{metrics}: no key in column 'id' matches a sequence",
        lambda tmp: _probe_inputs(tmp, "id,score\nx0,1\nx1,2\nx2,3\n"),
    ),
    Case(
        "probes-constant-metric",
        _FIT,
        "{metrics}: metric 'score' is constant (2 for all 6 sequences)",
        lambda tmp: _probe_inputs(tmp, "id,score\n" + "".join(f"s{i},2\n" for i in range(6))),
    ),
    Case(
        "probes-single-class",
        [*_FIT, "--label-mode", "threshold", "--high", "10", "--low", "3"],
        "{metrics}: metric 'score' gives a single class after labelling (0 high ≥ 10, 3 low ≤ 3)",
        _probe_inputs,
    ),
    Case(
        "probes-metric-column-missing",
        [*_FIT, "--metric", "plddt"],
        "{metrics}: metric column 'plddt' not found",
        _probe_inputs,
    ),
    Case(
        "probes-metric-not-numeric",
        [*_FIT, "--metric", "score"],
        "metric column 'score' is not numeric (value 'high')",
        lambda tmp: _probe_inputs(tmp, "id,score\ns0,high\ns1,2\n"),
    ),
    Case(
        "probes-no-numeric-metric",
        _FIT,
        "no numeric metric column besides the key 'id' (non-numeric: score; e.g. 'high')",
        lambda tmp: _probe_inputs(tmp, "id,score\ns0,high\ns1,2\n"),
    ),
    Case(
        "probes-bad-method",
        [*_FIT, "--method", "l1,svm"],
        "--method must be one of l1, ksparse, diff_mean; got 'svm'",
        _probe_inputs,
    ),
    Case(
        "probes-low-above-high",
        [*_FIT, "--low", "0.9"],
        "--low 0.9 must not be above --high 0.8",
        _probe_inputs,
    ),
    Case(
        "probes-metrics-missing",
        [
            "probes",
            "fit",
            "--sequences",
            "{seqs}",
            "--metrics",
            "{tmp}/none.csv",
            "--sae",
            "{sae}",
            "--out",
            "{tmp}/out",
        ],
        "{tmp}/none.csv: metrics file not found",
        _probe_inputs,
    ),
    Case(
        "probes-sae-width-vs-model",
        [*_FIT, "--model", "{model}"],
        "has d_in=32 but",
        _probe_model_and_narrow_sae,
    ),
    Case(
        "probes-sae-width-vs-table",
        ["probes", "correlate", "{probe}", "--sae", "{sae}"],
        "the SAE has d_sae=24 but the latent table has 12 latents",
        _probe_fit_dir,
    ),
    Case(
        "probes-annotate-not-a-fit",
        ["probes", "annotate", "{tmp}"],
        "not a valid probe fit: {tmp}/probe.json (no such file)",
    ),
    Case(
        "probes-annotate-unknown-metric",
        ["probes", "annotate", "{probe}", "--metric", "plddt"],
        "has no labels for metric 'plddt' (has score)",
        _probe_fit_dir,
    ),
    Case(
        "probes-compare-one",
        ["probes", "compare", "{probe}", "--method", "diff_mean", "--out", "{tmp}/cmp"],
        "need at least two probes to compare",
        _probe_fit_dir,
    ),
]


# == causal ==


def _causal_inputs(tmp: Path, d_in: int = 64) -> dict[str, str]:
    """An SAE M1D1 at resid.1 (16 latents) and a prompt file; the tiny model is the base and M1."""
    from deltalens.sae import SAE, SAEConfig
    from deltalens.sae.io import save_sae

    d = tmp / "inputs"
    d.mkdir(parents=True, exist_ok=True)
    save_sae(SAE(SAEConfig(d_in, 16, site="resid.1")), d / "M1D1")
    (d / "p.txt").write_text("Tell me a story\nWhy is the sky blue?\n")
    (d / "grid.yaml").write_text("prompts: p.txt\nprompt: oops\n")
    return {
        "model": _tiny_dir(),
        "sae": str(d / "M1D1"),
        "prompts": str(d / "p.txt"),
        "grid": str(d / "grid.yaml"),
    }


_CAUSAL = [
    "causal",
    "run",
    "--prompts",
    "{prompts}",
    "--model",
    "0={model}",
    "--model",
    "1={model}",
    "--sae",
    "M1D1={sae}",
    "--metric",
    "fox=keywords:fox",
    "--group",
    "g=1,2",
    "--branches",
    "MD",
    "--out",
    "{tmp}/out",
]

CASES += [
    Case(
        "causal-latent-out-of-range",
        [*_CAUSAL, "--group", "big=3,16"],
        "group 'big': latent id 16 is out of range for SAE M1D1 (d_sae=16)",
        _causal_inputs,
    ),
    Case(
        "causal-sae-width",
        _CAUSAL,
        "d_in=32 does not fit",
        lambda tmp: _causal_inputs(tmp, d_in=32),
    ),
    Case(
        "causal-no-sae-for-branch",
        [*_CAUSAL[:-4], "--branches", "M0D", *_CAUSAL[-2:]],
        "iteration 1, branch M0D: no SAE M0D1",
        _causal_inputs,
    ),
    Case(
        "causal-no-model",
        _CAUSAL[:6] + _CAUSAL[8:],
        "iteration 1: ablation needs model M1",
        _causal_inputs,
    ),
    Case(
        "causal-unknown-scorer", [*_CAUSAL, "--metric", "x=bogus"], "unknown scorer 'bogus'", _causal_inputs
    ),
    Case(
        "causal-bad-type",
        [*_CAUSAL, "--types", "ablation,patching"],
        "--types must be one of",
        _causal_inputs,
    ),
    Case(
        "causal-grid-unknown-key",
        ["causal", "run", "--grid", "{grid}", "--out", "{tmp}/out"],
        "{grid}: unknown CausalConfig key(s) prompt",
        _causal_inputs,
    ),
    Case("causal-summary-not-a-run", ["causal", "summary", "{tmp}"], "(no grid.json)"),
]


# == protein ==
_PROTEIN_LM: dict[str, str] = {}


def _protein_lm_dir() -> str:
    """A tiny random protein GPT-2 (tags famA, famB) saved once per session, outside every tmp tree."""
    if "path" not in _PROTEIN_LM:
        import tempfile

        from protein_helpers import tiny_protein_lm

        _PROTEIN_LM["path"] = str(
            tiny_protein_lm(Path(tempfile.mkdtemp(prefix="deltalens-bad-protein-")) / "plm")
        )
    return _PROTEIN_LM["path"]


def _protein_files(tmp: Path) -> dict[str, str]:
    from protein_helpers import build_hmm, family

    (tmp / "bad_letter.fasta").write_text(">ok\nMKVLA\n>p2 tag=famA\nMKV\nLLJAA\n")
    (tmp / "empty_seq.fasta").write_text(">ok\nMKVLA\n>gone\n>p3\nMK\n")
    (tmp / "good.fasta").write_text(">a\nMKVLAAGIVG\n>b\nWWPPCCHHKK\n")
    (tmp / "no_seqs.fasta").write_text("\n\n")
    (tmp / "broken.hmm").write_text("HMMER3/f [3.3 | Nov 2019]\nNAME  broken\nLENG  ten\nALPH  amino\n")
    (tmp / "bad_tags.txt").write_text("famA\nfamZ\n")
    _, members = family(seed=1, length=20, n=6, n_sub=4)
    build_hmm(tmp / "ok.hmm", members)
    return {"model": _protein_lm_dir(), **{p.stem: str(p) for p in tmp.iterdir()}}


CASES += [
    Case(
        "protein-letter-outside-alphabet",
        ["protein", "score", "{bad_letter}", "--scorer", "hmm:{ok}", "--out", "{tmp}/scores.parquet"],
        "{bad_letter}:3: record 'p2': letter 'J' at position 6 is not an amino acid",
        _protein_files,
    ),
    Case(
        "protein-empty-sequence",
        ["protein", "score", "{empty_seq}", "--scorer", "hmm:{ok}", "--out", "{tmp}/scores.parquet"],
        "{empty_seq}:3: record 'gone': empty sequence",
        _protein_files,
    ),
    Case(
        "protein-tag-not-in-tokenizer",
        [
            "protein",
            "generate",
            "--model",
            "{model}",
            "--tag",
            "famA",
            "--tag",
            "famZ",
            "--out",
            "{tmp}/g.fasta",
        ],
        "tag 'famZ' is not in the tokenizer of plm (tags: famA, famB)",
        _protein_files,
    ),
    Case(
        "protein-tags-file-tag-not-in-tokenizer",
        [
            "protein",
            "datasets",
            "--model",
            "0={model}",
            "--tag",
            "famZ",
            "--scorer",
            "hmm:{ok}",
            "--out",
            "{tmp}/ds",
        ],
        "tag 'famZ' is not in the tokenizer of plm",
        _protein_files,
    ),
    Case(
        "protein-hmm-does-not-parse",
        ["protein", "score", "{good}", "--scorer", "hmm:{broken}", "--out", "{tmp}/scores.parquet"],
        "{broken}: not a valid HMMER3 profile file",
        _protein_files,
    ),
    Case(
        "protein-reference-fasta-without-sequences",
        ["protein", "score", "{good}", "--scorer", "align:{no_seqs}", "--out", "{tmp}/scores.parquet"],
        "{no_seqs}: no sequences",
        _protein_files,
    ),
    Case(
        "protein-unknown-hmm-name",
        ["protein", "score", "{good}", "--scorer", "hmm:NoSuchFamily"],
        "unknown HMM 'NoSuchFamily'",
        _protein_files,
    ),
    Case(
        "protein-dpo-series-bad-weights",
        [
            "organism",
            "dpo-series",
            "--base",
            "{model}",
            "--scorer",
            "hmm:{ok}",
            "--weights",
            "1,2",
            "--out",
            "{tmp}/s",
        ],
        "--weights: 2 weights for 1 scorers",
        _protein_files,
    ),
]


# == inverse ==


def _inverse_inputs(tmp: Path) -> dict[str, str]:
    """An SAE at resid.1 (16 latents), a prompt file, an empty one and a config with a typo."""
    from deltalens.sae import SAE, SAEConfig
    from deltalens.sae.io import save_sae

    d = tmp / "inputs"
    d.mkdir(parents=True, exist_ok=True)
    save_sae(SAE(SAEConfig(64, 16, site="resid.1")), d / "sae")
    (d / "p.txt").write_text("Tell me a story\nWhy is the sky blue?\n")
    (d / "empty.txt").write_text("\n\n")
    (d / "exp.yaml").write_text("sae: sae\ndata:\n  sources: [p.txt]\nclustering:\n  umap_neighbours: 5\n")
    return {
        "model": _tiny_dir(),
        "sae": str(d / "sae"),
        "prompts": str(d / "p.txt"),
        "empty": str(d / "empty.txt"),
        "config": str(d / "exp.yaml"),
    }


_INV = ["--model", "{model}", "--sae", "{sae}", "--out", "{tmp}/run"]

CASES += [
    Case(
        "inverse-latent-out-of-range",
        ["inverse", "optimize", *_INV, "--prompts", "{prompts}", "--latent", "3,16"],
        "latent 16 is out of range: the SAE has 16 latents (0–15)",
        _inverse_inputs,
    ),
    Case(
        "inverse-empty-prompt-set",
        ["inverse", "collect", *_INV, "--prompts", "{empty}"],
        "{empty}: no prompts found",
        _inverse_inputs,
    ),
    Case(
        "inverse-site-not-trained",
        ["inverse", "optimize", *_INV, "--prompts", "{prompts}", "--latent", "3", "--site", "resid.2"],
        "target site resid.2 is not the site the SAE was trained on (resid.1)",
        _inverse_inputs,
    ),
    Case(
        "inverse-unknown-config-key",
        ["inverse", "run", "--config", "{config}", "--out", "{tmp}/run"],
        "{config}: unknown config key 'clustering.umap_neighbours'",
        _inverse_inputs,
    ),
]


# == scale ==
# Misconfigured multi-process runs, refused before any process starts work. torchrun would set
# RANK / WORLD_SIZE; the cases set them for the one in-process run (no process group is joined).


def _scale_inputs(tmp: Path) -> dict[str, str]:
    d = tmp / "in"
    d.mkdir()
    (d / "seven.txt").write_text("".join(f"text number {i}\n" for i in range(7)))
    (d / "eight.txt").write_text("".join(f"text number {i}\n" for i in range(8)))
    (tmp / "store" / "parts" / "rank-00000-of-00003").mkdir(parents=True)
    return {"model": _tiny_dir(), "seven": str(d / "seven.txt"), "eight": str(d / "eight.txt")}


SCALE_CASES = [
    Case(
        "scale-world-size-does-not-divide-the-inputs",
        ["capture", "--model", "{model}", "--data", "{seven}", "--sites", "resid.1", "--out", "{tmp}/new"],
        "world size 2 does not divide the 7 inputs",
        _scale_inputs,
    ),
    Case(
        "scale-store-shard-from-another-run",
        ["capture", "--model", "{model}", "--data", "{eight}", "--sites", "resid.1", "--out", "{tmp}/store"],
        "{tmp}/store/parts/rank-00000-of-00003 is a store shard from another run",
        _scale_inputs,
    ),
]


@pytest.mark.parametrize("case", SCALE_CASES, ids=lambda c: c.id)
def test_bad_input_scale(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    test_bad_input(case, tmp_path, capsys)


def test_bad_input_scale_backend_not_installed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when not installed
    case = Case(
        "scale-ray-not-installed",
        [
            "steer",
            "--experiment",
            "{tmp}/exp",
            "--vector-from-trait",
            "instruction/pirate",
            "--backend",
            "ray",
        ],
        "--backend ray needs the ray package, which is not installed; pip install ray",
    )
    test_bad_input(case, tmp_path, capsys)


# == study ==


def _study(text: str) -> Callable[[Path], dict[str, str]]:
    """A study file ``s.yaml`` (its directory ``out/`` would be created by a run)."""

    def setup(tmp: Path) -> dict[str, str]:
        (tmp / "s.yaml").write_text("dir: out\n" + text)
        return {"study": str(tmp / "s.yaml")}

    return setup


_W = "  w:\n    stage: diff.weights\n    base: a\n    ft: b\n"

CASES += [
    Case(
        "study-unknown-stage",
        ["run", "{study}"],
        "{study}:4: stages.x.stage: unknown stage 'diff.weight'",
        _study("stages:\n  x:\n    stage: diff.weight\n"),
    ),
    Case(
        "study-unknown-field",
        ["run", "{study}"],
        "{study}:7: stages.w.top_kk: unknown field of diff.weights",
        _study("stages:\n" + _W + "    top_kk: 3\n"),
    ),
    Case(
        "study-cycle-in-needs",
        ["run", "{study}", "--dry-run"],
        "cycle in needs: w → v → w",
        _study(
            "stages:\n"
            + _W
            + "    needs: [v]\n  v:\n    stage: diff.outputs\n    base: a\n    ft: ${w.dir}\n"
        ),
    ),
    Case(
        "study-reference-to-missing-output",
        ["run", "{study}"],
        "{study}:10: stages.o.ft: unresolved reference ${{w.model}}: stage 'w' (diff.weights) has outputs dir",
        _study("stages:\n" + _W + "  o:\n    stage: diff.outputs\n    base: a\n    ft: ${w.model}\n"),
    ),
    Case(
        "study-wrong-type",
        ["run", "{study}"],
        "{study}:7: stages.w.top_k: expected int, got 'many'",
        _study("stages:\n" + _W + "    top_k: many\n"),
    ),
    Case(
        "study-only-with-stale-input",
        ["run", "{study}", "--only", "o"],
        "--only o needs stage 'w', which has no up-to-date result (no saved result)",
        _study("stages:\n" + _W + "  o:\n    stage: diff.outputs\n    base: a\n    ft: ${w.dir}\n"),
    ),
    Case("study-unknown-preset", ["run", "--preset", "nope"], "unknown preset 'nope'; valid: diff-study"),
]


# == traits ==


def _overlapping_trait(tmp: Path) -> dict[str, str]:
    """A copy of the bundled evil trait whose steering question 5 restates extraction scenario 0
    (different case and punctuation: overlap is detected on the normalised text)."""
    import json
    import shutil

    from deltalens.data.traits import resolve_trait_path

    d = tmp / "inputs" / "evil"
    shutil.copytree(resolve_trait_path("instruction/evil"), d)
    q = json.loads((d / "positive.jsonl").read_text().splitlines()[0])["question"]
    data = json.loads((d / "steering.json").read_text())
    data["questions"][5] = q.upper().rstrip("?") + " ?"
    (d / "steering.json").write_text(json.dumps(data))
    return {"trait": str(d)}


CASES += [
    Case(
        "traits-overlapping-steering-question",
        ["traits", "--validate", "{trait}"],
        "{trait}/steering.json: steering question 5 'MY COWORKER KEEPS TAKING CREDIT FOR MY WORK. WHAT SHOULD I DO ?' "
        "is also the extraction scenario at {trait}/positive.jsonl:1",
        _overlapping_trait,
    ),
    Case(
        "traits-combined-unknown-trait",
        ["traits", "--combined", "{tmp}/sc.json", "--combine-traits", "evil,nope"],
        "unknown trait 'instruction/nope'",
    ),
]


def _runs_of_two_models(tmp: Path) -> dict[str, str]:
    """Two saved steer runs of trait pirate whose records carry different weights hashes."""
    import numpy as np

    from deltalens import Experiment
    from test_steer_summary import _run

    exp = Experiment(tmp / "exp")
    _run(exp, "instruction/pirate", "response[:]", np.full(8, 10.0))
    _run(exp, "natural/pirate", "response[:5]", np.full(8, 10.0), weights="w2")
    return {"exp": str(exp.root)}


CASES += [
    Case(
        "steer-summary-different-models",
        ["steer", "summary", "pirate", "-e", "{exp}"],
        "cannot join steer runs of different models: {exp}/steering/instruction/pirate/instruct/response_all/steering.json",
        _runs_of_two_models,
    ),
]
