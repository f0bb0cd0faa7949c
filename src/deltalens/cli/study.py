"""``deltalens run``: a whole study from one YAML file (or a preset)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ._common import console, split_list, table


def run_cmd(
    study: Path | None = typer.Argument(
        None, help="Study file (YAML). With --preset: where to write the preset."
    ),
    only: str | None = typer.Option(
        None, "--only", help="Run only these stages (comma-separated); their inputs must be up to date."
    ),
    from_stage: str | None = typer.Option(
        None, "--from", help="Recompute this stage and everything downstream."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Validate, show what would run or load, run nothing."
    ),
    preset: str | None = typer.Option(
        None,
        "--preset",
        help="Bundled study: diff-study, demo, trait-study, inverse, circuit, protein-study (written to "
        "STUDY or ./NAME.yaml to edit; an existing file is used as is).",
    ),
    list_stages: bool = typer.Option(False, "--list", help="List the stage types and their fields."),
) -> None:
    """Run a study: stages in dependency order, unchanged ones loaded from their saved results."""
    from ..errors import ConfigError
    from ..study import STAGE_TYPES, load_study, plan, run_study, stage_type, write_preset

    if list_stages:
        stage_type("report")  # loads the adapters
        rows = [
            (n, st.command, ", ".join(st.outputs), ", ".join(st.fields))
            for n, st in sorted(STAGE_TYPES.items())
        ]
        console.print(table("stage types", ["stage", "command", "outputs", "fields"], rows))
        return
    if preset is not None:
        path = write_preset(preset, study)
        console.print(f"study file: {path} (edit it and re-run; unchanged stages are loaded)")
    elif study is None:
        raise ConfigError("give a study file (deltalens run STUDY.yaml) or --preset NAME")
    else:
        path = study
    s = load_study(path)
    only_list = split_list(only) if only else None
    if dry_run:
        steps = plan(s, only=only_list, from_stage=from_stage)
        console.print(f"{path}: valid; {len(s.order)} stages; study directory {s.dir}")
        rows = [
            (
                st.name,
                st.stage,
                st.status,
                st.reason,
                ", ".join(s.stages[st.name].needs),
            )
            for st in steps
        ]
        console.print(table("plan (dry run)", ["stage", "type", "would", "why", "needs"], rows))
        return
    t = time.time()
    steps = run_study(s, only=only_list, from_stage=from_stage, console=console)
    rows = [
        (st.name, st.stage, st.status, f"{st.seconds:.1f}" if st.status == "ran" else "-", st.reason)
        for st in steps
    ]
    console.print(table(f"study '{s.name}'", ["stage", "type", "status", "seconds", "why it ran"], rows))
    ran = sum(st.status == "ran" for st in steps)
    cached = sum(st.status == "cached" for st in steps)
    console.print(f"{ran} ran, {cached} loaded from saved results, total {time.time() - t:.1f} s → {s.dir}")
    rep = next((st for st in steps if st.stage == "report" and st.outputs.get("html")), None)
    if rep is not None:
        console.print(f"report: {rep.outputs['html']}")


COMMANDS = {"run": run_cmd}
