"""A patching task: clean/corrupted pairs tokenized for one model, and its metric.

:func:`build_task` turns :class:`~deltalens.data.pairs.PairRecord` s into tensors every
circuits method shares:

* Prompts are **left-padded to a common end column** (``prompt_end``), so position
  ``prompt_end − 1`` is every pair's last prompt token and a column index means the same
  offset from the end of the prompt in every pair. The patching grid is the columns
  ``prompt_end − max_prompt_len … prompt_end − 1``; in pairs with shorter prompts the
  leftmost columns are padding and patching them does nothing.
* Clean and corrupted prompts of a pair must have equal token counts (refused otherwise),
  so they occupy the same columns and the corrupted run can receive the clean activation
  at exactly the same position.
* ``logit_diff`` runs one sequence per pair (the prompt). ``logprob_diff`` runs two per
  pair — prompt + clean answer and prompt + corrupted answer, answers right-padded after
  ``prompt_end`` — and scores the answer tokens teacher-forced. Only prompt columns are
  patched; answer columns are part of the readout.

Row layout of every forward: ``G`` groups of the task's ``S`` sequences (``S = n_pairs``
or ``2·n_pairs``); :meth:`PairTask.metric` returns ``[G, n_pairs]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..data.pairs import PairRecord
from ..errors import ConfigError, DataFormatError, ShapeError
from ..generate import position_ids
from .metrics import METRICS, answer_logprob, logit_diff

if TYPE_CHECKING:
    from ..models.loading import LoadedModel


@dataclass
class PairTask:
    """Tokenized pairs (see module docstring). Build with :func:`build_task`."""

    model_name: str
    metric_name: str
    chat: bool
    records: list[PairRecord]
    clean_ids: torch.Tensor  # [S, T]
    corrupted_ids: torch.Tensor  # [S, T]
    mask: torch.Tensor  # [S, T] (same for both runs)
    seq_pair: torch.Tensor  # [S] pair index of each sequence
    prompt_end: int
    prompt_lens: torch.Tensor  # [n_pairs]
    answer_tokens: list[tuple[list[int], list[int]]]  # per pair: clean, corrupted answer ids
    first_tokens: torch.Tensor  # [n_pairs, 2]
    targets: torch.Tensor | None  # [S, keep] for logprob_diff: token predicted at each kept column
    sign: torch.Tensor | None  # [S] +1 for prompt+clean answer, -1 for prompt+corrupted answer
    clean_tokens: list[list[str]]
    corrupted_tokens: list[list[str]]
    names: list[dict[str, int]] = field(default_factory=list)  # per pair: name → column

    # ---- shape facts ---------------------------------------------------------------------
    @property
    def n_pairs(self) -> int:
        return len(self.records)

    @property
    def n_seqs(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.clean_ids.shape[1])

    @property
    def keep(self) -> int:
        """Logit columns the metric reads (the last ``keep`` columns of a forward)."""
        return 1 if self.targets is None else int(self.targets.shape[1])

    @property
    def positions(self) -> list[int]:
        """Columns of the patching grid (prompt tokens, right-aligned at ``prompt_end``)."""
        return list(range(self.prompt_end - int(self.prompt_lens.max()), self.prompt_end))

    def position_labels(self, pair: int = 0) -> list[str]:
        """Labels of the grid columns: pair ``pair``'s clean token, ``*`` where clean and
        corrupted tokens differ in some pair, `` (NAME)`` where a named position falls."""
        out = []
        names = {c: n for n, c in (self.names[pair].items() if self.names else [])}
        off = self.prompt_end - int(self.prompt_lens[pair])
        for c in self.positions:
            i = c - off
            tok = self.clean_tokens[pair][i] if i >= 0 else "·"
            differs = bool((self.clean_ids[:, c] != self.corrupted_ids[:, c]).any())
            lab = tok + ("*" if differs else "") + (f" ({names[c]})" if c in names else "")
            out.append(lab)
        return out

    def prompt_columns_mask(self) -> torch.Tensor:
        """``[S, T]`` bool: real prompt tokens of each sequence."""
        cols = torch.arange(self.width)
        lens = self.prompt_lens[self.seq_pair]
        return (cols[None, :] >= (self.prompt_end - lens)[:, None]) & (cols[None, :] < self.prompt_end)

    # ---- running ---------------------------------------------------------------------------
    def ids(self, which: str) -> torch.Tensor:
        if which not in ("clean", "corrupted"):
            raise ConfigError(f"run must be 'clean' or 'corrupted', not {which!r}")
        return self.clean_ids if which == "clean" else self.corrupted_ids

    def forward(self, lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run the model and return the logits the metric reads: ``[B, keep, V]``."""
        dev = lm.device
        ids, mask = ids.to(dev), mask.to(dev)
        kw = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": position_ids(mask),
            "use_cache": False,
        }
        try:  # unembed only the columns the metric reads
            out = lm.model(**kw, logits_to_keep=self.keep)
        except TypeError:  # models whose forward has no logits_to_keep
            out = lm.model(**kw)
        return out.logits[:, -self.keep :]

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-pair metric ``[G, n_pairs]`` from the kept logits of ``G`` groups of sequences
        (``[G·S, keep, V]``); see :mod:`deltalens.circuits.metrics` for the formulas."""
        S = self.n_seqs
        if logits.shape[0] % S:
            raise ShapeError(f"{logits.shape[0]} rows are not whole groups of {S} sequences")
        G = logits.shape[0] // S
        dev = logits.device
        if self.targets is None:
            a = self.first_tokens[:, 0].to(dev).repeat(G)
            b = self.first_tokens[:, 1].to(dev).repeat(G)
            return logit_diff(logits[:, -1].float(), a, b).view(G, self.n_pairs)
        lp = answer_logprob(logits, self.targets.to(dev).repeat(G, 1)).view(G, S)
        sign = self.sign.to(dev)  # type: ignore[union-attr]
        return (lp * sign).view(G, self.n_pairs, 2).sum(-1)

    def run_metric(self, lm: LoadedModel, which: str, groups: int = 1) -> torch.Tensor:
        """Per-pair metric of an unpatched run (``[n_pairs]``), with any active interventions."""
        ids = self.ids(which).repeat(groups, 1)
        with torch.no_grad():
            return self.metric(self.forward(lm, ids, self.mask.repeat(groups, 1)))[0]

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "metric": self.metric_name,
            "answer_scoring": "first token"
            if self.metric_name == "logit_diff"
            else "summed log-prob (teacher-forced)",
            "chat": self.chat,
            "n_pairs": self.n_pairs,
            "n_seqs": self.n_seqs,
            "prompt_tokens": int(self.prompt_lens.max()),
            "pairs": [r.id if r.id is not None else r.source for r in self.records],
        }


# ---- building ------------------------------------------------------------------------------


def _encode_prompt(lm: LoadedModel, rec: PairRecord, text: str, chat: bool) -> tuple[str, list[int]]:
    if chat:
        if not lm.has_chat_template:
            raise ConfigError(f"{lm.name} has no chat template; build the task with chat=False")
        s = lm.format_chat(text, rec.system)
        return s, lm.encode(s, formatted=True)
    s = f"{rec.system}\n\n{text}" if rec.system else text
    return s, lm.encode(s)


def _answer_ids(lm: LoadedModel, ans: str | int, rec: PairRecord, what: str, single: bool) -> list[int]:
    V = lm.vocab_size
    tok = lm.tokenizer
    if isinstance(ans, int):
        if not 0 <= ans < V:
            raise DataFormatError(
                f"{rec.source}: {what} token id {ans} is not in {lm.name}'s vocabulary (0..{V - 1})"
            )
        return [ans]
    ids = list(tok(ans, add_special_tokens=False)["input_ids"])
    unk = getattr(tok, "unk_token_id", None)
    pieces = [tok.decode([i]) for i in ids]
    if not ids or (unk is not None and unk in ids and tok.unk_token not in ans) or any(i >= V for i in ids):
        raise DataFormatError(
            f"{rec.source}: {what} {ans!r} is not in {lm.name}'s vocabulary (tokenizes to {pieces}, "
            f"unknown token {tok.unk_token!r})"
        )
    if single and len(ids) != 1:
        raise DataFormatError(
            f"{rec.source}: {what} {ans!r} is not a single token in {lm.name}'s vocabulary (it is {len(ids)} tokens: "
            f"{pieces}); pick a single-token answer, or allow multi-token answers (logit_diff then uses the first "
            "token, logprob_diff sums all of them)"
        )
    return ids


def _resolve_name(
    lm: LoadedModel, text: str, ids: list[int], value: int | str, rec: PairRecord, name: str
) -> int:
    n = len(ids)
    if isinstance(value, int):
        if not -n <= value < n:
            raise DataFormatError(f"{rec.source}: names.{name} = {value} is outside the prompt's {n} tokens")
        return value % n
    at = text.find(value)
    enc = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    shift = n - len(enc["input_ids"])  # special tokens the plain encode adds in front (BOS)
    for i, (a, b) in enumerate(offsets):
        if a <= at < b:
            return i + shift
    raise DataFormatError(f"{rec.source}: names.{name} = {value!r} could not be mapped to a token")


def build_task(
    lm: LoadedModel,
    pairs: Sequence[PairRecord],
    metric: str = "logit_diff",
    chat: bool = False,
    single_token: bool = False,
    limit: int | None = None,
) -> PairTask:
    """Tokenize pairs for ``lm`` and check them.

    (One pass of per-pair checks, each naming the pair's line, then the padded tensors;
    kept together so every check sees the same tokenization.)

    Args:
        metric: ``logit_diff`` (first answer token) or ``logprob_diff`` (summed log-prob of
            all answer tokens); see :mod:`deltalens.circuits.metrics`.
        chat: wrap each prompt in the model's chat template (the answer is then the start
            of the assistant turn); otherwise prompts are fed as raw text.
        single_token: refuse answers that are not one token.
        limit: use only the first ``limit`` pairs.

    Raises:
        DataFormatError: clean/corrupted prompts of unequal token length, an answer that is
            not in the vocabulary, both answers starting with the same token under
            ``logit_diff``, a named position outside the prompt — naming file and line.
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric '{metric}'; valid: {', '.join(METRICS)}")
    pairs = list(pairs)[: limit if limit else None]
    if not pairs:
        raise DataFormatError("no pairs to build a task from")
    if lm.tokenizer is None:
        raise ConfigError(f"{lm.name} has no tokenizer")
    tok = lm.tokenizer
    prompts: list[tuple[list[int], list[int]]] = []
    answers: list[tuple[list[int], list[int]]] = []
    names: list[dict[str, int]] = []
    for rec in pairs:
        text_c, ids_c = _encode_prompt(lm, rec, rec.clean, chat)
        _, ids_k = _encode_prompt(lm, rec, rec.corrupted, chat)
        if len(ids_c) != len(ids_k):

            def show(ids):
                return [tok.decode([i]) for i in ids]

            raise DataFormatError(
                f"{rec.source}: clean and corrupted prompts have unequal token lengths ({len(ids_c)} vs {len(ids_k)}) "
                f"in {lm.name}'s tokenizer; patching matches positions one to one, so such pairs are refused (not "
                f"aligned). Rephrase one of them. clean={show(ids_c)} corrupted={show(ids_k)}"
            )
        a = _answer_ids(lm, rec.clean_answer, rec, "clean answer", single_token)
        b = _answer_ids(lm, rec.corrupted_answer, rec, "corrupted answer", single_token)
        if metric == "logit_diff" and a[0] == b[0]:
            raise DataFormatError(
                f"{rec.source}: both answers start with the token {tok.decode([a[0]])!r}, so the first-token logit "
                "difference is always 0; use metric logprob_diff (summed log-prob) or answers that differ in their first token"
            )
        if metric == "logprob_diff" and a == b:
            raise DataFormatError(f"{rec.source}: both answers tokenize to the same tokens")
        prompts.append((ids_c, ids_k))
        answers.append((a, b))
        names.append({k: _resolve_name(lm, text_c, ids_c, v, rec, k) for k, v in rec.names.items()})

    n = len(pairs)
    P = max(len(c) for c, _ in prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    lens = torch.tensor([len(c) for c, _ in prompts])
    names_cols = [{k: P - int(lens[i]) + v for k, v in nm.items()} for i, nm in enumerate(names)]
    first = torch.tensor([[a[0], b[0]] for a, b in answers])
    targets = sign = None
    if metric == "logit_diff":
        S, T = n, P
        seq_pair = torch.arange(n)
        clean = torch.full((S, T), pad, dtype=torch.long)
        corr = clean.clone()
        mask = torch.zeros((S, T), dtype=torch.long)
        for i, (c, k) in enumerate(prompts):
            clean[i, P - len(c) :] = torch.tensor(c)
            corr[i, P - len(k) :] = torch.tensor(k)
            mask[i, P - len(c) :] = 1
    else:
        A = max(max(len(a), len(b)) for a, b in answers)
        S, T = 2 * n, P + A
        seq_pair = torch.arange(n).repeat_interleave(2)
        clean = torch.full((S, T), pad, dtype=torch.long)
        corr = clean.clone()
        mask = torch.zeros((S, T), dtype=torch.long)
        targets = torch.full((S, A + 1), -1, dtype=torch.long)
        sign = torch.tensor([1.0, -1.0]).repeat(n)
        for i, ((c, k), (a, b)) in enumerate(zip(prompts, answers)):
            for j, ans in enumerate((a, b)):
                s = 2 * i + j
                clean[s, P - len(c) : P] = torch.tensor(c)
                corr[s, P - len(k) : P] = torch.tensor(k)
                clean[s, P : P + len(ans)] = torch.tensor(ans)
                corr[s, P : P + len(ans)] = torch.tensor(ans)
                mask[s, P - len(c) : P + len(ans)] = 1
                # kept columns are P-1 … T-1; column P-1+t predicts answer token t
                targets[s, : len(ans)] = torch.tensor(ans)
    return PairTask(
        model_name=lm.name,
        metric_name=metric,
        chat=chat,
        records=pairs,
        clean_ids=clean,
        corrupted_ids=corr,
        mask=mask,
        seq_pair=seq_pair,
        prompt_end=P,
        prompt_lens=lens,
        answer_tokens=answers,
        first_tokens=first,
        targets=targets,
        sign=sign,
        clean_tokens=[[tok.decode([i]) for i in c] for c, _ in prompts],
        corrupted_tokens=[[tok.decode([i]) for i in k] for _, k in prompts],
        names=names_cols,
    )
