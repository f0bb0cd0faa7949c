"""Benchmark: SAE training throughput on cached activations, deltalens vs SAELens's trainer.

Both train the same TopK configuration (d_in from the data, d_sae = 8·d_in, k = 32, Adam,
same learning rate and batch size) on the *same* in-memory activation batches (SmolLM2
layer activations read from an ActivationStore, or captured from the bundled corpus when no
store is given), in one process, one after the other, each after warm-up steps. Reported:
training tokens per second and their ratio. Exits non-zero if deltalens is not at least
``--target`` (1.5×) faster.

    python benchmarks/sae_train.py [--store DIR] [--steps 20] [--batch-size 2048]

Baseline: ``sae_lens.SAETrainer.fit`` with ``TopKTrainingSAE`` (SAELens defaults otherwise:
``rescale_acts_by_decoder_norm``, AuxK coefficient 1, dense TopK activations).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch


def activations(store: str | None, n: int) -> torch.Tensor:
    from deltalens.store import ActivationStore

    if store and Path(store).exists():
        st = ActivationStore.open(store)
        rows, got = [], 0
        for i in range(len(st.shard_names())):
            t = st.shard(st.sites[0], i).float()
            rows.append(t)
            got += len(t)
            if got >= n:
                break
        x = torch.cat(rows)[:n]
        print(f"activations: {len(x)} rows of {st.sites[0]} from {store}")
        return x
    import deltalens
    from deltalens.data import bundled_path
    from deltalens.data.corpus import read_texts, token_windows

    lm = deltalens.load("smollm2-135m-instruct")
    windows = list(token_windows(lm.tokenizer, read_texts(bundled_path("sae", "python_tutorial.txt")), 128))
    need = n // 127 + 2
    acts = deltalens.capture(lm, windows[:need], ["resid.6"], "all[1:]", batch_size=16, progress=False)
    x = acts["resid.6"][:n]
    print(f"activations: {len(x)} rows of resid.6 captured from the bundled corpus")
    return x


def run_deltalens(batches: list[torch.Tensor], d_sae: int, k: int, lr: float, warmup: int) -> float:
    from deltalens.sae import SAETrainConfig, Trainer

    bs = batches[0].shape[0]
    cfg = SAETrainConfig(
        architecture="topk",
        d_sae=d_sae,
        k=k,
        batch_size=bs,
        total_tokens=bs * len(batches),
        lr=lr,
        normalize="none",
        lr_warmup=0.0,
        lr_decay=0.0,
    )
    t = Trainer(cfg, batches[0].shape[1])
    t.initialize(batches[0])
    for b in batches[:warmup]:
        t.step(b)
    t0 = time.perf_counter()
    for b in batches[warmup:]:
        t.step(b)
    dt = time.perf_counter() - t0
    return bs * (len(batches) - warmup) / dt


def run_saelens(batches: list[torch.Tensor], d_sae: int, k: int, lr: float, warmup: int) -> float:
    from sae_lens import SAETrainer
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    bs, d_in = batches[0].shape
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu"))

    def fit(bat: list[torch.Tensor]) -> float:
        cfg = SAETrainerConfig(
            total_training_samples=bs * len(bat), train_batch_size_samples=bs, lr=lr, lr_end=lr, device="cpu"
        )
        trainer = SAETrainer(cfg, sae, iter(bat))
        t0 = time.perf_counter()
        trainer.fit()
        return time.perf_counter() - t0

    fit(batches[:warmup])
    dt = fit(batches[warmup:])
    return bs * (len(batches) - warmup) / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="experiments/pydocs/activations/pydocs/base/all")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--target", type=float, default=1.5)
    args = ap.parse_args()
    os.environ["TQDM_DISABLE"] = "1"  # no progress bars in the timed loops
    n_batches = args.steps + args.warmup
    x = activations(args.store, n_batches * args.batch_size)
    g = torch.Generator().manual_seed(0)
    x = x[torch.randperm(len(x), generator=g)]
    batches = [
        x[i * args.batch_size : (i + 1) * args.batch_size].contiguous()
        for i in range(len(x) // args.batch_size)
    ]
    d_sae = args.expansion * x.shape[1]
    print(
        f"config: TopK d_in={x.shape[1]} d_sae={d_sae} k={args.k} batch={args.batch_size} lr={args.lr} "
        f"steps={len(batches) - args.warmup} (+{args.warmup} warm-up), torch threads={torch.get_num_threads()}"
    )
    ours = run_deltalens(batches, d_sae, args.k, args.lr, args.warmup)
    print(f"deltalens: {ours:,.0f} tokens/s")
    theirs = run_saelens(batches, d_sae, args.k, args.lr, args.warmup)
    print(f"SAELens:   {theirs:,.0f} tokens/s")
    ratio = ours / theirs
    ok = ratio >= args.target
    print(
        f"RESULT sae_train: deltalens {ours:,.0f} tok/s vs SAELens {theirs:,.0f} tok/s = {ratio:.2f}x "
        f"(target >= {args.target}x) {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
