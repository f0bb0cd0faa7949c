"""``deltalens report``."""

from __future__ import annotations

import typer

from ._common import console


def report_cmd(
    experiment: str = typer.Argument(..., help="Experiment name (under ./experiments) or directory."),
) -> None:
    """Build <experiment>/report/index.html: every table and figure of the experiment, one file."""
    from ..report.html import build_report

    path = build_report(experiment)
    console.print(f"wrote {path} ({path.stat().st_size / 2**10:.0f} KB)")


COMMANDS = {"report": report_cmd}
