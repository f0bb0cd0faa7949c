"""The protein study end to end: iterative DPO on a protein LM → per-iteration datasets → iterative
SAEs on both branches → weight/firing metrics and evolution → probes → causal experiments.

With ``M0`` the testbed model (or any ZymCTRL-style LM) and one family tag ``T``:

1. **DPO series** (:func:`deltalens.diff.organisms.iterative_dpo`): ``M<i>`` samples ``samples``
   sequences for each of ``prompts`` copies of ``T<sep><start>``; the profile-HMM bit score of
   ``T`` (:class:`~.scorers.HMMScorer`) picks the best-vs-worst pair of each prompt (or, with
   ``select="pareto"`` / ``identity_weight``, the HMM score and the identity to the training set
   together, :class:`~deltalens.diff.scorers.CombinedScorer`); DPO gives ``M<i+1>``; ``D<i>`` =
   what ``M<i>`` generated (``D<n>`` too);
2. **datasets** (:func:`~.datasets.build_datasets`): every ``D<i>`` (of both series) scored by
   the HMM and by the alignment to the training set of ``T`` (identity, similarity, coverage: the
   memorisation check);
3. **iterative SAEs** (:func:`deltalens.sae.iterative.train_series`), both branches
   (``M<i>D<i>`` and ``M0D<i>``) at ``site``;
4. **feature metrics**: decoder weight metrics of each SAE against ``M0D0`` and the evolution of
   the ``MD`` branch (born / died / changed latents, firing rates from each SAE's sparsity);
5. **probes** (:func:`deltalens.probes.run_probe_fit`) on the last iteration's two SAEs for high vs
   low HMM score and alignment identity (with the dense baseline and the shuffled-label and
   random-latent controls);
6. **causal** (:func:`deltalens.causal.run_causal`): the HMM probe's top latents zero-ablated in
   ``M<n>`` and steered into ``M0`` at the last iteration, each against matched null groups.

Everything is written under ``out`` (an experiment directory) and every stage resumes. The
summary (``study.json``) holds the per-iteration table — mean HMM bit score, hit rate, identity
to the training set, share of sequences with identity ≥ 0.95 — and the probe and causal results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import provenance, write_json
from ..stage import StageConfig, StageResult, at_least, option, register_result

STUDY_JSON = "study.json"


@dataclass
class ProteinStudyConfig(StageConfig):
    """The study's settings (defaults: ≤ 20 minutes on 2 CPU cores with the testbed)."""

    tag: str = option("fn3", flag="--tag", help="Family tag whose HMM score DPO raises.")
    hmm: str | None = option(
        None, flag="--hmm", help="HMM of the key metric (default: the example profile of --tag)."
    )
    iterations: int = option(3, flag="--iterations", help="DPO rounds (M1 … Mn).")
    prompts: int = option(
        48, flag="--prompts", help="Copies of the tag prompt (--pairs-per-prompt pairs each)."
    )
    samples: int = option(8, flag="--samples", help="Samples per prompt per checkpoint.")
    max_new_tokens: int = option(120, flag="--max-new-tokens", help="Longest generated sequence.")
    temperature: float = option(1.0, flag="--temperature", help="Sampling temperature.")
    dpo_lr: float = option(5e-5, flag="--dpo-lr", help="DPO learning rate (full fine-tuning).")
    dpo_epochs: float = option(3.0, flag="--dpo-epochs", help="DPO epochs per round.")
    beta: float = option(0.1, flag="--beta", help="DPO β.")
    sft_weight: float = option(
        0.0, flag="--sft-weight", help="Weight of the NLL on the chosen sequences added to DPO (RPO)."
    )
    pairs_per_prompt: int = option(
        2, flag="--pairs-per-prompt", help="Rank-matched pairs per prompt (r-th best vs r-th worst)."
    )
    select: str = option(
        "weighted",
        flag="--select",
        help="DPO pair selection: weighted (sum) or pareto over HMM score and identity.",
    )
    identity_weight: float = option(
        0.0,
        flag="--identity-weight",
        help="Weight of the identity to the training set in pair selection (negative: avoid memorisation).",
    )
    null_control: bool = option(
        True,
        flag="--null-control/--no-null-control",
        help="Also run the DPO series with random preferences (same settings), the control.",
    )
    site: str = option("resid.2", flag="--site", help="SAE site.")
    sae_expansion: int = option(4, flag="--sae-expansion", help="d_sae = expansion × d_model.")
    sae_k: int = option(16, flag="--sae-k", help="TopK k.")
    sae_tokens: int = option(60_000, flag="--sae-tokens", help="Tokens of M0D0's training (repeated epochs).")
    causal_null_groups: int = option(4, flag="--null-groups", help="Null groups per causal cell.")
    causal_top_k: int = option(8, flag="--top-k", help="Latents per probe group.")
    seed: int = option(0, flag="--seed", help="Seed of every stage.")
    skip: list[str] = option(
        default_factory=list,
        flag="--skip",
        help="Stages to skip after the datasets: sae, features, probes, causal.",
    )

    def validate(self) -> None:
        for f in (
            "iterations",
            "prompts",
            "max_new_tokens",
            "sae_expansion",
            "sae_k",
            "sae_tokens",
            "causal_top_k",
        ):
            at_least(self, f, 1)
        at_least(self, "samples", 2)
        at_least(self, "causal_null_groups", 0)
        if self.select not in ("weighted", "pareto"):
            raise ConfigError(f"--select must be weighted or pareto, got {self.select!r}")
        bad = [s for s in self.skip if s not in ("sae", "features", "probes", "causal")]
        if bad:
            raise ConfigError(f"--skip: unknown stage {bad[0]!r} (valid: sae, features, probes, causal)")


@register_result
@dataclass
class ProteinStudy(StageResult):
    """``study.json``: where everything is and the tables of the study."""

    KIND = "protein study"
    FILENAME = STUDY_JSON

    model: str
    tag: str
    per_iteration: list[dict[str, Any]]
    dpo: list[dict[str, Any]]
    paths: dict[str, str]
    per_iteration_null: list[dict[str, Any]] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    causal: list[dict[str, Any]] = field(default_factory=list)
    features: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out = {
            "model": self.model,
            "tag": self.tag,
            "mean_hmm": [round(r["hmm_mean"], 3) for r in self.per_iteration],
            "identity_to_train": [round(r["identity_mean"], 3) for r in self.per_iteration],
        }
        if self.per_iteration_null:
            out["mean_hmm_null_control"] = [round(r["hmm_mean"], 3) for r in self.per_iteration_null]
        return out


#: the per-iteration table as the CLI and the report show it: (header, key) pairs
ITERATION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "model"),
    ("n", "n"),
    ("mean length", "mean_length"),
    ("mean HMM bits", "hmm_mean"),
    ("± se", "hmm_se"),
    ("HMM hit rate", "hmm_hit_rate"),
    ("identity to train", "identity_mean"),
    ("coverage", "coverage_mean"),
    ("identity ≥ 0.95", "identity_ge_0.95"),
)


def iteration_rows(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The rows of a per-iteration table in :data:`ITERATION_COLUMNS` order."""
    return [tuple(r.get(k) for _, k in ITERATION_COLUMNS) for r in rows]


def per_iteration_table(frame: Any, hmm_col: str, align_base: str) -> list[dict[str, Any]]:
    """Per iteration: n, mean length, mean HMM bit score (and its standard error), hit rate, mean
    identity / coverage to the training set and the share with identity ≥ 0.95."""
    rows = []
    for i, df in frame.groupby("iteration"):
        n = len(df)
        sd = float(df[hmm_col].std(ddof=1)) if n > 1 else 0.0
        rows.append(
            {
                "iteration": int(i),
                "model": f"M{int(i)}",
                "n": int(n),
                "mean_length": float(df["length"].mean()),
                "hmm_mean": float(df[hmm_col].mean()),
                "hmm_se": sd / max(n, 1) ** 0.5,
                "hmm_hit_rate": float(df[f"{hmm_col}_hit"].mean()),
                "identity_mean": float(df[f"{align_base}_identity"].mean()),
                "coverage_mean": float(df[f"{align_base}_coverage"].mean()),
                "identity_ge_0.95": float((df[f"{align_base}_identity"] >= 0.95).mean()),
            }
        )
    return rows


def run_study(
    model: str | Path,
    out: str | Path,
    config: ProteinStudyConfig | None = None,
    *,
    refs: str | Path | None = None,
    progress: bool = True,
) -> ProteinStudy:
    """Run (or resume) the study (module docstring) into ``out``; ``refs`` is the training set of the
    tag (default: the testbed's ``train.fasta`` records of the tag)."""
    import torch

    from ..diff.organisms import DPOSeriesConfig, OrganismConfig, iterative_dpo
    from ..experiment import Experiment
    from .datasets import ProteinDatasetConfig, build_datasets
    from .lm import check_tag, load_protein_lm, protein_format
    from .records import write_fasta
    from .scorers import AlignmentScorer, HMMScorer
    from .testbed import training_records

    cfg = config or ProteinStudyConfig()
    exp = Experiment(out)
    root = Path(out)
    times: dict[str, float] = {}
    t = time.time()
    lm = load_protein_lm(model)
    tag = check_tag(lm, cfg.tag)
    ref_path = Path(refs) if refs else root / "protein" / f"train_{tag}.fasta"
    if refs is None and not ref_path.is_file():
        write_fasta(ref_path, training_records(model, tag))
    hmm_spec = cfg.hmm or tag
    from .cache import ScoreCache

    cache = ScoreCache(root / "protein" / "scores.sqlite")
    hmm = HMMScorer(hmm_spec, cache=cache)
    align = AlignmentScorer(ref_path, label=f"align_train_{tag}", cache=cache)
    prompt = protein_format(lm).prompt(tag)
    series_dir = exp.series_dir(f"protein_{tag}")
    dpo_cfg = DPOSeriesConfig(
        iterations=cfg.iterations,
        n_samples=cfg.samples,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        seed=cfg.seed,
        train=OrganismConfig(
            method="dpo",
            lora=False,
            epochs=cfg.dpo_epochs,
            learning_rate=cfg.dpo_lr,
            beta=cfg.beta,
            batch_size=8,
            max_length=cfg.max_new_tokens + 8,
            seed=cfg.seed,
            sft_weight=cfg.sft_weight,
        ),
        pairs_per_prompt=cfg.pairs_per_prompt,
    )
    selector: Any = hmm
    if cfg.select == "pareto" or cfg.identity_weight:
        from ..diff.scorers import CombinedScorer

        selector = CombinedScorer([hmm, align], weights=[1.0, cfg.identity_weight], rule=cfg.select)
    series = iterative_dpo(lm, [prompt] * cfg.prompts, selector, series_dir, dpo_cfg, progress=progress)
    times["dpo_series"] = time.time() - t

    def scored_table(series: Path, name: str) -> tuple[Path, list[dict[str, Any]]]:
        """A series' datasets (HMM + alignment to the training set) and its per-iteration table."""
        d = root / "protein" / "datasets" / name
        ds = build_datasets(
            d,
            ProteinDatasetConfig(scorers=[f"hmm:{hmm_spec}", f"align:{ref_path}"]),
            series=series,
            scorers=[hmm, align],
            progress=progress,
        )
        return d, per_iteration_table(ds.frame(), hmm.name, align.label)

    t = time.time()
    ds_dir, table = scored_table(series_dir, f"protein_{tag}")
    times["datasets"] = time.time() - t
    null_table: list[dict[str, Any]] = []
    null_paths: dict[str, str] = {}
    if cfg.null_control:
        # the control: the same DPO rounds with random preferences (RandomScorer), scored alike
        from ..diff.scorers import RandomScorer

        t = time.time()
        null_dir = exp.series_dir(f"protein_{tag}_null")
        iterative_dpo(
            lm, [prompt] * cfg.prompts, RandomScorer(cfg.seed), null_dir, dpo_cfg, progress=progress
        )
        null_ds_dir, null_table = scored_table(null_dir, f"protein_{tag}_null")
        null_paths = {"null_series": str(null_dir), "null_datasets": str(null_ds_dir)}
        times["null_control"] = time.time() - t
    dpo_rows = [
        {
            "checkpoint": f"M{it['iteration']}",
            "trained_on": it.get("data"),
            "pairs": it["n_pairs"],
            "chosen": it["chosen"]["mean"],
            "rejected": it["rejected"]["mean"],
            "train_loss": it["train_loss"],
        }
        for it in series.iterations
    ]
    res = ProteinStudy(
        model=str(model),
        tag=tag,
        per_iteration=table,
        per_iteration_null=null_table,
        dpo=dpo_rows,
        paths={
            "series": str(series_dir),
            "datasets": str(ds_dir),
            "references": str(ref_path),
            **null_paths,
        },
        timings=times,
        config=cfg.to_dict(),
    )
    res.save(root / "protein")
    n = cfg.iterations
    torch.manual_seed(cfg.seed)
    if "sae" not in cfg.skip:
        t = time.time()
        sae_dir = _saes(series_dir, exp, cfg, progress)
        res.paths["saes"] = str(sae_dir)
        times["saes"] = time.time() - t
        if "features" not in cfg.skip:
            t = time.time()
            res.features = _features(sae_dir, n, exp, root)
            times["features"] = time.time() - t
        if "probes" not in cfg.skip:
            t = time.time()
            res.probes, probe_dirs = _probes(series_dir, sae_dir, ds_dir, n, exp, hmm.name, align.label)
            res.paths.update({f"probes_{k}": v for k, v in probe_dirs.items()})
            times["probes"] = time.time() - t
            if "causal" not in cfg.skip:
                t = time.time()
                metrics = {hmm.name: f"hmm:{hmm_spec}", f"{align.label}_identity": f"align:{ref_path}"}
                res.causal, cdir = _causal(
                    series_dir, sae_dir, probe_dirs, prompt, metrics, n, cfg, exp, progress
                )
                res.paths["causal"] = cdir
                times["causal"] = time.time() - t
    res.paths.update({k: str(v) for k, v in study_figures(res, root / "protein" / "figures").items()})
    res.timings = {k: round(v, 1) for k, v in times.items()}
    res.provenance = provenance(None, stage="protein study")
    res.save(root / "protein")
    write_json(root / "protein" / "per_iteration.json", table)
    return res


def study_figures(res: ProteinStudy, out: Path) -> dict[str, Path]:
    """``hmm_by_iteration.png`` (mean HMM bits ± SE per checkpoint, the DPO series and the null
    control) and ``identity_by_iteration.png`` (mean identity to the training set and the share
    with identity ≥ 0.95, both series)."""
    from ..plots import means_with_se

    series = {"DPO (HMM preferences)": res.per_iteration}
    if res.per_iteration_null:
        series["null control (random preferences)"] = res.per_iteration_null
    ticks = [r["model"] for r in res.per_iteration]
    figs = {
        "figure_hmm": means_with_se(
            {k: ([r["hmm_mean"] for r in v], [r["hmm_se"] for r in v]) for k, v in series.items()},
            out / "hmm_by_iteration.png",
            title=f"'{res.tag}': mean HMM bit score of the samples of each checkpoint",
            ylabel="HMM bits (± 1 SE)",
            xticklabels=ticks,
        )
    }
    ident = {
        f"{k}: mean identity": ([r["identity_mean"] for r in v], [0.0] * len(v)) for k, v in series.items()
    }
    ident.update(
        {
            f"{k}: share ≥ 0.95": ([r["identity_ge_0.95"] for r in v], [0.0] * len(v))
            for k, v in series.items()
        }
    )
    figs["figure_identity"] = means_with_se(
        ident,
        out / "identity_by_iteration.png",
        title="identity to the training set (memorisation check)",
        ylabel="identity",
        xticklabels=ticks,
    )
    return figs


def _saes(series_dir: Path, exp: Any, cfg: ProteinStudyConfig, progress: bool) -> Path:
    from ..sae.iterative import SAEIterateConfig, train_series
    from ..sae.train import SAETrainConfig

    tr = SAETrainConfig(
        architecture="topk",
        expansion=cfg.sae_expansion,
        k=cfg.sae_k,
        total_tokens=cfg.sae_tokens,
        batch_size=512,
        lr=1e-3,
        dead_window_tokens=20_000,
        seed=cfg.seed,
    )
    it = SAEIterateConfig(train=tr, branch="both", site=cfg.site, context_len=cfg.max_new_tokens + 8)
    dest = exp.sae_series_dir(series_dir.name)
    train_series(series_dir, it, out=dest, progress=progress)
    return dest


def _features(sae_dir: Path, n: int, exp: Any, root: Path) -> list[dict[str, Any]]:
    """Decoder weight metrics against M0D0 for every SAE, and the MD branch's evolution."""
    from ..features.pipeline import EvolutionRunConfig, WeightsConfig, run_evolution, run_weight_metrics

    rows = []
    names = ["M0D0"] + [f"M{i}D{i}" for i in range(1, n + 1)] + [f"M0D{i}" for i in range(1, n + 1)]
    for nm in names:
        p = sae_dir / nm
        if not p.is_dir():
            continue
        w = run_weight_metrics(
            WeightsConfig(sae=f"{nm}={p}", reference=None if nm == "M0D0" else f"M0D0={sae_dir / 'M0D0'}"),
            experiment=root,
        )
        summ = w.metrics.summary()
        row: dict[str, Any] = {"sae": nm}
        for k in ("dec_cos_ref", "dec_norm", "enc_norm", "dec_max_cos"):
            v = summ.get(k)
            if isinstance(v, dict):
                row[k] = v.get("mean")
        rows.append(row)
    md = [f"M{i}D{i}={sae_dir / f'M{i}D{i}'}" if i else f"M0D0={sae_dir / 'M0D0'}" for i in range(n + 1)]
    try:
        ev = run_evolution(
            EvolutionRunConfig(saes=md, from_sparsity=True, name="protein_MD"), experiment=root
        )
        for r in ev.evolution.summary_table():
            rows.append({"evolution": True, **{k: v for k, v in r.items()}})
    except ConfigError:
        pass  # SAEs without sparsity files: evolution needs a model pass (deltalens features evolution)
    return rows


def _probes(
    series_dir: Path, sae_dir: Path, ds_dir: Path, n: int, exp: Any, hmm_col: str, align_base: str
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    from ..probes import ProbeFitConfig, run_probe_fit

    rows = []
    dirs = {}
    for nm, model_dir in ((f"M{n}D{n}", series_dir / f"M{n}"), (f"M0D{n}", None)):
        lm_spec = str(model_dir) if model_dir else _base_of(series_dir)
        cfg = ProbeFitConfig(
            metrics=[hmm_col, f"{align_base}_identity"],
            key="id",
            high=0.7,
            low=0.3,
            positions="response",
            methods=["l1", "ksparse", "diff_mean"],
            folds=4,
        )
        out = exp.probes_dir(f"protein_{nm}")
        res = run_probe_fit(
            lm_spec, sae_dir / nm, series_dir / f"D{n}.jsonl", ds_dir / f"D{n}.parquet", cfg, out=out
        )
        dirs[nm] = str(out)
        for p in res.probes:
            rows.append(
                {
                    "sae": nm,
                    **{
                        k: p.get(k)
                        for k in (
                            "metric",
                            "method",
                            "k",
                            "cv_auroc",
                            "dense_auroc",
                            "shuffled_auroc",
                            "random_latents_auroc",
                        )
                    },
                }  # fmt: skip
            )
    return rows, dirs


def _base_of(series_dir: Path) -> str:
    from ..sae.iterative import discover_series

    return str(discover_series(series_dir)[0][0])


def _causal(
    series_dir: Path,
    sae_dir: Path,
    probe_dirs: dict[str, str],
    prompt: str,
    metrics: dict[str, str],
    n: int,
    cfg: ProteinStudyConfig,
    exp: Any,
    progress: bool,
) -> tuple[list[dict[str, Any]], str]:
    from ..causal import CausalConfig, run_causal

    cc = CausalConfig(
        name="protein",
        prompts=[prompt] * 8,
        series=str(series_dir),
        models={"0": _base_of(series_dir)},
        sae_root=str(sae_dir),
        probes=probe_dirs,
        metrics=metrics,
        types=["ablation", "steering"],
        iterations=[n],
        branches=["MD", "M0D"],
        top_k=cfg.causal_top_k,
        probe_direction="high",
        n=2,
        max_new_tokens=cfg.max_new_tokens,
        coefficients=[4.0],
        null_groups=cfg.causal_null_groups,
        seed=cfg.seed,
        bootstrap=1000,
        permutations=2000,
    )
    out = exp.causal_dir("protein")
    res = run_causal(cc, out, progress=progress)
    return [dict(r) for r in res.table()], str(out)
