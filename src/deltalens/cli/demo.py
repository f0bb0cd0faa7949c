"""``deltalens demo``."""

from __future__ import annotations

import typer

from ._common import console, split_list


def demo_cmd(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Model spec."),
    experiment: str = typer.Option("demo", "--experiment", "-e", help="Experiment name or path."),
    only: str | None = typer.Option(None, "--only", help="Comma-separated stages to run."),
    skip: str | None = typer.Option(None, "--skip", help="Comma-separated stages to skip."),
    fast: bool = typer.Option(False, "--fast", help="Smaller settings everywhere (for smoke tests)."),
) -> None:
    """Run the end-to-end demo on the bundled model (stages: see --help of each area)."""
    from ..demo import run_demo, stages

    names = [s.name for s in stages()]
    for n in split_list(only) + split_list(skip):
        if n not in names:
            from ..errors import DeltalensError

            raise DeltalensError(f"unknown demo stage '{n}'; stages: {', '.join(names)}")
    run_demo(
        model,
        experiment,
        only=split_list(only) or None,
        skip=split_list(skip) or None,
        fast=fast,
        console=console,
    )


COMMANDS = {"demo": demo_cmd}
