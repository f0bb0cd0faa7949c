"""Targets and scoring: what the optimisers maximise, and how prompts are scored (batched).

A :class:`Target` reads the residual stream ``h`` at one site (through :mod:`deltalens.hooks`,
a :class:`~deltalens.hooks.Read` with gradients kept) and returns a per-position score
``a(t)``; the prompt's **activation** is ``A(x) = max_{t ≥ skip} a(t)`` (``skip = 1``: the first
position is an attention sink, as in the collection's ``all[1:]``). Targets:

* :class:`LatentTarget` — an SAE latent: the optimisers climb its pre-activation
  ``pre_i(t) = (h_t − b_dec)·W_enc[:, i] + b_enc[i]`` (smooth); reports use the latent's
  activation ``f_i(t) = encode(h_t)[i]`` (what the collection measured);
* :class:`DirectionTarget` — a trait direction ``v``: ``a(t) = h_t · v / ‖v‖``;
* :class:`CrosscoderTarget` — a crosscoder latent's pre-activation on one model's site;
* :class:`LogitDiffTarget` — ``a(t) = logit_t[good] − logit_t[bad]`` (needs the full forward).

The **fluency** of a prompt ``x_0..x_{L-1}`` is its cross-entropy under the model,
``CE(x) = −(1/(L−1)) Σ_{t=1}^{L−1} log p(x_t | x_{<t})`` (nats/token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import hooks
from ..errors import ConfigError, ShapeError, SiteError
from ..hooks import Read, Site


class Target:
    """A per-position score read at ``site``; ``needs_logits`` if it reads the logits."""

    site: Site | None = None
    needs_logits: bool = False
    name: str = "target"

    def objective(self, h: torch.Tensor | None, logits: torch.Tensor | None) -> torch.Tensor:
        """``[B, T]`` differentiable per-position score (optimised)."""
        raise NotImplementedError

    def report(self, h: torch.Tensor | None, logits: torch.Tensor | None) -> torch.Tensor:
        """``[B, T]`` per-position score reported (default: the objective)."""
        return self.objective(h, logits)


class LatentTarget(Target):
    """SAE latent ``latent`` at the SAE's site (module docstring)."""

    def __init__(self, sae: Any, latent: int, site: Any = None):
        from .collect import check_latent

        self.sae = sae
        self.latent = check_latent(latent, int(sae.d_sae))
        st = site if site is not None else getattr(sae, "site", None)
        if st is None:
            raise SiteError(f"{sae!r} does not record its site; pass the site explicitly, e.g. 'resid.6'")
        self.site = Site.parse(st)
        self.name = f"latent {self.latent} at {self.site}"

    def objective(self, h: torch.Tensor | None, logits: torch.Tensor | None) -> torch.Tensor:
        s = self.sae
        x = h.to(s.W_dec.dtype)
        if hasattr(s, "W_enc") and hasattr(s, "b_enc"):
            if getattr(getattr(s, "cfg", None), "apply_b_dec_to_input", True) and hasattr(s, "b_dec"):
                x = x - s.b_dec
            return x @ s.W_enc[:, self.latent] + s.b_enc[self.latent]
        return s.encode(x)[..., self.latent]

    def report(self, h: torch.Tensor | None, logits: torch.Tensor | None) -> torch.Tensor:
        return self.sae.encode(h.to(self.sae.W_dec.dtype))[..., self.latent]


class DirectionTarget(Target):
    """Projection on a direction (a trait vector) at ``site``."""

    def __init__(self, vector: torch.Tensor, site: Any, name: str = "direction"):
        v = torch.as_tensor(vector, dtype=torch.float32).flatten()
        self.v = v / v.norm().clamp(min=1e-12)
        self.site = Site.parse(site)
        self.name = f"{name} at {self.site}"

    def objective(self, h: torch.Tensor | None, logits: torch.Tensor | None) -> torch.Tensor:
        return h.float() @ self.v.to(h.device)


class CrosscoderTarget(LatentTarget):
    """Latent ``latent`` of a crosscoder, read from one model's site: the encoder block of that
    model, ``pre_i(t) = h_t · W_enc[m, :, i] + b_enc[i]`` (the other models' inputs set to 0)."""

    def __init__(self, crosscoder: Any, latent: int, model_index: int, site: Any):
        from .collect import check_latent

        self.sae = crosscoder
        self.latent = check_latent(latent, int(crosscoder.d_sae))
        self.m = int(model_index)
        self.site = Site.parse(site)
        self.name = f"crosscoder latent {self.latent} (model {self.m}) at {self.site}"

    def objective(self, h: torch.Tensor | None, logits: torch.Tensor | None) -> torch.Tensor:
        W = self.sae.W_enc[self.m, :, self.latent]
        return h.to(W.dtype) @ W + self.sae.b_enc[self.latent]

    report = objective


class LogitDiffTarget(Target):
    """``logit[good] − logit[bad]`` at every position."""

    needs_logits = True

    def __init__(self, good: int, bad: int):
        self.good, self.bad = int(good), int(bad)
        self.name = f"logit[{self.good}] - logit[{self.bad}]"

    def objective(self, h: torch.Tensor | None, logits: torch.Tensor | None) -> torch.Tensor:
        return logits[..., self.good].float() - logits[..., self.bad].float()


@dataclass
class Scores:
    """Scores of a batch of prompts: ``activation`` ``[N]`` (max over positions ≥ skip of the
    reported score), ``objective`` ``[N]`` (same max of the optimised score), ``ce`` ``[N]``,
    ``per_position`` ``[N, L]`` reported score."""

    activation: np.ndarray
    objective: np.ndarray
    ce: np.ndarray
    per_position: np.ndarray


def token_cross_entropy(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[B]`` ``−(1/(L−1)) Σ_{t≥1} log p(x_t | x_{<t})`` from logits ``[B, L, V]`` and ids ``[B, L]``."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -lp.gather(-1, ids[:, 1:, None]).squeeze(-1).mean(-1)


def forward(
    lm: Any,
    target: Target,
    *,
    ids: torch.Tensor | None = None,
    embeds: torch.Tensor | None = None,
    need_logits: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One forward of equal-length prompts (``ids`` or ``embeds``); returns the target's site
    activation ``h`` ``[B, L, d]`` (in the graph) and the logits (or ``None`` when the forward
    stopped right after the site)."""
    got: dict[str, torch.Tensor] = {}
    reads = []
    if target.site is not None:

        def keep(x: torch.Tensor, mask: torch.Tensor, step: Any) -> None:
            got["h"] = x

        reads.append(Read(target.site, "all", callback=keep))
    stop = None if (need_logits or target.needs_logits or target.site is None) else target.site
    logits = None
    with hooks.intervene(lm, reads, stop_at=stop):
        try:
            kw = {"input_ids": ids} if ids is not None else {"inputs_embeds": embeds}
            logits = lm.model(**kw, use_cache=False).logits
        except hooks.StopForward:
            pass
    return got.get("h"), logits


def score_ids(
    lm: Any,
    target: Target,
    ids: torch.Tensor | Sequence[Sequence[int]],
    *,
    batch_size: int = 64,
    skip: int = 1,
    fluency: bool = True,
) -> Scores:
    """Score equal-length prompts ``ids`` ``[N, L]`` in batches of ``batch_size`` (no gradients)."""
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    if ids_t.dim() != 2 or ids_t.shape[1] <= skip:
        raise ShapeError(f"prompts must be [N, L] with L > {skip}, got {tuple(ids_t.shape)}")
    acts, objs, ces, per = [], [], [], []
    dev = lm.device
    with torch.no_grad():
        for k in range(0, len(ids_t), batch_size):
            chunk = ids_t[k : k + batch_size].to(dev)
            h, logits = forward(lm, target, ids=chunk, need_logits=fluency)
            rep = target.report(h, logits).float()
            obj = target.objective(h, logits).float()
            acts.append(rep[:, skip:].max(-1).values.cpu())
            objs.append(obj[:, skip:].max(-1).values.cpu())
            per.append(rep.cpu())
            ces.append(
                token_cross_entropy(logits, chunk).cpu()
                if logits is not None
                else torch.full((len(chunk),), np.nan)
            )
    return Scores(
        torch.cat(acts).numpy(), torch.cat(objs).numpy(), torch.cat(ces).numpy(), torch.cat(per).numpy()
    )


def prompt_cross_entropy(lm: Any, prompts: Sequence[Sequence[int]], batch_size: int = 16) -> list[float]:
    """``CE(x)`` (module docstring) of token lists of any length (``nan`` below 2 tokens);
    right-padded batches, padding masked out of the mean."""
    out = [float("nan")] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    with torch.no_grad():
        for k in range(0, len(order), batch_size):
            rows = [i for i in order[k : k + batch_size] if len(prompts[i]) >= 2]
            if not rows:
                continue
            L = max(len(prompts[i]) for i in rows)
            ids = torch.full((len(rows), L), pad, dtype=torch.long)
            att = torch.zeros(len(rows), L, dtype=torch.long)
            for j, i in enumerate(rows):
                ids[j, : len(prompts[i])] = torch.as_tensor(list(prompts[i]))
                att[j, : len(prompts[i])] = 1
            logits = lm.model(
                input_ids=ids.to(lm.device), attention_mask=att.to(lm.device), use_cache=False
            ).logits
            lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None].to(lm.device))
            m = att[:, 1:].to(lp.device).float()
            ce = -(lp.squeeze(-1) * m).sum(1) / m.sum(1)
            for j, i in enumerate(rows):
                out[i] = float(ce[j])
    return out


def check_target_site(lm: Any, target: Target) -> None:
    """Refuse a target whose site the model lacks, or an SAE of another width, naming both."""
    if target.site is None:
        return
    if target.site.component != "embed":
        target.site = target.site.resolve(lm)
    sae = getattr(target, "sae", None)
    d_in = getattr(sae, "d_in", None)
    if d_in is not None and not isinstance(target, CrosscoderTarget) and int(d_in) != int(lm.d_model):
        raise ShapeError(
            f"SAE has d_in={d_in} but {lm.name} has d_model={lm.d_model}; it was trained on another model"
        )


def check_sae_site(sae: Any, site: Any) -> None:
    """A site given for an SAE must be the one it was trained on (when the SAE records it)."""
    if site is None or getattr(sae, "site", None) is None:
        return
    if Site.parse(site) != Site.parse(sae.site):
        raise SiteError(f"target site {Site.parse(site)} is not the site the SAE was trained on ({sae.site})")


def as_target(obj: Any, latent: int | None = None, site: Any = None) -> Target:
    """A :class:`Target` from a Target, or an SAE + latent."""
    if isinstance(obj, Target):
        return obj
    if latent is None:
        raise ConfigError("optimising an SAE latent needs its id (--latent)")
    check_sae_site(obj, site)
    return LatentTarget(obj, latent, site)
