"""Trait-vector extraction: responses → (optional judge filter) → activations → vectors.

:func:`extract` runs the seed's Phase 0 for one trait, model variant and position:

1. **Responses** (:func:`trait_responses`) — the model answers every positive and negative
   scenario (``rollouts`` each; greedy for one rollout, seeded sampling at temperature 1
   for more). Instruction traits use the chat template with the scenario's system prompt;
   natural traits continue the narrative as raw text. Written to
   ``responses/<trait>/<variant>/{pos,neg}.jsonl`` (generations JSONL,
   :func:`deltalens.generate.save_generations`) and *reused* by later extractions (other
   positions, methods or layers) when model, data and generation settings match.
2. **Filter** (optional, persona-vector style) — with a judge, keep positive responses
   with trait ≥ 50 and negative ones with trait < 50, both with coherence ≥ 50.
3. **Activations** — the mean activation over the position's tokens (e.g. ``response[:5]``)
   at every requested layer, captured once into an ActivationStore.
4. **Vectors** — per layer and method (:mod:`deltalens.vectors`), fitted on the train
   split and scored on the validation split; one file per layer
   ``vectors/<trait>/<variant>/<position>/<component>/<method>/layer<L>.safetensors`` plus
   ``summary.json`` (per-layer norm, accuracy, AUROC, separation, sample counts), and the
   :class:`ExtractionResult` (``extraction.json``) in the component directory.

The validation split holds out whole scenarios (all rollouts, and both polarities of a
paired instruction scenario): scenario i is ``val`` when
``frac(i · 2654435761 / 2³²) < val_fraction``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..capture import capture
from ..data.traits import TraitSet
from ..errors import ConfigError, DataFormatError, StoreMismatchError
from ..experiment import Experiment
from ..generate import Generation, generate, load_generations, save_generations
from ..io import config_hash, provenance, read_json, write_json
from ..models.arch import COMPONENTS
from ..positions import Positions
from ..stage import StageConfig, StageResult, at_least, in_range, one_of, option, register_result
from ..store import ActivationStore, split_of
from ..vectors import VECTOR_METHODS, TraitVector, VectorSet, evaluate_direction, fit_direction

JUDGE_HELP = "Judge: offline (no API; default), openai or openai:<model> (key from $OPENAI_API_KEY), local:<model spec>."
SUMMARY_FILENAME = "summary.json"  # per-layer metrics of one vector set, next to its layer files

if TYPE_CHECKING:
    from ..judges import Judge, JudgeCache
    from ..models.loading import LoadedModel


@dataclass
class ExtractConfig(StageConfig):
    """Settings of one extraction (``deltalens extract``)."""

    variant: str = option(
        "instruct", flag="--model-variant", help="Model variant name (its spec in the experiment config)."
    )
    position: str = option(
        "response[:]",
        flag="--position",
        help="Token positions to average: response[:], response[:5], prompt[-1], …",
    )
    methods: list[str] = option(
        default_factory=lambda: ["mean_diff", "probe"],
        flag="--methods",
        help="Comma-separated: mean_diff, probe, pca.",
    )
    layers: list[int] = option(
        default_factory=list, flag="--layers", help="Layers to fit: all (default), 9-19, 6,12,…"
    )
    component: str = option("resid", flag="--component", help="resid, resid_pre, attn_out or mlp_out.")
    rollouts: int = option(1, flag="--rollouts", help="Responses per scenario (>1 samples at temperature 1).")
    max_new_tokens: int | None = option(
        None, flag="--max-new-tokens", help="Response length (default 32, or N for response[:N])."
    )
    val_fraction: float = option(
        0.2, flag="--val-fraction", help="Fraction of scenarios held out for accuracy/separation."
    )
    filter: bool = option(
        False,
        flag="--filter/--no-filter",
        help="Keep pos with trait ≥ 50, neg with trait < 50, coherence ≥ 50.",
    )
    judge: str = option("offline", flag="--judge", help=JUDGE_HELP)
    min_trait: float = option(50.0, help="Filter: positives need trait ≥ this, negatives < this.")
    min_coherence: float = option(50.0, help="Filter: both need coherence ≥ this.")
    regenerate: bool = option(
        False, flag="--regenerate", help="Replace existing responses for this trait and variant."
    )
    batch_size: int = option(16, flag="--batch-size", help="Sequences per forward pass.")
    seed: int = option(0, flag="--seed", help="Seed of sampling and the probe.")

    def validate(self) -> None:
        Positions.parse(self.position)
        one_of(self, "methods", VECTOR_METHODS)
        if not self.methods:
            raise ConfigError(f"--methods: give at least one of {', '.join(VECTOR_METHODS)}")
        one_of(self, "component", COMPONENTS)
        at_least(self, "rollouts", 1)
        at_least(self, "max_new_tokens", 1)
        at_least(self, "batch_size", 1)
        in_range(self, "val_fraction", 0.0, 1.0, hi_open=True)


@register_result
@dataclass
class ExtractionResult(StageResult):
    """Vectors per method and layer with their per-layer metrics (``metrics``).

    Saved as ``extraction.json`` in the component directory
    (``vectors/<trait>/<variant>/<position>/<component>/``) next to one ``summary.json`` per
    method; :meth:`load` reads the vector files back from the method directories."""

    KIND = "trait vector extraction"
    FILENAME = "extraction.json"

    meta: dict[str, Any]
    metrics: dict[
        str, list[dict[str, Any]]
    ]  # per method: one row per layer (norm, accuracy, AUROC, separation)
    n_pos: int
    n_neg: int
    reused_responses: bool = False
    filtered: dict[str, int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    vectors: dict[str, dict[int, TraitVector]] = field(default_factory=dict, repr=False)
    paths: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "metrics": self.metrics,
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "reused_responses": self.reused_responses,
            "filtered": self.filtered,
            "config": self.config,
        }

    def save(self, directory: str | Path) -> Path:
        """``extraction.json`` (methods of an earlier extraction of the same responses are kept)
        and ``<method>/summary.json`` per method. The vector files are written by :func:`extract`."""
        d = Path(directory)
        path = d / self.FILENAME
        metrics = dict(self.metrics)
        if path.is_file():
            try:
                old = type(self).load(d, vectors=False)
                if old.meta.get("weights_hash") == self.meta.get("weights_hash") and old.meta.get(
                    "n_pos"
                ) == self.meta.get("n_pos"):
                    metrics = {**{m: rows for m, rows in old.metrics.items() if (d / m).is_dir()}, **metrics}
            except DataFormatError:
                pass
        for m, rows in self.metrics.items():
            write_json(d / m / SUMMARY_FILENAME, {**self.meta, "method": m, "layers": rows})
        write_json(path, {"kind": self.KIND, "schema": self.SCHEMA, **self.to_dict(), "metrics": metrics})
        return path

    def summary(self) -> dict[str, Any]:
        keys = ("trait", "variant", "positions", "component", "model", "n_pos", "n_neg", "n_val")
        return {
            **{k: self.meta.get(k) for k in keys},
            "methods": sorted(self.metrics),
            "layers": sorted({r["layer"] for rows in self.metrics.values() for r in rows}),
        }

    @classmethod
    def load(cls, directory: str | Path, *, vectors: bool = True) -> ExtractionResult:  # type: ignore[override]
        res = super().load(directory)
        d = cls.path_in(directory).parent
        for m in res.metrics:
            res.paths[m] = d / m
            if vectors:
                res.vectors[m] = vector_set_in(d / m)
        return res


def default_max_new_tokens(positions: str | Positions) -> int:
    """32 new tokens, or N for ``response[:N]`` with N > 32 (enough for the position)."""
    pos = Positions.parse(positions)
    n = 32
    for t in pos.terms:
        if (
            t.region == "response"
            and t.select is not None
            and t.select.is_slice
            and t.select.stop
            and t.select.stop > 0
        ):
            n = max(n, int(t.select.stop))
    return n


def _trait_hash(trait: TraitSet) -> str:
    return config_hash(
        {
            "pos": [(s.system, s.question) for s in trait.positive],
            "neg": [(s.system, s.question) for s in trait.negative],
        }
    )


RESPONSES_META = "meta.json"
RESPONSES_FILES = {"pos": "pos.jsonl", "neg": "neg.jsonl"}  # generations (deltalens.generate JSONL)
LEGACY_RESPONSES_FILES = {"pos": "pos.json", "neg": "neg.json"}  # JSON arrays (read only)


def _response_files(d: Path) -> tuple[Path, Path] | None:
    """The (pos, neg) response files in ``d`` (JSONL, or the older JSON arrays), or None."""
    for names in (RESPONSES_FILES, LEGACY_RESPONSES_FILES):
        pos, neg = d / names["pos"], d / names["neg"]
        if pos.exists() and neg.exists():
            return pos, neg
    return None


def trait_responses(
    lm: LoadedModel,
    exp: Experiment,
    trait: TraitSet,
    variant: str,
    *,
    rollouts: int = 1,
    max_new_tokens: int = 32,
    seed: int = 0,
    batch_size: int = 32,
    regenerate: bool = False,
    progress: bool = True,
) -> tuple[list[Generation], list[Generation], bool]:
    """Positive and negative responses for a trait (generated, or reused from the experiment).

    Returns ``(pos, neg, reused)``. Existing responses are reused when they were generated by
    the same model from the same scenarios with the same rollouts and seed and at least
    ``max_new_tokens`` tokens; otherwise :class:`StoreMismatchError` (pass ``regenerate``).
    """
    d = exp.responses_dir(trait.id, variant)
    meta_path = d / RESPONSES_META
    want = {
        "model": lm.name,
        "weights_hash": lm.weights_hash,
        "trait_data": _trait_hash(trait),
        "rollouts": int(rollouts),
        "seed": int(seed),
        "chat": trait.chat,
        "max_new_tokens": int(max_new_tokens),
    }
    files = _response_files(d)
    if meta_path.exists() and files is not None and not regenerate:
        have = read_json(meta_path)
        diffs = [
            k for k in ("weights_hash", "trait_data", "rollouts", "seed", "chat") if have.get(k) != want[k]
        ]
        if int(have.get("max_new_tokens", 0)) < max_new_tokens:
            diffs.append(f"max_new_tokens ({have.get('max_new_tokens')} < {max_new_tokens})")
        if diffs:
            raise StoreMismatchError(
                f"{d} holds responses generated with different settings ({', '.join(diffs)}); "
                "pass --regenerate to replace them (vectors fitted on them will be refitted)"
            )
        return load_generations(files[0]), load_generations(files[1]), True
    sample = rollouts > 1
    out = {}
    for pol, scen in (("pos", trait.positive), ("neg", trait.negative)):
        out[pol] = generate(
            lm,
            [s.as_prompt() for s in scen],
            max_new_tokens=max_new_tokens,
            n=rollouts,
            do_sample=sample,
            temperature=1.0,
            seed=seed,
            batch_size=batch_size,
            chat=trait.chat,
            progress=progress,
        )
    for pol in ("pos", "neg"):
        save_generations(d / RESPONSES_FILES[pol], out[pol])
        legacy = d / LEGACY_RESPONSES_FILES[pol]
        if legacy.exists():  # replaced by the JSONL file
            legacy.unlink()
    write_json(
        meta_path,
        {
            **want,
            "n_pos": len(out["pos"]),
            "n_neg": len(out["neg"]),
            "provenance": provenance(lm, trait=trait.id),
        },
    )
    return out["pos"], out["neg"], False


def existing_responses(
    lm: LoadedModel, exp: Experiment, trait: TraitSet, variant: str
) -> tuple[list[Generation], list[Generation]] | None:
    """Responses already in the experiment for this trait, variant and model (any generation settings)."""
    d = exp.responses_dir(trait.id, variant)
    files = _response_files(d)
    if not (d / RESPONSES_META).exists() or files is None:
        return None
    meta = read_json(d / RESPONSES_META)
    if meta.get("weights_hash") != lm.weights_hash or meta.get("trait_data") != _trait_hash(trait):
        return None
    return load_generations(files[0]), load_generations(files[1])


def filter_responses(
    pos: list[Generation],
    neg: list[Generation],
    judge: Judge,
    trait: TraitSet,
    *,
    cache: JudgeCache | None = None,
    min_trait: float = 50.0,
    min_coherence: float = 50.0,
) -> tuple[list[Generation], list[Generation], dict[str, int]]:
    """Keep positives with trait ≥ ``min_trait``, negatives with trait < ``min_trait``, both
    with coherence ≥ ``min_coherence`` (unscored responses are dropped)."""
    from ..judges import TraitInfo, score

    info = TraitInfo.from_trait(trait)
    items = [(g.question, g.response) for g in pos + neg]
    ts = score(judge, "trait", items, info, cache)
    cs = score(judge, "coherence", items, info, cache)
    keep_pos, keep_neg = [], []
    for k, g in enumerate(pos + neg):
        t, c = ts[k].value, cs[k].value
        if t is None or c is None or c < min_coherence:
            continue
        if k < len(pos) and t >= min_trait:
            keep_pos.append(g)
        elif k >= len(pos) and t < min_trait:
            keep_neg.append(g)
    return (
        keep_pos,
        keep_neg,
        {
            "pos_before": len(pos),
            "neg_before": len(neg),
            "pos_kept": len(keep_pos),
            "neg_kept": len(keep_neg),
        },
    )


def _trait_activations(
    lm: LoadedModel,
    exp: Experiment,
    trait: TraitSet,
    cfg: ExtractConfig,
    pos: list[Generation],
    neg: list[Generation],
    progress: bool,
) -> tuple[ActivationStore, torch.Tensor, torch.Tensor, int]:
    """Mean activations of every response at every layer (an ActivationStore, recaptured when
    the responses changed) → ``(store, is_pos, val, dropped)`` per stored row."""
    pos_spec = Positions.parse(cfg.position)
    data = pos + neg
    data_key = config_hash(
        [[g.index, g.rollout, g.response_ids] for g in pos]
        + [["neg"]]
        + [[g.index, g.rollout, g.response_ids] for g in neg]
    )
    store_dir = exp.extraction_store_dir(trait.id, cfg.variant, pos_spec, cfg.component)
    dataset = f"{trait.id}#{data_key}"
    sites = [(L, cfg.component) for L in range(lm.n_layers)]
    existing = ActivationStore(store_dir)
    if existing.exists and (
        existing.manifest.get("dataset") != dataset
        or existing.manifest.get("model", {}).get("weights_hash") != lm.weights_hash
    ):
        shutil.rmtree(store_dir)  # derived from other responses: recapture
    store = capture(
        lm,
        data,
        sites,
        pos_spec,
        reduce="mean",
        batch_size=cfg.batch_size,
        store=store_dir,
        dataset_name=dataset,
        progress=progress,
    )
    assert isinstance(store, ActivationStore)
    seq = torch.from_numpy(np.array(store.index(["seq_id"])["seq_id"].to_numpy(), dtype=np.int64))
    is_pos = seq < len(pos)
    scen = torch.tensor([g.index for g in data])[seq]
    val = torch.tensor([split_of(int(s), cfg.val_fraction) == "val" for s in scen.tolist()], dtype=torch.bool)
    if cfg.val_fraction > 0 and (
        int((val & is_pos).sum()) == 0 or int((val & ~is_pos).sum()) == 0 or int((~val & is_pos).sum()) < 1
    ):
        val = torch.zeros_like(val)  # too little data for a split: metrics on train only
    return store, is_pos, val, len(data) - len(seq)


def extract(
    lm: LoadedModel,
    exp: Experiment,
    trait: TraitSet,
    config: ExtractConfig | None = None,
    *,
    judge: Judge | None = None,
    cache: JudgeCache | None = None,
    progress: bool = True,
) -> ExtractionResult:
    """Extract trait vectors for every layer and method of ``config`` (see the module docstring).

    With ``config.filter`` the responses are filtered by ``judge`` (default: the judge named
    by ``config.judge``, built with :func:`deltalens.steering.pipeline.make_judge`)."""
    cfg = config or ExtractConfig()
    pos_spec = Positions.parse(cfg.position)
    layer_list = (
        sorted({int(x) % lm.n_layers for x in cfg.layers}) if cfg.layers else list(range(lm.n_layers))
    )
    mnt = cfg.max_new_tokens or default_max_new_tokens(pos_spec)
    pos, neg, reused = trait_responses(
        lm,
        exp,
        trait,
        cfg.variant,
        rollouts=cfg.rollouts,
        max_new_tokens=mnt,
        seed=cfg.seed,
        batch_size=max(cfg.batch_size, 32),
        regenerate=cfg.regenerate,
        progress=progress,
    )
    filtered: dict[str, int] = {}
    if cfg.filter or judge is not None:
        pos, neg, filtered = _filtered(lm, exp, trait, cfg, pos, neg, judge, cache, progress)
    if len(pos) < 2 or len(neg) < 2:
        raise StoreMismatchError(
            f"only {len(pos)} positive and {len(neg)} negative responses left for {trait.id}"
            + (" after filtering; lower the thresholds or add rollouts" if filtered else "")
        )
    store, is_pos, val, dropped = _trait_activations(lm, exp, trait, cfg, pos, neg, progress)
    base_meta = {
        "trait": trait.id,
        "trait_name": trait.name,
        "trait_format": trait.format,
        "trait_path": str(trait.path),
        "variant": cfg.variant,
        "positions": pos_spec.text,
        "component": cfg.component,
        "model": lm.name,
        "weights_hash": lm.weights_hash,
        "d_model": lm.d_model,
        "n_pos": int(is_pos.sum()),
        "n_neg": int((~is_pos).sum()),
        "n_train": int((~val).sum()),
        "n_val": int(val.sum()),
        "responses_without_tokens_at_position": dropped,
        "rollouts": cfg.rollouts,
        "max_new_tokens": mnt,
        **({"filter": filtered} if filtered else {}),
    }
    vectors: dict[str, dict[int, TraitVector]] = {m: VectorSet() for m in cfg.methods}
    metrics: dict[str, list[dict[str, Any]]] = {m: [] for m in cfg.methods}
    for L in layer_list:
        x = store.read((L, cfg.component)).float()
        ptr, ntr = x[is_pos & ~val], x[~is_pos & ~val]
        pva, nva = x[is_pos & val], x[~is_pos & val]
        for m in cfg.methods:
            d = fit_direction(ptr, ntr, m, seed=cfg.seed)
            scores = evaluate_direction(d, ptr, ntr, pva if len(pva) else None, nva if len(nva) else None)
            meta = {
                **base_meta,
                "layer": L,
                "method": m,
                "norm": float(d.vector.norm()),
                **scores,
                "provenance": provenance(lm, trait=trait.id, method=m, layer=L, positions=pos_spec.text),
            }
            tv = TraitVector(d.vector, meta)
            tv.save(exp.vector_path(trait.id, cfg.variant, pos_spec, cfg.component, m, L))
            vectors[m][L] = tv
            metrics[m].append({"layer": L, "norm": meta["norm"], **scores})
    res = ExtractionResult(
        base_meta, metrics, base_meta["n_pos"], base_meta["n_neg"], reused, filtered, cfg.to_dict(), vectors
    )
    out = exp.extraction_dir(trait.id, cfg.variant, pos_spec, cfg.component)
    res.save(out)
    res.paths = {m: exp.vectors_dir(trait.id, cfg.variant, pos_spec, cfg.component, m) for m in cfg.methods}
    return res


def _filtered(
    lm: LoadedModel,
    exp: Experiment,
    trait: TraitSet,
    cfg: ExtractConfig,
    pos: list[Generation],
    neg: list[Generation],
    judge: Judge | None,
    cache: JudgeCache | None,
    progress: bool,
) -> tuple[list[Generation], list[Generation], dict[str, int]]:
    """:func:`filter_responses` with the config's judge and thresholds (cache: the experiment's)."""
    from ..judges import JudgeCache as _Cache

    if judge is None:
        from .pipeline import make_judge

        judge = make_judge(cfg.judge, lm, exp, trait, cfg.variant, progress=progress)
    own = cache is None
    cache = cache or _Cache(exp.judge_cache_path())
    try:
        return filter_responses(
            pos, neg, judge, trait, cache=cache, min_trait=cfg.min_trait, min_coherence=cfg.min_coherence
        )
    finally:
        if own:
            cache.close()


def vector_set_in(directory: Path, layers: Sequence[int] | None = None) -> VectorSet:
    """The vector set in a method directory (:class:`DataFormatError` if it holds none)."""
    vs = VectorSet.load(directory, layers)
    if not vs:
        raise DataFormatError(
            f"no vectors in {directory}" + (f" for layers {list(layers)}" if layers else "")
        )
    return vs


def load_vector_set(
    exp: Experiment,
    trait: str,
    variant: str,
    positions: str | Positions,
    method: str,
    component: str = "resid",
    layers: Sequence[int] | None = None,
) -> VectorSet:
    """The extracted vectors of one (trait, variant, position, component, method), by layer."""
    d = exp.vectors_dir(trait, variant, positions, component, method)
    out = VectorSet.load(d, layers)
    if not out:
        raise DataFormatError(
            f"no vectors in {d}"
            + (f" for layers {list(layers)}" if layers else "")
            + f"; run: deltalens extract --trait {trait} --model-variant {variant} --position '{Positions.parse(positions).text}' --methods {method}"  # noqa: E501
        )
    return out
