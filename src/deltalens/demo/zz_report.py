"""Demo stage 90: the HTML report of the demo experiment."""

from __future__ import annotations

from . import DemoContext, Stage


def run(ctx: DemoContext) -> None:
    from ..report.html import build_report

    path = build_report(ctx.exp)
    ctx.console.print(
        f"report: {path.resolve()}  ({path.stat().st_size / 2**10:.0f} KB, open it in a browser)"
    )


STAGE = Stage(90, "report", run, "one self-contained HTML page with every table and figure")
