"""Run a causal grid: plan and check everything, then controls, latent statistics and cells.

:func:`run_causal` is the stage function (``deltalens causal run``). Before any generation it
loads and checks every input — prompts, models, SAEs (width and site against the base model),
latent ids (``< d_sae``), every group's metric (a configured scorer) and every
iteration/branch (an SAE and a model exist) — and refuses a resume under another config.
Then, model by model: the control (the unmodified model on the items), the latent statistics
of each SAE on its own distribution (:mod:`.grid`), and the cells — real and null — as rows of
batched generations (:func:`deltalens.batched.generate_batched`: cells that share a model run
in one batch). One line per finished cell goes to ``results.jsonl``; a re-run computes only
the missing cells (a kill loses at most the batch in flight).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataFormatError
from ..io import append_log, load_tensors, read_json, read_log, save_tensors, write_json
from .config import CausalConfig
from .grid import (
    Cell,
    Group,
    LatentStats,
    csv_groups,
    explicit_groups,
    latent_stats,
    model_of,
    null_groups,
    probe_groups,
    sae_name,
)

RESULTS = "results.jsonl"
GRID_JSON = "grid.json"
STATS_DIR = "stats"


@dataclass
class Plan:
    """Everything a grid needs, loaded and checked before any generation."""

    config: CausalConfig
    prompts: list[Any]
    models: dict[int, str]
    saes: dict[str, Any]  # run name → SAE (loaded)
    sae_paths: dict[str, str]
    groups: dict[str, list[Group]]  # run name → its groups
    scorers: dict[str, Any]
    cells: list[Cell]  # real cells (null cells are drawn once statistics exist)
    site: dict[str, str] = field(default_factory=dict)  # run name → site

    @property
    def model_order(self) -> list[int]:
        need = {c.model for c in self.cells}
        return sorted(need | {0})


def _read_prompts(value: Any) -> list[Any]:
    from ..data.prompts import read_prompts

    if isinstance(value, str | Path):
        return [r.text for r in read_prompts(value)]
    if isinstance(value, Sequence) and value:
        return [str(v) for v in value]
    raise ConfigError("--prompts: give a prompt file or a list of prompts")


def _models(cfg: CausalConfig) -> dict[int, str]:
    models: dict[int, str] = {}
    if cfg.series:
        from ..sae.iterative import discover_series

        models.update(discover_series(cfg.series)[0])
    for k, v in cfg.models.items():
        try:
            models[int(k)] = v
        except ValueError:
            raise ConfigError(
                f"--model: write ITERATION=SPEC (e.g. 0=smollm2-135m-instruct), got {k}={v}"
            ) from None
    if 0 not in models:
        raise ConfigError("no base model: give --model 0=SPEC or a --series with M0/ (or series.json)")
    return models


def _sae_paths(cfg: CausalConfig) -> dict[str, str]:
    import re

    paths: dict[str, str] = {}
    if cfg.sae_root:
        root = Path(cfg.sae_root)
        if not root.is_dir():
            raise DataFormatError(f"{root}: --sae-root is not a directory")
        for p in sorted(root.iterdir()):
            if re.fullmatch(r"M\d+D\d+", p.name) and p.is_dir():
                paths[p.name] = str(p)
    for k, v in cfg.saes.items():
        if not re.fullmatch(r"M\d+D\d+", k):
            raise ConfigError(f"--sae: name SAEs by their run, M<model>D<data> (e.g. M1D1=PATH), got {k!r}")
        paths[k] = v
    return paths


def plan_grid(cfg: CausalConfig, scorers: Mapping[str, Any] | None = None, base_lm: Any = None) -> Plan:
    """Load and check every input of the grid (module docstring); raises one clear error."""
    from ..diff.scorers import as_scorer
    from ..sae.io import load_any

    prompts = _read_prompts(cfg.prompts)
    models = _models(cfg)
    sc: dict[str, Any] = {k: as_scorer(v) for k, v in cfg.metrics.items()}
    sc.update({k: as_scorer(v) for k, v in (scorers or {}).items()})
    if not sc:
        raise ConfigError("no key metric: give --metric NAME=SCORER (e.g. topic=keywords:sea,ocean)")
    paths = _sae_paths(cfg)
    iterations = cfg.iterations or sorted(
        {int(n.split("D")[1]) for n in paths if n.startswith("M0D") or n.split("D")[0][1:] == n.split("D")[1]}
    )
    if not iterations:
        raise ConfigError("no SAE: give --sae M<i>D<i>=PATH / M0D<i>=PATH or --sae-root")
    cells_need: list[tuple[str, int, str, str]] = []  # (type, iteration, branch, sae)
    for i in iterations:
        branches = cfg.branches[:1] if i == 0 else cfg.branches  # M0D0 is both branches' SAE
        for b in branches:
            name = sae_name("", i, b)
            if name not in paths:
                have = ", ".join(sorted(paths)) or "none"
                raise ConfigError(f"iteration {i}, branch {b}: no SAE {name} (have {have})")
            for t in cfg.types:
                m = model_of(t, i)
                if m not in models:
                    raise ConfigError(
                        f"iteration {i}: {t} needs model M{m}, which is not given (models: "
                        f"{', '.join(f'M{k}' for k in sorted(models))}); add --model {m}=SPEC"
                    )
                cells_need.append((t, i, b, name))
    used = sorted({c[3] for c in cells_need})
    saes = {n: load_any(paths[n]) for n in used}
    if base_lm is None:
        from ..models import load

        base_lm = load(models[0])
    sites = {}
    for n, sae in saes.items():
        site = getattr(sae, "site", None)
        if not site:
            raise DataFormatError(f"{paths[n]}: the SAE names no site (hook_name); convert it with its site")
        from ..hooks import Site

        try:
            Site.parse(site).resolve(base_lm)
        except Exception as exc:  # noqa: BLE001 - re-raised as one line naming the SAE
            raise ConfigError(
                f"SAE {n} ({paths[n]}): its site {site} does not fit {base_lm.name}: {exc}"
            ) from None
        if int(sae.d_in) != int(base_lm.d_model):
            raise ConfigError(
                f"SAE {n} ({paths[n]}): d_in={sae.d_in} does not fit {base_lm.name} (d_model={base_lm.d_model})"
            )
        sites[n] = site
    groups: dict[str, list[Group]] = {n: [] for n in used}
    extra = explicit_groups(cfg.groups) + (csv_groups(cfg.groups_csv) if cfg.groups_csv else [])
    for n in used:
        groups[n] += [g for g in extra if g.sae in (None, n)]
        if n in cfg.probes:
            groups[n] += probe_groups(n, cfg.probes[n], cfg.top_k, cfg.probe_method, cfg.probe_direction)
    for k in cfg.probes:
        if k not in saes:
            raise ConfigError(f"--probes {k}: no such SAE in the grid (SAEs: {', '.join(used)})")
    for g in extra:
        if g.sae is not None and g.sae not in saes:
            raise ConfigError(f"group {g.name!r}: SAE {g.sae} is not in the grid (SAEs: {', '.join(used)})")
    for n, gs in groups.items():
        d_sae = int(saes[n].W_dec.shape[0])
        if not gs:
            raise ConfigError(f"SAE {n}: no latent group (give --probes {n}=DIR, --group or --groups-csv)")
        for g in gs:
            bad = [j for j in g.latents if j >= d_sae]
            if bad:
                raise ConfigError(
                    f"group {g.name!r}: latent id {bad[0]} is out of range for SAE {n} (d_sae={d_sae})"
                )
            if g.metric is not None and g.metric not in sc:
                raise ConfigError(
                    f"group {g.name!r} predicts metric {g.metric!r}, which has no scorer "
                    f"(metrics: {', '.join(sorted(sc))}); add --metric {g.metric}=SCORER"
                )
        names = [g.name for g in gs]
        dup = sorted({x for x in names if names.count(x) > 1})
        if dup:
            raise ConfigError(f"SAE {n}: two groups are named {dup[0]!r}")
    for n in used:
        d = int(n.split("D")[1])
        if d not in models:
            raise ConfigError(
                f"SAE {n} is read on the generations of M{d} (its data D{d}), which is not given; add --model {d}=SPEC"
            )
    cells = []
    for t, i, b, n in cells_need:
        for g in groups[n]:
            for c in cfg.coefficients if t == "steering" else [None]:
                cells.append(Cell(t, model_of(t, i), i, b, n, g.name, g.latents, c, metric=g.metric))
    return Plan(cfg, prompts, models, saes, {n: paths[n] for n in used}, groups, sc, cells, sites)


# ---- interventions of a batch ------------------------------------------------------------------


def cell_interventions(
    cells: Sequence[Cell],
    row0: Sequence[int],
    n_items: int,
    saes: Mapping[str, Any],
    sites: Mapping[str, str],
    stats: Mapping[str, LatentStats],
    cfg: CausalConfig,
) -> list[Any]:
    """One :class:`~deltalens.hooks.EditLatents` (ablation) and one
    :class:`~deltalens.hooks.Add` (steering) per SAE, with per-row latents / vectors:

    * ablation: ``x ← x − Σ_j (f_j − a_j) d_j`` (``a = 0``, or the latent's mean for mean ablation);
    * steering: ``x ← x + c · Σ_j s_j d_j`` with ``s_j`` the typical activation
      ``E[f_j | f_j > 0]`` (relative) or ``s_j = 1`` (raw)."""
    from ..hooks import Add, EditLatents

    by_sae: dict[tuple[str, str], tuple[list[int], list[Any], list[Any]]] = {}
    for cell, r0 in zip(cells, row0):
        if cell.type == "control":
            continue
        rows, a, b = by_sae.setdefault((cell.type, cell.sae), ([], [], []))
        sae = saes[cell.sae]
        st = stats[cell.sae]
        if cell.type == "ablation":
            vals = torch.zeros(sae.W_dec.shape[0]) if cfg.ablation == "zero" else st.mean
            for q in range(n_items):
                rows.append(r0 + q)
                a.append(list(cell.latents))
                b.append(vals)
        else:
            idx = torch.tensor(cell.latents)
            W = sae.W_dec.detach().float()[idx]  # [k, d]
            if cfg.steering_scale == "relative":
                s = st.typical[idx].clone()
                fallback = float(st.typical[st.typical > 0].median()) if bool((st.typical > 0).any()) else 1.0
                s[s <= 0] = fallback
                v = (s[:, None] * W).sum(0)
            else:
                v = W.sum(0)
            for q in range(n_items):
                rows.append(r0 + q)
                a.append(v)
                b.append(float(cell.coef or 0.0))
    ivs: list[Any] = []
    for (kind, name), (rows, a, b) in by_sae.items():
        if kind == "ablation":
            ivs.append(
                EditLatents(sites[name], saes[name], a, torch.stack(b), positions=cfg.positions, rows=rows)
            )
        else:
            ivs.append(Add(sites[name], torch.stack(a), torch.tensor(b), positions=cfg.positions, rows=rows))
    return ivs


# ---- the run ------------------------------------------------------------------------------------


def _score(gens: Sequence[Any], scorers: Mapping[str, Any]) -> dict[str, list[float]]:
    return {m: [float(x) for x in s(list(gens))] for m, s in scorers.items()}


def _line(
    cell: Cell, gens: Sequence[Any], scores: dict[str, list[float]], seconds: float, keep_ids: bool
) -> dict[str, Any]:
    d = cell.to_dict()
    d["scores"] = scores
    d["means"] = {m: (sum(v) / len(v) if v else None) for m, v in scores.items()}
    d["responses"] = [g.response for g in gens]
    if keep_ids:
        d["items"] = [{"prompt_ids": list(g.prompt_ids), "response_ids": list(g.response_ids)} for g in gens]
    d["seconds"] = round(seconds, 3)
    return d


class _Gen:
    """A control generation read back from results.jsonl (token ids for the statistics pass)."""

    def __init__(self, item: Mapping[str, Any]):
        self.prompt_ids = item["prompt_ids"]
        self.response_ids = item["response_ids"]


def run_causal(
    config: CausalConfig,
    out: str | Path,
    *,
    scorers: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    loader: Callable[[str], Any] | None = None,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
) -> Any:
    """Run (or resume) the grid into ``out`` and return its :class:`~deltalens.causal.CausalResult`.

    (Long because it is the stage's sequence — check, controls, statistics, cells, summary — in
    one readable place; each step is a call.)

    Args:
        config: the grid (:class:`CausalConfig`).
        out: the run directory (``causal/<name>/``): ``results.jsonl``, ``grid.json``, ``stats/``,
            ``causal.json``, ``summary.csv`` and figures.
        scorers: extra metric scorers by name (Python objects; the config's ``metrics`` are specs).
        overwrite: start again in a directory that holds a run of another config.
        loader: ``spec → LoadedModel`` (default :func:`deltalens.load`).
    """
    from ..batched import Sampling, generate_batched
    from ..models import load
    from .results import summarize

    loader = loader or load
    out = Path(out)
    t_start = time.time()
    base_lm = loader(_models(config)[0])
    plan = plan_grid(config, scorers, base_lm=base_lm)
    recorded = read_json(out / GRID_JSON).get("config") if (out / GRID_JSON).is_file() else None
    excl = ("max_rows", "bootstrap", "permutations", "name")
    if recorded is not None and overwrite:
        for f in (out / RESULTS, out / GRID_JSON):
            f.unlink(missing_ok=True)
        recorded = None
    config.check_resume(recorded, out, exclude=excl)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / GRID_JSON,
        {
            "config": config.to_dict(),
            "groups": {n: [g.to_dict() for g in gs] for n, gs in plan.groups.items()},
            "sae_paths": plan.sae_paths,
            "models": {str(k): v for k, v in plan.models.items()},
        },
    )
    records, _ = read_log(out / RESULTS, "cells")
    done = {r["key"]: r for r in records if "key" in r}
    sampling = Sampling(config.do_sample, config.temperature, config.top_p, config.seed)
    gen_kw = dict(
        positions=config.positions,
        max_new_tokens=config.max_new_tokens,
        n=config.n,
        sampling=sampling,
        max_rows=config.max_rows,
        progress=progress,
    )
    Q = len(plan.prompts) * config.n
    cache: dict[int, Any] = {0: base_lm}

    def model(m: int) -> Any:
        if m not in cache:
            for k in [k for k in cache if k != 0]:
                del cache[k]
            cache[m] = loader(plan.models[m])
            if int(cache[m].d_model) != int(base_lm.d_model):
                raise ConfigError(
                    f"model M{m} ({plan.models[m]}) has d_model={cache[m].d_model}, the base {base_lm.d_model}"
                )
        return cache[m]

    def record(cell: Cell, gens: Sequence[Any], seconds: float) -> None:
        line = _line(cell, gens, _score(gens, plan.scorers), seconds, keep_ids=cell.type == "control")
        append_log(out / RESULTS, line)
        done[cell.key] = line
        if on_cell is not None:
            on_cell(line)

    # 1. controls: every model that runs cells, and every model whose generations are an SAE's data
    need_models = sorted({c.model for c in plan.cells} | {int(n.split("D")[1]) for n in plan.saes} | {0})
    for m in need_models:
        cell = Cell("control", m)
        if cell.key in done:
            continue
        t0 = time.time()
        gens = generate_batched(model(m), plan.prompts, 1, lambda *_: [], desc=f"control M{m}", **gen_kw)[0]
        record(cell, gens, time.time() - t0)

    # 2. latent statistics of each SAE M<m>D<d>: model M_m reading M_d's control generations
    stats: dict[str, LatentStats] = {}
    for n in sorted(plan.saes, key=lambda s: (int(s[1 : s.index("D")]), s)):
        path = out / STATS_DIR / f"{n}.safetensors"
        if path.is_file():
            t = load_tensors(path)
            stats[n] = LatentStats(t["firing_rate"], t["mean"], t["typical"], 0)
            continue
        m, d = int(n[1 : n.index("D")]), int(n.split("D")[1])
        gens = [_Gen(it) for it in done[Cell("control", d).key]["items"]]
        stats[n] = latent_stats(model(m), plan.saes[n], plan.site[n], gens, config.positions)
        save_tensors(path, stats[n].to_tensors(), {"sae": n, "tokens": str(stats[n].tokens)})

    # 3. null cells, then every missing cell, model by model, as rows of shared batches
    all_cells: list[Cell] = []
    for c in plan.cells:
        all_cells.append(c)
        rate = stats[c.sae].firing_rate.numpy()
        seed = f"{config.seed}|{c.sae}|{c.group}"
        for k, lat in enumerate(null_groups(c.latents, rate, config.null_groups, config.null_bins, seed)):
            all_cells.append(
                Cell(
                    c.type,
                    c.model,
                    c.iteration,
                    c.branch,
                    c.sae,
                    f"null:{c.group}",
                    lat,
                    c.coef,
                    c.group,
                    k,
                    c.metric,
                )
            )
    per_batch = max(1, config.max_rows // max(Q, 1))
    for m in sorted({c.model for c in all_cells}):
        todo = [c for c in all_cells if c.model == m and c.key not in done]
        for k in range(0, len(todo), per_batch):
            chunk = todo[k : k + per_batch]
            t0 = time.time()
            lm = model(m)

            def make(idx: list[int], row0: list[int], n_items: int, _chunk: list[Cell] = chunk) -> list[Any]:
                return cell_interventions(
                    [_chunk[i] for i in idx], row0, n_items, plan.saes, plan.site, stats, config
                )

            outs = generate_batched(lm, plan.prompts, len(chunk), make, desc=f"cells M{m}", **gen_kw)
            dt = (time.time() - t0) / len(chunk)
            for c, gens in zip(chunk, outs):
                record(c, gens, dt)

    res = summarize(list(done.values()), config, plan, seconds=time.time() - t_start)
    res.save(out)
    return res
