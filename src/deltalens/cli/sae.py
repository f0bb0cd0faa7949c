"""``deltalens sae …``: train, evaluate, fine-tune along a series, crosscoders, convert."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import console, split_list, table

sae_app = typer.Typer(help="Sparse autoencoders: train, eval, iterate (M*D*), crosscoder, convert.", no_args_is_help=True)


def _out_dir(out: Path | None, exp: str | None, name: str | None, default_name: str) -> Path:
    from ..errors import DeltalensError
    from ..experiment import Experiment

    if out is not None:
        return out
    if exp is None and name is None:
        raise DeltalensError("say where the SAE goes: --out DIR, or --exp NAME [--name SAE_NAME]")
    return Experiment.named(exp or "default").sae_dir(name or default_name)


def _windows(lm, data: str, context_len: int, max_tokens: int | None, text_key: str):
    from ..data.corpus import read_texts, token_windows

    return list(token_windows(lm.tokenizer, read_texts(data, text_key=text_key), context_len, max_tokens=max_tokens))


def train_cmd(
    store: Path | None = typer.Option(None, "--store", help="ActivationStore to train on (shuffled streaming)."),
    data: str | None = typer.Option(None, "--data", "-d", help="Text corpus for on-the-fly training: .txt/.jsonl/.parquet file, directory or hf:NAME[:CONFIG][@SPLIT]."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Model (on-the-fly training; for stores its tokenizer marks special tokens)."),
    sites: str | None = typer.Option(None, "--site", "--sites", "-s", help="Site(s), e.g. resid.15 or 'resid.6,resid.15' (one SAE each, one forward pass)."),
    arch: str = typer.Option("topk", "--arch", help="relu, topk, batchtopk or jumprelu."),
    k: str = typer.Option("32", "--k", help="Active latents per token (topk/batchtopk); comma-separated trains one SAE per k."),
    expansion: int = typer.Option(8, "--expansion", help="d_sae = expansion × d_in."),
    d_sae: int | None = typer.Option(None, "--d-sae", help="Number of latents (overrides --expansion)."),
    tokens: int = typer.Option(1_000_000, "--tokens", help="Training tokens."),
    batch_size: int = typer.Option(1024, "--batch-size"),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (default: 2e-4·sqrt(2^14/d_sae) for topk)."),
    l1: float = typer.Option(5.0, "--l1", help="L1 coefficient (relu)."),
    target_l0: float | None = typer.Option(None, "--target-l0", help="Target L0 (jumprelu)."),
    dead_window: int | None = typer.Option(None, "--dead-window", help="Tokens without firing after which a latent counts as dead."),
    context_len: int = typer.Option(128, "--context-len", help="Tokens per window (on the fly)."),
    text_key: str = typer.Option("text", "--text-key", help="Text field of JSONL/Parquet/HF data."),
    high_norm: float = typer.Option(10.0, "--high-norm", help="Drop rows with norm > this × median norm (0: keep all)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="SAE directory (SAELens format)."),
    exp: str | None = typer.Option(None, "--exp", help="Experiment name (SAE goes to <exp>/saes/<name>)."),
    name: str | None = typer.Option(None, "--name", help="SAE name inside the experiment."),
    init_from: Path | None = typer.Option(None, "--init-from", help="Fine-tune this SAE (latent indices are kept)."),
    checkpoint_every: int | None = typer.Option(None, "--checkpoint-every", help="Checkpoint every N tokens."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume from the newest checkpoint in the output."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Train SAE(s) on a store or on the fly from a model and a text corpus."""
    from ..errors import DeltalensError
    from ..hooks import Site
    from ..sae.train import TrainConfig, Trainer, train_saes

    if (store is None) == (data is None):
        raise DeltalensError("give exactly one of --store DIR or --data CORPUS")
    ks = [int(x) for x in split_list(k)] or [32]
    base = dict(architecture=arch, expansion=expansion, d_sae=d_sae, total_tokens=tokens, batch_size=batch_size, lr=lr,
                l1_coefficient=l1, target_l0=target_l0, dead_window_tokens=dead_window, seed=seed, device=device,
                checkpoint_every_tokens=checkpoint_every)
    if store is not None:
        from ..models import load
        from ..sae.sources import StoreSource
        from ..store import ActivationStore

        st = ActivationStore.open(store)
        site_list = [Site.parse(s) for s in split_list(sites)] or st.sites[:1]
        if len(site_list) != 1:
            raise DeltalensError("training from a store takes one --site")
        spec = (st.manifest.get("model") or {}).get("spec")
        special = []
        try:
            special = list(load(spec or model).tokenizer.all_special_ids)
        except Exception:
            console.print(f"[yellow]could not load {spec or model} for its special tokens; none excluded[/yellow]")
        src = StoreSource(st, site_list[0], exclude_token_ids=special, high_norm_factor=high_norm or None)
    else:
        from ..models import load
        from ..sae.sources import ModelSource

        lm = load(model, device=device)
        site_list = [Site.parse(int(s) if s.lstrip("-").isdigit() else s) for s in split_list(sites)] or [Site(lm.n_layers // 2, "resid")]
        windows = _windows(lm, data, context_len, None, text_key)  # type: ignore[arg-type]
        src = ModelSource(lm, windows, site_list, high_norm_factor=high_norm or None)
        console.print(f"{len(windows)} windows of {context_len} tokens from {data}")
    trainers = {}
    many = len(site_list) * len(ks) > 1
    for s in site_list:
        for kk in ks:
            nm = f"{name or arch}_{s}_k{kk}" if many else (name or f"{arch}_{s}")
            d = _out_dir(out / nm if (out is not None and many) else out, exp, nm, nm)
            trainers[nm] = Trainer(TrainConfig(k=kk, **base), src.d_in, site=str(s), model_name=src.model_name, out=d,
                                   init_from=init_from, metadata={"training_data": src.description})
    results = train_saes(src, trainers, resume=resume)
    rows = []
    for nm, r in results.items():
        last = r.history[-1] if r.history else {}
        rows.append((nm, r.sae.site, r.sae.d_sae, f"{last.get('l0', 0):.1f}", f"{1 - last.get('fvu', 1):.3f}",
                     f"{100 * r.dead_fraction:.1f} %", r.tokens, f"{r.seconds:.0f} s", f"{r.tokens_per_second:.0f}"))
    console.print(table("trained SAEs", ["name", "site", "d_sae", "L0", "EV (last batch)", "dead", "tokens", "time", "tok/s"], rows))
    for nm, r in results.items():
        console.print(f"{nm} → {r.path}")


def eval_cmd(
    sae_path: Path = typer.Argument(..., help="SAE directory (SAELens, sparsify or dictionary_learning)."),
    store: Path | None = typer.Option(None, "--store", help="ActivationStore for reconstruction metrics."),
    split: str = typer.Option("val", "--split", help="Store split to evaluate on ('all' for every row)."),
    data: str | None = typer.Option(None, "--data", "-d", help="Text corpus for CE metrics (and reconstruction if no store)."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    n_windows: int = typer.Option(64, "--windows", help="Token windows for the CE metrics."),
    context_len: int = typer.Option(128, "--context-len"),
    text_key: str = typer.Option("text", "--text-key"),
    tokens: int | None = typer.Option(None, "--tokens", help="Cap on tokens for reconstruction metrics."),
    positions: str = typer.Option("all[1:]", "--positions", help="Tokens the SAE / ablations replace in the CE metrics."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where eval.json and figures go (default: <sae>/eval)."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Evaluate an SAE: MSE, explained variance, L0/L1, dead latents, density, shrinkage, CE/KL recovered."""
    from ..errors import DeltalensError
    from ..sae.eval import evaluate, summary_rows
    from ..sae.io import load_any

    if store is None and data is None:
        raise DeltalensError("give --store (reconstruction metrics) and/or --data (CE metrics)")
    sae = load_any(sae_path, device=device)
    lm = windows = None
    if data is not None:
        from ..models import load

        lm = load(model, device=device)
        windows = _windows(lm, data, context_len, None, text_key)
        windows = windows[-n_windows:]  # the end of the corpus (training usually reads it from the start)
    res = evaluate(sae, activations=store, lm=lm, windows=windows, n_tokens=tokens, split=None if split == "all" else split,
                   out=out or (sae_path / "eval"), progress=True)
    console.print(table(f"SAE eval — {sae}", ["metric", "value", "definition"], summary_rows(res)))
    console.print(f"wrote {(out or (sae_path / 'eval')) / 'eval.json'}")


def iterate_cmd(
    stores: list[Path] = typer.Option(..., "--store", help="One ActivationStore per iteration, in order (repeat the option)."),
    names: str | None = typer.Option(None, "--names", help="Run names, comma-separated (default: M0D0,M1D1,… or with --branch M0D: M0D0,M0D1,…)."),
    branch: str = typer.Option("MD", "--branch", help="MD (each model on its own data) or M0D (base model on each iteration's data)."),
    site: str | None = typer.Option(None, "--site", "-s"),
    k: int = typer.Option(32, "--k"),
    expansion: int = typer.Option(8, "--expansion"),
    tokens: int = typer.Option(1_000_000, "--tokens", help="Training tokens of iteration 0."),
    finetune_tokens: int | None = typer.Option(None, "--finetune-tokens", help="Tokens per later iteration (default: tokens/4)."),
    batch_size: int = typer.Option(1024, "--batch-size"),
    lr: float | None = typer.Option(None, "--lr"),
    init_from: Path | None = typer.Option(None, "--init-from", help="Start iteration 0 from this SAE."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Directory for the series (one SAE per run name)."),
    exp: str | None = typer.Option(None, "--exp"),
    series: str = typer.Option("series", "--series", help="Series name inside the experiment."),
) -> None:
    """Iterative SAEs along a checkpoint series (M*D*): each fine-tuned from the previous one."""
    from ..errors import DeltalensError
    from ..experiment import Experiment
    from ..sae.iterative import branch_names, train_iterative
    from ..sae.train import TrainConfig

    run_names = split_list(names) or branch_names(branch, len(stores))
    if len(run_names) != len(stores):
        raise DeltalensError(f"{len(stores)} stores but {len(run_names)} run names")
    root = out if out is not None else Experiment.named(exp or "default").sae_series_dir(series)
    cfg = TrainConfig(k=k, expansion=expansion, total_tokens=tokens, batch_size=batch_size, lr=lr)
    ft = None
    if finetune_tokens is not None:
        d = cfg.to_dict()
        d.update(total_tokens=finetune_tokens, lr_warmup=0.0)
        ft = TrainConfig.from_dict(d)
    results = train_iterative([str(s) for s in stores], run_names, lambda n: root / n, cfg, finetune=ft, site=site,
                              init_from=init_from)
    rows = []
    for nm, r in zip(run_names, results):
        al = r.extra.get("alignment_with_parent") or {}
        last = r.history[-1] if r.history else {}
        rows.append((nm, f"{last.get('l0', 0):.1f}", f"{1 - last.get('fvu', 1):.3f}", f"{100 * r.dead_fraction:.1f} %",
                     "-" if not al else f"{al['median_cosine']:.3f}", "-" if not al else f"{100 * al['aligned_fraction']:.1f} %"))
    console.print(table(f"iterative SAEs → {root}", ["run", "L0", "EV (last batch)", "dead", "median cos(parent)", "aligned ≥0.9"], rows))


def crosscoder_cmd(
    stores: list[Path] = typer.Option(..., "--store", help="Stores of the same tokens, one per model (base first)."),
    site: str | None = typer.Option(None, "--site", "-s"),
    k: int = typer.Option(32, "--k"),
    expansion: int = typer.Option(8, "--expansion"),
    tokens: int = typer.Option(1_000_000, "--tokens"),
    batch_size: int = typer.Option(1024, "--batch-size"),
    lr: float | None = typer.Option(None, "--lr"),
    out: Path | None = typer.Option(None, "--out", "-o"),
    exp: str | None = typer.Option(None, "--exp"),
    name: str = typer.Option("crosscoder", "--name"),
) -> None:
    """Train a BatchTopK crosscoder on two or more models' activations of the same tokens."""
    from ..errors import DeltalensError
    from ..experiment import Experiment
    from ..sae.crosscoder import train_crosscoder
    from ..sae.sources import StoreSource
    from ..sae.train import TrainConfig

    if len(stores) < 2:
        raise DeltalensError("a crosscoder needs at least two --store (one per model, same inputs)")
    src = StoreSource([str(s) for s in stores], site, split="train")
    dest = out if out is not None else Experiment.named(exp or "default").crosscoder_dir(name)
    res = train_crosscoder(src, TrainConfig(architecture="batchtopk", k=k, expansion=expansion, total_tokens=tokens,
                                            batch_size=batch_size, lr=lr), out=dest)
    c = res.classes["counts"]
    console.print(table(f"crosscoder latents ({res.crosscoder.cfg.model_names[0]} → {res.crosscoder.cfg.model_names[1]})",
                        ["class", "latents", "rule (r = ‖d_ft‖/(‖d_base‖+‖d_ft‖))"],
                        [("base-only", c.get("base-only", 0), "r < 0.1"), ("ft-only", c.get("ft-only", 0), "r > 0.9"),
                         ("shared", c.get("shared", 0), "0.4 ≤ r ≤ 0.6"), ("other", c.get("other", 0), "otherwise"),
                         ("dead", c.get("dead", 0), "never selected in training")]))
    console.print(f"{res.tokens} tokens in {res.seconds:.0f} s → {dest}")


def convert_cmd(
    src: Path = typer.Argument(..., help="A sparsify or dictionary_learning SAE (or a SAELens directory)."),
    out: Path = typer.Option(..., "--out", "-o", help="SAELens-format directory to write."),
    site: str | None = typer.Option(None, "--site", help="Site, if the source does not say (e.g. resid.6)."),
) -> None:
    """Convert another tool's SAE checkpoint into a SAELens-format directory."""
    from ..sae.io import detect_format, load_any, save_sae

    sae = load_any(src, site=site)
    save_sae(sae, out)
    console.print(f"{detect_format(src)} → SAELens: {sae} → {out}")


def register(app: typer.Typer) -> None:
    sae_app.command("train")(train_cmd)
    sae_app.command("eval")(eval_cmd)
    sae_app.command("iterate")(iterate_cmd)
    sae_app.command("crosscoder")(crosscoder_cmd)
    sae_app.command("convert")(convert_cmd)
    app.add_typer(sae_app, name="sae")
