"""Attribution patching: the first-order (gradient) estimate of activation patching.

**Convention** (Nanda 2023, "Attribution patching"; Syed et al. 2023): for a site ``a``
and position ``p``, the effect of patching the *source* run's activation into the *base*
run is estimated by a first-order Taylor expansion **around the base run**::

    m(patched) − m(base) ≈ (a_source − a_base)[p] · ∂m/∂a[p] |_base

so for **denoising** (clean → corrupted) the gradient is taken on the **corrupted** run
and ``Δa = a_clean − a_corrupt``; for noising on the clean run with ``Δa = a_corrupt −
a_clean``. ``m`` is the mean metric over pairs, the dot product runs over the model
dimension and the sum over pairs, so an entry estimates patching that position in every
pair at once — the same quantity :func:`~deltalens.circuits.activation_patching`
measures. All sites and positions cost **two forwards and one backward**.

**Integrated gradients** (``steps = N``): the gradient is averaged along the straight path
from the base activation to the source activation *of that one site* (all positions
interpolated together, every other site computed normally; the "activation" variant of
Marks et al. 2024, "Sparse feature circuits")::

    IG(a)[p] = Δa[p] · (1/N) Σ_{k=0}^{N-1} ∂m/∂a[p] |_{a = a_base + (k/N)·Δa}

a left Riemann sum, so ``N = 1`` is exactly plain attribution patching; as ``N`` grows the
sum over positions of a site's IG tends to the exact effect of patching that site at all
positions (completeness), which plain attribution misses when the metric saturates.
It costs ``N`` forward/backward rows per site, run as row groups of batched forwards.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..hooks import Read, Replace, intervene
from .patching import cache_run, runs_for, sweep_sites
from .results import PatchingResult
from .task import PairTask

if TYPE_CHECKING:
    from ..models.loading import LoadedModel


@contextlib.contextmanager
def gradient_path(lm: LoadedModel) -> Iterator[None]:
    """Make sure activations carry gradients: with a frozen model (no parameter requiring
    grad), the embedding weight is switched on for the duration. Gradients are taken with
    ``torch.autograd.grad`` w.r.t. activations, so no parameter ``.grad`` is written."""
    params = list(lm.model.parameters())
    switched = None
    if not any(p.requires_grad for p in params):
        switched = lm.arch.embed.weight
        switched.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        if switched is not None:
            switched.requires_grad_(False)


def _scores(delta: torch.Tensor, grad: torch.Tensor, cols: Sequence[int]) -> torch.Tensor:
    """``Σ_pairs Σ_d Δa · g`` per column: ``[S, T, d]`` × ``[S, T, d]`` → ``[len(cols)]``."""
    return (delta.float() * grad.float()).sum(-1).sum(0)[list(cols)]


def attribution_patching(
    lm: LoadedModel,
    task: PairTask,
    components: Sequence[str] = ("resid", "attn_out", "mlp_out"),
    layers: Sequence[int] | None = None,
    direction: str = "denoising",
    positions: Sequence[int] | None = None,
) -> PatchingResult:
    """First-order estimate of activation patching for every site × position (see the
    module docstring for the convention). Two forwards and one backward in total."""
    t0 = time.perf_counter()
    sites = sweep_sites(lm, components, layers)
    cols = list(task.positions if positions is None else positions)
    src_run, base_run = runs_for(direction)
    source, m_src = cache_run(lm, task, src_run, sites)
    reads = {s: Read(s, keep_grad=True) for s in sites}
    with gradient_path(lm), intervene(lm, list(reads.values())):
        m = task.metric(task.forward(lm, task.ids(base_run), task.mask))[0]
        grads = torch.autograd.grad(m.mean(), [reads[s].value for s in sites], allow_unused=True)
    scores = torch.stack(
        [
            _scores(
                source[s] - reads[s].value.detach(), g if g is not None else torch.zeros_like(source[s]), cols
            )
            for s, g in zip(sites, grads)
        ]
    ).cpu()
    m_base = m.detach().cpu()
    L = len(sites) // len(components)
    values = float(m_base.mean()) + scores.view(len(components), L, len(cols))
    return PatchingResult.for_grid(
        task,
        "attribution_patching",
        direction,
        components,
        [s.layer for s in sites[:L]],
        cols,
        m_base,
        m_src.cpu(),
        values,
        t0,
        {"gradient_on": base_run, "estimate": "m(base) + sum_pairs sum_d (a_source - a_base) * dm/da|base"},
    )


def integrated_gradients(
    lm: LoadedModel,
    task: PairTask,
    components: Sequence[str] = ("attn_out", "mlp_out"),
    layers: Sequence[int] | None = None,
    direction: str = "denoising",
    steps: int = 8,
    positions: Sequence[int] | None = None,
    batch_tokens: int = 4096,
    progress: bool = True,
) -> PatchingResult:
    """Integrated-gradients attribution with ``steps`` points per site (module docstring)."""
    if steps < 1:
        raise ConfigError(f"integrated gradients needs steps >= 1, got {steps}")
    t0 = time.perf_counter()
    sites = sweep_sites(lm, components, layers)
    cols = list(task.positions if positions is None else positions)
    src_run, base_run = runs_for(direction)
    source, m_src = cache_run(lm, task, src_run, sites)
    base, m_base = cache_run(lm, task, base_run, sites)
    S, T = task.n_seqs, task.width
    rows_per_site = steps * S
    per = max(1, batch_tokens // max(1, rows_per_site * T))
    alphas = torch.arange(steps, dtype=torch.float32) / steps  # left Riemann sum: α = 0, 1/N, …
    scores = torch.zeros(len(sites), len(cols))
    ids, mask = task.ids(base_run), task.mask
    for start in tqdm(
        range(0, len(sites), per),
        desc=f"integrated gradients ({steps} steps)",
        disable=not progress,
        leave=False,
    ):
        chunk = sites[start : start + per]
        ivs: list = []
        reads: list[Read] = []
        for j, s in enumerate(chunk):
            delta = source[s] - base[s]
            a = alphas.to(delta.device, delta.dtype).view(-1, 1, 1, 1)
            vals = (base[s].unsqueeze(0) + a * delta.unsqueeze(0)).reshape(rows_per_site, T, -1)
            rows = torch.arange(j * rows_per_site, (j + 1) * rows_per_site)
            r = Read(s, keep_grad=True)
            ivs += [Replace(s, vals, rows=rows), r]
            reads.append(r)
        G = len(chunk) * steps
        with gradient_path(lm), intervene(lm, ivs):
            m = task.metric(task.forward(lm, ids.repeat(G, 1), mask.repeat(G, 1)))
            grads = torch.autograd.grad(m.mean(-1).sum(), [r.value for r in reads])
        for j, (s, g) in enumerate(zip(chunk, grads)):
            g_site = g[j * rows_per_site : (j + 1) * rows_per_site].view(steps, S, T, -1).mean(0)
            scores[start + j] = _scores(source[s] - base[s], g_site, cols).cpu()
    L = len(sites) // len(components)
    values = float(m_base.mean()) + scores.view(len(components), L, len(cols))
    return PatchingResult.for_grid(
        task,
        "integrated_gradients",
        direction,
        components,
        [s.layer for s in sites[:L]],
        cols,
        m_base,
        m_src,
        values,
        t0,
        {
            "steps": steps,
            "gradient_on": f"path {base_run} -> {src_run} per site",
            "rule": "left Riemann sum, alpha = k/N, k = 0..N-1",
        },
    )
