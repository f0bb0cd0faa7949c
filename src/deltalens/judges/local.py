"""A judge run locally by any model deltalens loads, from its probabilities over scores.

The judge prompt (:mod:`deltalens.judges.base`) is formatted with the judge model's chat
template (raw text for base models). For each candidate score ``c`` in ``candidates``
(default 0, 10, …, 100) the log-probability of the candidate's tokens after the prompt is
computed by teacher forcing, ``ℓ_c = Σ_j log p(t_cj | prompt, t_c<j)``; the score is the
expectation under the normalised candidate distribution,
``Σ_c softmax(ℓ)_c · c``. The prompt is run once per item and its KV cache is shared by
all candidates. Refusals cannot be detected this way; every score has status ``ok``.

Use a capable instruction-tuned model (7B+): a 135M model follows the rubric barely
better than chance, so its scores mostly reflect number-token priors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .base import Judge, Score, TraitInfo, render_prompt

if TYPE_CHECKING:
    from ..models.loading import LoadedModel


class LocalJudge(Judge):
    """Score with a local model's probabilities over candidate scores (see module docstring)."""

    scores_relevance = True

    def __init__(
        self, lm: LoadedModel, candidates: Sequence[int] = tuple(range(0, 101, 10)), batch_size: int = 8
    ):
        self.lm = lm
        self.candidates = [int(c) for c in candidates]
        if not self.candidates or any(not 0 <= c <= 100 for c in self.candidates):
            raise ValueError("candidates must be integers in [0, 100]")
        self.batch_size = int(batch_size)
        self.id = f"local:{lm.name}:{lm.weights_hash}:{','.join(map(str, self.candidates))}"

    @torch.no_grad()
    def score_batch(
        self, kind: str, items: Sequence[tuple[str, str]], trait: TraitInfo | None
    ) -> list[Score]:
        from transformers import DynamicCache

        from ..generate import left_pad, position_ids

        lm = self.lm
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        texts = [render_prompt(kind, q, r, trait) for q, r in items]
        seqs = [lm.encode(lm.format_chat(t), formatted=lm.has_chat_template) for t in texts]
        cands = [lm.encode(str(c), formatted=True) for c in self.candidates]
        K, m = len(cands), max(len(c) for c in cands)
        cand_mat = torch.full((K, m), pad, dtype=torch.long)
        for k, c in enumerate(cands):
            cand_mat[k, : len(c)] = torch.as_tensor(c)
        values = torch.tensor(self.candidates, dtype=torch.float64)
        out: list[Score] = []
        for s in range(0, len(seqs), self.batch_size):
            ids, mask = left_pad(seqs[s : s + self.batch_size], pad, lm.device)
            B = ids.shape[0]
            cache = DynamicCache()
            res = lm.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids(mask),
                past_key_values=cache,
                use_cache=True,
            )
            first = torch.log_softmax(res.logits[:, -1].double(), -1)  # [B, V]
            lp = first[:, cand_mat[:, 0].to(first.device)]  # [B, K]
            if m > 1:
                cache.batch_select_indices(torch.arange(B, device=ids.device).repeat_interleave(K))
                inp = cand_mat.to(ids.device).repeat(B, 1)
                mask2 = torch.cat(
                    [
                        mask.repeat_interleave(K, 0),
                        torch.ones(B * K, m, dtype=mask.dtype, device=mask.device),
                    ],
                    1,
                )
                pos = position_ids(mask2)[:, -m:]
                res2 = lm.model(
                    input_ids=inp,
                    attention_mask=mask2,
                    position_ids=pos,
                    past_key_values=cache,
                    use_cache=True,
                )
                logp = torch.log_softmax(res2.logits.double(), -1)  # [B*K, m, V]
                nxt = inp[:, 1:]  # tokens predicted by positions 0..m-2
                tok_lp = logp[:, :-1].gather(-1, nxt[..., None])[..., 0]  # [B*K, m-1]
                lens = torch.tensor([len(c) for c in cands], device=ids.device).repeat(B)
                valid = torch.arange(1, m, device=ids.device)[None, :] < lens[:, None]
                lp = lp + (tok_lp * valid).sum(1).view(B, K)
            p = torch.softmax(lp, -1).cpu()
            for row in p:
                out.append(Score(float((row * values).sum()), "ok"))
        return out
