"""``deltalens features …``: universal / specific features, firing statistics, weight
metrics, evolution across iterations, dashboards (parsing → one call into
:mod:`deltalens.features.pipeline` → printing)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..features.pipeline import (
    AnalysisConfig,
    DashboardConfig,
    EvolutionRunConfig,
    FiringRunConfig,
    WeightsConfig,
)
from ._common import config_option as opt
from ._common import console, experiment_option, split_list, table

features_app = typer.Typer(
    name="features",
    help="SAE feature analysis: universal/specific features at chat tokens, firing stats, weights, evolution, dashboards.",
    no_args_is_help=True,
)


def _ints(value: str | None, flag: str) -> list[int]:
    from ..errors import ConfigError

    try:
        return [int(x) for x in split_list(value)]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated integers, got '{value}'") from None


# ---- universal / specific / both --------------------------------------------------------------


def _print_analysis(res, cfg: AnalysisConfig) -> None:
    console.print(table("sources", ["source", "SAE", "site", "d_sae", "model"], res.sources))
    console.print(
        f"{res.n_prompts} prompts ({res.prompts_name}) × {len(res.sources)} SAE(s) in {res.seconds:.1f} s"
    )
    if res.universal is not None:
        u = res.universal
        console.print(
            table(
                f"universal features (active on ≥ {cfg.threshold:.0%} of prompts, a > {cfg.activation_threshold:g})"
                f" — top {len(res.universal_top)} of {len(u.table)}",
                ["source", "token", "feature", "prompts", "mean", "max", "top logit tokens"],
                res.universal_top,
            )
        )
        console.print(
            "per source/token: " + ", ".join(f"{s}/{k}: {n}" for (s, k), n in res.universal_counts.items())
            if res.universal_counts
            else "no universal features"
        )
        console.print(
            f"wrote {res.universal_path}"
            + (f" ({len(u.records)} active-prompt records)" if u.recorded else "")
        )
    if res.specific is not None:
        s = res.specific
        console.print(
            table(
                f"specific features (a > {cfg.activation_threshold:g})",
                ["source", "token", "feature", "active prompts", "mean", "max"],
                res.specific_top,
            )
        )
        console.print(
            f"wrote {res.specific_path} ({len(s.table)} rows)"
            + (f" ({len(s.records)} active-prompt records)" if s.recorded else "")
        )


def _analysis_command(kind: str):
    C = AnalysisConfig

    def cmd(
        sae: list[str] | None = opt(C, "saes"),
        model: str | None = opt(C, "model"),
        model_alias: str | None = opt(C, "model_alias"),
        prompts_path: Path | None = opt(C, "prompts_path"),
        threshold: float = opt(C, "threshold"),
        activation_threshold: float = opt(C, "activation_threshold"),
        features_csv: Path | None = opt(C, "features_csv"),
        universal_output: Path | None = opt(C, "universal_output"),
        specific_output: Path | None = opt(C, "specific_output"),
        record_prompts: bool = opt(C, "record_prompts"),
        token_types: str | None = opt(C, "token_types"),
        annotation_columns: bool = opt(C, "annotation_columns"),
        link_template: str | None = opt(C, "link_template"),
        batch_size: int = opt(C, "batch_size"),
        experiment: str = experiment_option(),
        top: int = opt(C, "top"),
        dtype: str = opt(C, "dtype"),
        device: str | None = opt(C, "device"),
    ) -> None:
        from ..features.pipeline import run_feature_analysis

        cfg = AnalysisConfig(
            kind,
            list(sae or []),
            model,
            model_alias,
            prompts_path,
            threshold,
            activation_threshold,
            features_csv,
            universal_output,
            specific_output,
            record_prompts,
            split_list(token_types),
            annotation_columns,
            link_template,
            batch_size,
            top,
            dtype,
            device,
        )
        _print_analysis(run_feature_analysis(cfg, experiment), cfg)

    cmd.__doc__ = {
        "universal": "Find features active on at least --threshold of the prompts at each chat token type.",
        "specific": "Activations of the features listed in --features-csv on every prompt.",
        "both": "Universal and specific analysis from one pass over the prompts.",
    }[kind]
    return cmd


# ---- firing / weights ---------------------------------------------------------------------------
F = FiringRunConfig


def firing_cmd(
    sae: list[str] | None = opt(F, "saes"),
    data: Path | None = opt(F, "data"),
    model: str | None = opt(F, "model"),
    positions: str = opt(F, "positions"),
    activation_threshold: float = opt(F, "activation_threshold"),
    top_k: int = opt(F, "top_k"),
    batch_size: int = opt(F, "batch_size"),
    max_length: int | None = opt(F, "max_length"),
    out: Path | None = opt(F, "out"),
    experiment: str = experiment_option(),
    dtype: str = opt(F, "dtype"),
    device: str | None = opt(F, "device"),
) -> None:
    """Firing statistics per latent (rates, distributions, positions, prompt-only, dead), streamed."""
    from ..features.pipeline import run_firing

    cfg = FiringRunConfig(
        list(sae or []),
        data,
        model,
        positions,
        activation_threshold,
        top_k,
        batch_size,
        max_length,
        out,
        dtype,
        device,
    )
    res = run_firing(cfg, experiment)
    console.print(
        table(
            f"firing statistics ({res.dataset}, {positions}, fires: a > {activation_threshold:g})",
            ["SAE", "tokens", "mean L0", "alive", "dead", "prompt-only", "file"],
            res.rows(),
        )
    )
    console.print(
        table(
            "most frequent latents",
            ["latent", "frac tokens", "frac seqs", "mean act", "p50", "p99", "max", "mean rank"],
            res.most_frequent(10),
        )
    )
    n = res.stats[0].n_tokens
    console.print(f"{n} tokens in {res.seconds:.1f} s ({n / max(res.seconds, 1e-9):.0f} tok/s)")


W = WeightsConfig


def weights_cmd(
    sae: str = opt(W, "sae"),
    reference: str | None = opt(W, "reference"),
    out: Path | None = opt(W, "out"),
    experiment: str = experiment_option(),
    pairwise: bool = opt(W, "pairwise"),
) -> None:
    """Weight metrics per latent: cosine with the reference, norms, nearest other latent, thresholds."""
    from ..features.pipeline import run_weight_metrics

    res = run_weight_metrics(WeightsConfig(sae, reference, out, pairwise), experiment)
    console.print(
        table(
            f"weight metrics of {res.sae.path} (d_sae={res.metrics.d_sae})",
            ["metric", "mean", "p5", "median", "p95"],
            res.rows(),
        )
    )
    pairs = res.similar_pairs(5)
    if pairs:
        console.print(table("most similar decoder pairs", ["latent", "partner", "cos"], pairs))
    console.print(f"wrote {res.path}")


# ---- evolution ---------------------------------------------------------------------------------
E = EvolutionRunConfig


def evolution_cmd(
    sae: list[str] | None = opt(E, "saes"),
    model: list[str] | None = opt(E, "models"),
    data: Path | None = opt(E, "data"),
    use_sparsity: bool = opt(E, "from_sparsity"),
    change_threshold: float = opt(E, "change_threshold"),
    alive_threshold: float = opt(E, "alive_threshold"),
    batch_size: int = opt(E, "batch_size"),
    name: str = opt(E, "name"),
    out: Path | None = opt(E, "out"),
    experiment: str = experiment_option(),
    dtype: str = opt(E, "dtype"),
    device: str | None = opt(E, "device"),
) -> None:
    """Born / died / changed / changed-back latents and trajectories over an iterative SAE series."""
    from ..features.pipeline import run_evolution

    cfg = EvolutionRunConfig(
        list(sae or []),
        list(model or []),
        data,
        use_sparsity,
        change_threshold,
        alive_threshold,
        batch_size,
        name,
        out,
        dtype,
        device,
    )
    res = run_evolution(cfg, experiment)
    cols, rows = res.rows()
    console.print(
        table(
            f"evolution over {' → '.join(res.evolution.names)} (changed: cos < {change_threshold:g})",
            cols,
            rows,
        )
    )
    console.print(table("latents by status", ["status", "latents", "examples"], res.status_rows()))
    console.print("wrote " + ", ".join(str(p) for p in res.paths.values()))


# ---- dashboards -------------------------------------------------------------------------------
D = DashboardConfig


def dashboard_cmd(
    sae: str = opt(D, "sae"),
    data: Path | None = opt(D, "data"),
    model: str | None = opt(D, "model"),
    features: str | None = opt(D, "features"),
    n_examples: int = opt(D, "n_examples"),
    context: str = opt(D, "context"),
    batch_size: int = opt(D, "batch_size"),
    out: Path | None = opt(D, "out"),
    experiment: str = experiment_option(),
    dtype: str = opt(D, "dtype"),
    device: str | None = opt(D, "device"),
) -> None:
    """Per-latent dashboard JSON (top examples, activation histogram, logit effects)."""
    from ..features.pipeline import run_dashboards

    cfg = DashboardConfig(
        sae,
        data,
        model,
        _ints(features, "--features"),
        n_examples,
        _ints(context, "--context"),
        batch_size,
        out,
        dtype,
        device,
    )
    res = run_dashboards(cfg, experiment)
    console.print(
        table(
            f"dashboards for {len(res.records)} latents",
            ["latent", "frac tokens", "max", "top logit tokens", "top example"],
            res.rows(10),
        )
    )
    console.print(f"{res.stats.n_tokens} tokens in {res.seconds:.1f} s → {res.index}")


SUBAPPS = [
    (
        features_app,
        "features",
        {
            **{kind: _analysis_command(kind) for kind in ("universal", "specific", "both")},
            "firing": firing_cmd,
            "weights": weights_cmd,
            "evolution": evolution_cmd,
            "dashboard": dashboard_cmd,
        },
    )
]
