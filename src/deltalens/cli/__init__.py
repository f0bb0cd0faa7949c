"""The ``deltalens`` command line: a thin Typer app over the library.

Every module in :data:`GROUPS` declares its commands — ``COMMANDS`` (name → function) and/or
``SUBAPPS`` (``(typer_app, name, {name: function})``) — and they are added under its
workflow's help panel, in the order a study runs (core → steering → diffing → SAEs →
features → circuits → inverse problems → report). Errors caused by input
(:class:`~deltalens.errors.DeltalensError`) are printed as one line without a traceback and
exit with status 2.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer
from typer.core import TyperGroup

from ..errors import DeltalensError


class _StudyOrder(TyperGroup):
    """Lists commands (and command groups) panel by panel in :data:`GROUPS` order."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        order = {panel: i for i, (_, panel) in reversed(list(enumerate(GROUPS)))}
        names = list(self.commands)
        return sorted(
            names, key=lambda n: order.get(getattr(self.commands[n], "rich_help_panel", None), len(order))
        )


app = typer.Typer(
    name="deltalens",
    cls=_StudyOrder,
    help="Model diffing and mechanistic interpretability for Hugging Face causal LMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# (module, help panel) in the order a study runs; `deltalens --help` lists them so.
GROUPS: tuple[tuple[str, str], ...] = (
    ("core", "Core: models, generation, activations"),
    ("steering", "Trait vectors and steering"),
    ("diff", "Model diffing"),
    ("sae", "Sparse autoencoders"),
    ("features", "Feature analysis"),
    ("probes", "Probes"),
    ("causal", "Causal experiments"),
    ("protein", "Protein LMs"),
    ("circuits", "Circuits"),
    ("inverse", "Inverse problems"),
    ("report", "Report and demo"),
    ("study", "Report and demo"),
    ("demo", "Report and demo"),
)

_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    for name, panel in GROUPS:
        module = importlib.import_module(f"{__name__}.{name}")
        for cmd, fn in getattr(module, "COMMANDS", {}).items():
            app.command(cmd, rich_help_panel=panel)(fn)
        for sub, sub_name, cmds in getattr(module, "SUBAPPS", []):
            for cmd, fn in cmds.items():
                sub.command(cmd)(fn)
            app.add_typer(sub, name=sub_name, rich_help_panel=panel)
    _registered = True


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``deltalens`` script."""
    _register()
    try:
        app(args=argv, prog_name="deltalens")
    except DeltalensError as exc:
        from ._common import err_console

        err_console.print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        from ._common import err_console

        err_console.print("[yellow]interrupted[/yellow] — completed work is kept; re-run to resume")
        sys.exit(130)
