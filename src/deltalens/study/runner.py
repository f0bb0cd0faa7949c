"""Run a study: stages in dependency order, each loaded from its saved record when its cache key
matches, else computed; provenance beside the results.

Layout inside the study directory (an experiment directory, so ``deltalens report`` reads the
stages' results where every command writes them)::

    <dir>/study/study.yaml               the study file as run
    <dir>/study/study.json               provenance: versions, resolved configs, keys, timings
    <dir>/study/stages/<name>/stage.json one record per finished stage (key, fields, outputs)

A stage is **cached** when its record exists, its key (:func:`~deltalens.study.spec.stage_hashes`:
type, fields, the keys of the stages it needs) equals the current one and its saved result
still loads; otherwise it **runs** and so does every stage downstream of it (their keys include
its key). A record is written only after the stage function returned, so a killed run loses at
most the stage in flight (and the stage functions resume their own items).
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console

from .._version import __version__
from ..errors import ConfigError, DataFormatError, DeltalensError
from ..experiment import Experiment
from ..io import atomic_write, now_iso, read_json
from ..stage import StageResult, _jsonable, register_result
from .registry import StageContext
from .spec import Study, resolve, stage_hashes

__all__ = ["CALLS", "StageOutcome", "StageRecord", "StudyProvenance", "plan", "run_study", "study_paths"]

#: stage type → times its adapter was called in this process (what a re-run recomputed)
CALLS: Counter[str] = Counter()


def study_paths(root: str | Path) -> dict[str, Path]:
    """Where a study directory keeps its file, provenance and stage records."""
    base = Path(root) / "study"
    return {
        "dir": base,
        "file": base / "study.yaml",
        "provenance": base / "study.json",
        "stages": base / "stages",
    }


@register_result
@dataclass
class StageRecord(StageResult):
    """What a finished stage left: its cache key, fields (as written), resolved config, outputs."""

    KIND: ClassVar[str] = "study stage"
    FILENAME: ClassVar[str] = "stage.json"

    name: str
    stage: str
    hash: str
    needs: dict[str, str]
    fields: dict[str, Any]
    config: dict[str, Any]
    outputs: dict[str, Any]
    seconds: float
    finished: str
    deltalens_version: str = __version__

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stage": self.stage,
            "hash": self.hash,
            "seconds": self.seconds,
            "finished": self.finished,
            "outputs": self.outputs,
        }


@register_result
@dataclass
class StudyProvenance(StageResult):
    """The last run of a study: file, versions, and per stage its key, status and time."""

    KIND: ClassVar[str] = "study"
    FILENAME: ClassVar[str] = "study.json"

    name: str
    file: str
    dir: str
    started: str
    finished: str | None
    seconds: float
    versions: dict[str, str]
    stages: list[dict[str, Any]]
    only: list[str] = field(default_factory=list)
    from_stage: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "finished": self.finished,
            "seconds": round(self.seconds, 1),
            "stages": {s["name"]: s["status"] for s in self.stages},
        }


@dataclass
class StageOutcome:
    """What the runner did (or, in a dry run, would do) with one stage."""

    name: str
    stage: str
    hash: str
    status: str  # "ran", "cached", "will run", "skipped"
    reason: str = ""
    seconds: float = 0.0
    outputs: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {
        "deltalens": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _record(root: Path, name: str) -> StageRecord | None:
    p = study_paths(root)["stages"] / name
    if not (p / StageRecord.FILENAME).is_file():
        return None
    try:
        return StageRecord.load(p)
    except DataFormatError:
        return None


def _why_stale(study: Study, name: str, rec: StageRecord | None, key: str, keys: dict[str, str]) -> str:
    """Empty when the saved record is valid for ``key``; else why the stage must run."""
    s = study.stages[name]
    if rec is None:
        return "no saved result"
    if rec.hash == key:
        if s.type.check is not None:
            try:
                s.type.check(rec.outputs)
            except (DeltalensError, OSError) as exc:
                return f"saved result unreadable ({exc})"
        return ""
    if rec.stage != s.type.name:
        return f"stage type changed ({rec.stage} → {s.type.name})"
    now = s.values()
    changed = sorted(k for k in set(now) | set(rec.fields) if _jsonable(rec.fields.get(k)) != now.get(k))
    if changed:
        return "config changed: " + ", ".join(changed)
    inputs = sorted(n for n in s.needs if rec.needs.get(n) != keys.get(n))
    if inputs:
        return "input changed: " + ", ".join(inputs)
    return "stage adapter changed"


def plan(study: Study, *, only: list[str] | None = None, from_stage: str | None = None) -> list[StageOutcome]:
    """What a run would do with each stage, without running anything."""
    for n in [*(only or []), *([from_stage] if from_stage else [])]:
        if n not in study.stages:
            raise ConfigError(f"{study.path}: no stage '{n}'; stages: {', '.join(study.order)}")
    keys = stage_hashes(study)
    forced = set(study.dependents(from_stage)) if from_stage else set()
    out: list[StageOutcome] = []
    will_run: set[str] = set()
    for n in study.order:
        s = study.stages[n]
        rec = _record(study.dir, n)
        why = _why_stale(study, n, rec, keys[n], keys)
        if only and n not in only:
            status = "skipped"
            if why and any(n in study.upstream(o) for o in only):
                raise ConfigError(
                    f"{study.path}: --only {','.join(only)} needs stage '{n}', which has no up-to-date "
                    f"result ({why}); run it first"
                )
        elif only:
            status, why = "will run", why or "--only"
        elif n in forced:
            status, why = "will run", why or f"--from {from_stage}"
        elif why:
            status = "will run"
        elif any(m in will_run for m in s.needs):
            status, why = "will run", "input reruns"
        else:
            status = "cached"
        if status == "will run":
            will_run.add(n)
        out.append(
            StageOutcome(
                n,
                s.type.name,
                keys[n],
                status,
                why,
                outputs=dict(rec.outputs) if rec and status == "cached" else {},
                fields=s.values(),
            )
        )
    return out


def run_study(
    study: Study,
    *,
    only: list[str] | None = None,
    from_stage: str | None = None,
    dry_run: bool = False,
    console: Console | None = None,
    progress: bool = True,
) -> list[StageOutcome]:
    """Run ``study`` (see the module docstring); returns what happened to each stage."""
    console = console or Console()
    steps = plan(study, only=only, from_stage=from_stage)
    if dry_run:
        return steps
    paths = study_paths(study.dir)
    exp = Experiment(study.dir)
    exp.root.mkdir(parents=True, exist_ok=True)
    cfg = exp.load_config()
    cfg.setdefault("name", study.name)
    if study.models:
        cfg.setdefault("models", {}).update({k: v for k, v in study.models.items() if isinstance(v, str)})
    cfg["study"] = str(paths["file"])
    exp.save_config(cfg)
    paths["dir"].mkdir(parents=True, exist_ok=True)
    atomic_write(paths["file"], study.text)
    keys = stage_hashes(study)
    outputs: dict[str, dict[str, Any]] = {}
    for st in steps:
        if st.status in ("cached", "skipped"):
            rec = _record(study.dir, st.name)
            if rec is not None:
                outputs[st.name] = dict(rec.outputs)
    prov = StudyProvenance(
        name=study.name,
        file=str(Path(study.path).resolve()),
        dir=str(Path(study.dir).resolve()),
        started=now_iso(),
        finished=None,
        seconds=0.0,
        versions=_versions(),
        stages=[],
        only=list(only or []),
        from_stage=from_stage,
    )
    t_all = time.time()
    models: dict[str, Any] = {}
    n_all = len(steps)
    for i, st in enumerate(steps, 1):
        s = study.stages[st.name]
        head = f"[{i}/{n_all}] {st.name} ({st.stage})"
        if st.status != "will run":
            console.print(
                f"{head}: {st.status}" + (f" → {st.outputs.get('dir')}" if st.outputs.get("dir") else "")
            )
        else:
            console.rule(f"[bold cyan]{head}[/bold cyan] — {st.reason}")
            values = resolve(s, outputs)
            try:
                inputs, config = s.type.build(values)
            except DeltalensError as exc:
                raise ConfigError(f"{study.path}:{s.line}: stages.{st.name}: {exc}") from None
            rec = _record(study.dir, st.name)
            # an earlier result under another key (or a forced rerun) is replaced; no record (a first
            # run, or one killed in this stage) or the same key with its result partly gone: the
            # stage function resumes what its output holds
            replace = rec is not None and not (
                rec.hash == keys[st.name] and st.reason.startswith("saved result unreadable")
            )
            ctx = StageContext(
                exp=exp, name=st.name, console=console, progress=progress, models=models, replace=replace
            )
            t = time.time()
            CALLS[s.type.name] += 1
            outs = s.type.run(ctx, inputs, config)
            st.seconds = time.time() - t
            st.outputs = {k: _jsonable(v) for k, v in outs.items()}
            missing = [o for o in s.type.outputs if o not in st.outputs]
            if missing:  # an adapter bug, not bad input
                raise RuntimeError(f"stage {s.type.name} returned no output(s) {missing}")
            outputs[st.name] = st.outputs
            StageRecord(
                name=st.name,
                stage=s.type.name,
                hash=keys[st.name],
                needs={m: keys[m] for m in s.needs},
                fields=s.values(),
                config=_jsonable(values),
                outputs=st.outputs,
                seconds=round(st.seconds, 3),
                finished=now_iso(),
            ).save(paths["stages"] / st.name)
            st.status = "ran"
            console.print(f"{st.name}: done in {st.seconds:.1f} s → {st.outputs.get('dir')}")
        prov.stages.append(
            {
                "name": st.name,
                "stage": st.stage,
                "hash": st.hash,
                "status": st.status,
                "reason": st.reason,
                "seconds": round(st.seconds, 3),
                "outputs": st.outputs,
            }
        )
        prov.seconds = time.time() - t_all
        prov.save(paths["dir"])
    prov.finished = now_iso()
    prov.seconds = time.time() - t_all
    prov.save(paths["dir"])
    return steps


def study_status(root: str | Path) -> dict[str, Any] | None:
    """``deltalens info`` of a study directory: the last run (ran / cached per stage) and which
    stages are stale now (the study file changed since, or a saved result is gone)."""
    root = Path(root)
    paths = study_paths(root)
    if root.name == "study" and (root / StudyProvenance.FILENAME).is_file():
        root, paths = root.parent, study_paths(root.parent)
    if not paths["provenance"].is_file():
        return None
    prov = StudyProvenance.load(paths["dir"])
    from .spec import load_study, parse_study

    source = Path(prov.file)
    note = ""
    try:
        if source.is_file():
            study = load_study(source)
            note = f"checked against {source}"
        else:
            study = parse_study(paths["file"].read_text(encoding="utf-8"), paths["file"])
            note = f"{source} is gone; checked against the copy {paths['file']}"
        study.dir = root
        now = {st.name: st for st in plan(study)}
    except DeltalensError as exc:
        now, note = {}, f"the study file no longer validates ({exc})"
    last = {s["name"]: s for s in prov.stages}
    stages = {}
    for name in [*last, *(n for n in now if n not in last)]:
        s = last.get(name)
        cur = now.get(name)
        state = "not in the last run" if s is None else s["status"]
        if cur is not None and cur.status == "will run":
            state += f"; stale: {cur.reason}"
        elif cur is None and now:
            state += "; no longer in the study file"
        rec = _record(root, name)
        if rec is not None:
            state += f" (computed {rec.finished} in {rec.seconds:.1f} s)"
        stages[f"stage {name}"] = state
    return {
        "kind": "study",
        "path": str(root),
        "name": prov.name,
        "file": prov.file,
        "last run": f"{prov.started} → {prov.finished or 'unfinished'} ({prov.seconds:.1f} s)",
        "versions": prov.versions,
        **stages,
        "stale": [n for n, c in now.items() if c.status == "will run"],
        "checked": note,
    }


def read_provenance(root: str | Path) -> dict[str, Any]:
    """The raw provenance JSON of a study directory."""
    return read_json(study_paths(root)["provenance"])
