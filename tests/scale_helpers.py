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


# ---- SAE training ---------------------------------------------------------------------------
SAE_D, SAE_ROWS = 16, 512


def sae_data():
    import torch

    g = torch.Generator().manual_seed(1)
    basis = torch.randn(48, SAE_D, generator=g)
    codes = torch.relu(torch.randn(SAE_ROWS, 48, generator=g) - 1.0)
    return codes @ basis + 0.05 * torch.randn(SAE_ROWS, SAE_D, generator=g)


def sae_config(arch: str, **kw: Any):
    from deltalens.sae import SAETrainConfig

    base = dict(
        architecture=arch,
        k=4,
        expansion=4,
        batch_size=64,
        total_tokens=64 * 24,
        lr=3e-3,
        log_every=1,
        norm_sample_tokens=256,
        seed=3,
    )
    return SAETrainConfig(**{**base, **kw})


def train_once(arch: str, out: str | None, world: Any = None, *, stop_after: int | None = None, **kw: Any):
    """Train on :func:`sae_data`; ``stop_after`` raises after that many steps (a kill)."""
    from deltalens.sae.sources import TensorSource
    from deltalens.sae.train import Trainer, train_saes

    cfg = sae_config(arch, **kw)
    t = Trainer(cfg, SAE_D, out=out, world=world)

    def stop(_name: str, rec: dict) -> None:
        if stop_after is not None and rec["step"] == stop_after:
            raise KeyboardInterrupt("killed")

    return train_saes(TensorSource(sae_data()), {"sae": t}, progress=False, callback=stop)["sae"]


def crosscoder_once(world: Any = None, out: str | None = None):
    """A BatchTopK crosscoder on two correlated "models" built from :func:`sae_data`."""
    import torch

    from deltalens.sae.crosscoder import train_crosscoder

    x = sae_data()
    g = torch.Generator().manual_seed(2)
    paired = torch.stack([x, x @ (torch.eye(SAE_D) + 0.3 * torch.randn(SAE_D, SAE_D, generator=g))], 1)
    cfg = sae_config("batchtopk", lr=2e-3, total_tokens=64 * 20)
    return train_crosscoder(paired, cfg, out=out, progress=False, world=world)


def sae_worker(world: Any, root: str) -> None:
    """Per architecture: an uninterrupted run and a run killed after step 10 then resumed; and
    a crosscoder."""
    from safetensors.torch import save_file

    cc = crosscoder_once(world, f"{root}/crosscoder")
    save_file(
        {k: v.contiguous() for k, v in cc.crosscoder.state_dict().items()},
        f"{root}/cc.rank{world.rank}.safetensors",
    )
    Path(f"{root}/cc.rank{world.rank}.json").write_text(json.dumps(cc.history))

    for arch in ("topk", "standard"):
        full = train_once(arch, f"{root}/{arch}_full", world)
        try:
            train_once(arch, f"{root}/{arch}_resumed", world, stop_after=10, checkpoint_every_tokens=64 * 4)
        except KeyboardInterrupt:
            pass
        resumed = train_once(arch, f"{root}/{arch}_resumed", world, checkpoint_every_tokens=64 * 4)
        for name, res in (("full", full), ("resumed", resumed)):
            w = {k: v.contiguous() for k, v in res.sae.state_dict().items()}
            save_file(w, f"{root}/{arch}_{name}.rank{world.rank}.safetensors")
            Path(f"{root}/{arch}_{name}.rank{world.rank}.json").write_text(json.dumps(res.history))


# ---- work units -----------------------------------------------------------------------------
def square_unit(i: int, marks: str, fail: int = -1, die: int = -1, slow: int = -1) -> dict:
    """A unit that records each execution as a file in ``marks``; unit ``fail`` always raises,
    unit ``die`` kills its own worker process on its first execution, unit ``slow`` sleeps."""
    import signal
    import time

    d = Path(marks)
    n = len(list(d.glob(f"u{i}.*")))
    (d / f"u{i}.{n}.{os.getpid()}").write_text("")
    if i == fail:
        raise ValueError(f"unit {i} cannot be computed")
    if i == die and n == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    if i == slow:
        time.sleep(2.0)
    return {"i": i, "square": i * i}


def executions(marks: Path, i: int) -> int:
    return len(list(Path(marks).glob(f"u{i}.*")))
