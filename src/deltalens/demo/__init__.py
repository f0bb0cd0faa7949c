"""``deltalens demo``: the end-to-end walk-through on the bundled model.

Each module in this package defines ``STAGE = Stage(order, name, run, description)``;
the runner imports them all, sorts by ``order`` and runs each with a shared
:class:`DemoContext` (the loaded model, the experiment directory, a console, and
``state`` for passing results between stages). Feature areas add a module here to add
their stage; none edits the runner.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from ..experiment import Experiment
from ..models.loading import LoadedModel


@dataclass
class DemoContext:
    lm: LoadedModel
    exp: Experiment
    console: Console
    fast: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    order: int
    name: str
    run: Callable[[DemoContext], None]
    description: str = ""


def stages() -> list[Stage]:
    found = []
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        st = getattr(module, "STAGE", None)
        if isinstance(st, Stage):
            found.append(st)
    return sorted(found, key=lambda s: s.order)


def run_demo(
    model: str = "smollm2-135m-instruct",
    experiment: str = "demo",
    only: list[str] | None = None,
    skip: list[str] | None = None,
    fast: bool = False,
    console: Console | None = None,
) -> DemoContext:
    from ..models import load

    console = console or Console()
    t0 = time.time()
    lm = load(model)
    exp = Experiment.named(experiment)
    exp.root.mkdir(parents=True, exist_ok=True)
    cfg = exp.load_config()
    cfg.setdefault("name", exp.name)
    cfg.setdefault("models", {})["base"] = model
    exp.save_config(cfg)
    ctx = DemoContext(lm=lm, exp=exp, console=console, fast=fast)
    ctx.timings["load model"] = time.time() - t0
    console.rule(f"[bold]deltalens demo[/bold] — {lm.name}")
    console.print(f"model: {lm}  (loaded in {ctx.timings['load model']:.1f} s)")
    console.print(f"experiment directory: {exp.root.resolve()}")
    for st in stages():
        if only and st.name not in only:
            continue
        if skip and st.name in skip:
            continue
        console.rule(f"[bold cyan]{st.name}[/bold cyan] — {st.description}")
        t = time.time()
        st.run(ctx)
        ctx.timings[st.name] = time.time() - t
    console.rule("[bold]timings[/bold]")
    for k, v in ctx.timings.items():
        console.print(f"  {k:<28} {v:7.1f} s")
    console.print(f"  {'total':<28} {time.time() - t0:7.1f} s")
    return ctx
