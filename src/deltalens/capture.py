"""``capture``: activations at many sites and positions in one pass over a dataset.

Inputs may be raw texts (everything is "prompt"), :class:`~deltalens.generate.Generation`
objects, ``(prompt, response)`` pairs or dicts (``{"prompt", "response"}`` with an already
formatted prompt, ``{"question", "response"[, "system"]}`` formatted with the chat
template, or ``{"text"}``). Prompt and response are tokenized separately and joined,
so the boundary is exact.

One forward per batch collects every requested site; the forward stops right after
the deepest requested site (early exit). Results are reduced per sequence
(``reduce="mean"`` over the selected tokens, ``"last"`` selected token) or kept per
token (``reduce=None``), in memory (:class:`Captured`) or streamed into an
:class:`~deltalens.store.ActivationStore`. :func:`iter_capture` runs the same forward
and yields one :class:`CaptureBatch` at a time instead, for statistics that reduce on
the fly in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import hooks
from .errors import DataFormatError, DeltalensError
from .generate import Generation, left_pad, position_ids
from .hooks import Read, Site, SiteLike
from .io import provenance
from .models.loading import LoadedModel
from .positions import Positions
from .store import ActivationStore, split_of

REDUCTIONS = (None, "mean", "last")


class Captured(dict):
    """``{Site: tensor}`` with row metadata. Keys may be looked up as ``(6, "resid")``,
    ``"resid.6"`` or ``Site(6, "resid")``.

    Attributes:
        seq_ids: ``[N]`` input index of each row.
        positions: ``[N]`` index of the token among its sequence's real tokens (per-token
            mode) or ``None``.
        token_ids: ``[N]`` token id (per-token mode) or ``None``.
        is_response: ``[N]`` bool (per-token mode) or ``None``.
        n_selected: ``[n_inputs]`` selected tokens per input (0 → no row for that input
            in reduced mode).
    """

    seq_ids: torch.Tensor
    positions: torch.Tensor | None
    token_ids: torch.Tensor | None
    is_response: torch.Tensor | None
    n_selected: torch.Tensor

    def __getitem__(self, key: Any) -> torch.Tensor:
        return super().__getitem__(Site.parse(key))

    def __contains__(self, key: Any) -> bool:
        try:
            return super().__contains__(Site.parse(key))
        except (DeltalensError, TypeError, ValueError):
            return False

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default


def encode_item(lm: LoadedModel, item: Any, i: int = 0) -> tuple[list[int], int]:
    """Token ids and prompt length (real tokens) of one capture input."""
    if isinstance(item, Generation):
        return list(item.prompt_ids) + list(item.response_ids), item.prompt_len
    if isinstance(item, str):
        ids = lm.encode(item, formatted=False)
        return ids, len(ids)
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
        p = lm.encode(item[0], formatted=True)
        return p + lm.encode(item[1], formatted=True), len(p)
    if isinstance(item, Mapping):
        if "prompt_ids" in item and "response_ids" in item:
            p = list(item["prompt_ids"])
            return p + list(item["response_ids"]), len(p)
        if "text" in item and "response" not in item:
            ids = lm.encode(str(item["text"]), formatted=False)
            return ids, len(ids)
        if "response" in item:
            if "prompt" in item:
                ptxt = str(item["prompt"])
            elif "question" in item:
                ptxt = lm.format_chat(str(item["question"]), item.get("system") or item.get("system_prompt"))
            else:
                raise DataFormatError(f"capture input {i}: a dict with 'response' needs 'prompt' or 'question'")
            p = lm.encode(ptxt, formatted=lm.has_chat_template or "question" not in item)
            return p + lm.encode(str(item["response"]), formatted=True), len(p)
    raise DataFormatError(
        f"capture input {i}: expected a text, a Generation, a (prompt, response) pair or a dict "
        f"with 'text' / 'prompt'+'response' / 'question'+'response'; got {type(item).__name__}"
    )


def _parse_sites(lm: LoadedModel, sites: SiteLike | Sequence[SiteLike]) -> list[Site]:
    if isinstance(sites, (Site, int, str)) or (isinstance(sites, tuple) and len(sites) == 2 and isinstance(sites[1], str)):
        sites = [sites]  # type: ignore[list-item]
    out = []
    for s in sites:  # type: ignore[union-attr]
        site = Site.parse(s)
        if site.component != "embed":
            layer = lm.arch.check_layer(site.layer)
            site = Site(layer, site.component)
        if site not in out:
            out.append(site)
    if not out:
        raise ValueError("capture needs at least one site")
    return out


class CaptureBatch(Captured):
    """One batch of :func:`iter_capture`: ``{Site: [n, d]}`` for the selected tokens of the
    batch's inputs, rows grouped by input and in position order within an input.

    Attributes (besides :class:`Captured`'s ``seq_ids``, ``positions``, ``token_ids``,
    ``is_response``):
        batch_ids: ``[B]`` input indices of the sequences in this batch (batch order).
        n_selected: ``[B]`` selected tokens of each of them (aligned with ``batch_ids``).
        prompt_lens: ``[n]`` real prompt tokens of each row's sequence.
        seq_lens: ``[n]`` real tokens of each row's sequence.
    """

    batch_ids: torch.Tensor
    prompt_lens: torch.Tensor
    seq_lens: torch.Tensor

    def token_type_mask(self, name: str, token_types: Mapping[str, int]) -> torch.Tensor:
        """``[n]`` bool: rows that are the chat token type ``name`` (``asst``, ``newline``…),
        i.e. ``position == prompt_len + offset`` with the model's offset for that type."""
        return self.positions == self.prompt_lens + int(token_types[name])


def encode_inputs(lm: LoadedModel, data: Iterable[Any], max_length: int | None = None) -> list[tuple[list[int], int]]:
    """``(token ids, prompt length)`` of every input, truncated to ``max_length`` tokens."""
    out = []
    for i, it in enumerate(data):
        ids, plen = encode_item(lm, it, i)
        if max_length is not None and len(ids) > max_length:
            ids = ids[:max_length]
            plen = min(plen, max_length)
        out.append((ids, plen))
    return out


def _token_type_names(lm: LoadedModel, positions: torch.Tensor, prompt_lens: torch.Tensor) -> np.ndarray:
    """Names of chat token types for per-token rows (``""`` where none)."""
    out = np.full(len(positions), "", dtype=object)
    for name, off in lm.token_types.items():
        out[(positions == prompt_lens + off).numpy()] = name
    return out


def _prepare(
    lm: LoadedModel, data: Iterable[Any], sites: SiteLike | Sequence[SiteLike], positions: str | Positions, max_length: int | None
) -> tuple[Positions, list[Site], list[tuple[list[int], int]]]:
    pos = Positions.parse(positions)
    pos.check_token_types(lm.token_types if lm.tokenizer is not None else {})
    return pos, _parse_sites(lm, sites), encode_inputs(lm, data, max_length)


def _reduce(batch: CaptureBatch, sites: Sequence[Site], reduce: str | None, dtype: torch.dtype) -> dict[Site, torch.Tensor]:
    """Per-token rows of a batch → one row per input with ≥ 1 selected token (batch order).

    ``mean``: (1/n_i) Σ_t x_{i,t} over the n_i selected tokens of input i (in float32);
    ``last``: x_{i,t*} with t* the last selected position."""
    if reduce is None:
        return {s: batch[s].to(dtype) for s in sites}
    counts = batch.n_selected
    kept = counts[counts > 0]
    out = {}
    for s in sites:
        rows = batch[s]
        if reduce == "mean":
            seg = torch.repeat_interleave(torch.arange(len(kept)), kept)
            acc = torch.zeros(len(kept), rows.shape[-1], dtype=torch.float32).index_add_(0, seg, rows.to(torch.float32))
            out[s] = (acc / kept[:, None]).to(dtype)
        else:
            out[s] = rows[kept.cumsum(0) - 1].to(dtype)
    return out


@torch.no_grad()
def capture(
    lm: LoadedModel,
    data: Iterable[Any],
    sites: SiteLike | Sequence[SiteLike],
    positions: str | Positions = "all",
    *,
    reduce: str | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    store: str | ActivationStore | None = None,
    val_fraction: float = 0.0,
    dtype: torch.dtype = torch.float32,
    early_exit: bool = True,
    progress: bool = True,
    dataset_name: str | None = None,
) -> Captured | ActivationStore:
    """Capture activations at ``sites`` and ``positions`` over ``data``.

    Args:
        lm: the model.
        data: texts, Generations, (prompt, response) pairs or dicts (see module docstring).
        sites: one site or several (``(6, "resid")``, ``"mlp_out.3"``, ``Site(...)``, an int).
        positions: position spec (``all``, ``prompt[-1]``, ``response[:5]``, ``asst`` …).
        reduce: ``None`` (one row per selected token), ``"mean"`` or ``"last"`` (one row per
            input; inputs with no selected token get no row, see ``n_selected``).
        batch_size: sequences per forward.
        max_length: truncate inputs to this many tokens (keeping the start).
        store: write into this ActivationStore directory instead of memory (resumable).
        val_fraction: fraction of sequences marked ``val`` in the store's index.
        dtype: dtype of returned / stored activations.
        early_exit: stop each forward after the deepest requested site.

    Returns:
        :class:`Captured` (``{Site: [rows, d]}``, rows in (input, position) order, padding
        excluded) or the :class:`ActivationStore` written to.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    pos, site_list, encoded = _prepare(lm, data, sites, positions, max_length)
    work = torch.float32 if reduce else dtype

    if store is not None:
        st = store if isinstance(store, ActivationStore) else ActivationStore(store)
        st.init(
            model={"name": lm.name, "spec": lm.spec, "weights_hash": lm.weights_hash},
            sites=site_list,
            d_model=lm.d_model,
            positions=pos.text,
            reduce=reduce,
            dtype=dtype,
            val_fraction=val_fraction,
            dataset=dataset_name,
            extra={"provenance": provenance(lm, positions=pos.text, reduce=reduce)},
        )
        if st.complete and st.n_sequences >= len(encoded):
            return st
        order = list(range(st.n_sequences, len(encoded)))  # input order: resumable by sequence count
        for b in _batches(lm, encoded, order, site_list, pos, batch_size, work, early_exit, progress, "capture"):
            acts = _reduce(b, site_list, reduce, dtype)
            if reduce is None:
                seq, posn, tok, resp = b.seq_ids, b.positions, b.token_ids, b.is_response
                ttype = _token_type_names(lm, posn, b.prompt_lens)
            else:
                seq = b.batch_ids[b.n_selected > 0]
                posn = tok = torch.full((len(seq),), -1, dtype=torch.long)
                resp = torch.zeros(len(seq), dtype=torch.bool)
                ttype = np.full(len(seq), "", dtype=object)
            index = {
                "seq_id": seq.numpy().astype(np.int64),
                "position": posn.numpy().astype(np.int32),
                "token_id": tok.numpy().astype(np.int32),
                "region": resp.numpy().astype(np.int8),
                "token_type": ttype.astype(str),
                "split": np.array([split_of(int(i), val_fraction) for i in seq.tolist()], dtype=str),
            }
            st.append(acts, index, n_sequences=len(b.batch_ids))
        st.finish()
        return st

    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    parts: dict[Site, list[torch.Tensor]] = {s: [] for s in site_list}
    meta: dict[str, list[torch.Tensor]] = {"seq": [], "pos": [], "tok": [], "resp": []}
    n_sel = torch.zeros(len(encoded), dtype=torch.long)
    for b in _batches(lm, encoded, order, site_list, pos, batch_size, work, early_exit, progress, "capture"):
        for s, rows in _reduce(b, site_list, reduce, dtype).items():
            parts[s].append(rows)
        n_sel[b.batch_ids] = b.n_selected
        if reduce is None:
            meta["seq"].append(b.seq_ids)
            meta["pos"].append(b.positions)
            meta["tok"].append(b.token_ids)
            meta["resp"].append(b.is_response)
        else:
            kept = b.batch_ids[b.n_selected > 0]
            meta["seq"].append(kept)
            meta["pos"].append(torch.full((len(kept),), -1, dtype=torch.long))

    out = Captured()
    seq = torch.cat(meta["seq"]) if meta["seq"] else torch.zeros(0, dtype=torch.long)
    posn = torch.cat(meta["pos"]) if meta["pos"] else torch.zeros(0, dtype=torch.long)
    # back to input order: stable sort by (input index, position)
    key = seq * (int(posn.max()) + 2 if len(posn) else 1) + (posn + 1)
    perm = torch.argsort(key, stable=True)
    for s in site_list:
        rows = torch.cat(parts[s], 0) if parts[s] else torch.zeros(0, lm.d_model, dtype=dtype)
        out[s] = rows[perm]
    out.seq_ids = seq[perm]
    if reduce is None:
        out.positions = posn[perm]
        out.token_ids = torch.cat(meta["tok"])[perm] if meta["tok"] else torch.zeros(0, dtype=torch.long)
        out.is_response = torch.cat(meta["resp"])[perm] if meta["resp"] else torch.zeros(0, dtype=torch.bool)
    else:
        out.positions = out.token_ids = out.is_response = None
    out.n_selected = n_sel
    return out


@torch.no_grad()
def iter_capture(
    lm: LoadedModel,
    data: Iterable[Any],
    sites: SiteLike | Sequence[SiteLike],
    positions: str | Positions = "all",
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    dtype: torch.dtype = torch.float32,
    early_exit: bool = True,
    progress: bool = True,
    sort_by_length: bool = True,
    desc: str = "capture",
) -> Iterator[CaptureBatch]:
    """Stream per-token activations one batch at a time (bounded memory).

    The same forward as :func:`capture` (one pass collects every site, early exit after
    the deepest one, left padding, positions language) but nothing is accumulated: each
    batch is yielded as a :class:`CaptureBatch` and can be reduced on the fly (SAE
    statistics over millions of tokens). Inputs are batched longest first unless
    ``sort_by_length=False``; rows carry their input index in ``seq_ids``. The hooks are
    removed before each batch is yielded, so the consumer may run the model itself.
    """
    pos, site_list, encoded = _prepare(lm, data, sites, positions, max_length)
    order = list(range(len(encoded)))
    if sort_by_length:
        order.sort(key=lambda i: -len(encoded[i][0]))
    yield from _batches(lm, encoded, order, site_list, pos, batch_size, dtype, early_exit, progress, desc)


def _batches(
    lm: LoadedModel,
    encoded: Sequence[tuple[list[int], int]],
    order: Sequence[int],
    site_list: Sequence[Site],
    pos: Positions,
    batch_size: int,
    dtype: torch.dtype,
    early_exit: bool,
    progress: bool,
    desc: str,
) -> Iterator[CaptureBatch]:
    """The capture loop shared by :func:`capture` and :func:`iter_capture`: one left-padded
    forward per batch of ``order`` (input indices), hooks registered only during it."""
    stop = hooks.deepest_site(site_list) if early_exit else None
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    n_tokens = sum(len(encoded[i][0]) for i in order)
    bar = tqdm(total=n_tokens, desc=desc, unit="tok", unit_scale=True, disable=not progress, leave=False)
    got: dict[Any, Any] = {}

    def make_callback(site: Site, first: bool):
        def cb(x: torch.Tensor, mask: torch.Tensor, step: hooks.Step) -> None:
            got[site] = x[mask].to("cpu", dtype)
            if first:
                got["mask"] = mask
                got["rel"] = step.geom.rel

        return cb

    try:
        for k in range(0, len(order), batch_size):
            batch = list(order[k : k + batch_size])
            seqs = [encoded[i][0] for i in batch]
            plens = torch.as_tensor([encoded[i][1] for i in batch], dtype=torch.long)
            lens = torch.as_tensor([len(q) for q in seqs], dtype=torch.long)
            input_ids, attn = left_pad(seqs, pad, lm.device)
            reads = [Read(s, pos, callback=make_callback(s, j == 0)) for j, s in enumerate(site_list)]
            got.clear()
            with hooks.intervene(lm, reads, stop_at=stop), hooks.batch_info(lm, row_ids=batch, prompt_lens=plens):
                try:
                    lm.model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids(attn), use_cache=False)
                except hooks.StopForward:
                    pass
            mask = got["mask"]
            b_idx, t_idx = mask.nonzero(as_tuple=True)
            b_cpu = b_idx.cpu()
            out = CaptureBatch({s: got[s] for s in site_list})
            rel = got["rel"][b_idx, t_idx].cpu()
            ids_t = torch.as_tensor(batch, dtype=torch.long)
            out.seq_ids = ids_t[b_cpu]
            out.positions = rel
            out.token_ids = input_ids[b_idx, t_idx].cpu()
            out.prompt_lens = plens[b_cpu]
            out.seq_lens = lens[b_cpu]
            out.is_response = rel >= out.prompt_lens
            out.batch_ids = ids_t
            out.n_selected = mask.sum(1).cpu()
            bar.update(int(lens.sum()))
            yield out
    finally:
        bar.close()
