"""Key-metric scorers for protein sequences: one value per sequence, batched and cached.

Each scorer is a :class:`~deltalens.diff.scorers.Scorer` (``scorer(generations) -> list[float]``,
``name``, ``config()``), so ``deltalens organism dpo-series``, the causal grid (``--metric``) and
the per-iteration datasets take it by spec:

* ``hmm:FILE_OR_NAME[@PROFILE]`` — :class:`HMMScorer`, the profile-HMM bit score (pyhmmer
  ``hmmsearch``; :mod:`.hmm`); columns ``hmm_<name>`` and ``hmm_<name>_hit``;
* ``align:REFS.fasta[@METRIC][,mode=local][,backend=biopython]`` — :class:`AlignmentScorer`,
  identity (default), similarity or coverage to the nearest reference (:mod:`.align`); columns
  ``align_<stem>_{identity,similarity,coverage,score}``;
* ``plddt[:MODEL_DIR]`` — :class:`PLDDTScorer`, mean pLDDT of an ESMFold prediction
  (transformers ``EsmForProteinFolding``, local weights only);
* ``oracle:module:function`` / ``oracle:file.py:function`` — :class:`OracleScorer`, any regressor
  ``f(list of sequences) -> list of floats`` (a saved scikit-learn model over embeddings is
  wrapped in such a function).

Sequences come from generations (their ``response``), :class:`~.records.ProteinRecord` or strings;
generated text is cleaned by :func:`clean_generated` (whitespace dropped, upper case, letters
outside the 20 amino acids and ``B``/``Z``/``X`` read as ``X``). Values are cached per
``(scorer key, sequence)`` (:mod:`.cache`; the key hashes the settings and the input files), and
a batch is committed as soon as it is scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import config_hash, sha256_file
from ..parsing import import_object
from .cache import ScoreCache, open_cache
from .records import STANDARD, read_records, sequences_of

PREFIXES = ("hmm:", "align:", "plddt", "oracle:")
_KEEP = set(STANDARD + "BZX")


def clean_generated(text: str) -> str:
    """A generated response as a sequence: whitespace removed, upper case, other letters → ``X``."""
    s = "".join(str(text).split()).upper()
    return "".join(c if c in _KEEP else "X" for c in s)


def _label(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s).strip("_") or "x"


class ProteinScorer:
    """Base: subclasses set ``name``, ``primary``, ``columns`` and implement :meth:`_compute`."""

    name: str = "protein"
    primary: str = "value"
    columns: tuple[str, ...] = ("value",)
    batch_size: int = 256

    def __init__(self, cache: ScoreCache | str | Path | bool | None = True):
        self.cache = cache if isinstance(cache, ScoreCache) else open_cache(cache)
        self._memo: dict[str, dict[str, float]] = {}

    # ---- to implement ---------------------------------------------------------------------
    def _compute(self, seqs: list[str]) -> dict[str, list[float]]:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {}

    # ---- the protocol ---------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "name": self.name, **self.settings()}

    def key(self) -> str:
        return config_hash(self.config())

    def score_sequences(self, seqs: Sequence[str], progress: bool = False) -> dict[str, list[float]]:
        """Every column for every sequence; cached values are reused, the rest is computed in
        batches of ``batch_size`` and committed batch by batch."""
        from tqdm.auto import tqdm

        key = self.key()
        have = {s: self._memo[s] for s in seqs if s in self._memo}
        if self.cache is not None:
            have.update(self.cache.get(key, [s for s in seqs if s not in have], self.columns))
        todo = [s for s in dict.fromkeys(seqs) if s not in have]
        bar = tqdm(total=len(todo), desc=self.name, unit="seq", disable=not progress or not todo, leave=False)
        for k in range(0, len(todo), self.batch_size):
            chunk = todo[k : k + self.batch_size]
            cols = self._compute(chunk)
            vals = {s: {c: float(cols[c][j]) for c in self.columns} for j, s in enumerate(chunk)}
            if self.cache is not None:
                self.cache.put(key, vals)
            have.update(vals)
            bar.update(len(chunk))
        bar.close()
        self._memo.update(have)
        return {c: [have[s][c] for s in seqs] for c in self.columns}

    def score_columns(self, gens: Sequence[Any]) -> dict[str, list[float]]:
        return self.score_sequences([clean_generated(s) for s in sequences_of(gens)])

    def combine(self, columns: dict[str, list[float]], gens: Sequence[Any] | None = None) -> list[float]:
        return list(columns[self.primary])

    def __call__(self, gens: Sequence[Any]) -> list[float]:
        return self.combine(self.score_columns(gens), gens)


# ---- profile HMM --------------------------------------------------------------------------------


class HMMScorer(ProteinScorer):
    """Profile-HMM bit score of each sequence (:func:`~.hmm.hmm_bit_scores`)."""

    batch_size = 512

    def __init__(
        self, spec: str, *, no_hit: float | None = None, label: str | None = None, cache: Any = True
    ):
        from .hmm import NO_HIT, load_hmm, resolve_hmm

        super().__init__(cache)
        self.spec = spec
        self.path, self.profile = resolve_hmm(spec)
        self.hmm = load_hmm(spec)
        self.hmm_name = self.hmm.name.decode() if isinstance(self.hmm.name, bytes) else str(self.hmm.name)
        self.no_hit = NO_HIT if no_hit is None else float(no_hit)
        self.name = label or f"hmm_{_label(self.hmm_name)}"
        self.primary = self.name
        self.columns = (self.name, f"{self.name}_hit")
        self._sha = sha256_file(self.path)

    def settings(self) -> dict[str, Any]:
        return {"hmm": str(self.path), "profile": self.hmm_name, "sha256": self._sha, "no_hit": self.no_hit}

    def _compute(self, seqs: list[str]) -> dict[str, list[float]]:
        from .hmm import hmm_bit_scores

        scores, hit = hmm_bit_scores(self.hmm, seqs, no_hit=self.no_hit)
        return {self.columns[0]: scores, self.columns[1]: [float(h) for h in hit]}


# ---- alignment ----------------------------------------------------------------------------------

ALIGN_METRICS = ("identity", "similarity", "coverage", "score")


class AlignmentScorer(ProteinScorer):
    """Identity / similarity / coverage to the nearest reference (:func:`~.align.nearest_references`)."""

    batch_size = 64

    def __init__(
        self,
        references: str | Path | Sequence[str],
        *,
        metric: str = "identity",
        mode: str = "global",
        backend: str = "parasail",
        gap_open: int = 11,
        gap_extend: int = 1,
        label: str | None = None,
        cache: Any = True,
    ):
        from .align import _check

        super().__init__(cache)
        if metric not in ALIGN_METRICS:
            raise ConfigError(f"alignment metric must be one of {', '.join(ALIGN_METRICS)}, got {metric!r}")
        _check(mode, backend)
        if isinstance(references, (str, Path)):
            self.ref_path: Path | None = Path(references)
            self.references = [r.sequence for r in read_records(self.ref_path)]
            self._sha = sha256_file(self.ref_path)
            stem = self.ref_path.name.split(".")[0]
        else:
            self.ref_path = None
            self.references = [str(s) for s in references]
            if not self.references:
                raise ConfigError("alignment needs at least one reference sequence")
            self._sha = config_hash({"refs": self.references})
            stem = "refs"
        self.metric, self.mode, self.backend = metric, mode, backend
        self.gap_open, self.gap_extend = int(gap_open), int(gap_extend)
        base = label or f"align_{_label(stem)}"
        self.label = base
        self.columns = tuple(f"{base}_{m}" for m in ALIGN_METRICS) + (f"{base}_nearest",)
        self.primary = f"{base}_{metric}"
        self.name = self.primary

    def settings(self) -> dict[str, Any]:
        # the backend is not part of the key: both compute the same quantities
        return {
            "references": str(self.ref_path) if self.ref_path else "<memory>",
            "sha256": self._sha,
            "n_references": len(self.references),
            "mode": self.mode,
            "gap_open": self.gap_open,
            "gap_extend": self.gap_extend,
            "matrix": "BLOSUM62",
            "metric": self.metric,
        }

    def key(self) -> str:
        s = self.config()
        s.pop("metric", None)
        s.pop("name", None)
        return config_hash(s)

    def _compute(self, seqs: list[str]) -> dict[str, list[float]]:
        from .align import nearest_references

        hits = nearest_references(
            seqs,
            self.references,
            mode=self.mode,
            backend=self.backend,
            gap_open=self.gap_open,
            gap_extend=self.gap_extend,
        )
        b = self.label
        return {
            f"{b}_identity": [h.identity for h in hits],
            f"{b}_similarity": [h.similarity for h in hits],
            f"{b}_coverage": [h.coverage for h in hits],
            f"{b}_score": [h.score for h in hits],
            f"{b}_nearest": [float(h.ref_index) for h in hits],
        }


# ---- pLDDT --------------------------------------------------------------------------------------


class PLDDTScorer(ProteinScorer):
    """Mean pLDDT of an ESMFold prediction (:mod:`.fold`)."""

    batch_size = 8

    def __init__(
        self, model: Any = None, *, device: str | None = None, label: str = "plddt", cache: Any = True
    ):
        from .fold import load_esmfold

        super().__init__(cache)
        self.folder = load_esmfold(model, device=device)
        self.name = self.primary = label
        self.columns = (label,)

    def settings(self) -> dict[str, Any]:
        return {"model": self.folder.spec, "weights": self.folder.weights_hash}

    def _compute(self, seqs: list[str]) -> dict[str, list[float]]:
        return {self.primary: self.folder.mean_plddt(seqs)}


# ---- oracle -------------------------------------------------------------------------------------


def _import_attr(mod: str, fn: str, spec: str) -> Any:
    return import_object(mod, fn, spec, prefix="deltalens_oracle")


class OracleScorer(ProteinScorer):
    """A user regressor ``f(sequences) -> values`` (an activity oracle)."""

    def __init__(
        self,
        fn: Callable[[list[str]], Sequence[float]],
        *,
        name: str | None = None,
        version: str = "",
        batch_size: int = 256,
        cache: Any = True,
    ):
        super().__init__(cache)
        self.fn = fn
        self.name = self.primary = name or f"oracle_{_label(getattr(fn, '__name__', 'fn'))}"
        self.columns = (self.primary,)
        self.version = version
        self.batch_size = int(batch_size)

    def settings(self) -> dict[str, Any]:
        return {
            "function": f"{getattr(self.fn, '__module__', '?')}:{getattr(self.fn, '__qualname__', '?')}",
            "version": self.version,
        }

    def _compute(self, seqs: list[str]) -> dict[str, list[float]]:
        out = list(self.fn(list(seqs)))
        if len(out) != len(seqs):
            raise ConfigError(f"oracle '{self.name}' returned {len(out)} values for {len(seqs)} sequences")
        return {self.primary: [float(x) for x in out]}


# ---- specs --------------------------------------------------------------------------------------


def is_protein_spec(spec: str) -> bool:
    s = spec.strip()
    return s == "plddt" or s.startswith(PREFIXES)


def _options(rest: str, spec: str, allowed: Sequence[str], bare: str) -> tuple[str, dict[str, str]]:
    path, at, opts = rest.partition("@")
    out: dict[str, str] = {}
    if at:
        for item in opts.split(","):
            k, eq, v = item.partition("=")
            if not eq:
                k, v = bare, k
            if k not in allowed:
                raise ConfigError(f"scorer '{spec}': unknown option '{k}' (valid: {', '.join(allowed)})")
            out[k] = v
    return path, out


def load_protein_scorer(spec: str, *, cache: Any = True) -> ProteinScorer:
    """Build a scorer from its spec (module docstring)."""
    s = spec.strip()
    if s.startswith("hmm:"):
        rest = s[4:]
        if not rest:
            raise ConfigError(f"scorer '{spec}': write hmm:FILE.hmm or hmm:<example name>, e.g. hmm:fn3")
        return HMMScorer(rest, cache=cache)
    if s.startswith("align:"):
        path, opts = _options(s[6:], spec, ("metric", "mode", "backend"), "metric")
        if not path:
            raise ConfigError(f"scorer '{spec}': write align:REFERENCES.fasta[@identity|similarity|coverage]")
        return AlignmentScorer(
            path,
            metric=opts.get("metric", "identity"),
            mode=opts.get("mode", "global"),
            backend=opts.get("backend", "parasail"),
            cache=cache,
        )
    if s == "plddt" or s.startswith("plddt:"):
        return PLDDTScorer(s.split(":", 1)[1] if ":" in s else None, cache=cache)
    if s.startswith("oracle:"):
        rest = s[7:]
        if ":" not in rest:
            raise ConfigError(
                f"scorer '{spec}': write oracle:module:function or oracle:file.py:function (a function from a "
                "list of sequences to a list of floats; wrap a saved regressor in one)"
            )
        mod, _, fn = rest.rpartition(":")
        obj = _import_attr(mod, fn, spec)
        if isinstance(obj, type):
            obj = obj()
        if not callable(obj):
            raise ConfigError(f"scorer '{spec}': {mod}:{fn} is not callable")
        return OracleScorer(obj, name=f"oracle_{_label(fn)}", cache=cache)
    raise ConfigError(f"not a protein scorer: '{spec}' (prefixes: hmm:, align:, plddt, oracle:)")
