"""Iterative SAEs along a checkpoint series (the M*D* scheme of iterative fine-tuning studies).

A series has iterations ``i = 0..n``: model ``M_i`` (``M_0`` the base model, ``M_i`` the
i-th fine-tune, e.g. DPO round i) and data ``D_i`` (what ``M_i`` generated). The SAE named
``M<m>D<d>`` is trained on the activations of model ``m`` on data ``d``:

* branch ``MD`` — ``M_iD_i``: each model on its own data (``M0D0, M1D1, M2D2, …``);
* branch ``M0D`` — ``M_0D_i``: the base model on each iteration's data (``M0D0, M0D1, …``).

Within a branch, the SAE of iteration ``i`` starts from the SAE of iteration ``i−1`` and
is fine-tuned on iteration ``i``'s activations, so latent ``j`` of ``M4D4`` descends from
latent ``j`` of ``M3D3`` and features can be followed across iterations (decoder cosine
with the parent, :func:`latent_alignment`). Iteration 0 is trained from scratch (or from
``init_from``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .base import SAE
from .train import TrainConfig, Trainer, TrainResult, train_saes

BRANCHES = ("MD", "M0D")


def run_name(model_iter: int, data_iter: int) -> str:
    """``M<model>D<data>``: e.g. ``run_name(0, 4) == "M0D4"`` (base model on iteration-4 data)."""
    return f"M{int(model_iter)}D{int(data_iter)}"


def branch_names(branch: str, n: int) -> list[str]:
    """Run names of a branch over iterations ``0..n−1``."""
    if branch not in BRANCHES:
        raise ConfigError(f"unknown branch '{branch}'; valid: {', '.join(BRANCHES)}")
    return [run_name(i if branch == "MD" else 0, i) for i in range(n)]


@torch.no_grad()
def latent_alignment(parent: SAE, child: SAE) -> dict[str, Any]:
    """Per-latent decoder cosine ``cos(W_dec,parent[j], W_dec,child[j])`` and summaries.

    ``aligned_fraction`` is the fraction of latents with cosine ≥ 0.9 (the same latent
    index still writes the same direction); ``encoder_cosine`` the same for encoder columns.
    """
    if parent.d_sae != child.d_sae or parent.d_in != child.d_in:
        raise ConfigError(f"SAEs differ in shape: {parent} vs {child}")
    a, b = parent.W_dec.float(), child.W_dec.float()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    enc = torch.nn.functional.cosine_similarity(parent.W_enc.float().t(), child.W_enc.float().t(), dim=1)
    return {
        "decoder_cosine": cos,
        "encoder_cosine": enc,
        "median_cosine": float(cos.median()),
        "mean_cosine": float(cos.mean()),
        "aligned_fraction": float((cos >= 0.9).float().mean()),
    }


def train_iterative(
    sources: Sequence[Any],
    names: Sequence[str],
    out_dir: Callable[[str], Path] | None,
    config: TrainConfig,
    *,
    finetune: TrainConfig | None = None,
    site: str | None = None,
    init_from: SAE | str | Path | None = None,
    progress: bool = True,
    resume: bool = True,
) -> list[TrainResult]:
    """Train ``names[0]`` on ``sources[0]`` with ``config`` (or fine-tune ``init_from``), then
    each next SAE from the previous one on its source with ``finetune`` (default: ``config``
    with a quarter of its tokens and no LR warm-up). ``sources`` are anything
    :func:`~deltalens.sae.train.train_sae` accepts (stores, tensors, activation sources).
    Each result's SAE records its parent (``metadata.deltalens_parent``)."""
    from .sources import as_source

    if len(sources) != len(names):
        raise ConfigError(f"{len(sources)} activation sources for {len(names)} run names")
    if finetune is None:
        d = config.to_dict()
        d.update(total_tokens=max(config.batch_size, config.total_tokens // 4), lr_warmup=0.0)
        finetune = TrainConfig.from_dict(d)
    results: list[TrainResult] = []
    parent: SAE | str | Path | None = init_from
    for i, (data, name) in enumerate(zip(sources, names)):
        src = as_source(data, site)
        cfg = config if (i == 0 and init_from is None) else finetune
        meta = {"deltalens_run": name, "deltalens_parent": None if i == 0 else names[i - 1],
                "training_data": src.description}
        tr = Trainer(cfg, src.d_in, site=site or src.site, model_name=src.model_name,
                     out=None if out_dir is None else out_dir(name), init_from=parent, metadata=meta)
        res = train_saes(src, {name: tr}, progress=progress, resume=resume)[name]
        if i > 0:
            al = latent_alignment(results[-1].sae, res.sae)
            res.extra["alignment_with_parent"] = {k: v for k, v in al.items() if not isinstance(v, torch.Tensor)}
        results.append(res)
        parent = res.sae
    return results
