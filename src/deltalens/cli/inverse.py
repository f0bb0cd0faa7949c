"""``deltalens inverse run | collect | filter | cluster | optimize | explain | viz``: inputs that
maximise a feature (:mod:`deltalens.inverse`).

Every command reads the same configuration (``--config FILE``, YAML or JSON, the keys of
:func:`deltalens.inverse.get_default_config`; ``--set section.key=value`` and the shortcut flags
override it) and works in the same run directory (``<experiment>/inverse/<name>/`` or ``--out``).
``run`` runs the stages whose ``pipeline`` flag is on; each stage command runs its stage, loading
what it needs from finished stages of the same settings and computing what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ._common import console, experiment_option, split_list, table

inverse_app = typer.Typer(
    help="Inverse problems: collect, filter and cluster latents, optimise prompts that maximise them, explain.",
    no_args_is_help=True,
)

STAGE_OF = {
    "collect": ["collect", "filter"],
    "filter": ["filter"],
    "cluster": ["cluster", "select"],
    "optimize": ["optimize"],
    "explain": ["explain"],
    "viz": ["viz"],
}


def _config(
    config: Path | None,
    sets: list[str] | None,
    experiment: str | None,
    out: Path | None,
    **shortcuts: Any,
) -> dict[str, Any]:
    """The merged configuration: defaults ← file ← ``--set`` ← shortcut flags."""
    from ..inverse import get_default_config, update_config
    from ..inverse.pipeline import read_config

    cfg = get_default_config()
    if config is not None:
        cfg = update_config(cfg, read_config(config), where=str(config))
    over: dict[str, Any] = {}
    for item in sets or []:
        _assign(over, item)
    if experiment is not None:
        over.setdefault("output", {})["experiment"] = experiment
    if out is not None:
        over.setdefault("output", {})["dir"] = str(out)
    for key, value in shortcuts.items():
        if value is not None:
            node = over
            *head, last = key.split(".")
            for h in head:
                node = node.setdefault(h, {})
            node[last] = value
    return update_config(cfg, over, where="--set/flags") if over else cfg


def _assign(over: dict[str, Any], item: str) -> None:
    import yaml

    from ..errors import ConfigError

    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set '{item}': write SECTION.KEY=VALUE, e.g. clustering.min_cluster_size=4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = over
    *head, last = key.split(".")
    for h in head:
        node = node.setdefault(h, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set '{item}': {h} is not a section")
    node[last] = value


def _print(res: Any) -> None:
    if res.computed or res.cached:
        console.print(
            f"stages computed: {', '.join(res.computed) or '–'}; loaded from cache: {', '.join(res.cached) or '–'}"
        )
    if res.collection is not None:
        s = res.collection.summary()
        console.print(
            f"collection: {s['prompts']} prompts × {s['d_sae']} latents at {s['site']}, {s['live_latents']} live, "
            f"CE p90 {s['ce_p90']:.3g}"
            if s.get("ce_p90") is not None
            else f"collection: {s}"
        )
    if res.filtered is not None:
        f = res.filtered.summary()
        console.print(
            f"filter: kept {f['kept']} of {f['d_sae']} ({', '.join(f'{k} {v}' for k, v in res.filtered.counts.items())})"
        )
    if res.analysis is not None:
        rows = [
            [c["cluster"], c["size"], c["cohesion"], ", ".join(repr(t["token"]) for t in c["top_tokens"][:4]),
             ", ".join(map(str, c["latents"][:8]))]
            for c in res.analysis.clusters[:20]
        ]  # fmt: skip
        console.print(
            table(
                f"{len(res.analysis.clusters)} clusters ({res.analysis.noise} noise latents)",
                ["cluster", "size", "cohesion", "driving tokens", "latents"],
                rows,
            )
        )
    if res.selection is not None:
        console.print(f"selected latents: {', '.join(map(str, res.selection.latents))}")
    if res.optimize_summary is not None:
        cols = [
            "latent",
            "text",
            "activation",
            "collection_max",
            "ce",
            "collection_ce_p90",
            "survives",
            "found",
        ]
        rows = [[r.get(c) for c in cols] for r in res.optimize_summary.rows]
        fr = res.optimize_summary.fractions()
        console.print(table("optimised prompts", cols, rows, no_wrap=("text",)))
        console.print(
            "found (survives ∧ activation ≥ collection max ∧ CE ≤ p90): "
            + (f"{fr['found']:.0%}" if fr["found"] is not None else "–")
            + f" of {len(rows)}"
        )
    if res.explanations is not None:
        rows = [
            [e["index"], e["description"], e["simulation"]["r"], e["source"]]
            for e in res.explanations.explanations
        ]
        console.print(
            table("explanations (r: simulation score)", ["latent", "description", "r", "source"], rows)
        )
    for name, p in res.figures.items():
        console.print(f"{name}: {p}")
    console.print(f"run directory: {res.run_dir}")


def _command(stage: str | None):
    def cmd(
        config: Path | None = typer.Option(None, "--config", "-c", help="Configuration file (YAML/JSON)."),
        sets: list[str] | None = typer.Option(None, "--set", help="SECTION.KEY=VALUE override; repeatable."),
        model: str | None = typer.Option(None, "--model", "-m", help="Model spec (config key model)."),
        sae: str | None = typer.Option(None, "--sae", help="SAE directory (config key sae)."),
        site: str | None = typer.Option(
            None, "--site", help="Target site; must be the SAE's (config key site)."
        ),
        prompts: str | None = typer.Option(
            None, "--prompts", help="Prompt sources, comma-separated (data.sources)."
        ),
        latent: str | None = typer.Option(
            None, "--latent", help="Latents to optimise/explain, comma-separated."
        ),
        name: str | None = typer.Option(None, "--name", help="Run name: inverse/<name>/ (config key name)."),
        experiment: str | None = experiment_option(None),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Run directory (default <experiment>/inverse/<name>)."
        ),
        no_cache: bool = typer.Option(False, "--no-cache", help="Recompute even finished stages."),
    ) -> None:
        from ..inverse import run_experiment

        cfg = _config(
            config, sets, experiment, out, model=model, sae=sae, site=site, name=name,
            **{
                "data.sources": split_list(prompts) if prompts else None,
                "optimization.latents": [_int(x) for x in split_list(latent)] if latent else None,
                "use_cached_data": False if no_cache else None,
            },
        )  # fmt: skip
        res = run_experiment(cfg, stages=STAGE_OF[stage] if stage else None, progress=True)
        _print(res)

    cmd.__doc__ = DOCS[stage]
    return cmd


DOCS = {
    None: "Run the pipeline: the stages whose pipeline flag is on (finished stages are loaded from the run).",
    "collect": "Collect prompts × latents max/mean activations and filter latents by entropy and firing rate.",
    "filter": "Filter the collected latents by prompt/token entropy and a firing-rate band.",
    "cluster": "Cluster the kept latents (UMAP + HDBSCAN/DBSCAN), analyse the clusters, select representatives.",
    "optimize": "Optimise a prompt for each selected (or --latent) latent: EPO or soft prompts, re-tokenised.",
    "explain": "Explain the selected latents (offline or LLM) and score each explanation by simulation.",
    "viz": "Write the figures: interactive cluster map, optimisation progress, token heatmaps.",
}
"""Help line of each command (``None``: ``run``); upstream stages a command needs are loaded from
the run when finished with the same settings, else computed first."""


def _int(x: str) -> int:
    from ..errors import ConfigError

    try:
        return int(x)
    except ValueError:
        raise ConfigError(f"--latent: {x!r} is not a latent id") from None


SUBAPPS = [
    (
        inverse_app,
        "inverse",
        {"run": _command(None), **{s: _command(s) for s in STAGE_OF}},
    )
]
