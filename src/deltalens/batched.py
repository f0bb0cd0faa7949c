"""Many intervention configurations as row slices of one generation batch.

:func:`generate_batched` runs ``C`` configurations × ``Q`` items (``Q = P·n``: ``P`` prompts ×
``n`` rollouts). Row ``r = c·Q + q`` is item ``q`` (prompt ``q // n``, rollout ``q % n``) under
configuration ``c``; the caller says what each configuration does by building the
interventions of a chunk of configurations (``make_interventions(chunk, row0, Q)``, rows
``row0[i] … row0[i] + Q − 1`` belong to configuration ``chunk[i]``). Steering sweeps
(:func:`deltalens.steering.generate_sweep`) and causal latent experiments
(:mod:`deltalens.causal`) are both built on it.

When the interventions' positions select no prompt token (``response``, ``response[:5]``, …)
the prompts are identical under every configuration, so they are prefilled **once** (``Q``
rows) and the KV cache is expanded to the ``C·Q`` rows; the first generated token, predicted
from the last prompt position, is shared too. Otherwise every row is prefilled with its
interventions. Rows that produce an end-of-turn token are dropped from the batch (and their
KV cache) as they finish, so the batch shrinks as answers end.

Decoding is greedy, or sampled (temperature, then nucleus ``top_p``) with **one random
generator per item**, seeded from ``(seed, prompt, rollout)``: item ``q`` draws the same
uniform numbers under every configuration, whatever the batch holds (common random numbers,
so a configuration and its control differ only by what the intervention changed; a
configuration without effect reproduces the control token for token).

The loop is ordinary decoding with a KV cache — the same forward calls, attention masks and
position ids as ``model.generate`` — so, greedy, configuration by configuration, the outputs
equal :func:`deltalens.generate` under the same interventions (tested row for row). Each
forward passes the full 2-D attention mask and tells the hooks the batch layout with
:func:`deltalens.batch_info`.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from . import hooks
from .errors import ConfigError, PositionSpecError
from .generate import Generation, _eos_ids, as_prompts, format_prompts, left_pad
from .models.loading import LoadedModel
from .positions import Positions

MakeInterventions = Callable[[list[int], list[int], int], list[hooks.Intervention]]


@dataclass
class SweepStats:
    """What the last batched generation did (for logs and benchmarks)."""

    rows: int = 0
    shared_prefill: bool = False
    forwards: int = 0
    new_tokens: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Sampling:
    """Decoding: greedy (``do_sample=False``) or sampled with temperature and nucleus ``top_p``.

    Item ``q`` (prompt ``p``, rollout ``r``) samples with a generator seeded
    ``seed·1_000_003 + p·1_009 + r``."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p!r}")

    def generators(self, n_prompts: int, n: int, copies: int = 1) -> list[torch.Generator] | None:
        """One generator per row of ``copies`` configurations × ``n_prompts·n`` items (row
        ``c·Q + q`` seeded by item ``q``), or None when greedy."""
        if not self.do_sample:
            return None
        out = []
        for _ in range(copies):
            for p in range(n_prompts):
                for r in range(n):
                    g = torch.Generator()
                    g.manual_seed(int(self.seed) * 1_000_003 + p * 1_009 + r)
                    out.append(g)
        return out

    def pick(self, logits: torch.Tensor, gens: list[torch.Generator] | None, rows: list[int]) -> torch.Tensor:
        """Next token per batch row: argmax, or a draw from batch row ``j``'s generator ``gens[rows[j]]``."""
        if gens is None:
            return logits.float().argmax(-1)
        probs = torch.softmax(logits.float() / self.temperature, -1).cpu()
        if self.top_p < 1:
            sp, si = probs.sort(-1, descending=True)
            drop = sp.cumsum(-1) - sp > self.top_p  # keep the smallest prefix with mass ≥ top_p
            sp = sp.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, si, sp)
        out = [int(torch.multinomial(probs[j], 1, generator=gens[r])) for j, r in enumerate(rows)]
        return torch.tensor(out, dtype=torch.long, device=logits.device)


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _pos_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position ids as ``model.generate`` builds them (count of real tokens − 1; 1 on padding)."""
    p = mask.long().cumsum(-1) - 1
    return p.masked_fill(mask == 0, 1)


@torch.no_grad()
def generate_batched(
    lm: LoadedModel,
    prompts: Iterable[Any],
    n_configs: int,
    make_interventions: MakeInterventions,
    *,
    positions: str | Positions = "response",
    system: str | Sequence[str | None] | None = None,
    max_new_tokens: int = 64,
    n: int = 1,
    sampling: Sampling | None = None,
    max_rows: int = 256,
    chat: bool | str = "auto",
    share_prefill: bool | None = None,
    progress: bool = True,
    stats: SweepStats | None = None,
    desc: str = "generate",
) -> list[list[Generation]]:
    """Generation of every item under every configuration, batched.

    (One function on purpose: prefill, KV-cache expansion and the shrinking decode loop share
    the batch state — cache, mask, active rows — that the exact-equality tests pin down.)

    Args:
        prompts: as for :func:`deltalens.generate` (strings, dicts, :class:`~deltalens.Prompt`).
        n_configs: number of configurations ``C``.
        make_interventions: ``(chunk, row0, Q) -> [Intervention]`` for the configurations
            ``chunk`` (indices), configuration ``chunk[i]`` owning rows ``row0[i] + q``.
        positions: the positions the interventions use; decides whether the prefill is shared.
        n: rollouts per prompt (use sampling for different rollouts).
        sampling: greedy by default.
        max_rows: upper bound on rows per batch; configurations are split into chunks of whole
            configurations.
        share_prefill: prefill prompts once for all configurations (default: when the
            positions select no prompt token; forcing it otherwise raises).

    Returns:
        ``out[c][q]``: the :class:`~deltalens.Generation` of item ``q`` (prompt ``q // n``,
        rollout ``q % n``) under configuration ``c`` (``meta["config"] = c``).
    """
    from transformers import DynamicCache

    sampling = sampling or Sampling()
    plist = as_prompts(prompts, system)
    pos = Positions.parse(positions)
    prompt_free = all(t.region == "response" for t in pos.terms)
    if share_prefill is None:
        share_prefill = prompt_free
    elif share_prefill and not prompt_free:
        raise PositionSpecError(
            f"positions '{pos.text}' select prompt tokens, so the prefill cannot be shared"
        )
    if not plist or n_configs < 1:
        return [[] for _ in range(max(n_configs, 0))]
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be ≥ 1, got {max_new_tokens}")
    if n < 1:
        raise ConfigError(f"--n must be ≥ 1, got {n}")
    formatted = format_prompts(lm, plist, chat)
    P = len(plist)
    Q = P * n
    item_prompt = [q // n for q in range(Q)]
    eos = set(_eos_ids(lm))
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else min(eos)
    dev = lm.device
    keep_kw = {"logits_to_keep": 1} if _accepts(lm.model, "logits_to_keep") else {}
    per_chunk = max(1, max_rows // Q)
    chunks = [list(range(k, min(k + per_chunk, n_configs))) for k in range(0, n_configs, per_chunk)]
    st = stats if stats is not None else SweepStats()
    st.rows, st.shared_prefill = n_configs * Q, bool(share_prefill)
    t0 = time.time()
    results: list[list[Generation | None]] = [[None] * Q for _ in range(n_configs)]
    bar = tqdm(
        total=len(chunks) * max_new_tokens,
        desc=f"{desc} {n_configs}x{Q}",
        unit="tok",
        disable=not progress,
        leave=False,
    )
    item_ids = [formatted[item_prompt[q]][1] for q in range(Q)]
    plen_all = torch.tensor([len(s) for s in item_ids])

    for chunk in chunks:
        C = len(chunk)
        row0 = [c * Q for c in chunk]  # global row id of (config, item 0)
        ivs = make_interventions(chunk, row0, Q)
        gid = torch.tensor([row0[i] + q for i in range(C) for q in range(Q)])  # global ids, chunk order
        plens = plen_all.repeat(C)
        gens = sampling.generators(P, n, copies=C)
        with hooks.intervene(lm, ivs), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cache = DynamicCache()
            if share_prefill:
                ids, mask = left_pad(item_ids, pad, dev)
                with hooks.batch_info(lm, row_ids=gid[:Q], prompt_lens=plen_all):
                    out = lm.model(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=_pos_ids(mask),
                        past_key_values=cache,
                        use_cache=True,
                        **keep_kw,
                    )
                expand = torch.arange(Q, device=dev).repeat(C)
                cache.batch_select_indices(expand)
                mask = mask[expand]
                nxt = sampling.pick(out.logits[:, -1][expand], gens, list(range(C * Q)))
            else:
                ids, mask = left_pad([item_ids[q] for _ in range(C) for q in range(Q)], pad, dev)
                with hooks.batch_info(lm, row_ids=gid, prompt_lens=plens):
                    out = lm.model(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=_pos_ids(mask),
                        past_key_values=cache,
                        use_cache=True,
                        **keep_kw,
                    )
                nxt = sampling.pick(out.logits[:, -1], gens, list(range(C * Q)))
            st.forwards += 1
            del out
            active = torch.arange(C * Q)  # chunk-local row index of each batch row
            tokens: list[list[int]] = [[] for _ in range(C * Q)]
            finished = [False] * (C * Q)
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
                nxt = sampling.pick(out.logits[:, -1], gens, active.tolist())
                del out
            del cache
            bar.update(max_new_tokens - 1 - step)
        for i, c in enumerate(chunk):
            for q in range(Q):
                r = i * Q + q
                p = item_prompt[q]
                pr = plist[p]
                results[c][q] = Generation(
                    index=p,
                    rollout=q % n,
                    question=pr.question,
                    system=pr.system,
                    prompt=formatted[p][0],
                    response=lm.tokenizer.decode(tokens[r], skip_special_tokens=True),
                    prompt_ids=list(item_ids[q]),
                    response_ids=tokens[r],
                    finished=finished[r],
                    meta={**dict(pr.meta), "config": c},
                )
    bar.close()
    st.seconds = time.time() - t0
    return [[g for g in row if g is not None] for row in results]
