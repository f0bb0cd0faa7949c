"""Exact activation patching, batched: many patches run as rows of one forward.

Two directions (the names follow Heimersheim & Nanda, "How to use and interpret
activation patching", 2024):

* **denoising** — run the *corrupted* prompt and patch in activations from the *clean*
  run: a site whose patch restores the clean metric is *sufficient* to carry the
  information.
* **noising** — run the *clean* prompt and patch in activations from the *corrupted* run:
  a site whose patch destroys the clean metric is *necessary*.

A patch replaces one site's activation (``resid``, ``attn_out``, ``mlp_out`` of a layer) at
some positions, in every pair of the task at once; the reported number is the mean
metric over pairs. Every patch of a sweep becomes one group of rows (the task's
sequences) of a batched forward, through :class:`deltalens.Replace` with a per-row
position mask — no Python loop over forwards per patch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..hooks import Read, Replace, Site, intervene
from .results import DIRECTIONS, PatchingResult
from .task import PairTask

if TYPE_CHECKING:
    from ..models.loading import LoadedModel

PATCH_COMPONENTS = ("resid", "attn_out", "mlp_out")

#: a patch: site → grid columns to patch there (``None`` = every real position of the sequence)
Patch = Mapping[Site, "Sequence[int] | None"]


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ConfigError(f"unknown patching direction '{direction}'; valid: {', '.join(DIRECTIONS)}")
    return direction


def runs_for(direction: str) -> tuple[str, str]:
    """``(source, base)``: the run activations come from and the run they are patched into."""
    return ("clean", "corrupted") if check_direction(direction) == "denoising" else ("corrupted", "clean")


def sweep_sites(lm: LoadedModel, components: Sequence[str], layers: Sequence[int] | None) -> list[Site]:
    for c in components:
        if c not in PATCH_COMPONENTS:
            raise ConfigError(f"cannot patch component '{c}'; valid: {', '.join(PATCH_COMPONENTS)}")
    layers = list(range(lm.n_layers)) if layers is None else list(layers)
    return [Site(layer, c).resolve(lm) for c in components for layer in layers]


def cache_run(
    lm: LoadedModel, task: PairTask, which: str, sites: Sequence[Site]
) -> tuple[dict[Site, torch.Tensor], torch.Tensor]:
    """Activations ``{site: [S, T, d]}`` and the per-pair metric ``[n_pairs]`` of an unpatched run."""
    reads = {s: Read(s) for s in sites}
    with torch.no_grad(), intervene(lm, list(reads.values())):
        m = task.metric(task.forward(lm, task.ids(which), task.mask))[0]
    return {s: r.value for s, r in reads.items()}, m


def first_difference(task: PairTask) -> int:
    """First column where the clean and corrupted token ids differ in any sequence."""
    diff = (task.clean_ids != task.corrupted_ids).any(0).nonzero()
    return int(diff[0]) if len(diff) else task.width


def _groups_per_batch(task: PairTask, batch_tokens: int) -> int:
    return max(1, batch_tokens // max(1, task.n_seqs * task.width))


def run_patches(
    lm: LoadedModel,
    task: PairTask,
    patches: Sequence[Patch],
    direction: str = "denoising",
    source: Mapping[Site, torch.Tensor] | None = None,
    batch_tokens: int = 4096,
    progress: bool = False,
) -> torch.Tensor:
    """Per-pair metric ``[len(patches), n_pairs]`` of each patched run.

    Each patch maps sites to the grid columns patched there (``None``: every position,
    answer tokens included). An empty patch gives the unpatched base run. ``source`` may
    pass cached source activations (from :func:`cache_run`).
    """
    src_run, base_run = runs_for(direction)
    sites = sorted({s for p in patches for s in p})
    if source is None:
        source, _ = cache_run(lm, task, src_run, sites) if sites else ({}, None)
    S, T = task.n_seqs, task.width
    base_ids, mask = task.ids(base_run), task.mask
    real = mask.bool().to(lm.device)
    per = _groups_per_batch(task, batch_tokens)
    out = []
    chunks = range(0, len(patches), per)
    for start in tqdm(chunks, desc=f"patching ({direction})", disable=not progress, leave=False):
        chunk = patches[start : start + per]
        G = len(chunk)
        ivs = []
        by_site: dict[Site, list[tuple[int, Sequence[int] | None]]] = {}
        for g, patch in enumerate(chunk):
            for site, cols in patch.items():
                by_site.setdefault(site, []).append((g, cols))
        for site, items in by_site.items():
            rows = torch.cat([torch.arange(g * S, (g + 1) * S) for g, _ in items])
            where = torch.zeros(len(items), S, T, dtype=torch.bool, device=lm.device)
            for j, (_, cols) in enumerate(items):
                if cols is None:
                    where[j] = real
                else:
                    where[j][:, list(cols)] = True
            vals = source[site].unsqueeze(0).expand(len(items), -1, -1, -1).reshape(len(items) * S, T, -1)
            ivs.append(Replace(site, vals, rows=rows, where=where.reshape(len(items) * S, T)))
        with torch.no_grad(), intervene(lm, ivs):
            logits = task.forward(lm, base_ids.repeat(G, 1), mask.repeat(G, 1))
        out.append(task.metric(logits).cpu())
    return torch.cat(out) if out else torch.zeros(0, task.n_pairs)


def activation_patching(
    lm: LoadedModel,
    task: PairTask,
    components: Sequence[str] = ("resid",),
    layers: Sequence[int] | None = None,
    direction: str = "denoising",
    positions: Sequence[int] | None = None,
    batch_tokens: int = 4096,
    progress: bool = True,
) -> PatchingResult:
    """Exact patching of each component × layer × position, one position at a time (in all
    pairs at once) — ``patch_resid_by_layer_and_position`` and friends in one call.

    Args:
        components: any of ``resid``, ``attn_out``, ``mlp_out``.
        layers: layers to sweep (default all).
        direction: ``denoising`` (clean → corrupted run) or ``noising`` (corrupted → clean).
        positions: grid columns (default: every prompt column, :attr:`PairTask.positions`).
        batch_tokens: tokens per forward; patches are packed as row groups up to this.
    """
    t0 = time.perf_counter()
    sites = sweep_sites(lm, components, layers)
    cols = list(task.positions if positions is None else positions)
    src_run, base_run = runs_for(direction)
    source, m_src = cache_run(lm, task, src_run, sites)
    m_base = task.run_metric(lm, base_run)
    # Columns before the first token where clean and corrupted differ hold identical
    # activations in both runs (causal attention), so patching them is a no-op: their
    # value is the base run's metric, filled in without running.
    first = first_difference(task)
    run_cols = [c for c in cols if c >= first]
    patches: list[Patch] = [{s: [c]} for s in sites for c in run_cols]
    ran = run_patches(lm, task, patches, direction, source, batch_tokens, progress)
    L = len(sites) // len(components)
    per_pair = m_base.cpu().expand(len(sites), len(cols), -1).clone()
    keep = torch.tensor([cols.index(c) for c in run_cols], dtype=torch.long)
    if len(run_cols):
        per_pair[:, keep] = ran.view(len(sites), len(run_cols), task.n_pairs)
    per_pair = per_pair.view(len(components), L, len(cols), task.n_pairs)
    return PatchingResult.for_grid(
        task,
        "activation_patching",
        direction,
        components,
        [s.layer for s in sites[:L]],
        cols,
        m_base.cpu(),
        m_src.cpu(),
        per_pair.mean(-1),
        t0,
        {
            "n_forward_rows": len(patches) * task.n_seqs,
            "skipped_identical_prefix_columns": [c for c in cols if c < first],
        },
        per_pair=per_pair,
    )
