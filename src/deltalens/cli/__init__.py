"""The ``deltalens`` command line: a thin Typer app over the library.

Every module in this package that defines ``register(app)`` adds its commands; errors
caused by input (:class:`~deltalens.errors.DeltalensError`) are printed as one line
without a traceback and exit with status 2.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from ..errors import DeltalensError

app = typer.Typer(
    name="deltalens",
    help="Model diffing and mechanistic interpretability for Hugging Face causal LMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        reg = getattr(module, "register", None)
        if callable(reg):
            reg(app)
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
