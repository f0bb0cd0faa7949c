"""Wall-clock speed-up of 2 processes over 1 (torch.distributed, gloo) for capture and SAE training.

    python benchmarks/scale.py

Each configuration runs in freshly spawned processes with one torch thread each, so "2
processes" uses two cores and "1 process" one; the baseline "1 process × 2 threads" shows what
the same two cores give without distribution. Times are of the stage call only (model build and
process-group start excluded; they are reported separately). Reported, not asserted: the
machine may be shared, and the ratio depends on what else runs on it (the load average is
printed with the result).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

N_TEXTS, BATCH = 64, 8
SAE_D, SAE_WIDTH, SAE_BATCH, SAE_STEPS = 256, 4096, 4096, 20


def _model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from deltalens.models.loading import LoadedModel
    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return LoadedModel.wrap(LlamaForCausalLM(cfg).eval(), tok, name="bench-llama-512")


def _texts() -> list[str]:
    words = "the quick brown fox jumps over a lazy dog while reading books about science and art".split()
    return [" ".join(words[(i + j) % len(words)] for j in range(120)) for i in range(N_TEXTS)]


def _worker(rank: int, size: int, port: int, threads: int, root: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    torch.set_num_threads(threads)
    from deltalens.capture import CaptureConfig
    from deltalens.sae import SAETrainConfig
    from deltalens.sae.train import Trainer, train_saes
    from deltalens.scale.capture import capture_sharded
    from deltalens.scale.dist import World, barrier, init

    t0 = time.perf_counter()
    world = init() if size > 1 else World()
    lm = _model()
    setup = time.perf_counter() - t0
    barrier(world)
    t = time.perf_counter()
    capture_sharded(
        lm,
        _texts(),
        CaptureConfig(sites=["resid.3"], batch_size=BATCH),
        f"{root}/store",
        world=world,
        progress=False,
    )
    barrier(world)
    t_capture = time.perf_counter() - t
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAE_BATCH * 4, SAE_D, generator=g)
    cfg = SAETrainConfig(
        architecture="topk",
        k=32,
        d_sae=SAE_WIDTH,
        batch_size=SAE_BATCH,
        total_tokens=SAE_BATCH * SAE_STEPS,
        norm_sample_tokens=2048,
        log_every=SAE_STEPS,
    )
    from deltalens.sae.sources import TensorSource

    trainer = Trainer(cfg, SAE_D, world=world)
    barrier(world)
    t = time.perf_counter()
    train_saes(TensorSource(x), {"sae": trainer}, progress=False)
    barrier(world)
    t_sae = time.perf_counter() - t
    if rank == 0:
        Path(out).write_text(json.dumps({"setup": setup, "capture": t_capture, "sae": t_sae}))
    if size > 1:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(size: int, threads: int) -> dict[str, float]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as root:
        out = f"{root}/times.json"
        mp.spawn(_worker, args=(size, _free_port(), threads, root, out), nprocs=size, join=True)
        return json.loads(Path(out).read_text())


def main() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    load0 = os.getloadavg()[0]
    one = run(1, 1)
    two = run(2, 1)
    one_two_threads = run(1, 2)
    load1 = os.getloadavg()[0]
    print(f"cores: {os.cpu_count()}, load average before/after: {load0:.2f} / {load1:.2f}")
    for stage, what in (
        ("capture", f"{N_TEXTS} texts × ~120 tokens, d=512 6-layer Llama, batch {BATCH}"),
        ("sae", f"TopK SAE {SAE_D}→{SAE_WIDTH}, batch {SAE_BATCH}, {SAE_STEPS} steps"),
    ):
        print(
            f"{stage} ({what}): 1 process {one[stage]:.2f} s, 2 processes {two[stage]:.2f} s "
            f"(speed-up {one[stage] / two[stage]:.2f}x), 1 process × 2 threads {one_two_threads[stage]:.2f} s "
            f"({one[stage] / one_two_threads[stage]:.2f}x)"
        )
    print(
        f"process setup (model build, process group): 1 process {one['setup']:.2f} s, 2 processes {two['setup']:.2f} s"
    )


if __name__ == "__main__":
    main()
