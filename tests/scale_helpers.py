"""Helpers of the multi-process tests: a free port, a spawned gloo world, the workers.

Workers run in fresh processes (``torch.multiprocessing.spawn``), build the same tiny random
model from its config and seed, and write what the parent checks to JSON / safetensors files."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "I love reading books about science.",
    "def add(a, b): return a + b",
    "Why is the sky blue? Light scatters.",
    "Tell me a story about a brave mouse.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9",
    "hello there good morning thanks",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(fn: Any, nprocs: int, *args: Any) -> None:
    """Run ``fn(rank, nprocs, port, *args)`` in ``nprocs`` fresh processes (one gloo world)."""
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(fn, nprocs, free_port(), args), nprocs=nprocs, join=True)


def _entry(rank: int, fn: Any, nprocs: int, port: int, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nprocs),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    import torch

    torch.set_num_threads(1)
    from deltalens.scale.dist import init

    world = init()
    try:
        fn(world, *args)
    finally:
        torch.distributed.destroy_process_group()


def counting_forwards(lm: Any) -> list[int]:
    """Count the sequences the model runs forward on (appends each batch's size)."""
    seen: list[int] = []
    inner = lm.model.forward

    def forward(*a: Any, **kw: Any) -> Any:
        seen.append(int(kw["input_ids"].shape[0]))
        return inner(*a, **kw)

    lm.model.forward = forward
    return seen


def capture_worker(world: Any, stores: list[str], cfg: dict) -> None:
    """Sharded capture into each of ``stores`` in turn; ``<store>.rank<r>.json`` reports the
    sequences this rank ran forward on."""
    from deltalens.capture import CaptureConfig
    from deltalens.scale.capture import capture_sharded
    from tiny import tiny_model

    lm = tiny_model("llama")
    for store in stores:
        seen = counting_forwards(lm)
        st = capture_sharded(lm, TEXTS, CaptureConfig(**cfg), store, world=world, progress=False)
        lm.model.forward = lm.model.__class__.forward.__get__(lm.model)
        Path(f"{store}.rank{world.rank}.json").write_text(
            json.dumps({"sequences_forwarded": sum(seen), "rows": st.n_rows, "complete": st.complete})
        )
