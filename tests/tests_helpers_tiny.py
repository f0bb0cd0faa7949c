"""Helpers for tests that need a second tiny model (e.g. a 'fine-tune' of the tiny model)."""

from __future__ import annotations

import copy

import torch


def perturbed(lm, scale: float = 0.05, seed: int = 1):
    """A copy of ``lm`` with Gaussian noise added to every weight (same tokenizer)."""
    from deltalens.models.loading import LoadedModel

    model = copy.deepcopy(lm.model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std().clamp(min=1e-3))
    return LoadedModel.wrap(model, lm.tokenizer, name=f"{lm.name}-perturbed")
