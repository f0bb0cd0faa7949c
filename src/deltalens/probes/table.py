"""Sequence × latent tables: pooled SAE latents per sequence, stored sparse.

For sequence ``s`` with selected positions ``T_s`` (a position spec: ``response``, ``all`` …)
and SAE latents ``f_i(t)`` at the SAE's site:

* ``max[s, i]  = max_{t∈T_s} f_i(t)``;
* ``mean[s, i] = (1/|T_s|) Σ_{t∈T_s} f_i(t)``;
* ``frac[s, i] = #{t∈T_s : f_i(t) > τ} / |T_s|`` — fraction of positions firing (``τ`` =
  ``activation_threshold``, default 0);
* ``dense[s]  = (1/|T_s|) Σ_{t∈T_s} x(t)`` — the mean residual activation at the SAE's site,
  the input of the dense baseline probes.

The latent matrices are ``scipy.sparse`` CSR ``[n_sequences, d_sae]`` (float32); rows are in
input order and carry the sequence ids. Sequences with no selected position keep an all-zero
row with ``n_tokens == 0`` (they are reported and dropped when joined with metrics, never
silently). The table is built in one streamed pass (:func:`build_latent_table`): memory holds
one batch of per-token latents plus the sparse pooled rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import DataFormatError, ShapeError
from ..io import provenance, read_json, write_json

POOLINGS = ("max", "mean", "frac")
TABLE_JSON = "table.json"
SEQUENCES_FILE = "sequences.parquet"
DENSE_FILE = "dense.npy"
TEXT_KEYS = ("text", "response", "sequence", "seq")


# ---- sequences ---------------------------------------------------------------------------------


@dataclass
class Sequences:
    """Inputs of a latent table: capture items, their ids and their texts (the join key
    ``text``: the response of a generation or D<i> record, else the text itself)."""

    items: list[Any]
    ids: list[str]
    texts: list[str]
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.items)


def _record_item(rec: Mapping[str, Any], where: str) -> tuple[Any, str]:
    if "prompt_ids" in rec and "response_ids" in rec:  # `deltalens generate` output (Generation)
        return {"prompt_ids": list(rec["prompt_ids"]), "response_ids": list(rec["response_ids"])}, str(
            rec.get("response", "")
        )
    if "response" in rec and ("question" in rec or "prompt" in rec):  # dpo-series D<i>.jsonl
        q = "question" if "question" in rec else "prompt"
        return {
            q: str(rec[q]),
            "response": str(rec["response"]),
            **({"system": rec["system"]} if rec.get("system") else {}),
        }, str(rec["response"])
    for k in TEXT_KEYS:
        if k in rec and isinstance(rec[k], str):
            return str(rec[k]), str(rec[k])
    raise DataFormatError(
        f"{where}: no sequence in record (expected 'text', 'response' (+'question'), 'sequence' or "
        f"'prompt_ids'+'response_ids'; keys: {', '.join(map(str, rec)) or 'none'})"
    )


def as_sequences(
    data: Iterable[Any], ids: Sequence[Any] | None = None, source: str = "<memory>"
) -> Sequences:
    """Sequences from Python objects: strings, :class:`~deltalens.generate.Generation` or dicts
    (generation / D<i> records / ``{"text"}``); ids default to the record's ``id`` or its index."""
    from ..generate import Generation

    items, keys, texts = [], [], []
    for i, d in enumerate(data):
        if isinstance(d, Generation):
            item, text, rid = d, d.response, None
        elif isinstance(d, str):
            item, text, rid = d, d, None
        elif isinstance(d, Mapping):
            item, text = _record_item(d, f"{source}: record {i}")
            rid = d.get("id")
        else:
            raise DataFormatError(
                f"{source}: record {i}: expected a text, a Generation or a dict, got {type(d).__name__}"
            )
        items.append(item)
        texts.append(text)
        keys.append(str(rid) if rid is not None else str(i))
    if ids is not None:
        if len(ids) != len(items):
            raise ShapeError(f"{source}: {len(ids)} ids for {len(items)} sequences")
        keys = [str(x) for x in ids]
    dup = len(set(keys)) != len(keys)
    if dup:
        seen: set[str] = set()
        first = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise DataFormatError(f"{source}: sequence id {first!r} occurs more than once; ids must be unique")
    return Sequences(items, keys, texts, source)


def read_sequences(path: str | Path) -> Sequences:
    """Sequences from a file: JSONL (``deltalens generate`` output, a dpo-series ``D<i>.jsonl``
    with ``response``/``text``, or ``{"text"}`` / ``{"sequence"}`` records, optional ``id``),
    ``.txt`` (one sequence per line), ``.csv`` / ``.parquet`` (a ``text``/``sequence``
    column, optional ``id``)."""
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"{p}: sequences file not found")
    suf = p.suffix.lower()
    if suf in (".jsonl", ".json"):
        from ..data.jsonl import iter_jsonl

        recs = []
        for n, rec in iter_jsonl(p):
            _record_item(rec, f"{p}:{n}")
            recs.append(rec)
        return as_sequences(recs, source=str(p))
    if suf == ".txt":
        lines = [ln.rstrip("\n") for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return as_sequences(lines, source=str(p))
    if suf in (".csv", ".parquet"):
        from .metrics import read_table_file

        df = read_table_file(p)
        col = next((c for c in TEXT_KEYS if c in df.columns), None)
        if col is None:
            raise DataFormatError(
                f"{p}: no sequence column (expected one of {', '.join(TEXT_KEYS)}; columns: "
                f"{', '.join(map(str, df.columns))})"
            )
        ids = df["id"].astype(str).tolist() if "id" in df.columns else None
        return as_sequences(df[col].astype(str).tolist(), ids=ids, source=str(p))
    raise DataFormatError(f"{p}: unknown sequences format '{suf}' (use .jsonl, .txt, .csv or .parquet)")


# ---- the table -----------------------------------------------------------------------------------


@dataclass
class LatentTable:
    """Pooled latents per sequence (see the module docstring). ``pooled[name]`` are CSR
    ``[n, d_sae]``; ``dense`` is ``[n, d_model]`` or ``None``."""

    KIND: ClassVar[str] = "probe latent table"

    pooled: dict[str, Any]
    seq_ids: list[str]
    texts: list[str]
    n_tokens: np.ndarray
    dense: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.seq_ids)

    @property
    def d_sae(self) -> int:
        return int(next(iter(self.pooled.values())).shape[1])

    def features(self, pooling: str = "max") -> Any:
        if pooling not in self.pooled:
            raise DataFormatError(f"latent table has no '{pooling}' pooling (has {', '.join(self.pooled)})")
        return self.pooled[pooling]

    def rows(self, index: Sequence[int] | np.ndarray) -> LatentTable:
        idx = np.asarray(index, dtype=np.int64)
        return LatentTable(
            {k: v[idx] for k, v in self.pooled.items()},
            [self.seq_ids[i] for i in idx],
            [self.texts[i] for i in idx],
            self.n_tokens[idx],
            None if self.dense is None else self.dense[idx],
            dict(self.meta),
        )

    def prevalence(self, threshold: float = 0.0, pooling: str = "max") -> np.ndarray:
        """``[d_sae]`` fraction of sequences whose pooled value exceeds ``threshold``."""
        X = self.features(pooling)
        return np.asarray((X > threshold).sum(0)).ravel() / max(self.n, 1)

    def firing_rate(self) -> np.ndarray:
        """``[d_sae]`` token-level firing rate: ``Σ_s frac[s]·|T_s| / Σ_s |T_s|``."""
        w = self.n_tokens.astype(np.float64)
        return np.asarray(self.pooled["frac"].T @ w).ravel() / max(w.sum(), 1.0)

    def summary(self) -> dict[str, Any]:
        X = self.pooled.get("max")
        return {
            "sequences": self.n,
            "d_sae": self.d_sae,
            "empty_sequences": int((self.n_tokens == 0).sum()),
            "tokens": int(self.n_tokens.sum()),
            "density": float(X.nnz / max(X.shape[0] * X.shape[1], 1)) if X is not None else None,
            "dense_baseline": self.dense is not None,
            **{k: self.meta.get(k) for k in ("sae", "site", "positions", "model", "source")},
        }

    # ---- files ------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        import pandas as pd
        import scipy.sparse as sp

        from ..io import atomic_path

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name, X in self.pooled.items():
            with atomic_path(d / f"latents_{name}.npz", ".npz") as tmp:
                sp.save_npz(tmp, sp.csr_matrix(X, dtype=np.float32), compressed=False)
        with atomic_path(d / SEQUENCES_FILE, ".parquet") as tmp:
            pd.DataFrame(
                {"seq_id": self.seq_ids, "text": self.texts, "n_tokens": self.n_tokens.astype(np.int64)}
            ).to_parquet(tmp)
        if self.dense is not None:
            with atomic_path(d / DENSE_FILE, ".npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, self.dense.astype(np.float32))
        return write_json(
            d / TABLE_JSON,
            {
                "kind": self.KIND,
                "schema": 1,
                "poolings": list(self.pooled),
                "n": self.n,
                "d_sae": self.d_sae,
                "meta": self.meta,
            },
        )

    @classmethod
    def load(cls, directory: str | Path) -> LatentTable:
        import pandas as pd
        import scipy.sparse as sp

        d = Path(directory)
        head = d / TABLE_JSON
        if not head.is_file():
            raise DataFormatError(f"not a valid {cls.KIND}: {d} (no {TABLE_JSON})")
        data = read_json(head)
        if not isinstance(data, dict) or data.get("kind") != cls.KIND:
            raise DataFormatError(
                f"not a valid {cls.KIND}: {head} (kind is {data.get('kind') if isinstance(data, dict) else None!r})"
            )
        try:
            pooled = {p: sp.load_npz(d / f"latents_{p}.npz").tocsr() for p in data["poolings"]}
            seqs = pd.read_parquet(d / SEQUENCES_FILE)
            dense = np.load(d / DENSE_FILE) if (d / DENSE_FILE).is_file() else None
        except (OSError, ValueError, KeyError) as exc:
            raise DataFormatError(f"not a valid {cls.KIND}: {d} ({exc})") from None
        return cls(
            pooled,
            seqs["seq_id"].astype(str).tolist(),
            seqs["text"].astype(str).tolist(),
            seqs["n_tokens"].to_numpy(np.int64),
            dense,
            data.get("meta") or {},
        )


def table_from_arrays(
    features: Any,
    seq_ids: Sequence[Any] | None = None,
    *,
    dense: np.ndarray | None = None,
    texts: Sequence[str] | None = None,
    frac: Any = None,
    n_tokens: Sequence[int] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> LatentTable:
    """A table from in-memory features ``[n, d_sae]`` (pooled ``max``; ``mean`` = the same
    matrix; ``frac`` = ``features > 0`` unless given) — synthetic tables, tests, other tools."""
    import scipy.sparse as sp

    X = sp.csr_matrix(features, dtype=np.float32)
    n = X.shape[0]
    F = (
        sp.csr_matrix(frac, dtype=np.float32)
        if frac is not None
        else sp.csr_matrix((X > 0).astype(np.float32))
    )
    ids = [str(i) for i in (seq_ids if seq_ids is not None else range(n))]
    return LatentTable(
        {"max": X, "mean": X.copy(), "frac": F},
        ids,
        list(texts) if texts is not None else ids,
        np.asarray(n_tokens if n_tokens is not None else np.ones(n), dtype=np.int64),
        None if dense is None else np.asarray(dense, dtype=np.float32),
        dict(meta or {}),
    )


def _pool_batch(
    f: Any, x: Any, seq_local: Any, n_rows: int, threshold: float
) -> tuple[Any, Any, Any, Any, Any]:
    """Per-sequence max / mean / frac of per-token latents ``f`` and mean of residuals ``x``."""
    import torch

    d = f.shape[1]
    cnt = torch.bincount(seq_local, minlength=n_rows).clamp(min=1).to(torch.float32)[:, None]
    mx = torch.zeros(n_rows, d).scatter_reduce_(
        0, seq_local[:, None].expand(-1, d), f, "amax", include_self=True
    )
    mean = torch.zeros(n_rows, d).index_add_(0, seq_local, f) / cnt
    frac = torch.zeros(n_rows, d).index_add_(0, seq_local, (f > threshold).float()) / cnt
    xm = torch.zeros(n_rows, x.shape[1]).index_add_(0, seq_local, x.float()) / cnt
    return mx, mean, frac, xm, cnt


def build_latent_table(
    lm: Any,
    sae: Any,
    sequences: Sequences | Iterable[Any],
    *,
    positions: str = "response",
    activation_threshold: float = 0.0,
    batch_size: int = 16,
    max_length: int | None = None,
    dense: bool = True,
    site: Any = None,
    progress: bool = False,
) -> LatentTable:
    """Stream ``sequences`` through ``lm``, encode the activations at the SAE's site with
    ``sae`` and pool them per sequence (see the module docstring)."""
    import scipy.sparse as sp
    import torch

    from ..features.latents import iter_latents, sae_site
    from ..positions import Positions

    seqs = sequences if isinstance(sequences, Sequences) else as_sequences(sequences)
    pos = Positions.parse(positions)
    st = sae_site(sae, site)
    n = len(seqs)
    blocks: dict[str, list[Any]] = {p: [] for p in POOLINGS}
    dense_rows = np.zeros((n, lm.d_model), dtype=np.float32) if dense else None
    n_tok = np.zeros(n, dtype=np.int64)
    order: list[np.ndarray] = []
    with torch.no_grad():
        for lb in iter_latents(
            lm,
            [sae],
            seqs.items,
            pos,
            sites=[st],
            batch_size=batch_size,
            max_length=max_length,
            progress=progress,
            desc="latent table",
        ):
            b = lb.batch
            ids = b.batch_ids
            sorted_ids = torch.sort(ids).values
            local = torch.searchsorted(sorted_ids, b.seq_ids)
            mx, mean, frac, xm, _ = _pool_batch(
                lb.latents[0].cpu(), b[st].cpu(), local, len(ids), activation_threshold
            )
            for p, v in (("max", mx), ("mean", mean), ("frac", frac)):
                blocks[p].append(sp.csr_matrix(v.numpy()))
            rows = sorted_ids.numpy()
            order.append(rows)
            n_tok[rows] = torch.bincount(local, minlength=len(ids)).numpy()
            if dense_rows is not None:
                dense_rows[rows] = xm.numpy()
    d_sae = int(sae.d_sae)
    if order:
        perm = np.argsort(np.concatenate(order), kind="stable")
        pooled = {p: sp.vstack(v).tocsr()[perm] for p, v in blocks.items()}
    else:
        pooled = {p: sp.csr_matrix((0, d_sae), dtype=np.float32) for p in POOLINGS}
    for p in pooled:
        pooled[p] = pooled[p].astype(np.float32)
        pooled[p].eliminate_zeros()
    sae_name = (getattr(getattr(sae, "cfg", None), "metadata", None) or {}).get("name") or repr(sae)
    meta = provenance(
        lm,
        sae=str(sae_name),
        site=str(st),
        positions=str(pos),
        activation_threshold=activation_threshold,
        source=seqs.source,
        d_model=int(lm.d_model),
    )
    return LatentTable(pooled, list(seqs.ids), list(seqs.texts), n_tok, dense_rows, meta)
