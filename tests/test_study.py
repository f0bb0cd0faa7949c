"""Studies: one YAML file → every stage in dependency order, cached by config, with provenance.

Two kinds of study run here: one of small arithmetic stages registered by the test (their
results are a planted ground truth: each stage's output file holds a number computed from its
config and its inputs), and one of the real diff stages on two tiny random models. The counters
are :data:`deltalens.study.CALLS` (incremented by the runner on every adapter call) and the
test stages' own call lists; no real function is mocked.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from deltalens.errors import ConfigError
from deltalens.stage import StageConfig, at_least, option
from deltalens.study import (
    CALLS,
    PRESETS,
    StageType,
    load_study,
    parse_study,
    plan,
    register_stage,
    run_study,
    stage_hashes,
    study_status,
)

CALLED: list[str] = []


@dataclass
class NumConfig(StageConfig):
    value: int = option(1, flag="--value", help="A number.")
    scale: float = option(1.0, flag="--scale", help="A factor.")

    def validate(self) -> None:
        at_least(self, "value", 0)


@dataclass
class NumInputs:
    inputs: list[str] = option(default_factory=list, flag="--inputs", help="Files with numbers.")


REPLACE: dict[str, bool] = {}


def _num(ctx, ins: NumInputs, cfg: NumConfig) -> dict:
    """Output = scale × (value + Σ inputs) — written to <exp>/num/<name>.txt."""
    CALLED.append(ctx.name)
    REPLACE[ctx.name] = ctx.replace
    total = cfg.value + sum(float(Path(p).read_text()) for p in ins.inputs)
    d = ctx.exp.root / "num" / ctx.name
    d.mkdir(parents=True, exist_ok=True)
    (d / "n.txt").write_text(repr(cfg.scale * total))
    return {"dir": str(d), "file": str(d / "n.txt")}


def _num_check(outputs: dict) -> None:
    if not Path(outputs["file"]).is_file():
        raise ConfigError(f"{outputs['file']}: missing")


register_stage(StageType("test.num", _num, ("dir", "file"), NumInputs, NumConfig, check=_num_check))

CHAIN = """\
study: chain
dir: out
report: false
stages:
  a:
    stage: test.num
    value: 2
  b:
    stage: test.num
    value: 3
    inputs:
      - ${a.file}
  c:
    stage: test.num
    value: 1
    scale: SCALE_C
    inputs:
      - ${b.file}
  d:
    stage: test.num
    value: 10
"""


def _write(tmp: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def _run(path: Path, **kw):
    CALLED.clear()
    before = CALLS["test.num"]
    steps = run_study(load_study(path), progress=False, **kw)
    return steps, CALLS["test.num"] - before


def _num_of(tmp: Path, stage: str) -> float:
    return float((tmp / "out" / "num" / stage / "n.txt").read_text())


def test_rerun_of_an_unchanged_study_calls_no_stage(tmp_path: Path) -> None:
    p = _write(tmp_path, CHAIN.replace("SCALE_C", "1.0"))
    steps, n = _run(p)
    assert n == 4 and sorted(CALLED) == ["a", "b", "c", "d"]
    assert [s.status for s in steps] == ["ran"] * 4
    # planted ground truth: a = 2, b = 3 + a, c = 1 + b, d = 10
    assert [_num_of(tmp_path, s) for s in "abcd"] == [2.0, 5.0, 6.0, 10.0]
    mtime = (tmp_path / "out" / "num" / "c" / "n.txt").stat().st_mtime_ns
    steps, n = _run(p)
    assert n == 0 and CALLED == []
    assert [s.status for s in steps] == ["cached"] * 4
    assert (tmp_path / "out" / "num" / "c" / "n.txt").stat().st_mtime_ns == mtime


def test_changing_one_config_reruns_exactly_it_and_its_dependents(tmp_path: Path) -> None:
    p = _write(tmp_path, CHAIN.replace("SCALE_C", "1.0"))
    _run(p)
    # b changes: b and c (which reads b) rerun; a and d are loaded
    p.write_text(CHAIN.replace("SCALE_C", "1.0").replace("value: 3", "value: 30"))
    steps, n = _run(p)
    assert sorted(CALLED) == ["b", "c"] and n == 2
    assert REPLACE == {"a": False, "b": True, "c": True, "d": False}  # first run: nothing to replace
    st = {s.name: s for s in steps}
    assert st["a"].status == st["d"].status == "cached"
    assert st["b"].reason == "config changed: value"
    assert st["c"].status == "ran"
    assert _num_of(tmp_path, "c") == 1 + 30 + 2
    # a leaf changes: only it reruns
    p.write_text(CHAIN.replace("SCALE_C", "2.0").replace("value: 3", "value: 30"))
    _, n = _run(p)
    assert CALLED == ["c"] and n == 1 and _num_of(tmp_path, "c") == 2 * 33
    # writing a default explicitly is not a change (fields are normalised)
    p.write_text(
        CHAIN.replace("SCALE_C", "2.0")
        .replace("value: 3", "value: 30")
        .replace("value: 10", "value: 10\n    scale: 1.0")
    )
    _, n = _run(p)
    assert n == 0


def test_deleted_result_reruns_that_stage_and_downstream(tmp_path: Path) -> None:
    p = _write(tmp_path, CHAIN.replace("SCALE_C", "1.0"))
    _run(p)
    (tmp_path / "out" / "num" / "b" / "n.txt").unlink()
    steps, _ = _run(p)
    assert sorted(CALLED) == ["b", "c"]
    assert {s.name: s.reason for s in steps}["b"].startswith("saved result unreadable")
    # b resumes (same key, no earlier result to replace); c reruns over its earlier result
    assert REPLACE["b"] is False and REPLACE["c"] is True


def test_only_and_from(tmp_path: Path) -> None:
    p = _write(tmp_path, CHAIN.replace("SCALE_C", "1.0"))
    study = load_study(p)
    with pytest.raises(ConfigError, match="--only c needs stage 'a', which has no up-to-date result"):
        run_study(study, only=["c"], progress=False)
    assert CALLED == [] or True
    _run(p)
    _, n = _run(p, from_stage="b")
    assert sorted(CALLED) == ["b", "c"] and n == 2
    _, n = _run(p, only=["d"])
    assert CALLED == ["d"]
    with pytest.raises(ConfigError, match="no stage 'zz'"):
        plan(study, only=["zz"])


def test_dry_run_writes_nothing_and_reports_the_plan(tmp_path: Path) -> None:
    p = _write(tmp_path, CHAIN.replace("SCALE_C", "1.0"))
    steps = run_study(load_study(p), dry_run=True)
    assert [s.status for s in steps] == ["will run"] * 4
    assert not (tmp_path / "out").exists()


def test_hashes_depend_on_config_and_inputs_only(tmp_path: Path) -> None:
    h1 = stage_hashes(parse_study(CHAIN.replace("SCALE_C", "1.0"), tmp_path / "s.yaml"))
    h2 = stage_hashes(parse_study(CHAIN.replace("SCALE_C", "3.0"), tmp_path / "s.yaml"))
    assert h1["a"] == h2["a"] and h1["b"] == h2["b"] and h1["d"] == h2["d"] and h1["c"] != h2["c"]
    h3 = stage_hashes(
        parse_study(CHAIN.replace("SCALE_C", "1.0").replace("value: 2", "value: 4"), tmp_path / "s.yaml")
    )
    assert h3["a"] != h1["a"] and h3["b"] != h1["b"] and h3["c"] != h1["c"] and h3["d"] == h1["d"]


def test_provenance_and_info_show_ran_cached_and_stale(tmp_path: Path) -> None:
    from deltalens.info import describe

    p = _write(tmp_path, CHAIN.replace("SCALE_C", "1.0"))
    _run(p)
    _run(p)
    prov = json.loads((tmp_path / "out" / "study" / "study.json").read_text())
    assert prov["kind"] == "study" and {"deltalens", "torch", "transformers", "python"} <= set(
        prov["versions"]
    )
    assert [s["status"] for s in prov["stages"]] == ["cached"] * 4
    rec = json.loads((tmp_path / "out" / "study" / "stages" / "b" / "stage.json").read_text())
    assert rec["config"]["inputs"] == [str(tmp_path / "out" / "num" / "a" / "n.txt")]
    assert rec["needs"] == {"a": stage_hashes(load_study(p))["a"]}
    assert (tmp_path / "out" / "study" / "study.yaml").read_text() == p.read_text()
    d = describe(tmp_path / "out")
    assert d["kind"] == "study" and d["stale"] == []
    assert d["stage a"].startswith("cached")
    p.write_text(CHAIN.replace("SCALE_C", "5.0"))  # edited after the run: c is stale now
    d = study_status(tmp_path / "out")
    assert d is not None and d["stale"] == ["c"]
    assert "stale: config changed: scale" in d["stage c"]


# ---- bad study files: refused before any stage runs ------------------------------------------------
BAD = [
    (
        "unknown-stage",
        "stages:\n  a:\n    stage: test.nope\n",
        ":3: stages.a.stage: unknown stage 'test.nope'",
    ),
    (
        "unknown-field",
        "stages:\n  a:\n    stage: test.num\n    value: 1\n    valeu: 2\n",
        ":5: stages.a.valeu: unknown field of test.num",
    ),
    (
        "wrong-type",
        "stages:\n  a:\n    stage: test.num\n    value: lots\n",
        ":4: stages.a.value: expected int, got 'lots'",
    ),
    (
        "config-refuses-value",
        "stages:\n  a:\n    stage: test.num\n    value: -1\n",
        ":4: stages.a.value: --value must be ≥ 0, got -1",
    ),
    (
        "cycle",
        "stages:\n  a:\n    stage: test.num\n    needs: [b]\n  b:\n    stage: test.num\n    inputs:\n      - ${a.file}\n",
        "cycle in needs: a → b → a",
    ),
    (
        "missing-output",
        "stages:\n  a:\n    stage: test.num\n  b:\n    stage: test.num\n    inputs:\n      - ${a.model}\n",
        ":6: stages.b.inputs: unresolved reference ${a.model}: stage 'a' (test.num) has outputs dir, file",
    ),
    (
        "missing-stage",
        "stages:\n  b:\n    stage: test.num\n    inputs: ['${nope.file}']\n",
        ":4: stages.b.inputs: unresolved reference ${nope.file}: no stage 'nope'",
    ),
    (
        "missing-need",
        "stages:\n  b:\n    stage: test.num\n    needs: [x]\n",
        ":4: stages.b.needs: no stage 'x'",
    ),
    (
        "missing-model",
        "models: {base: m}\nstages:\n  b:\n    stage: test.num\n    inputs: ['${models.ft}']\n",
        ":5: stages.b.inputs: unresolved reference ${models.ft}",
    ),
    ("unknown-top-key", "stages:\n  a: {stage: test.num}\nstagse: {}\n", ":3: stagse: unknown key"),
    ("no-stages", "study: x\n", "stages: give a mapping"),
    ("bad-yaml", "stages:\n  a: [1,\n", "yaml: not valid YAML"),
    ("duplicate-stage", "stages:\n  a: {stage: test.num}\n  a: {stage: test.num}\n", ":3: a: duplicate key"),
    (
        "missing-required",
        "stages:\n  w:\n    stage: diff.weights\n    base: x\n",
        ":2: stages.w: diff.weights needs field(s) ft",
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_study_file_is_refused_naming_file_line_and_key(case, tmp_path: Path) -> None:
    _, text, expect = case
    p = _write(tmp_path, text)
    exps = Path(os.environ["DELTALENS_EXPERIMENTS"])
    before = sorted(exps.rglob("*"))
    CALLED.clear()
    with pytest.raises(ConfigError) as exc:
        run_study(load_study(p), progress=False)
    msg = str(exc.value)
    assert msg.startswith(str(p)) and "\n" not in msg
    assert expect in msg, msg
    assert CALLED == [] and sorted(exps.rglob("*")) == before


# ---- presets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_validates_with_dry_run(name: str, tmp_path: Path, capsys) -> None:
    from deltalens.cli import main

    dest = tmp_path / f"{name}.yaml"
    with pytest.raises(SystemExit) as exc:
        main(["run", "--preset", name, str(dest), "--dry-run"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert dest.is_file() and "valid;" in out
    study = load_study(dest)
    assert study.order[-1] == "report" or any(s.type.name == "report" for s in study.stages.values())
    assert all(s.status == "will run" for s in plan(study))


# ---- the real diff stages on tiny random models ------------------------------------------------------
REAL = """\
study: tiny-diff
dir: exp
models:
  base: {base}
  ft: {ft}
data:
  texts: {texts}
stages:
  weights:
    stage: diff.weights
    base: ${{models.base}}
    ft: ${{models.ft}}
    figures: false
  outputs:
    stage: diff.outputs
    base: ${{models.base}}
    ft: ${{models.ft}}
    data: ${{data.texts}}
    top_k: {top_k}
    figures: false
  cap_base:
    stage: capture
    model: ${{models.base}}
    data: ${{data.texts}}
    sites: resid.1
  cap_ft:
    stage: capture
    model: ${{models.ft}}
    data: ${{data.texts}}
    sites: resid.1
  crosscoder:
    stage: sae.crosscoder
    stores:
      - ${{cap_base.store}}
      - ${{cap_ft.store}}
    expansion: 2
    k: 4
    total_tokens: 512
    batch_size: 64
"""


def test_real_stages_on_tiny_models_cache_and_rerun(tmp_path: Path, one_thread) -> None:
    import torch

    from tiny import CORPUS, save_tiny, tiny_model

    base = tiny_model("llama")
    ft = tiny_model("llama")
    with torch.no_grad():
        for p in ft.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    b = save_tiny(base, tmp_path / "base")
    f = save_tiny(ft, tmp_path / "ft")
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(CORPUS) + "\n")
    p = _write(tmp_path, REAL.format(base=b, ft=f, texts=texts, top_k=5))
    n0 = sum(CALLS.values())
    steps = run_study(load_study(p), progress=False)
    assert [s.status for s in steps] == ["ran"] * 6 and sum(CALLS.values()) - n0 == 6
    html = tmp_path / "exp" / "report" / "index.html"
    assert html.is_file() and "weight" in html.read_text().lower()
    w = json.loads((tmp_path / "exp" / "diff" / "weights" / "weights" / "results.json").read_text())
    assert w["kind"] == "weight diff" and w["summary"]["n_changed"] > 0
    n1 = sum(CALLS.values())
    mt = {q: q.stat().st_mtime_ns for q in (tmp_path / "exp" / "diff").rglob("*.json")}
    steps = run_study(load_study(p), progress=False)
    assert sum(CALLS.values()) == n1 and all(s.status == "cached" for s in steps)
    assert {q: q.stat().st_mtime_ns for q in mt} == mt
    p.write_text(REAL.format(base=b, ft=f, texts=texts, top_k=7))
    steps = run_study(load_study(p), progress=False)
    assert {s.name for s in steps if s.status == "ran"} == {"outputs", "report"}
    o = json.loads((tmp_path / "exp" / "diff" / "outputs" / "outputs" / "results.json").read_text())
    assert len(o["rose_most"]) == 7
    # a changed capture replaces its store (the store itself would refuse another config)
    text = REAL.format(base=b, ft=f, texts=texts, top_k=7).replace(
        "sites: resid.1", "sites: resid.1\n    val_fraction: 0.25"
    )
    p.write_text(text)
    steps = run_study(load_study(p), progress=False)
    assert {s.name for s in steps if s.status == "ran"} == {"cap_base", "cap_ft", "crosscoder", "report"}
    from deltalens.store import ActivationStore

    assert (
        ActivationStore(tmp_path / "exp" / "activations" / "cap_base" / "model" / "all").summary()["rows"] > 0
    )
    assert os.path.getsize(html) > 0


def test_yaml_values_take_the_field_types(tmp_path: Path) -> None:
    """Lists as comma strings (as on the command line), tuples, paths and nested configs."""
    from deltalens.diff.organisms import DPOSeriesConfig, OrganismConfig
    from deltalens.study import StageType, register_stage

    @dataclass
    class Ins:
        where: Path | None = option(None, flag="--where", help="A path.")

    seen: dict = {}

    def fn(ctx, ins, cfg):
        seen.update(ins=ins, cfg=cfg)
        return {"dir": str(ctx.exp.root)}

    register_stage(StageType("test.types", fn, ("dir",), Ins, DPOSeriesConfig))
    p = _write(
        tmp_path,
        "dir: out\nreport: false\nstages:\n  t:\n    stage: test.types\n    where: a/b\n"
        "    iterations: 2\n    train: {epochs: 0.5, lora_r: 4}\n",
    )
    study = load_study(p)
    run_study(study, progress=False)
    assert seen["ins"].where == Path("a/b")
    assert isinstance(seen["cfg"].train, OrganismConfig) and seen["cfg"].train.lora_r == 4
    assert seen["cfg"].iterations == 2
    # a nested config's own checks run when the file is read
    p.write_text(p.read_text().replace("lora_r: 4", "lora_r: 0"))
    with pytest.raises(ConfigError, match=r"s\.yaml:8: stages\.t\.train\.lora_r: .*--lora-r must be ≥ 1"):
        load_study(p)
    from deltalens.capture import CaptureConfig

    assert study.stages["t"].type.fields["train"].annotation is OrganismConfig
    st = StageType("test.cap", fn, ("dir",), None, CaptureConfig)
    _, cfg = st.build({"sites": ["resid.1", "resid.2"]})
    assert cfg.sites == ["resid.1", "resid.2"]


def test_cli_run_prints_what_ran_and_what_was_loaded(tmp_path: Path, capsys) -> None:
    from deltalens.cli import main

    p = _write(tmp_path, CHAIN.replace("SCALE_C", "1.0"))
    for expect in ("4 ran, 0 loaded from saved results", "0 ran, 4 loaded from saved results"):
        with pytest.raises(SystemExit) as exc:
            main(["run", str(p)])
        assert exc.value.code in (0, None)
        assert expect in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", str(p), "--from", "b", "--dry-run"])
    out = capsys.readouterr().out
    assert "--from b" in out and out.count("will run") == 2
    with pytest.raises(SystemExit):
        main(["run", "--list"])
    out = capsys.readouterr().out
    assert "diff.weights" in out and "organism.train" in out and "sae.crosscoder" in out
