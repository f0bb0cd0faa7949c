"""``deltalens causal run | summary``: ablation and steering with SAE latents, with null controls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..causal.config import CausalConfig as _Cfg
from ._common import (
    config_option,
    console,
    experiment_option,
    parse_assignments,
    parse_floats,
    split_list,
    table,
)

causal_app = typer.Typer(
    help="Causal experiments with SAE latents: ablation and steering during generation, with null controls.",
    no_args_is_help=True,
)


def _groups(items: list[str] | None) -> list[dict[str, Any]] | None:
    if not items:
        return None
    return [{"name": k, "latents": v} for k, v in parse_assignments(items, "--group", "NAME=ID,ID,…").items()]


def run_cmd(
    grid: Path | None = typer.Option(None, "--grid", "-g", help="Grid file (YAML/JSON); flags override it."),
    name: str | None = config_option(_Cfg, "name", override=True),
    prompts: str | None = config_option(_Cfg, "prompts", override=True),
    model: list[str] | None = config_option(_Cfg, "models", override=True),
    series: str | None = config_option(_Cfg, "series", override=True),
    sae: list[str] | None = config_option(_Cfg, "saes", override=True),
    sae_root: str | None = config_option(_Cfg, "sae_root", override=True),
    probes: list[str] | None = config_option(_Cfg, "probes", override=True),
    group: list[str] | None = config_option(_Cfg, "groups", override=True),
    groups_csv: str | None = config_option(_Cfg, "groups_csv", override=True),
    metric: list[str] | None = config_option(_Cfg, "metrics", override=True),
    types: str | None = config_option(_Cfg, "types", override=True),
    iterations: str | None = config_option(_Cfg, "iterations", override=True),
    branches: str | None = config_option(_Cfg, "branches", override=True),
    top_k: int | None = config_option(_Cfg, "top_k", override=True),
    probe_method: str | None = config_option(_Cfg, "probe_method", override=True),
    probe_direction: str | None = config_option(_Cfg, "probe_direction", override=True),
    n: int | None = config_option(_Cfg, "n", override=True),
    max_new_tokens: int | None = config_option(_Cfg, "max_new_tokens", override=True),
    do_sample: bool | None = config_option(_Cfg, "do_sample", override=True),
    temperature: float | None = config_option(_Cfg, "temperature", override=True),
    seed: int | None = config_option(_Cfg, "seed", override=True),
    positions: str | None = config_option(_Cfg, "positions", override=True),
    ablation: str | None = config_option(_Cfg, "ablation", override=True),
    coefficients: str | None = config_option(_Cfg, "coefficients", override=True),
    steering_scale: str | None = config_option(_Cfg, "steering_scale", override=True),
    null_groups: int | None = config_option(_Cfg, "null_groups", override=True),
    max_rows: int | None = config_option(_Cfg, "max_rows", override=True),
    experiment: str = experiment_option(),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory (default <experiment>/causal/<name>)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again where a run of another grid is."),
) -> None:
    """Run (or resume) a causal grid: {ablation, steering} × latent groups × iterations × branches × metrics."""
    from ..causal import run_causal
    from ..experiment import Experiment

    given = {
        "name": name,
        "prompts": prompts,
        "models": parse_assignments(model, "--model", "I=SPEC") if model else None,
        "series": series,
        "saes": parse_assignments(sae, "--sae", "M<m>D<d>=PATH") if sae else None,
        "sae_root": sae_root,
        "probes": parse_assignments(probes, "--probes", "M<m>D<d>=DIR") if probes else None,
        "groups": _groups(group),
        "groups_csv": groups_csv,
        "metrics": parse_assignments(metric, "--metric", "NAME=SCORER") if metric else None,
        "types": split_list(types) if types else None,
        "iterations": [int(x) for x in split_list(iterations)] if iterations else None,
        "branches": split_list(branches) if branches else None,
        "top_k": top_k,
        "probe_method": probe_method,
        "probe_direction": probe_direction,
        "n": n,
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "temperature": temperature,
        "seed": seed,
        "positions": positions,
        "ablation": ablation,
        "coefficients": parse_floats(coefficients, "--coefficients") if coefficients else None,
        "steering_scale": steering_scale,
        "null_groups": null_groups,
        "max_rows": max_rows,
    }
    if grid is not None:
        cfg = _Cfg.from_file(grid, **given)
    else:
        cfg = _Cfg.from_dict({k: v for k, v in given.items() if v is not None})
    dest = Path(out) if out is not None else Experiment.named(experiment).causal_dir(cfg.name)
    res = run_causal(cfg, dest, overwrite=overwrite)
    _print(res, dest)


def _print(res: Any, dest: Path, top: int = 30, wrote: bool = True) -> None:
    cols = [
        "type",
        "group",
        "iteration",
        "branch",
        "coef",
        "metric",
        "effect",
        "ci_low",
        "ci_high",
        "p",
        "z",
        "outside_null",
    ]

    def fmt(v: Any) -> Any:
        return f"{v:.4g}" if isinstance(v, float) else v

    rows = [[fmt(r.get(c)) for c in cols] for r in res.rows[:top]]
    console.print(table(f"causal grid {res.name}: {res.cells} cells", cols, rows, no_wrap=("group",)))
    ctrl = "; ".join(
        f"{m}: " + ", ".join(f"{k}={v:.4g}" for k, v in means.items()) for m, means in res.controls.items()
    )
    console.print(f"controls (unmodified models): {ctrl}")
    if wrote:
        console.print(f"wrote {dest}/summary.csv, causal.json and figures ({res.seconds:.0f} s)")
    else:
        console.print(f"summarised from {dest}/results.jsonl ({len(res.rows)} rows)")


def summary_cmd(
    run_dir: Path = typer.Argument(..., help="A causal run directory (causal/<name>/)."),
    top: int = typer.Option(30, "--top", help="Rows to print."),
) -> None:
    """Summarise a causal run from its results.jsonl (a finished or an interrupted run)."""
    from ..causal import summarize_dir

    res = summarize_dir(run_dir)
    _print(res, run_dir, top, wrote=False)


SUBAPPS = [(causal_app, "causal", {"run": run_cmd, "summary": summary_cmd})]
