"""Batched steering sweeps: many (layer, vector, coefficient) configurations as row
slices of one greedy generation batch.

:func:`generate_sweep` runs ``C`` configurations × ``P`` prompts. Row ``r = c·P + p`` is
prompt ``p`` under configuration ``c``; each configuration is a list of
:class:`~deltalens.steering.Term` (a :class:`~deltalens.steering.Candidate`; ensembles over
several layers are one configuration), applied through :func:`deltalens.intervene` with
per-row ``Add`` interventions (:func:`deltalens.steering.terms.interventions`: one ``Add``
per site, vectors ``[R, d]`` and coefficients ``[R]``).

When the steering positions select no prompt token (``response``, ``response[:5]``, …)
the prompts are identical under every configuration, so they are prefilled **once**
(``P`` rows) and the KV cache is expanded to the ``C·P`` rows; the first generated token,
predicted from the last prompt position, is shared too. Otherwise every row is
prefilled with its steering. Rows that produce an end-of-turn token are dropped from the
batch (and their KV cache) as they finish, so the batch shrinks as answers end.

The decode loop is ordinary greedy decoding with a KV cache — the same forward calls,
attention masks and position ids as ``model.generate`` — so, configuration by
configuration, the outputs equal :func:`deltalens.generate` under the same interventions
(tested row for row). Each forward passes the full 2-D attention mask and tells the
hooks the batch layout with :func:`deltalens.batch_info`.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import hooks
from ..errors import ConfigError, PositionSpecError
from ..generate import Generation, _eos_ids, as_prompts, format_prompts, left_pad
from ..models.loading import LoadedModel
from ..positions import Positions
from .terms import Candidate, interventions, needed_norms


@dataclass
class SweepStats:
    """What the last sweep did (for logs and benchmarks)."""

    rows: int = 0
    shared_prefill: bool = False
    forwards: int = 0
    new_tokens: int = 0
    seconds: float = 0.0


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def generate_sweep(
    lm: LoadedModel,
    prompts: Iterable[Any],
    configs: Sequence[Candidate],
    *,
    norms: dict[int, float] | None = None,
    system: str | Sequence[str | None] | None = None,
    max_new_tokens: int = 64,
    positions: str | Positions = "response",
    max_rows: int = 256,
    chat: bool | str = "auto",
    share_prefill: bool | None = None,
    progress: bool = True,
    stats: SweepStats | None = None,
) -> list[list[Generation]]:
    """Greedy generation of every prompt under every configuration, batched.

    (One function on purpose: prefill, KV-cache expansion and the shrinking decode loop share
    the batch state — cache, mask, active rows — that the exact-equality tests pin down.)

    Args:
        prompts: as for :func:`deltalens.generate` (strings, dicts, :class:`~deltalens.Prompt`).
        configs: the configurations (:class:`~deltalens.steering.Candidate`); ``Candidate()``
            is the unsteered baseline.
        norms: reference norms of the layers relative terms steer (default: measured,
            :func:`~deltalens.steering.terms.needed_norms`).
        positions: where the terms are added (position language); ``response`` steers every
            generated token and no prompt token.
        max_rows: upper bound on rows per batch; configurations are split into chunks of
            whole configurations.
        share_prefill: prefill prompts once for all configurations (default: when the
            positions select no prompt token; forcing it otherwise raises).

    Returns:
        ``out[c][p]``: the :class:`~deltalens.Generation` of prompt ``p`` under config ``c``
        (``meta["config"] = c``).
    """
    from transformers import DynamicCache

    plist = as_prompts(prompts, system)
    pos = Positions.parse(positions)
    prompt_free = all(t.region == "response" for t in pos.terms)
    if share_prefill is None:
        share_prefill = prompt_free
    elif share_prefill and not prompt_free:
        raise PositionSpecError(
            f"positions '{pos.text}' select prompt tokens, so the prefill cannot be shared"
        )
    if not plist or not configs:
        return [[] for _ in configs]
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be ≥ 1, got {max_new_tokens}")
    if norms is None:
        norms = needed_norms(lm, configs)
    formatted = format_prompts(lm, plist, chat)
    P = len(plist)
    eos = set(_eos_ids(lm))
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else min(eos)
    dev = lm.device
    keep_kw = {"logits_to_keep": 1} if _accepts(lm.model, "logits_to_keep") else {}
    per_chunk = max(1, max_rows // P)
    chunks = [list(range(k, min(k + per_chunk, len(configs)))) for k in range(0, len(configs), per_chunk)]
    st = stats if stats is not None else SweepStats()
    st.rows, st.shared_prefill = len(configs) * P, bool(share_prefill)
    t0 = time.time()
    results: list[list[Generation | None]] = [[None] * P for _ in configs]
    bar = tqdm(
        total=len(chunks) * max_new_tokens,
        desc=f"steer {len(configs)}x{P}",
        unit="tok",
        disable=not progress,
        leave=False,
    )
    prompt_ids = [formatted[p][1] for p in range(P)]
    plen_all = torch.tensor([len(s) for s in prompt_ids])

    for chunk in chunks:
        C = len(chunk)
        row0 = [c * P for c in chunk]  # global row id of (config, prompt 0)
        ivs = interventions([configs[c] for c in chunk], norms, pos, row0=row0, n_prompts=P)
        gid = torch.tensor([row0[i] + p for i in range(C) for p in range(P)])  # global ids, chunk order
        plens = plen_all.repeat(C)
        with hooks.intervene(lm, ivs), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cache = DynamicCache()
            if share_prefill:
                ids, mask = left_pad(prompt_ids, pad, dev)
                with hooks.batch_info(lm, row_ids=gid[:P], prompt_lens=plen_all):
                    out = lm.model(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=_pos_ids(mask),
                        past_key_values=cache,
                        use_cache=True,
                        **keep_kw,
                    )
                expand = torch.arange(P, device=dev).repeat(C)
                cache.batch_select_indices(expand)
                mask = mask[expand]
                nxt = out.logits[:, -1].float().argmax(-1)[expand]
            else:
                ids, mask = left_pad([prompt_ids[p] for _ in range(C) for p in range(P)], pad, dev)
                with hooks.batch_info(lm, row_ids=gid, prompt_lens=plens):
                    out = lm.model(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=_pos_ids(mask),
                        past_key_values=cache,
                        use_cache=True,
                        **keep_kw,
                    )
                nxt = out.logits[:, -1].float().argmax(-1)
            st.forwards += 1
            del out
            active = torch.arange(C * P)  # chunk-local row index of each batch row
            tokens: list[list[int]] = [[] for _ in range(C * P)]
            finished = [False] * (C * P)
            for step in range(max_new_tokens):
                nl = nxt.tolist()
                done_rows = []
                for j, (r, t) in enumerate(zip(active.tolist(), nl)):
                    if t in eos:
                        finished[r] = True
                        done_rows.append(j)
                    else:
                        tokens[r].append(t)
                st.new_tokens += len(nl)
                bar.update(1)
                bar.set_postfix(rows=len(nl), refresh=False)
                if step == max_new_tokens - 1:
                    break
                if done_rows:
                    keep = torch.ones(len(active), dtype=torch.bool)
                    keep[done_rows] = False
                    if not keep.any():
                        break
                    idx = keep.nonzero()[:, 0]
                    cache.batch_select_indices(idx.to(dev))
                    active, mask, nxt = active[idx], mask[idx.to(dev)], nxt[idx.to(dev)]
                mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype, device=dev)], 1)
                with hooks.batch_info(lm, row_ids=gid[active], prompt_lens=plens[active]):
                    out = lm.model(
                        input_ids=nxt[:, None],
                        attention_mask=mask,
                        position_ids=_pos_ids(mask)[:, -1:],
                        past_key_values=cache,
                        use_cache=True,
                    )
                st.forwards += 1
                nxt = out.logits[:, -1].float().argmax(-1)
                del out
            del cache
            bar.update(max_new_tokens - 1 - step)
        for i, c in enumerate(chunk):
            for p in range(P):
                r = i * P + p
                pr = plist[p]
                results[c][p] = Generation(
                    index=p,
                    rollout=0,
                    question=pr.question,
                    system=pr.system,
                    prompt=formatted[p][0],
                    response=lm.tokenizer.decode(tokens[r], skip_special_tokens=True),
                    prompt_ids=list(prompt_ids[p]),
                    response_ids=tokens[r],
                    finished=finished[r],
                    meta={**dict(pr.meta), "config": c},
                )
    bar.close()
    st.seconds = time.time() - t0
    return [[g for g in row if g is not None] for row in results]


def _pos_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position ids as ``model.generate`` builds them (count of real tokens − 1; 1 on padding)."""
    p = mask.long().cumsum(-1) - 1
    return p.masked_fill(mask == 0, 1)
