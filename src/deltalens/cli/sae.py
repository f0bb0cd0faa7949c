"""``deltalens sae …``: train, evaluate, fine-tune along a series, crosscoders, convert."""

from __future__ import annotations

from pathlib import Path

import typer

from ..sae.eval import SAEEvalConfig as _EvalCfg
from ..sae.iterative import SAEIterateConfig as _IterCfg
from ..sae.train import SAETrainConfig as _TrainCfg
from ._common import config_option, console, experiment_option, split_list, table

sae_app = typer.Typer(
    help="Sparse autoencoders: train, eval, iterate (M*D*), crosscoder, convert.", no_args_is_help=True
)

MODEL_HELP = "Model (on-the-fly training; for stores its tokenizer marks special tokens)."


def _ints(value: str, flag: str) -> list[int]:
    from ..errors import ConfigError

    try:
        return [int(x) for x in split_list(value)]
    except ValueError:
        raise ConfigError(
            f"{flag}: cannot read '{value}': write comma-separated integers, e.g. 16,32"
        ) from None


def train_cmd(
    store: Path | None = typer.Option(
        None, "--store", help="ActivationStore to train on (shuffled streaming)."
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        "-d",
        help="Text corpus for on-the-fly training: .txt/.jsonl/.parquet file, directory or hf:NAME[:CONFIG][@SPLIT].",
    ),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help=MODEL_HELP),
    sites: str | None = typer.Option(
        None,
        "--site",
        "--sites",
        "-s",
        help="Site(s), e.g. resid.15 or 'resid.6,resid.15' (one SAE each, one forward pass).",
    ),
    arch: str = config_option(_TrainCfg, "architecture"),
    k: str = config_option(
        _TrainCfg,
        "k",
        help="Active latents per token (topk/batchtopk); comma-separated trains one SAE per k.",
    ),
    expansion: int = config_option(_TrainCfg, "expansion"),
    d_sae: int | None = config_option(_TrainCfg, "d_sae"),
    tokens: int = config_option(_TrainCfg, "total_tokens"),
    batch_size: int = config_option(_TrainCfg, "batch_size"),
    lr: float | None = config_option(_TrainCfg, "lr"),
    l1: float = config_option(_TrainCfg, "l1_coefficient"),
    target_l0: float | None = config_option(_TrainCfg, "target_l0"),
    dead_window: int | None = config_option(_TrainCfg, "dead_window_tokens"),
    context_len: int = typer.Option(128, "--context-len", help="Tokens per window (on the fly)."),
    text_key: str = typer.Option("text", "--text-key", help="Text field of JSONL/Parquet/HF data."),
    high_norm: float = typer.Option(
        10.0, "--high-norm", help="Drop rows with norm > this × median norm (0: keep all)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="SAE directory (SAELens format); with several SAEs, one subdirectory each."
    ),
    experiment: str = experiment_option(),
    name: str | None = typer.Option(
        None, "--name", help="SAE name inside the experiment (<experiment>/saes/<name>)."
    ),
    init_from: Path | None = typer.Option(
        None, "--init-from", help="Fine-tune this SAE (latent indices are kept)."
    ),
    checkpoint_every: int | None = config_option(_TrainCfg, "checkpoint_every_tokens"),
    resume: bool = typer.Option(
        True,
        "--resume/--no-resume",
        help="Resume from the newest checkpoint in the output (refused if it was made with other settings).",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Discard checkpoints and any SAE made with other settings in the output; start fresh.",
    ),
    seed: int = config_option(_TrainCfg, "seed"),
    device: str = config_option(_TrainCfg, "device"),
) -> None:
    """Train SAE(s) on a store or on the fly from a model and a text corpus."""
    from ..sae.sources import training_source
    from ..sae.train import train_grid

    ks = _ints(k, "--k") or [_TrainCfg().k]
    cfg = _TrainCfg(
        architecture=arch,
        k=ks[0],
        expansion=expansion,
        d_sae=d_sae,
        total_tokens=tokens,
        batch_size=batch_size,
        lr=lr,
        l1_coefficient=l1,
        target_l0=target_l0,
        dead_window_tokens=dead_window,
        seed=seed,
        device=device,
        checkpoint_every_tokens=checkpoint_every,
    )
    for kk in ks[1:]:
        cfg.replace(k=kk)  # validates every k before anything runs
    src, site_list = training_source(
        store=store,
        data=data,
        model=model,
        sites=split_list(sites),
        context_len=context_len,
        text_key=text_key,
        high_norm_factor=high_norm,
        device=device,
    )
    from ..scale.dist import init, world_from_env

    world = world_from_env()  # under torchrun: data-parallel, each rank trains on its rows of a batch
    if world.distributed:
        world.span(cfg.batch_size, "rows of a batch (--batch-size)")
        world = init(device)
    if world.is_main:
        from ..scale.memory import estimate_sae

        est = estimate_sae(src.d_in, cfg.resolved_d_sae(src.d_in), cfg.batch_size)
        n = len(site_list or [None]) * len(ks)
        console.print(est.line() + (f" per SAE, {n} SAEs" if n > 1 else ""), highlight=False)
    results = train_grid(
        src,
        cfg,
        site_list,
        ks,
        out=out,
        experiment=experiment,
        name=name,
        init_from=init_from,
        resume=resume,
        overwrite=overwrite,
        world=world,
    )
    if not world.is_main:
        return
    rows = []
    for r in results:
        last = r.history[-1] if r.history else {}
        rows.append(
            (
                r.extra["name"],
                r.site,
                r.d_sae,
                f"{last.get('l0', 0):.1f}",
                f"{1 - last.get('fvu', 1):.3f}",
                f"{100 * r.dead_fraction:.1f} %",
                r.tokens,
                f"{r.seconds:.0f} s",
                f"{r.tokens_per_second:.0f}",
            )
        )
    console.print(
        table(
            "trained SAEs",
            ["name", "site", "d_sae", "L0", "EV (last batch)", "dead", "tokens", "time", "tok/s"],
            rows,
            no_wrap=["name"],
        )
    )
    for r in results:
        console.print(f"{r.extra['name']} → {r.path}")


def eval_cmd(
    sae_path: Path = typer.Argument(..., help="SAE directory (SAELens, sparsify or dictionary_learning)."),
    store: Path | None = typer.Option(None, "--store", help="ActivationStore for reconstruction metrics."),
    split: str = config_option(_EvalCfg, "split"),
    data: str | None = typer.Option(
        None, "--data", "-d", help="Text corpus for CE metrics (and reconstruction if no store)."
    ),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Model for the CE metrics."),
    n_windows: int = config_option(_EvalCfg, "n_windows"),
    context_len: int = config_option(_EvalCfg, "context_len"),
    text_key: str = config_option(_EvalCfg, "text_key"),
    tokens: int | None = config_option(_EvalCfg, "n_tokens"),
    positions: str = config_option(_EvalCfg, "positions"),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Where eval.json and figures go (default: <sae>/eval)."
    ),
    device: str = config_option(_EvalCfg, "device"),
) -> None:
    """Evaluate an SAE: MSE, explained variance, L0/L1, dead latents, density, shrinkage, CE/KL recovered."""
    from ..errors import ConfigError
    from ..sae.eval import evaluate_sae, summary_rows

    if store is None and data is None:
        raise ConfigError("give --store (reconstruction metrics) and/or --data (CE metrics)")
    cfg = _EvalCfg(
        split=split,
        n_tokens=tokens,
        n_windows=n_windows,
        context_len=context_len,
        text_key=text_key,
        positions=positions,
        device=device,
    )
    dest = out or (sae_path / "eval")
    res = evaluate_sae(
        sae_path,
        cfg,
        activations=store,
        lm=model if data is not None else None,
        data=data,
        out=dest,
        progress=True,
    )
    console.print(table(f"SAE eval — {res.sae}", ["metric", "value", "definition"], summary_rows(res)))
    console.print(f"wrote {dest / res.FILENAME}")


def iterate_cmd(
    series: str | None = typer.Option(
        None, "--series", help="A series directory (M<i>/ + D<i>.jsonl) or a series name in the experiment."
    ),
    stores: list[Path] = typer.Option(
        [], "--store", help="Instead of --series: one ActivationStore per run, in order (repeat the option)."
    ),
    names: str | None = config_option(_IterCfg, "names"),
    branch: str | None = config_option(_IterCfg, "branch"),
    site: str | None = config_option(_IterCfg, "site", "-s"),
    k: int = config_option(_TrainCfg, "k"),
    expansion: int = config_option(_TrainCfg, "expansion"),
    tokens: int = config_option(_TrainCfg, "total_tokens", help="Training tokens of M0D0."),
    finetune_tokens: int | None = config_option(_IterCfg, "finetune_tokens"),
    batch_size: int = config_option(_TrainCfg, "batch_size"),
    lr: float | None = config_option(_TrainCfg, "lr"),
    context_len: int = config_option(_IterCfg, "context_len"),
    text_key: str | None = config_option(_IterCfg, "text_key"),
    max_sequences: int | None = config_option(_IterCfg, "max_sequences"),
    device: str = config_option(_TrainCfg, "device"),
    init_from: Path | None = typer.Option(None, "--init-from", help="Start M0D0 from this SAE."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Directory for the runs (one SAE per run name) and iterate.json."
    ),
    experiment: str = experiment_option(),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Retrain runs already in the output (also those made with other settings)."
    ),
) -> None:
    """Iterative SAEs along a checkpoint series (M*D*): each fine-tuned from its parent run."""
    from ..errors import ConfigError
    from ..sae.iterative import run_iterate

    if (series is None) == (not stores):
        raise ConfigError("give --series DIR_OR_NAME, or one --store per run")
    cfg = _IterCfg(
        train=_TrainCfg(
            k=k, expansion=expansion, total_tokens=tokens, batch_size=batch_size, lr=lr, device=device
        ),
        finetune_tokens=finetune_tokens,
        branch=branch,
        names=split_list(names),
        site=site,
        context_len=context_len,
        text_key=text_key,
        max_sequences=max_sequences,
    )
    res = run_iterate(
        cfg,
        series=series,
        stores=stores,
        out=out,
        experiment=experiment,
        init_from=init_from,
        overwrite=overwrite,
    )
    rows = []
    for r in res.runs:
        al = r.get("alignment_with_parent") or {}
        rows.append(
            (
                r["name"],
                f"{r['l0'] or 0:.1f}",
                f"{1 - (r['fvu'] if r['fvu'] is not None else 1):.3f}",
                f"{100 * r['dead_fraction']:.1f} %",
                "-" if not al else f"{al['median_cosine']:.3f}",
                "-" if not al else f"{100 * al['aligned_fraction']:.1f} %",
            )
        )
    root = Path(res.runs[0]["path"]).parent if res.runs and res.runs[0]["path"] else out
    console.print(
        table(
            f"iterative SAEs → {root}",
            ["run", "L0", "EV (last batch)", "dead", "median cos(parent)", "aligned ≥0.9"],
            rows,
        )
    )


def crosscoder_cmd(
    stores: list[Path] = typer.Option(
        ..., "--store", help="Stores of the same tokens, one per model (base first)."
    ),
    site: str | None = typer.Option(None, "--site", "-s", help="Site (default: the stores' first)."),
    k: int = config_option(_TrainCfg, "k"),
    expansion: int = config_option(_TrainCfg, "expansion"),
    tokens: int = config_option(_TrainCfg, "total_tokens"),
    batch_size: int = config_option(_TrainCfg, "batch_size"),
    lr: float | None = config_option(_TrainCfg, "lr", help="Learning rate (default 4e-4)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Crosscoder directory."),
    experiment: str = experiment_option(),
    name: str = typer.Option("crosscoder", "--name", help="Crosscoder name inside the experiment."),
) -> None:
    """Train a BatchTopK crosscoder on two or more models' activations of the same tokens."""
    from ..sae.crosscoder import train_crosscoder_on_stores

    cfg = _TrainCfg(
        architecture="batchtopk", k=k, expansion=expansion, total_tokens=tokens, batch_size=batch_size, lr=lr
    )
    from ..scale.dist import init, world_from_env

    world = world_from_env()  # under torchrun: data-parallel, BatchTopK over the global batch
    if world.distributed:
        world.span(cfg.batch_size, "rows of a batch (--batch-size)")
        world = init()
    res = train_crosscoder_on_stores(
        stores, cfg, site=site, out=out, experiment=experiment, name=name, world=world, progress=world.is_main
    )
    if not world.is_main:
        return
    c = res.classes["counts"]
    assert res.crosscoder is not None
    console.print(
        table(
            f"crosscoder latents ({res.crosscoder.cfg.model_names[0]} → {res.crosscoder.cfg.model_names[1]})",
            ["class", "latents", "rule (r = ‖d_ft‖/(‖d_base‖+‖d_ft‖))"],
            [
                ("base-only", c.get("base-only", 0), "r < 0.1"),
                ("ft-only", c.get("ft-only", 0), "r > 0.9"),
                ("shared", c.get("shared", 0), "0.4 ≤ r ≤ 0.6"),
                ("other", c.get("other", 0), "otherwise"),
                ("dead", c.get("dead", 0), "never selected in training"),
            ],
        )
    )
    console.print(f"{res.tokens} tokens in {res.seconds:.0f} s → {res.path}")


def convert_cmd(
    src: Path = typer.Argument(..., help="A sparsify or dictionary_learning SAE (or a SAELens directory)."),
    out: Path = typer.Option(..., "--out", "-o", help="SAELens-format directory to write."),
    site: str | None = typer.Option(None, "--site", help="Site, if the source does not say (e.g. resid.6)."),
) -> None:
    """Convert another tool's SAE checkpoint into a SAELens-format directory."""
    from ..sae.io import convert

    fmt, sae = convert(src, out, site=site)
    console.print(f"{fmt} → SAELens: {sae} → {out}")


SUBAPPS = [
    (
        sae_app,
        "sae",
        {
            "train": train_cmd,
            "eval": eval_cmd,
            "iterate": iterate_cmd,
            "crosscoder": crosscoder_cmd,
            "convert": convert_cmd,
        },
    )
]
