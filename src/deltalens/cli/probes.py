"""``deltalens probes …``: fit, annotate, correlate, compare (probes of SAE latents for key metrics)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..probes.stages import AnnotateConfig as _AnnCfg
from ..probes.stages import CompareConfig as _CmpCfg
from ..probes.stages import CorrelateConfig as _CorCfg
from ..probes.stages import ProbeFitConfig as _FitCfg
from ._common import config_option, console, experiment_option, parse_floats, split_list, table

probes_app = typer.Typer(
    help="Probes of SAE latents for key metrics: fit, annotate, correlate, compare.", no_args_is_help=True
)


def _ints(value: str | None, flag: str) -> list[int]:
    from ..errors import ConfigError

    try:
        return [int(x) for x in split_list(value)]
    except ValueError:
        raise ConfigError(
            f"{flag}: cannot read '{value}': write comma-separated integers, e.g. 1,2,4"
        ) from None


def _dest(out: Path | None, experiment: str, name: str) -> Path:
    from ..experiment import Experiment

    return Path(out) if out is not None else Experiment.named(experiment).probes_dir(name)


def fit_cmd(
    metrics_file: Path = typer.Option(
        ..., "--metrics", help="Metrics table (.parquet/.csv/.jsonl) with a key column and metric columns."
    ),
    sequences: Path | None = typer.Option(
        None,
        "--sequences",
        "-s",
        help="Sequences: generations JSONL, a dpo-series D<i>.jsonl, .txt, .csv/.parquet.",
    ),
    sae: Path | None = typer.Option(
        None, "--sae", help="SAE directory (SAELens, sparsify or dictionary_learning)."
    ),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Model the SAE reads."),
    table_dir: Path | None = typer.Option(
        None, "--table", help="Reuse a latent table (probes/<name>/table) instead of --sequences/--sae."
    ),
    metric: str | None = config_option(_FitCfg, "metrics"),
    key: str = config_option(_FitCfg, "key"),
    high: float = config_option(_FitCfg, "high"),
    low: float = config_option(_FitCfg, "low"),
    label_mode: str = config_option(_FitCfg, "label_mode"),
    method: str = config_option(_FitCfg, "methods"),
    k: int | None = config_option(_FitCfg, "k"),
    ks: str = config_option(_FitCfg, "ks"),
    C: float = config_option(_FitCfg, "C"),
    folds: int = config_option(_FitCfg, "folds"),
    pooling: str = config_option(_FitCfg, "pooling"),
    positions: str = config_option(_FitCfg, "positions"),
    threshold: float = config_option(_FitCfg, "activation_threshold"),
    batch_size: int = config_option(_FitCfg, "batch_size"),
    max_length: int | None = config_option(_FitCfg, "max_length"),
    dense: bool = typer.Option(
        True, "--dense-baseline/--no-dense-baseline", help="Also fit every probe on the residual activations."
    ),
    controls: bool = typer.Option(
        True, "--controls/--no-controls", help="Shuffled-label and random-latent controls."
    ),
    top: int = config_option(_FitCfg, "top"),
    seed: int = config_option(_FitCfg, "seed"),
    name: str | None = typer.Option(
        None,
        "--name",
        help="Probe name (<experiment>/probes/<name>; default: the --out directory's name, else the metrics file's stem).",
    ),
    experiment: str = experiment_option(),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory (overrides --experiment/--name)."
    ),
) -> None:
    """Fit sparse (L1, k-sparse) and difference-in-means probes for high vs low metric values."""
    from ..probes.stages import run_probe_fit

    cfg = _FitCfg(
        metrics=split_list(metric),
        key=key,
        high=high,
        low=low,
        label_mode=label_mode,
        methods=split_list(method),
        k=k,
        ks=_ints(ks, "--ks"),
        C=C,
        folds=folds,
        pooling=pooling,
        positions=positions,
        activation_threshold=threshold,
        batch_size=batch_size,
        max_length=max_length,
        dense_baseline=dense,
        controls=controls,
        top=top,
        seed=seed,
    )
    label = name or (out.name if out is not None else metrics_file.stem)
    dest = _dest(out, experiment, label)
    res = run_probe_fit(model, sae, sequences, metrics_file, cfg, out=dest, name=label, table=table_dir)
    console.print(
        "labels: "
        + "; ".join(
            f"{m}: {v['high']} high (≥ {v['high_cut']:.4g}), {v['low']} low (≤ {v['low_cut']:.4g})"
            for m, v in res.labels.items()
        )
    )
    j = res.join
    console.print(
        f"join on '{j['key']}': {j['unmatched_keys']} metric rows match no sequence, "
        f"{j['sequences_without_metrics']} sequences without metrics, {j['empty_sequences']} with no selected position; "
        f"NaN {j['nan']}; constant {j['constant'] or 'none'}"
    )
    rows = [
        (
            p["metric"],
            p["method"],
            p["k"],
            f"{p['cv_auroc']:.3f} ± {p['cv_auroc_se']:.3f}",
            f"{p['cv_accuracy']:.3f}",
            f"{p['dense_auroc']:.3f}" if p.get("dense_auroc") is not None else "-",
            f"{p['shuffled_auroc']:.3f}" if p.get("shuffled_auroc") is not None else "-",
            f"{p['random_latents_auroc']:.3f}" if p.get("random_latents_auroc") is not None else "-",
            ", ".join(map(str, p["top_latents"][:8])),
        )
        for p in res.probes
    ]
    console.print(
        table(
            f"probes ({res.n_sequences} sequences, {res.d_sae} latents)",
            ["metric", "method", "k", "CV AUROC", "acc", "dense", "shuffled", "random", "top latents"],
            rows,
        )
    )
    console.print(f"wrote {dest}")


def annotate_cmd(
    probe_dir: Path = typer.Argument(..., help="A `probes fit` output directory."),
    method: str = config_option(_AnnCfg, "method"),
    k: int | None = config_option(_AnnCfg, "k"),
    per_round: int = config_option(_AnnCfg, "per_round"),
    rounds: int = config_option(_AnnCfg, "rounds"),
    stop_auroc: float = config_option(_AnnCfg, "stop_auroc"),
    metric: str | None = config_option(_AnnCfg, "metrics"),
    folds: int = config_option(_AnnCfg, "folds"),
    seed: int = config_option(_AnnCfg, "seed"),
) -> None:
    """Iterative annotation: fit, record the top latents, zero them, refit until AUROC ≤ --stop-auroc."""
    from ..probes.stages import run_annotate

    cfg = _AnnCfg(
        method=method,
        k=k,
        per_round=per_round,
        rounds=rounds,
        stop_auroc=stop_auroc,
        metrics=split_list(metric),
        folds=folds,
        seed=seed,
    )
    res = run_annotate(probe_dir, cfg)
    console.print(
        table(
            "annotation",
            ["metric", "round", "latent", "direction", "importance", "AUROC before", "after"],
            [
                (
                    r["metric"],
                    r["round"],
                    r["latent"],
                    r["direction"],
                    r["importance"],
                    r["auroc_before"],
                    r["auroc_after"],
                )
                for r in res.rows
            ],
        )
    )
    console.print(f"wrote {probe_dir / 'annotation.csv'}")


def correlate_cmd(
    probe_dir: Path = typer.Argument(..., help="A `probes fit` output directory."),
    sae: Path | None = typer.Option(None, "--sae", help="The SAE of the table (encoder/decoder norms)."),
    base_sae: Path | None = typer.Option(
        None, "--base-sae", help="Base SAE (decoder cosine with the same latent)."
    ),
    thresholds: str = config_option(_CorCfg, "thresholds"),
    method: str = config_option(_CorCfg, "method"),
    top: int = config_option(_CorCfg, "top"),
    metric: str | None = config_option(_CorCfg, "metrics"),
    folds: int = config_option(_CorCfg, "folds"),
    seed: int = config_option(_CorCfg, "seed"),
) -> None:
    """Importance vs decoder cosine with the base SAE, firing rate, encoder norm and prevalence, per threshold."""
    from ..probes.stages import run_correlate

    cfg = _CorCfg(
        thresholds=parse_floats(thresholds, "--thresholds"),
        method=method,
        top=top,
        metrics=split_list(metric),
        folds=folds,
        seed=seed,
    )
    res = run_correlate(probe_dir, cfg, sae=sae, base_sae=base_sae)
    console.print(
        table(
            "Spearman(importance, property)",
            ["metric", "threshold", "property", "rho", "p", "latents"],
            [
                (
                    r["metric"],
                    r["threshold"],
                    r["property"],
                    r["spearman"] if r["spearman"] is not None else "-",
                    r["p_value"] if r["p_value"] is not None else "-",
                    r["n_latents"],
                )
                for r in res.rows
            ],
        )
    )
    console.print(f"wrote {probe_dir / 'correlations.csv'} and the connected scatterplots")


def compare_cmd(
    probe_dirs: list[Path] = typer.Argument(..., help="`probes fit` outputs (in series order: M0D0 M1D1 …)."),
    ks: str = config_option(_CmpCfg, "ks"),
    method: str = config_option(_CmpCfg, "method"),
    rank_top: int = config_option(_CmpCfg, "rank_top"),
    metric: str | None = typer.Option(None, "--metric", help="Metrics to compare (default: all)."),
    experiment: str = experiment_option(),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory (default: <experiment>/probes/compare)."
    ),
) -> None:
    """Compare important latents: intra-stage, inter-stage, inter-metric, along a series."""
    from ..probes.stages import run_compare

    cfg = _CmpCfg(ks=_ints(ks, "--k"), method=method, rank_top=rank_top)
    dest = _dest(out, experiment, "compare")
    res = run_compare(probe_dirs, cfg, metrics=split_list(metric), out=dest)
    cols = ["a", "b", "axis", *[f"jaccard@{k}" for k in cfg.ks], "spearman"]
    console.print(
        table(
            "probe comparison",
            cols,
            [[r.get(c) if r.get(c) is not None else "-" for c in cols] for r in res.rows],
        )
    )
    console.print(f"wrote {dest}")


SUBAPPS = [
    (
        probes_app,
        "probes",
        {
            "fit": fit_cmd,
            "annotate": annotate_cmd,
            "correlate": correlate_cmd,
            "compare": compare_cmd,
        },
    )
]
