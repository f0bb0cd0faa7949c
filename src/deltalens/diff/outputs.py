"""Output-space diff: how the next-token distributions of a fine-tuned model differ.

Both models read the same token ids. At every selected position ``t`` (its distribution
predicts token ``t+1``), with ``p = softmax(logits_ft)`` and ``q = softmax(logits_base)``:

* per-token ``KL(ft ‖ base) = Σ_v p_v (log p_v − log q_v)`` (nats), averaged over the
  selected positions (``mean_kl``), per input (``per_input_kl``), and its largest values
  with their contexts (``top_contexts``);
* tokens whose probability **rose** most: ranked by ``mean_t (p_v − q_v)``
  (``rose_most``; ``fell_most`` the other way), and by their share of the KL,
  ``mean_t p_v (log p_v − log q_v)`` (``kl_contribution``);
* ``mean_logprob_change``: ``mean_t (log p(x_{t+1}) − log q(x_{t+1}))`` over positions with
  a following token — how much more likely the fine-tuned model finds the text itself.

When the vocabularies differ (added tokens), both distributions are renormalised over the
shared ids ``0 … min(V_ft, V_base) − 1`` (stated in the result as ``vocab_note``).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..generate import left_pad, position_ids
from ..io import provenance
from ..positions import Geometry, Positions
from ..stage import StageConfig, at_least, option, register_result
from ._models import DiffResult, as_id_items, check_ids, load_pair, model_info

RESULTS_FILE = "results.json"


@dataclass
class OutputDiffConfig(StageConfig):
    """Settings of :func:`diff_outputs` (recorded in ``results.json``)."""

    positions: str = option(
        "all", flag="--positions", help="Positions whose next-token distributions are compared."
    )
    batch_size: int = option(8, flag="--batch-size", help="Inputs per forward pass.")
    max_length: int = option(256, flag="--max-length", help="Inputs are truncated to this many tokens.")
    top_k: int = option(20, flag="--top-k", help="Tokens per list.")
    n_contexts: int = option(20, flag="--contexts", help="Highest-KL contexts kept.")
    context_tokens: int = option(16, flag="--context-tokens", help="Tokens of context shown per context.")
    tokenizer: str | None = option(
        None,
        flag="--tokenizer",
        help="Model or directory whose tokenizer to use for a checkpoint that ships none.",
    )
    figures: bool = option(True, flag="--figures/--no-figures", help="Write PNG figures.")

    def validate(self) -> None:
        for name in ("batch_size", "max_length", "top_k", "n_contexts", "context_tokens"):
            at_least(self, name, 1)
        if isinstance(self.positions, Positions):
            self.positions = self.positions.text


@register_result
@dataclass
class OutputDiff(DiffResult):
    """The output diff (module docstring), ``results.json``."""

    KIND = "output diff"
    FILENAME = RESULTS_FILE
    LEGACY_KINDS = ("output_diff",)

    base: dict[str, Any]
    ft: dict[str, Any]
    positions: str
    n_inputs: int
    n_positions: int
    skipped_inputs: int
    mean_kl: float
    mean_logprob_change: float | None
    per_input_kl: dict[str, float]
    rose_most: list[list[Any]]
    fell_most: list[list[Any]]
    kl_contribution: list[list[Any]]
    top_contexts: list[dict[str, Any]]
    vocab_note: str | None = None
    formulas: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "base": self.base["name"],
            "ft": self.ft["name"],
            "mean_kl": self.mean_kl,
            "rose_most": [t for t, _ in self.rose_most[:10]],
        }


@torch.no_grad()
def diff_outputs(
    base: Any,
    ft: Any,
    data: Iterable[Any],
    config: OutputDiffConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **overrides: Any,
) -> OutputDiff:
    """Per-token KL(ft ‖ base) and the tokens that gained probability (module docstring).
    One pass over the batches accumulates every statistic (hence its length).

    Args:
        base, ft: model specs or LoadedModels.
        data: texts, (prompt, response) pairs, Generations or dicts (as
            :func:`deltalens.capture`); tokenized with the fine-tuned model's tokenizer.
        config: :class:`OutputDiffConfig` (``positions`` in the position language, e.g.
            ``all``, ``response``, ``prompt[-1]|response``); ``overrides`` replace its fields.
    """
    cfg = (config or OutputDiffConfig()).replace(**overrides) if overrides else (config or OutputDiffConfig())
    positions, batch_size, max_length, top_k = cfg.positions, cfg.batch_size, cfg.max_length, cfg.top_k
    n_contexts, context_tokens = cfg.n_contexts, cfg.context_tokens
    t0 = time.time()
    B, F = load_pair(base, ft, cfg.tokenizer)
    pos = Positions.parse(positions)
    pos.check_token_types(F.token_types if F.tokenizer is not None else {})
    items = [(ids[:max_length], min(pl, max_length)) for ids, pl in as_id_items(F, data)]
    V = min(B.vocab_size, F.vocab_size)
    keep = check_ids(items, V, "output diff")
    vocab_note = None
    if B.vocab_size != F.vocab_size:
        vocab_note = (
            f"vocabularies differ (base {B.vocab_size}, fine-tuned {F.vocab_size}): distributions renormalised "
            f"over the {V} shared ids"
        )
    pad = F.tokenizer.pad_token_id if F.tokenizer.pad_token_id is not None else 0
    sum_dp = torch.zeros(V, dtype=torch.float64)
    sum_klv = torch.zeros(V, dtype=torch.float64)
    sum_kl = 0.0
    n_sel = 0
    lp_sum, lp_n = 0.0, 0
    per_input: dict[int, list[float]] = {}
    heap: list[tuple] = []
    order = sorted(keep, key=lambda i: -len(items[i][0]))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="output diff", disable=not progress, leave=False):
        seqs = [items[i][0] for i in batch]
        plens = torch.tensor([items[i][1] for i in batch])
        ids, mask = left_pad(seqs, pad, F.device)
        pid = position_ids(mask)
        lf = F.model(input_ids=ids, attention_mask=mask, position_ids=pid, use_cache=False).logits
        lb = B.model(
            input_ids=ids.to(B.device),
            attention_mask=mask.to(B.device),
            position_ids=pid.to(B.device),
            use_cache=False,
        ).logits
        geom = Geometry.from_mask(mask.cpu(), ids.shape[1], plens)
        sel = pos.mask(geom, F.token_types if F.tokenizer is not None else {})
        if not sel.any():
            continue
        b_idx, t_idx = sel.nonzero(as_tuple=True)
        lpf = torch.log_softmax(lf[b_idx.to(lf.device), t_idx.to(lf.device), :V].float().cpu(), -1)
        lpb = torch.log_softmax(lb[b_idx.to(lb.device), t_idx.to(lb.device), :V].float().cpu(), -1)
        del lf, lb
        pf, pb = lpf.exp(), lpb.exp()
        klv = pf * (lpf - lpb)
        kl = klv.sum(-1)
        sum_dp += (pf - pb).double().sum(0)
        sum_klv += klv.double().sum(0)
        sum_kl += float(kl.double().sum())
        n_sel += len(kl)
        # next-token log-prob change where the next token exists
        L = ids.shape[1]
        nxt_ok = t_idx < L - 1
        if nxt_ok.any():
            nxt = ids.cpu()[b_idx[nxt_ok], t_idx[nxt_ok] + 1]
            d = lpf[nxt_ok].gather(1, nxt[:, None]).squeeze(1) - lpb[nxt_ok].gather(1, nxt[:, None]).squeeze(
                1
            )
            lp_sum += float(d.double().sum())
            lp_n += len(d)
        tf, tb = pf.topk(5, dim=-1), pb.topk(5, dim=-1)
        for j in range(len(kl)):
            gi = batch[int(b_idx[j])]
            rel = int(geom.rel[b_idx[j], t_idx[j]])
            v = float(kl[j])
            per_input.setdefault(gi, []).append(v)
            if len(heap) < n_contexts or v > heap[0][0]:
                entry = (
                    v,
                    gi,
                    rel,
                    (tf.indices[j].tolist(), tf.values[j].tolist()),
                    (tb.indices[j].tolist(), tb.values[j].tolist()),
                )
                if len(heap) < n_contexts:
                    heapq.heappush(heap, entry)
                else:
                    heapq.heapreplace(heap, entry)
    mean_dp = sum_dp / max(n_sel, 1)
    mean_klv = sum_klv / max(n_sel, 1)

    def toklist(values: torch.Tensor, largest: bool) -> list[tuple[str, float]]:
        v, i = values.topk(min(top_k, len(values)), largest=largest)
        return [[s, float(x)] for s, x in zip(F.token_str(i.tolist()), v.tolist())]

    contexts = []
    for v, gi, rel, (fi, fv), (bi, bv) in sorted(heap, key=lambda e: -e[0]):
        seq = items[gi][0]
        ctx_ids = seq[max(0, rel + 1 - context_tokens) : rel + 1]
        contexts.append(
            {
                "kl": v,
                "input": gi,
                "position": rel,
                "in_response": rel >= items[gi][1],
                "context": F.tokenizer.decode(ctx_ids),
                "next_token": F.token_str([seq[rel + 1]])[0] if rel + 1 < len(seq) else None,
                "ft_top": [[s, round(float(p), 4)] for s, p in zip(F.token_str(fi), fv)],
                "base_top": [[s, round(float(p), 4)] for s, p in zip(F.token_str(bi), bv)],
            }
        )
    per_input_kl = {str(i): sum(v) / len(v) for i, v in sorted(per_input.items())}
    results: dict[str, Any] = {
        "base": model_info(B),
        "ft": model_info(F),
        "positions": pos.text,
        "n_inputs": len(keep),
        "n_positions": n_sel,
        "skipped_inputs": len(items) - len(keep),
        "mean_kl": sum_kl / max(n_sel, 1),
        "mean_logprob_change": lp_sum / lp_n if lp_n else None,
        "per_input_kl": per_input_kl,
        "rose_most": toklist(mean_dp, True),
        "fell_most": toklist(mean_dp, False),
        "kl_contribution": toklist(mean_klv, True),
        "top_contexts": contexts,
        "vocab_note": vocab_note,
        "formulas": {
            "kl": "KL(ft‖base) = Σ_v p_ft(v) (log p_ft(v) − log p_base(v)), nats, per position",
            "rose_most": "mean over positions of p_ft(v) − p_base(v)",
            "kl_contribution": "mean over positions of p_ft(v) (log p_ft(v) − log p_base(v))",
            "mean_logprob_change": "mean over positions of log p_ft(x_{t+1}) − log p_base(x_{t+1})",
        },
        "config": cfg.to_dict(),
        "provenance": provenance(None, stage="diff outputs", seconds=round(time.time() - t0, 2)),
    }
    r = OutputDiff(**results)
    if out_dir is not None:
        out = Path(out_dir)
        files = {"results": str(out / RESULTS_FILE)}
        if cfg.figures and n_sel:
            from .plots import hbar

            files["fig_rose"] = str(
                hbar(
                    [t for t, _ in results["rose_most"]],
                    [v for _, v in results["rose_most"]],
                    out / "rose_most.png",
                    title="tokens whose probability rose most",
                    xlabel="mean Δp (ft − base)",
                )
            )
            files["fig_kl_tokens"] = str(
                hbar(
                    [t for t, _ in results["kl_contribution"]],
                    [v for _, v in results["kl_contribution"]],
                    out / "kl_contribution.png",
                    title="tokens contributing most to KL(ft‖base)",
                    xlabel="mean p log(p/q)",
                )
            )
        r.files = files
        r.save(out)
    return r
