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

import hashlib
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import hooks
from .errors import ConfigError, DataFormatError, DeltalensError, PositionSpecError, StoreMismatchError
from .generate import Generation, left_pad, position_ids
from .hooks import Read, Site, SiteLike
from .io import provenance, sha256_file
from .models.loading import LoadedModel
from .positions import Positions
from .stage import StageConfig, at_least, in_range, one_of, option
from .store import LOCK, MANIFEST, ActivationStore, _foreign_entries, check_writable, split_of

REDUCTIONS = (None, "mean", "last")
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPE_NAMES = {v: k for k, v in STORE_DTYPES.items()}


@dataclass
class CaptureConfig(StageConfig):
    """What to capture: sites, positions, reduction, batching; recorded in a store's manifest.

    ``sites`` holds site strings (``"resid.6"``, ``"mlp_out.3"``, ``"resid.-1"``); ints,
    ``(layer, component)`` pairs and :class:`~deltalens.hooks.Site` objects are accepted and
    normalised. A store records them resolved for its model (``resid.-1`` → ``resid.29``)."""

    sites: list[str] = option(
        default_factory=lambda: ["resid.6"],
        flag="--sites",
        short="-s",
        help="Comma-separated sites, e.g. 'resid.6,mlp_out.6', layers '6,12', or 'resid.-1' (last layer).",
    )
    positions: str = option(
        "all", flag="--positions", help="Position spec: all, prompt[-1], response[:5], asst, …"
    )
    reduce: str = option("none", flag="--reduce", help="none (per token), mean or last (per sequence).")
    batch_size: int = option(16, flag="--batch-size", help="Sequences per forward pass.")
    max_length: int | None = option(None, flag="--max-length", help="Truncate inputs to this many tokens.")
    val_fraction: float = option(0.0, flag="--val-fraction", help="Fraction of sequences marked 'val'.")
    dtype: str = option(
        "float32",
        flag="--store-dtype",
        help="dtype of the captured activations: float32, float16 or bfloat16.",
    )
    shard_mb: float = option(
        64.0, flag="--shard-mb", help="Store shard size in MiB (a shard holds whole sequences)."
    )

    def validate(self) -> None:
        self.sites = [str(s) for s in hooks.parse_sites(self.sites)] if self.sites is not None else []
        if not self.sites:
            raise ConfigError("--sites: give at least one site, e.g. 'resid.6'")
        self.positions = Positions.parse(self.positions).text
        if self.reduce is None:
            self.reduce = "none"
        one_of(self, "reduce", ("none", "mean", "last"))
        if isinstance(self.dtype, torch.dtype):
            self.dtype = _DTYPE_NAMES.get(self.dtype, str(self.dtype))
        one_of(self, "dtype", tuple(STORE_DTYPES))
        at_least(self, "batch_size", 1)
        at_least(self, "max_length", 1)
        in_range(self, "val_fraction", 0.0, 1.0, hi_open=True)
        if not self.shard_mb > 0:
            raise ConfigError(f"--shard-mb must be > 0, got {self.shard_mb!r}")

    @property
    def reduction(self) -> str | None:
        """``None`` (per token), ``"mean"`` or ``"last"``."""
        return None if self.reduce == "none" else self.reduce

    @property
    def torch_dtype(self) -> torch.dtype:
        return STORE_DTYPES[self.dtype]


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
                raise DataFormatError(
                    f"capture input {i}: a dict with 'response' needs 'prompt' or 'question'"
                )
            p = lm.encode(ptxt, formatted=lm.has_chat_template or "question" not in item)
            return p + lm.encode(str(item["response"]), formatted=True), len(p)
    raise DataFormatError(
        f"capture input {i}: expected a text, a Generation, a (prompt, response) pair or a dict "
        f"with 'text' / 'prompt'+'response' / 'question'+'response'; got {type(item).__name__}"
    )


def _parse_sites(lm: LoadedModel, sites: SiteLike | Sequence[SiteLike]) -> list[Site]:
    """Sites resolved for ``lm`` (:meth:`Site.resolve_all <deltalens.hooks.Site.resolve_all>`)."""
    return Site.resolve_all(lm, sites)


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


def encode_inputs(
    lm: LoadedModel, data: Iterable[Any], max_length: int | None = None
) -> list[tuple[list[int], int]]:
    """``(token ids, prompt length)`` of every input, truncated to ``max_length`` tokens."""
    return _truncate([encode_item(lm, it, i) for i, it in enumerate(data)], max_length)


def _truncate(encoded: list[tuple[list[int], int]], max_length: int | None) -> list[tuple[list[int], int]]:
    if max_length is None:
        return encoded
    return [
        (ids[:max_length], min(plen, max_length)) if len(ids) > max_length else (ids, plen)
        for ids, plen in encoded
    ]


def data_fingerprint(encoded: Sequence[tuple[Sequence[int], int]]) -> str:
    """16-hex sha256 of the inputs' token ids and prompt lengths (what a store was captured from)."""
    h = hashlib.sha256()
    for ids, plen in encoded:
        h.update(np.asarray([len(ids), plen], dtype=np.int64).tobytes())
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _check_selects_something(
    lm: LoadedModel, pos: Positions, encoded: Sequence[tuple[list[int], int]], source: str
) -> None:
    """Refuse a position spec that selects no token of any input (it would make an empty store)."""
    types = lm.token_types if lm.tokenizer is not None else {}
    for k in range(0, len(encoded), 512):
        chunk = encoded[k : k + 512]
        if pos.mask_for_lengths([len(ids) for ids, _ in chunk], [p for _, p in chunk], types).any():
            return
    if all(plen >= len(ids) for ids, plen in encoded):
        kind = "plain texts: every token is prompt, none is response"
    elif all(plen == 0 for _, plen in encoded):
        kind = "responses without prompts"
    else:
        kind = "prompt+response records"
    raise PositionSpecError(
        f"positions '{pos.text}' select no token of any of the {len(encoded)} inputs of {source} ({kind}); "
        "nothing was captured"
    )


def _token_type_names(lm: LoadedModel, positions: torch.Tensor, prompt_lens: torch.Tensor) -> np.ndarray:
    """Names of chat token types for per-token rows (``""`` where none)."""
    out = np.full(len(positions), "", dtype=object)
    for name, off in lm.token_types.items():
        out[(positions == prompt_lens + off).numpy()] = name
    return out


def _prepare(
    lm: LoadedModel,
    data: Iterable[Any],
    sites: SiteLike | Sequence[SiteLike],
    positions: str | Positions,
    max_length: int | None,
) -> tuple[Positions, list[Site], list[tuple[list[int], int]]]:
    pos = Positions.parse(positions)
    site_list = _parse_sites(lm, sites)
    pos.check_token_types(lm.token_types if lm.tokenizer is not None else {})
    return pos, site_list, encode_inputs(lm, data, max_length)


def _reduce(
    batch: CaptureBatch, sites: Sequence[Site], reduce: str | None, dtype: torch.dtype
) -> dict[Site, torch.Tensor]:
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
            acc = torch.zeros(len(kept), rows.shape[-1], dtype=torch.float32).index_add_(
                0, seg, rows.to(torch.float32)
            )
            out[s] = (acc / kept[:, None]).to(dtype)
        else:
            out[s] = rows[kept.cumsum(0) - 1].to(dtype)
    return out


@torch.no_grad()
def capture(
    lm: LoadedModel,
    data: Iterable[Any],
    sites: SiteLike | Sequence[SiteLike] | CaptureConfig | None = None,
    positions: str | Positions = "all",
    *,
    reduce: str | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    store: str | Path | ActivationStore | None = None,
    val_fraction: float = 0.0,
    dtype: torch.dtype = torch.float32,
    early_exit: bool = True,
    progress: bool = True,
    dataset_name: str | None = None,
    config: CaptureConfig | None = None,
    overwrite: bool = False,
    source: str | Path | None = None,
) -> Captured | ActivationStore:
    """Capture activations at ``sites`` and ``positions`` over ``data``.

    Either pass a :class:`CaptureConfig` (``capture(lm, data, config)`` or ``config=``) or
    the settings as keywords (``sites``, ``positions``, ``reduce``, ``batch_size``,
    ``max_length``, ``val_fraction``, ``dtype``), from which the config is built.

    Args:
        lm: the model.
        data: texts, Generations, (prompt, response) pairs or dicts (see module docstring).
        sites: one site or several (``(6, "resid")``, ``"mlp_out.3"``, ``Site(...)``, an int;
            negative layers count from the end).
        positions: position spec (``all``, ``prompt[-1]``, ``response[:5]``, ``asst`` …).
        reduce: ``None`` (one row per selected token), ``"mean"`` or ``"last"`` (one row per
            input; inputs with no selected token get no row, see ``n_selected``).
        batch_size: sequences per forward.
        max_length: truncate inputs to this many tokens (keeping the start).
        store: write into this ActivationStore directory instead of memory (resumable; see
            :func:`capture_to_store`).
        val_fraction: fraction of sequences marked ``val`` in the store's index.
        dtype: dtype of returned / stored activations.
        early_exit: stop each forward after the deepest requested site.
        dataset_name: a name recorded in the store's manifest.
        overwrite: replace an existing store instead of resuming it.
        source: the file the inputs came from (its name and sha256 are recorded in the store).

    Returns:
        :class:`Captured` (``{Site: [rows, d]}``, rows in (input, position) order, padding
        excluded) or the :class:`ActivationStore` written to.
    """
    if isinstance(sites, CaptureConfig):
        config, sites = sites, None
    if config is None:
        if sites is None:
            raise ConfigError("capture needs sites (or a CaptureConfig)")
        config = CaptureConfig(
            sites=sites,
            positions=positions,
            reduce=reduce,
            batch_size=batch_size,  # type: ignore[arg-type]
            max_length=max_length,
            val_fraction=val_fraction,
            dtype=dtype,  # type: ignore[arg-type]
        )
    elif sites is not None or (positions, reduce, batch_size, max_length, val_fraction, dtype) != (
        "all",
        None,
        16,
        None,
        0.0,
        torch.float32,
    ):
        raise TypeError("capture: pass the settings in the CaptureConfig or as keywords, not both")
    if store is not None:
        return capture_to_store(
            lm,
            data,
            config,
            store,
            overwrite=overwrite,
            early_exit=early_exit,
            progress=progress,
            dataset_name=dataset_name,
            source=source,
        )
    pos, site_list, encoded = _prepare(lm, data, config.sites, config.positions, config.max_length)
    return _capture_in_memory(lm, encoded, site_list, pos, config, early_exit, progress)


def _capture_in_memory(
    lm: LoadedModel,
    encoded: list[tuple[list[int], int]],
    site_list: list[Site],
    pos: Positions,
    config: CaptureConfig,
    early_exit: bool,
    progress: bool,
) -> Captured:
    reduce, dtype = config.reduction, config.torch_dtype
    work = torch.float32 if reduce else dtype
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    parts: dict[Site, list[torch.Tensor]] = {s: [] for s in site_list}
    meta: dict[str, list[torch.Tensor]] = {"seq": [], "pos": [], "tok": [], "resp": []}
    n_sel = torch.zeros(len(encoded), dtype=torch.long)
    for b in _batches(
        lm, encoded, order, site_list, pos, config.batch_size, work, early_exit, progress, "capture"
    ):
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


def _data_record(
    encoded_full: list[tuple[list[int], int]], dataset_name: str | None, source: str | Path | None
) -> dict[str, Any]:
    rec: dict[str, Any] = {"fingerprint": data_fingerprint(encoded_full), "n_inputs": len(encoded_full)}
    if source is not None and Path(source).is_file():
        rec["source"] = Path(source).name
        rec["sha256"] = sha256_file(source)
    elif dataset_name or source:
        rec["source"] = str(source or dataset_name)
    return rec


def _wipe_store(st: ActivationStore) -> None:
    """``--overwrite``: delete a store's files under its writer lock (only a store's own entries)."""
    path = st.path
    if not path.exists():
        return
    foreign = [e for e in _foreign_entries(path) if e != MANIFEST]
    if foreign:
        raise StoreMismatchError(
            f"{path} is not an activation store (it holds {', '.join(sorted(foreign)[:5])}); "
            "--overwrite replaces stores only — nothing was deleted"
        )
    st.lock()
    for e in path.iterdir():
        if e.name == LOCK:
            continue
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e)
        else:
            e.unlink()
    st.manifest = {}


@dataclass
class CapturePlan:
    """What a capture into a store will do, worked out before anything is written: resolved
    sites and positions, the (truncated) encoded inputs, the block ``span`` to capture and the
    keyword arguments of :meth:`ActivationStore.init <deltalens.store.ActivationStore.init>`
    (model, settings, config record and data fingerprint)."""

    positions: Positions
    sites: list[Site]
    encoded: list[tuple[list[int], int]]
    span: tuple[int, int]
    init_kwargs: dict[str, Any]

    def want(self) -> dict[str, Any]:
        """The manifest fields the capture fixes (for :meth:`ActivationStore.mismatch`)."""
        k = self.init_kwargs
        return ActivationStore.wanted(
            model=k["model"],
            sites=k["sites"],
            d_model=k["d_model"],
            positions=k["positions"],
            reduce=k["reduce"],
            dtype=k["dtype"],
            val_fraction=k["val_fraction"],
        )


def plan_capture(
    lm: LoadedModel,
    data: Iterable[Any],
    config: CaptureConfig,
    path: str | Path,
    *,
    dataset_name: str | None = None,
    source: str | Path | None = None,
    span: tuple[int, int] | None = None,
) -> CapturePlan:
    """Check sites, positions and inputs and build the :class:`CapturePlan` (writes nothing)."""
    pos = Positions.parse(config.positions)
    site_list = _parse_sites(lm, config.sites)
    pos.check_token_types(lm.token_types if lm.tokenizer is not None else {})
    encoded_full = [encode_item(lm, it, i) for i, it in enumerate(data)]
    if not encoded_full:
        raise DataFormatError(f"capture into {path}: no inputs")
    encoded = _truncate(encoded_full, config.max_length)
    _check_selects_something(lm, pos, encoded, str(source or dataset_name or "the inputs"))
    record = config.replace(sites=[str(s) for s in site_list]).to_dict()
    lo, hi = (0, len(encoded)) if span is None else (int(span[0]), int(span[1]))
    if not 0 <= lo < hi <= len(encoded):
        raise ConfigError(f"capture span [{lo}, {hi}) is not inside the {len(encoded)} inputs")
    if span is not None:
        record["span"] = [lo, hi]
    reduce = config.reduction
    kwargs = dict(
        model={"name": lm.name, "spec": lm.spec, "weights_hash": lm.weights_hash},
        sites=site_list,
        d_model=lm.d_model,
        positions=pos.text,
        reduce=reduce,
        dtype=config.torch_dtype,
        val_fraction=config.val_fraction,
        shard_mb=config.shard_mb,
        dataset=dataset_name,
        extra={"provenance": provenance(lm, positions=pos.text, reduce=reduce)},
        config=record,
        data=_data_record(encoded_full, dataset_name, source),
    )
    return CapturePlan(pos, site_list, encoded, (lo, hi), kwargs)


@torch.no_grad()
def capture_to_store(
    lm: LoadedModel,
    data: Iterable[Any],
    config: CaptureConfig,
    store: str | Path | ActivationStore,
    *,
    overwrite: bool = False,
    early_exit: bool = True,
    progress: bool = True,
    dataset_name: str | None = None,
    source: str | Path | None = None,
    span: tuple[int, int] | None = None,
    plan: CapturePlan | None = None,
) -> ActivationStore:
    """Capture into an :class:`ActivationStore` directory: created, resumed or refused.

    ``span=(lo, hi)`` captures only inputs ``lo … hi-1`` (one rank's block of a sharded capture,
    :func:`deltalens.scale.capture_sharded`): rows keep their global ``seq_id``, the data
    fingerprint is that of all inputs, and the span is part of the recorded config, so a store
    written for another block or world size is refused on resume.

    Everything is checked before anything is written: the sites and positions against the
    model, the store path (writable), the inputs (a spec that selects no token of any input is
    refused) and an existing store's model, settings and data fingerprint (a store captured
    from other data or settings is refused naming what differs, unless ``overwrite``). A
    store is single-writer: a second concurrent writer is refused. A resumed capture
    continues after the last committed shard and removes the temporary files of an
    interrupted shard write first.
    """
    path = store.path if isinstance(store, ActivationStore) else Path(store)
    check_writable(path)
    if isinstance(store, ActivationStore):
        st = store
    else:
        try:
            st = ActivationStore(path)
        except DataFormatError:
            if not overwrite:
                raise
            st = ActivationStore(path, strict=False)  # --overwrite replaces a corrupt store too
    if plan is None:  # a plan made by the caller (the sharded capture) is not made twice
        plan = plan_capture(lm, data, config, path, dataset_name=dataset_name, source=source, span=span)
    pos, site_list, encoded = plan.positions, plan.sites, plan.encoded
    lo, hi = plan.span
    reduce, dtype = config.reduction, config.torch_dtype
    if overwrite:
        _wipe_store(st)
    try:
        st.init(**plan.init_kwargs)
        if st.complete and st.n_sequences >= hi - lo:
            return st
        order = list(range(lo + st.n_sequences, hi))  # input order: resumable by sequence count
        work = torch.float32 if reduce else dtype
        for b in _batches(
            lm, encoded, order, site_list, pos, config.batch_size, work, early_exit, progress, "capture"
        ):
            st.append(
                _reduce(b, site_list, reduce, dtype),
                _index_of(lm, b, reduce, config.val_fraction),
                n_sequences=len(b.batch_ids),
            )
        st.finish()
    finally:
        st.close()
    return st


def _index_of(
    lm: LoadedModel, b: CaptureBatch, reduce: str | None, val_fraction: float
) -> dict[str, np.ndarray]:
    """The token-index columns of one batch's rows (see :mod:`deltalens.store`)."""
    if reduce is None:
        seq, posn, tok, resp = b.seq_ids, b.positions, b.token_ids, b.is_response
        ttype = _token_type_names(lm, posn, b.prompt_lens)
    else:
        seq = b.batch_ids[b.n_selected > 0]
        posn = tok = torch.full((len(seq),), -1, dtype=torch.long)
        resp = torch.zeros(len(seq), dtype=torch.bool)
        ttype = np.full(len(seq), "", dtype=object)
    return {
        "seq_id": seq.numpy().astype(np.int64),
        "position": posn.numpy().astype(np.int32),
        "token_id": tok.numpy().astype(np.int32),
        "region": resp.numpy().astype(np.int8),
        "token_type": ttype.astype(str),
        "split": np.array([split_of(int(i), val_fraction) for i in seq.tolist()], dtype=str),
    }


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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be ≥ 1, got {batch_size!r}")
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
            with (
                hooks.intervene(lm, reads, stop_at=stop),
                hooks.batch_info(lm, row_ids=batch, prompt_lens=plens),
            ):
                try:
                    lm.model(
                        input_ids=input_ids,
                        attention_mask=attn,
                        position_ids=position_ids(attn),
                        use_cache=False,
                    )
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
