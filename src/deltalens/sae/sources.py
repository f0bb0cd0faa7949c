"""Where SAE training batches come from.

An *activation source* yields shuffled ``[batch, d_in]`` float tensors forever (epochs
repeat, each reshuffled) and says which site and model they belong to:

* :class:`TensorSource` — a tensor in memory;
* :class:`StoreSource` — an :class:`~deltalens.store.ActivationStore`, streamed shard by
  shard and shuffled within a window of shards (memory stays bounded), with BOS/special
  token and high-norm row exclusion; several stores of the same tokens (e.g. a base and a
  fine-tuned model) are read in lockstep for crosscoders;
* :class:`ModelSource` — on the fly from a model and a text corpus: one forward pass per
  batch of token windows reads every requested site (stopping after the deepest), rows
  go into a mixing buffer and batches are drawn from it; it yields ``{site: batch}`` so
  several SAEs (at one or more sites) train from the same forward passes.

Exclusion rules (the same for stores and on-the-fly capture):

* tokens whose id is in ``exclude_token_ids`` (the tokenizer's special tokens — BOS, EOS,
  chat markers — by default where the tokenizer is known);
* rows whose norm exceeds ``high_norm_factor`` × the median row norm (estimated once from
  the first rows seen); this drops attention-sink tokens (the first token of a window has a
  norm one or two orders of magnitude above the rest in most LMs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ShapeError, StoreMismatchError
from ..hooks import Site, SiteLike
from ..store import ActivationStore


class ActivationSource:
    """Base class: ``batches()`` yields ``[batch, d_in]`` tensors (or ``{site: tensor}``)."""

    d_in: int
    site: str | None = None
    model_name: str | None = None
    description: str = ""

    def batches(self, batch_size: int, *, seed: int = 0, device: str | torch.device = "cpu") -> Iterator[Any]:
        raise NotImplementedError

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """About ``n`` rows (after exclusions) for initialisation and norm estimates."""
        out, got = [], 0
        for b in self.batches(min(n, 8192), seed=seed + 7919):
            if isinstance(b, dict):
                b = next(iter(b.values()))
            out.append(b.float())
            got += len(b)
            if got >= n:
                break
        return torch.cat(out)[:n]


def _high_norm_limit(x: torch.Tensor, factor: float | None) -> float | None:
    if factor is None or factor <= 0 or len(x) == 0:
        return None
    return float(x.float().norm(dim=-1).median()) * float(factor)


class TensorSource(ActivationSource):
    """Rows of an in-memory tensor ``[n, d]`` (rows above the norm limit are dropped once)."""

    def __init__(
        self,
        x: torch.Tensor,
        site: SiteLike | None = None,
        model_name: str | None = None,
        high_norm_factor: float | None = None,
    ):
        if x.dim() != 2:
            raise ShapeError(f"activations must be [rows, d], got {tuple(x.shape)}")
        lim = _high_norm_limit(x, high_norm_factor)
        if lim is not None:
            x = x[x.float().norm(dim=-1) <= lim]
        self.x = x
        self.d_in = int(x.shape[1])
        self.site = None if site is None else str(Site.parse(site))
        self.model_name = model_name
        self.description = f"tensor {tuple(x.shape)}"

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size, *, seed=0, device="cpu"):
        g = torch.Generator().manual_seed(seed)
        n = len(self.x)
        if n == 0:
            raise ShapeError("no activation rows to train on")
        carry: torch.Tensor | None = None
        while True:
            perm = torch.randperm(n, generator=g)
            for k in range(0, n, batch_size):
                b = self.x[perm[k : k + batch_size]]
                if carry is not None:
                    b = torch.cat([carry, b])
                    carry = None
                if len(b) < batch_size:
                    carry = b
                    continue
                yield b.to(device, torch.float32)


class StoreSource(ActivationSource):
    """Shuffled batches from one store, or from several stores of the same tokens in lockstep
    (then each batch is a list, one tensor per store)."""

    def __init__(
        self,
        store: str | ActivationStore | Sequence[str | ActivationStore],
        site: SiteLike | None = None,
        *,
        split: str | None = "train",
        exclude_token_ids: Iterable[int] | None = None,
        high_norm_factor: float | None = 10.0,
        buffer_shards: int = 4,
    ):
        many = isinstance(store, (list, tuple))
        stores = [
            s if isinstance(s, ActivationStore) else ActivationStore.open(s)
            for s in (store if many else [store])
        ]
        self.stores = stores
        self.many = many
        st = stores[0]
        if site is None:
            if len(st.sites) != 1:
                raise StoreMismatchError(
                    f"{st.path} holds sites {', '.join(map(str, st.sites))}; say which one to train on"
                )
            site = st.sites[0]
        self._site = Site.parse(site)
        for s in stores:
            s._site_key(self._site)  # raises with the sites it has
        if many:
            ref = [sh["n_rows"] for sh in st.manifest["shards"]]
            for s in stores[1:]:
                if [sh["n_rows"] for sh in s.manifest["shards"]] != ref:
                    raise StoreMismatchError(
                        f"{s.path} and {st.path} do not hold the same tokens (different shard sizes); capture both "
                        "from the same inputs with the same positions"
                    )
        self.d_in = st.d_model
        self.site = str(self._site)
        self.model_name = (st.manifest.get("model") or {}).get("name")
        self.model_names = [(s.manifest.get("model") or {}).get("name") for s in stores]
        self.split = split
        self.exclude = np.array(
            sorted(set(int(t) for t in exclude_token_ids)) if exclude_token_ids else [], dtype=np.int64
        )
        self.high_norm_factor = high_norm_factor
        self.buffer_shards = max(1, int(buffer_shards))
        self._limits: list[float | None] | None = None
        self.description = f"store {st.path} ({self.site}, split={split or 'all'})"

    def _keep(self, i: int) -> np.ndarray | None:
        import pyarrow.parquet as pq

        st = self.stores[0]
        need = []
        if self.split is not None:
            need.append("split")
        if len(self.exclude):
            need.append("token_id")
        if not need:
            return None
        t = pq.read_table(st.path / "index" / f"{st.shard_names()[i]}.parquet", columns=need)
        keep = np.ones(t.num_rows, dtype=bool)
        if self.split is not None:
            keep &= np.asarray(t["split"].to_numpy(zero_copy_only=False) == self.split)
        if len(self.exclude):
            keep &= ~np.isin(t["token_id"].to_numpy(), self.exclude)
        return keep

    def _kept(self, i: int) -> torch.Tensor:
        """Row indices of shard ``i`` that pass the split, token and norm rules (cached)."""
        cache = self.__dict__.setdefault("_kept_cache", {})
        if i in cache:
            return cache[i]
        keep = self._keep(i)
        n = int(self.stores[0].manifest["shards"][i]["n_rows"])
        idx = torch.arange(n) if keep is None else torch.from_numpy(np.flatnonzero(keep))
        if self.high_norm_factor:
            parts = [s.shard(self._site, i)[idx].to(torch.float32) for s in self.stores]
            if self._limits is None:
                self._limits = [_high_norm_limit(p[:20000], self.high_norm_factor) for p in parts]
            ok = torch.ones(len(idx), dtype=torch.bool)
            for p, lim in zip(parts, self._limits):
                if lim is not None:
                    ok &= p.norm(dim=-1) <= lim
            idx = idx[ok]
        cache[i] = idx
        return idx

    def _rows(self, i: int, idx: torch.Tensor) -> list[torch.Tensor]:
        return [s.shard(self._site, i)[idx].to(torch.float32) for s in self.stores]

    def _shard(self, i: int) -> list[torch.Tensor]:
        """All kept rows of shard ``i``, float32, one tensor per store."""
        return self._rows(i, self._kept(i))

    def n_shards(self) -> int:
        return len(self.stores[0].shard_names())

    def _slice(self, i: int, part: int, n_parts: int, g: torch.Generator) -> list[torch.Tensor]:
        """Rows of shard ``i`` in its ``part``-th of ``n_parts`` random subsets (per epoch)."""
        kept = self._kept(i)
        n = len(kept)
        perm = self._perms.setdefault(i, torch.randperm(n, generator=g))
        lo, hi = part * n // n_parts, (part + 1) * n // n_parts
        return self._rows(i, kept[perm[lo:hi]].sort().values)

    def batches(self, batch_size, *, seed=0, device="cpu"):
        """Each epoch is cut into windows of about ``buffer_shards`` shards' worth of rows; a
        window holds a random subset of the rows of *every* shard (not a few whole shards), so
        batches mix all of the data (stores are written in input order, so whole shards
        would cluster documents), while memory stays bounded by the window."""
        n = self.n_shards()
        if n == 0:
            raise StoreMismatchError(f"{self.stores[0].path} holds no activations yet")
        g = torch.Generator().manual_seed(seed)
        carry: list[torch.Tensor] | None = None
        produced = False
        n_windows = max(1, -(-n // self.buffer_shards))
        while True:
            self._perms: dict[int, torch.Tensor] = {}
            for w in range(n_windows):
                if n_windows == 1:
                    shards = [self._shard(i) for i in torch.randperm(n, generator=g).tolist()]
                else:
                    shards = [self._slice(i, w, n_windows, g) for i in range(n)]
                cols = [
                    torch.cat([sh[m] for sh in shards] + ([carry[m]] if carry else []), 0)
                    for m in range(len(self.stores))
                ]
                perm = torch.randperm(len(cols[0]), generator=g)
                full = (len(perm) // batch_size) * batch_size
                for k in range(0, full, batch_size):
                    idx = perm[k : k + batch_size]
                    produced = True
                    out = [c[idx].to(device) for c in cols]
                    yield out if self.many else out[0]
                carry = [c[perm[full:]] for c in cols] if full < len(perm) else None
            if not produced:
                raise StoreMismatchError(
                    f"{self.stores[0].path}: fewer rows than one batch of {batch_size} after exclusions (split={self.split})"
                )


class ModelSource(ActivationSource):
    """Activations computed on the fly: ``lm`` over token windows of a text corpus.

    Yields ``{site: [batch, d]}``; with a single site, :meth:`for_site` gives a plain source.
    Rows of special tokens and (per site) rows above the high-norm limit are dropped; a row
    dropped at one site is dropped at all, so the sites stay aligned.
    """

    def __init__(
        self,
        lm: Any,
        windows: Iterable[dict[str, list[int]]] | Iterable[list[int]],
        sites: SiteLike | Sequence[SiteLike],
        *,
        batch_sequences: int = 16,
        buffer_tokens: int = 65536,
        exclude_token_ids: Iterable[int] | None | str = "special",
        high_norm_factor: float | None = 10.0,
        repeat: bool = True,
    ):
        from ..capture import _parse_sites

        self.lm = lm
        self.windows = windows if isinstance(windows, list) else list(windows)
        if not self.windows:
            raise ShapeError("no text windows to compute activations from")
        self.sites = _parse_sites(lm, sites)
        self.site = str(self.sites[0]) if len(self.sites) == 1 else None
        self.d_in = lm.d_model
        self.model_name = lm.name
        self.batch_sequences = batch_sequences
        self.buffer_tokens = buffer_tokens
        if exclude_token_ids == "special":
            exclude_token_ids = list(getattr(lm.tokenizer, "all_special_ids", []) or [])
        self.exclude = torch.tensor(sorted(set(exclude_token_ids or [])), dtype=torch.long)
        self.high_norm_factor = high_norm_factor
        self.repeat = repeat
        self._limits: dict[Site, float | None] | None = None
        self.tokens_read = 0
        self.sequences_read = 0
        self.description = (
            f"{lm.name} on the fly over {len(self.windows)} windows ({', '.join(map(str, self.sites))})"
        )

    def _ids(self, w: Any) -> list[int]:
        if isinstance(w, dict):
            return list(w["prompt_ids"]) + list(w.get("response_ids", []))
        return list(w)

    @torch.no_grad()
    def _forward(self, seqs: list[list[int]]) -> dict[Site, torch.Tensor]:
        from .. import hooks
        from ..generate import left_pad, position_ids

        lm = self.lm
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        ids, attn = left_pad(seqs, pad, lm.device)
        reads = [hooks.Read(s) for s in self.sites]
        with hooks.intervene(lm, reads, stop_at=hooks.deepest_site(self.sites)):
            try:
                lm.model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn), use_cache=False)
            except hooks.StopForward:
                pass
        keep = attn.bool()
        if len(self.exclude):
            keep &= ~torch.isin(ids, self.exclude.to(ids.device))
        rows = {s: r.value[keep].float().cpu() for s, r in zip(self.sites, reads)}
        if self._limits is None:
            self._limits = {s: _high_norm_limit(v, self.high_norm_factor) for s, v in rows.items()}
        ok = None
        for s, v in rows.items():
            lim = self._limits[s]
            if lim is not None:
                m = v.norm(dim=-1) <= lim
                ok = m if ok is None else ok & m
        if ok is not None:
            rows = {s: v[ok] for s, v in rows.items()}
        self.tokens_read += int(attn.sum())
        self.sequences_read += len(seqs)
        return rows

    def batches(self, batch_size, *, seed=0, device="cpu"):
        g = torch.Generator().manual_seed(seed)
        n = len(self.windows)
        pos = 0
        order = torch.randperm(n, generator=g).tolist()
        buf: dict[Site, list[torch.Tensor]] = {s: [] for s in self.sites}
        size = 0
        target = max(self.buffer_tokens, 2 * batch_size)
        while True:
            while size < target:
                if pos >= n:
                    if not self.repeat:
                        break
                    order = torch.randperm(n, generator=g).tolist()
                    pos = 0
                seqs = [self._ids(self.windows[i]) for i in order[pos : pos + self.batch_sequences]]
                pos += len(seqs)
                rows = self._forward(seqs)
                for s in self.sites:
                    buf[s].append(rows[s])
                size += len(rows[self.sites[0]])
            exhausted = not self.repeat and pos >= n
            if size == 0 or (size < batch_size and not exhausted):
                return
            cat = {s: torch.cat(buf[s]) for s in self.sites}
            if exhausted:  # one pass only: everything left, the last batch possibly short
                perm = torch.randperm(size, generator=g)
                for k in range(0, size, batch_size):
                    yield {s: v[perm[k : k + batch_size]].to(device) for s, v in cat.items()}
                return
            perm = torch.randperm(size, generator=g)
            cat = {s: v[perm] for s, v in cat.items()}
            # draw half the buffer, keep the other half mixed with the next refill
            n_out = (
                max(batch_size, (size // 2) // batch_size * batch_size)
                if self.repeat or pos < n
                else size // batch_size * batch_size
            )
            for k in range(0, n_out, batch_size):
                yield {s: v[k : k + batch_size].to(device) for s, v in cat.items()}
            buf = {s: [v[n_out:]] for s, v in cat.items()}
            size -= n_out

    def for_site(self, site: SiteLike) -> ActivationSource:
        return _OneSite(self, Site.parse(site))


class _OneSite(ActivationSource):
    def __init__(self, src: ModelSource, site: Site):
        self.src, self._site = src, site
        self.d_in, self.site, self.model_name = src.d_in, str(site), src.model_name
        self.description = src.description

    def batches(self, batch_size, *, seed=0, device="cpu"):
        for b in self.src.batches(batch_size, seed=seed, device=device):
            yield b[self._site]


def as_source(data: Any, site: SiteLike | None = None, **kw: Any) -> ActivationSource:
    """A source from a tensor, a store (path or object), a list of stores, or a source."""
    if isinstance(data, ActivationSource):
        return data
    if isinstance(data, torch.Tensor):
        return TensorSource(data, site, high_norm_factor=kw.get("high_norm_factor"))
    if (
        isinstance(data, (ActivationStore, str))
        or hasattr(data, "__fspath__")
        or isinstance(data, (list, tuple))
    ):
        return StoreSource(data, site, **kw)
    raise ShapeError(f"cannot train on {type(data).__name__}: give a tensor, an ActivationStore or a source")


def training_source(
    *,
    store: Any = None,
    data: Any = None,
    model: Any = "smollm2-135m-instruct",
    sites: Sequence[SiteLike] = (),
    context_len: int = 128,
    text_key: str = "text",
    high_norm_factor: float | None = 10.0,
    device: str = "cpu",
) -> tuple[ActivationSource, list[Site]]:
    """The training stream of ``deltalens sae train``: exactly one of ``store`` (an
    ActivationStore, one site; the special tokens of the model that made it are excluded when
    that model loads) or ``data`` (a text corpus, see :func:`deltalens.data.corpus.read_texts`,
    cut into ``context_len``-token windows and run through ``model`` on the fly; several sites
    share its forward passes). Returns the source and its sites (default: the store's first
    site, or the model's middle residual stream)."""
    import logging

    from ..errors import ConfigError, DeltalensError
    from ..models import load

    if (store is None) == (data is None):
        raise ConfigError("give exactly one of --store DIR or --data CORPUS")
    if store is not None:
        st = store if isinstance(store, ActivationStore) else ActivationStore.open(store)
        site_list = [Site.parse(s) for s in sites] or [Site.parse(s) for s in st.sites[:1]]
        if len(site_list) != 1:
            raise ConfigError(f"training from a store takes one --site, got {', '.join(map(str, site_list))}")
        spec = (st.manifest.get("model") or {}).get("spec")
        special: list[int] = []
        try:
            special = list(load(spec or model).tokenizer.all_special_ids)
        except (DeltalensError, OSError, ValueError) as exc:
            logging.getLogger(__name__).warning(
                "could not load %s for its special tokens; none excluded (%s)", spec or model, exc
            )
        return StoreSource(
            st, site_list[0], exclude_token_ids=special, high_norm_factor=high_norm_factor or None
        ), site_list
    from ..data.corpus import read_texts, token_windows

    lm = model if hasattr(model, "model") else load(model, device=device)
    site_list = [Site.parse(int(s) if isinstance(s, str) and s.lstrip("-").isdigit() else s) for s in sites]
    site_list = site_list or [Site(lm.n_layers // 2, "resid")]
    windows = list(token_windows(lm.tokenizer, read_texts(data, text_key=text_key), context_len))
    src = ModelSource(lm, windows, site_list, high_norm_factor=high_norm_factor or None)
    src.description = f"{lm.name} on the fly over {len(windows)} windows of {context_len} tokens from {data}"
    return src, site_list
