"""Core commands: ``models``, ``generate``, ``capture``, ``info``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from ..capture import CaptureConfig
from ..generate import GenerateConfig
from ._common import config_option, console, split_list, table


def models_cmd() -> None:
    """List bundled models, whether their packages are installed and their cache state."""
    from ..models import BUNDLED, cache_root

    root = cache_root()
    rows = []
    for name, b in BUNDLED.items():
        cached = sorted((root / "models").glob(f"{name}-*/model.safetensors"))
        size = f"{cached[0].stat().st_size / 2**20:.0f} MB" if cached else "-"
        rows.append(
            (
                name,
                b.description,
                "yes" if b.installed() else f"no ({b.pip})",
                "yes" if cached else "no",
                size,
            )
        )
    console.print(
        table(
            "bundled models", ["name", "model", "installed", "cached", "cache size"], rows, no_wrap=["name"]
        )
    )
    console.print(f"cache: {root}  (set DELTALENS_CACHE to move it)")


def generate_cmd(
    model: str = typer.Option(
        "smollm2-135m-instruct", "--model", "-m", help="Model spec: bundled name, .gguf, directory or hub id."
    ),
    prompts: Path | None = typer.Option(
        None, "--prompts", "-p", help="Prompt file (.jsonl/.json/.txt) or directory."
    ),
    prompt: list[str] | None = typer.Option(None, "--prompt", help="A prompt (repeatable)."),
    system: str | None = typer.Option(None, "--system", help="System prompt for all prompts."),
    max_new_tokens: int = config_option(GenerateConfig, "max_new_tokens"),
    n: int = config_option(GenerateConfig, "n", "--rollouts"),
    sample: bool = config_option(GenerateConfig, "do_sample"),
    temperature: float = config_option(GenerateConfig, "temperature"),
    top_p: float = config_option(GenerateConfig, "top_p"),
    seed: int = config_option(GenerateConfig, "seed"),
    batch_size: int = config_option(GenerateConfig, "batch_size"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write generations as JSONL here."),
    dtype: str = typer.Option("auto", "--dtype"),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Generate responses (chat template, batched, left-padded)."""
    from ..data import read_prompts
    from ..errors import DeltalensError
    from ..generate import check_output_file, generate, save_generations
    from ..models import load

    cfg = GenerateConfig(
        max_new_tokens=max_new_tokens,
        n=n,
        do_sample=sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
    )
    if out is not None:
        check_output_file(out)
    items: list = []
    if prompts is not None:
        items.extend(r.as_prompt() for r in read_prompts(prompts))
    items.extend(prompt or [])
    if not items:
        raise DeltalensError("no prompts: pass --prompts FILE or --prompt TEXT")
    lm = load(model, dtype=dtype, device=device)
    t0 = time.time()
    gens = generate(lm, items, system=system, **cfg.kwargs())
    dt = time.time() - t0
    toks = sum(g.response_len for g in gens)
    console.print(
        table(
            None,
            ["#", "question", "response"],
            [(g.index, g.question[:60], g.response[:200]) for g in gens[:20]],
        )
    )
    console.print(
        f"{len(gens)} responses, {toks} new tokens in {dt:.1f} s ({toks / max(dt, 1e-9):.0f} tok/s)"
    )
    if out is not None:
        save_generations(out, gens)
        console.print(f"wrote {out}")


def capture_cmd(
    data: Path = typer.Option(
        ...,
        "--data",
        "-d",
        help="Inputs: .txt (one text per line) or .jsonl (text / prompt+response / question).",
    ),
    sites: str = config_option(CaptureConfig, "sites"),
    out: Path = typer.Option(
        ..., "--out", "-o", help="ActivationStore directory (created, or resumed if it matches)."
    ),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    positions: str = config_option(CaptureConfig, "positions"),
    reduce: str = config_option(CaptureConfig, "reduce"),
    batch_size: int = config_option(CaptureConfig, "batch_size"),
    max_length: int | None = config_option(CaptureConfig, "max_length"),
    val_fraction: float = config_option(CaptureConfig, "val_fraction"),
    store_dtype: str = config_option(CaptureConfig, "dtype"),
    shard_mb: float = config_option(CaptureConfig, "shard_mb"),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Delete an existing store at --out and capture afresh (instead of resuming it).",
    ),
    dtype: str = typer.Option(
        "auto", "--dtype", help="Model dtype (auto: float32 on CPU, bfloat16 on CUDA)."
    ),
    device: str | None = typer.Option(None, "--device"),
    device_map: str | None = typer.Option(
        None, "--device-map", help="auto: spread a model that does not fit one GPU over the GPUs (and CPU)."
    ),
    max_memory: str | None = typer.Option(
        None, "--max-memory", help="With --device-map: memory per device, e.g. 0=70GiB,1=70GiB,cpu=200GiB."
    ),
) -> None:
    """Capture activations into an ActivationStore (resumable; one writer at a time).

    Under ``torchrun --nproc-per-node N -m deltalens capture …`` each process captures one block
    of the inputs into its own part of the store; rank 0 merges them."""
    from ..capture import capture
    from ..data import read_capture_inputs
    from ..models import load
    from ..store import check_writable

    cfg = CaptureConfig(
        sites=split_list(sites),
        positions=positions,
        reduce=reduce,
        batch_size=batch_size,
        max_length=max_length,
        val_fraction=val_fraction,
        dtype=store_dtype,
        shard_mb=shard_mb,
    )
    from ..scale.dist import world_from_env

    check_writable(out)
    inputs = read_capture_inputs(data)
    world = world_from_env()  # torchrun sets RANK / WORLD_SIZE: one block of inputs per process
    if world.distributed:
        from ..scale.capture import check_sharded

        check_sharded(out, world, len(inputs), overwrite=overwrite)
    from ..scale.memory import parse_max_memory

    lm = load(
        model, dtype=dtype, device=device, device_map=device_map, max_memory=parse_max_memory(max_memory)
    )
    if world.is_main:
        console.print(_capture_estimate(lm, inputs, cfg), highlight=False)
    t0 = time.time()
    if world.distributed:
        from ..scale.capture import capture_sharded
        from ..scale.dist import init

        world = init(lm.device)
        store = capture_sharded(lm, inputs, cfg, out, world=world, dataset_name=data.name, source=data)
        if not world.is_main:
            return
    else:
        store = capture(lm, inputs, cfg, store=out, dataset_name=data.name, source=data, overwrite=overwrite)
    dt = time.time() - t0
    s = store.summary()  # type: ignore[union-attr]
    console.print(table("activation store", ["key", "value"], [(k, v) for k, v in s.items()]))
    console.print(f"captured in {dt:.1f} s")


def _capture_estimate(lm, inputs, cfg: CaptureConfig) -> str:
    """The capture's memory estimate line (sequence length from the first 256 inputs)."""
    from ..capture import encode_item
    from ..scale.memory import ModelShape, estimate_capture

    lens = [len(encode_item(lm, it, i)[0]) for i, it in enumerate(inputs[:256])]
    seq = min(max(lens, default=1), cfg.max_length or 10**9)
    est = estimate_capture(
        ModelShape.of(lm),
        batch_size=cfg.batch_size,
        seq_len=seq,
        n_sites=len(cfg.sites),
        dtype=lm.dtype,
        shard_mb=cfg.shard_mb,
    )
    return est.line() + f" (batch {cfg.batch_size} × {seq} tokens)"


def info_cmd(
    path: Path = typer.Argument(
        ..., help="An artifact: store, .safetensors, SAE dir, model dir, experiment, JSON(L)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the raw description as JSON."),
) -> None:
    """Describe an artifact: kind, shapes, provenance."""
    from ..info import describe
    from ..io import to_json

    d = describe(path)
    if as_json:
        print(to_json(d))
        return
    rows = [(k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else v) for k, v in d.items()]
    console.print(table(d.get("kind"), ["field", "value"], rows))


COMMANDS = {"models": models_cmd, "generate": generate_cmd, "capture": capture_cmd, "info": info_cmd}
