"""Collect: a prompts × latents matrix of max and mean activation, streamed and sparse.

For prompt ``s`` with selected positions ``T_s`` (position language; default ``all[1:]``, every
token but the first, whose residual is an attention sink) and SAE latent activations ``f_i(t)``:

* ``max[s, i]  = max_{t∈T_s} f_i(t)``, ``argmax[s, i]`` its position (stored + 1 so 0 means none);
* ``mean[s, i] = (1/|T_s|) Σ_{t∈T_s} f_i(t)``;
* per latent: ``firing_rate_tokens[i] = #{t : f_i(t) > τ} / Σ_s |T_s|`` and
  ``firing_rate_prompts[i] = #{s : max[s, i] > τ} / n``; ``max_activation[i] = max_s max[s, i]``;
* the activation mass per token id, ``M[v, i] = Σ_{t : x_t = v} f_i(t)`` (sparse), from which
  :mod:`.filter` computes the token entropy;
* ``ce[s]`` — the prompt's cross-entropy under the model (:func:`.score.prompt_cross_entropy`),
  the fluency yardstick of the optimisers.

Matrices are ``scipy.sparse`` CSR float32; memory holds one batch of per-token latents plus the
sparse rows. Prompts come from the bundled prompt sets, prompt files and text corpora
(:func:`load_prompts`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, DataFormatError
from ..stage import StageConfig, StageResult, at_least, option, register_result

COLLECT_JSON = "collect.json"
BUNDLED = ("chat_prompts", "demo_questions", "python_tutorial")


@dataclass
class CollectConfig(StageConfig):
    """Which prompts are run and how latents are pooled (recorded in ``collect.json``)."""

    sources: list[str] = option(
        default_factory=lambda: ["chat_prompts", "demo_questions"],
        flag="--prompts",
        help="Prompt sources (comma-separated): bundled chat_prompts, demo_questions, python_tutorial, "
        "a prompt file (.jsonl/.json/.txt) or corpus:PATH (one prompt per non-blank line).",
    )
    n_prompts: int | None = option(None, flag="--n-prompts", help="Use at most this many prompts.")
    positions: str = option("all[1:]", flag="--positions", help="Positions pooled per prompt.")
    max_length: int = option(64, flag="--max-length", help="Truncate prompts to this many tokens.")
    batch_size: int = option(16, flag="--batch-size", help="Prompts per forward pass.")
    activation_threshold: float = option(
        0.0, flag="--activation-threshold", help="A latent fires where its activation > this."
    )
    cross_entropy: bool = option(
        True, flag="--cross-entropy", help="Also record each prompt's cross-entropy under the model."
    )

    def validate(self) -> None:
        at_least(self, "n_prompts", 1)
        at_least(self, "max_length", 2)
        at_least(self, "batch_size", 1)
        at_least(self, "activation_threshold", 0)
        if not self.sources:
            raise ConfigError("--prompts: give at least one prompt source")
        from ..positions import Positions

        try:
            self.positions = Positions.parse(self.positions).text
        except Exception as exc:  # noqa: BLE001 - any parse error is a config error here
            raise ConfigError(f"--positions: {exc}") from None


def load_prompts(sources: Iterable[str], n: int | None = None) -> list[str]:
    """Prompt texts from every source (bundled name, prompt file, ``corpus:PATH``), de-duplicated,
    in order; an empty result is an error naming the sources."""
    from ..data.corpus import read_texts
    from ..data.prompts import bundled_path, bundled_prompts, read_prompts

    out: list[str] = []
    for src in sources:
        s = str(src)
        if s == "python_tutorial":
            texts = _lines(read_texts(bundled_path("sae", "python_tutorial.txt")))
        elif s in BUNDLED:
            texts = [r.text for r in bundled_prompts(s)]
        elif s.startswith("corpus:"):
            texts = _lines(read_texts(s[len("corpus:") :]))
        else:
            p = Path(s)
            if not p.exists():
                raise DataFormatError(
                    f"{s}: no such prompt file (use {', '.join(BUNDLED)}, a .jsonl/.json/.txt file or corpus:PATH)"
                )
            texts = [r.text for r in read_prompts(p)]
        out.extend(texts)
    out = list(dict.fromkeys(t for t in out if t.strip()))
    if n is not None:
        out = out[:n]
    if not out:
        raise DataFormatError(f"the prompt set is empty (sources: {', '.join(map(str, sources)) or 'none'})")
    return out


def _lines(texts: Iterable[str], min_chars: int = 20) -> list[str]:
    return [ln.strip() for t in texts for ln in t.splitlines() if len(ln.strip()) >= min_chars]


@register_result
@dataclass
class CollectResult(StageResult):
    """The collection (module docstring): matrices are files beside ``collect.json``."""

    KIND: ClassVar[str] = "inverse collection"
    FILENAME: ClassVar[str] = COLLECT_JSON

    n_prompts: int
    d_sae: int
    sae: str
    site: str
    config: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list, repr=False)
    n_tokens: Any = field(default=None, repr=False)
    ce: Any = field(default=None, repr=False)
    max: Any = field(default=None, repr=False)
    mean: Any = field(default=None, repr=False)
    argmax: Any = field(default=None, repr=False)
    token_mass: Any = field(default=None, repr=False)
    firing_rate_tokens: Any = field(default=None, repr=False)

    _FILES: ClassVar[tuple[str, ...]] = ("max", "mean", "argmax", "token_mass")
    _JSON: ClassVar[tuple[str, ...]] = ("n_prompts", "d_sae", "sae", "site", "config", "provenance")

    def to_dict(self) -> dict[str, Any]:
        from ..stage import _jsonable

        return {k: _jsonable(getattr(self, k)) for k in self._JSON}

    # ---- derived per-latent statistics -------------------------------------------------------
    @property
    def max_activation(self) -> np.ndarray:
        """``[d_sae]`` ``max_s max[s, i]``."""
        return np.asarray(self.max.max(axis=0).todense()).ravel()

    def firing_rate_prompts(self, threshold: float | None = None) -> np.ndarray:
        """``[d_sae]`` fraction of prompts where ``max[s, i] > τ``."""
        tau = self.config.get("activation_threshold", 0.0) if threshold is None else threshold
        return np.asarray((self.max > tau).sum(axis=0)).ravel() / max(self.n_prompts, 1)

    def top_prompts(self, latent: int, k: int = 5) -> list[tuple[int, float, int]]:
        """``(prompt index, max activation, position)`` of the ``k`` prompts where ``latent`` peaks."""
        col = self.max[:, latent].tocsc()
        rows, vals = col.indices, col.data
        order = np.argsort(-vals, kind="stable")[:k]
        pos = self.argmax[:, latent].toarray().ravel()
        return [(int(rows[j]), float(vals[j]), int(pos[rows[j]]) - 1) for j in order]

    def ce_percentile(self, q: float = 90.0) -> float:
        """The ``q``-th percentile of the collection prompts' cross-entropy (nats/token), over the
        prompts that have one (``CE`` needs ≥ 2 tokens; shorter prompts are ``nan``)."""
        ce = None if self.ce is None else np.asarray(self.ce, dtype=np.float64)
        if ce is None or not np.isfinite(ce).any():
            raise DataFormatError("this collection has no cross-entropies (collect with --cross-entropy)")
        return float(np.percentile(ce[np.isfinite(ce)], q))

    def summary(self) -> dict[str, Any]:
        fr = self.firing_rate_prompts()
        return {
            "sae": self.sae,
            "site": self.site,
            "prompts": self.n_prompts,
            "d_sae": self.d_sae,
            "tokens": int(np.sum(self.n_tokens)) if self.n_tokens is not None else None,
            "density": float(self.max.nnz / max(self.max.shape[0] * self.max.shape[1], 1)),
            "live_latents": int((fr > 0).sum()),
            "ce_p90": self.ce_percentile() if self.ce is not None else None,
        }

    # ---- files ----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        import pandas as pd
        import scipy.sparse as sp

        from ..io import atomic_path

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name in self._FILES:
            with atomic_path(d / f"{name}.npz", ".npz") as tmp:
                sp.save_npz(tmp, sp.csr_matrix(getattr(self, name)), compressed=False)
        with atomic_path(d / "prompts.parquet", ".parquet") as tmp:
            pd.DataFrame(
                {
                    "text": self.prompts,
                    "n_tokens": np.asarray(self.n_tokens, dtype=np.int64),
                    "ce": np.asarray(self.ce if self.ce is not None else [np.nan] * self.n_prompts),
                }
            ).to_parquet(tmp)
        with atomic_path(d / "latents.parquet", ".parquet") as tmp:
            pd.DataFrame(
                {
                    "latent": np.arange(self.d_sae),
                    "max_activation": self.max_activation,
                    "firing_rate_prompts": self.firing_rate_prompts(),
                    "firing_rate_tokens": np.asarray(self.firing_rate_tokens),
                }
            ).to_parquet(tmp)
        return super().save(d)

    @classmethod
    def load(cls, directory: str | Path) -> CollectResult:
        import pandas as pd
        import scipy.sparse as sp

        res = super().load(directory)
        head = cls.path_in(directory)
        try:
            for name in cls._FILES:
                setattr(res, name, sp.load_npz(cls.companion(head, f"{name}.npz")).tocsr())
            pr = pd.read_parquet(cls.companion(head, "prompts.parquet"))
            lat = pd.read_parquet(cls.companion(head, "latents.parquet"))
        except (OSError, ValueError, KeyError) as exc:
            raise DataFormatError(f"not a valid {cls.KIND}: {head} ({exc})") from None
        res.prompts = pr["text"].astype(str).tolist()
        res.n_tokens = pr["n_tokens"].to_numpy(np.int64)
        ce = pr["ce"].to_numpy(np.float64)
        res.ce = None if np.isnan(ce).all() else ce
        res.firing_rate_tokens = lat["firing_rate_tokens"].to_numpy(np.float64)
        return res


def check_latent(latent: int, d_sae: int, what: str = "latent") -> int:
    """``latent`` as an int in ``[0, d_sae)``, else a :class:`ConfigError` naming it."""
    if isinstance(latent, bool) or not isinstance(latent, (int, np.integer)) or not 0 <= int(latent) < d_sae:
        raise ConfigError(f"{what} {latent!r} is out of range: the SAE has {d_sae} latents (0–{d_sae - 1})")
    return int(latent)


def _pool(f: Any, local: Any, pos: Any, n_rows: int, tau: float) -> tuple[Any, Any, Any, Any]:
    """Per-prompt max, argmax position + 1, mean and firing count of per-token latents ``f``."""
    import torch

    d = f.shape[1]
    idx = local[:, None].expand(-1, d)
    cnt = torch.bincount(local, minlength=n_rows).clamp(min=1).to(torch.float32)[:, None]
    mx = torch.zeros(n_rows, d).scatter_reduce_(0, idx, f, "amax", include_self=True)
    at_max = (f == mx[local]) & (f > 0)
    where = torch.where(at_max, (pos + 1)[:, None].expand(-1, d), torch.zeros_like(at_max, dtype=torch.long))
    am = torch.zeros(n_rows, d, dtype=torch.long).scatter_reduce_(0, idx, where, "amax", include_self=True)
    mean = torch.zeros(n_rows, d).index_add_(0, local, f) / cnt
    fires = (f > tau).sum(0)
    return mx, am, mean, fires


def collect(
    lm: Any,
    sae: Any,
    prompts: Sequence[str] | None = None,
    config: CollectConfig | None = None,
    *,
    site: Any = None,
    progress: bool = False,
) -> CollectResult:
    """Stream ``prompts`` (default: ``config.sources``) through ``lm`` and pool the SAE's latents
    per prompt (module docstring). The forward stops after the SAE's site."""
    import scipy.sparse as sp
    import torch

    from ..features.latents import iter_latents, sae_site
    from ..io import provenance
    from .score import prompt_cross_entropy

    cfg = config or CollectConfig()
    texts = list(prompts) if prompts is not None else load_prompts(cfg.sources, cfg.n_prompts)
    if prompts is not None and cfg.n_prompts is not None:
        texts = texts[: cfg.n_prompts]
    if not texts:
        raise DataFormatError("the prompt set is empty: give at least one prompt")
    st = sae_site(sae, site)
    n, d = len(texts), int(sae.d_sae)
    V = int(lm.vocab_size)
    blocks: dict[str, list[Any]] = {"max": [], "argmax": [], "mean": []}
    order: list[np.ndarray] = []
    n_tok = np.zeros(n, dtype=np.int64)
    fires = torch.zeros(d, dtype=torch.long)
    mass = sp.csr_matrix((V, d), dtype=np.float32)
    for lb in iter_latents(
        lm, [sae], texts, cfg.positions, sites=[st], batch_size=cfg.batch_size,
        max_length=cfg.max_length, progress=progress, desc="collect",
    ):  # fmt: skip
        b, f = lb.batch, lb.latents[0].cpu()
        ids = torch.sort(b.batch_ids).values
        local = torch.searchsorted(ids, b.seq_ids)
        mx, am, mean, fr = _pool(f, local, b.positions, len(ids), cfg.activation_threshold)
        for k, v in (("max", mx), ("argmax", am), ("mean", mean)):
            blocks[k].append(sp.csr_matrix(v.numpy()))
        order.append(ids.numpy())
        n_tok[ids.numpy()] = torch.bincount(local, minlength=len(ids)).numpy()
        fires += fr
        r, c = f.nonzero(as_tuple=True)
        mass = mass + sp.csr_matrix(
            (f[r, c].numpy(), (b.token_ids[r].numpy(), c.numpy())), shape=(V, d), dtype=np.float32
        )
    perm = np.argsort(np.concatenate(order), kind="stable")
    mats = {k: sp.vstack(v).tocsr()[perm] for k, v in blocks.items()}
    for k in ("max", "mean"):
        mats[k] = mats[k].astype(np.float32)
    for m in mats.values():
        m.eliminate_zeros()
    ce = (
        prompt_cross_entropy(lm, [lm.encode(t)[: cfg.max_length] for t in texts])
        if cfg.cross_entropy
        else None
    )
    name = (getattr(getattr(sae, "cfg", None), "metadata", None) or {}).get("name") or repr(sae)
    return CollectResult(
        n_prompts=n,
        d_sae=d,
        sae=str(name),
        site=str(st),
        config=cfg.to_dict(),
        provenance=provenance(lm, sae=str(name), site=str(st)),
        prompts=texts,
        n_tokens=n_tok,
        ce=None if ce is None else np.asarray(ce, dtype=np.float64),
        max=mats["max"],
        mean=mats["mean"],
        argmax=mats["argmax"],
        token_mass=mass.tocsr(),
        firing_rate_tokens=fires.numpy() / max(int(n_tok.sum()), 1),
    )
