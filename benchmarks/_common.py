"""Shared helpers for the ratio benchmarks (run from the repository root or this folder)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def best_of(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> float:
    """Minimum wall time of ``fn`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def report(name: str, ratio: float, target: float, detail: str) -> None:
    ok = ratio >= target
    print(f"{name}: {ratio:.2f}x (target >= {target}x) {'PASS' if ok else 'FAIL'} — {detail}")
    if not ok and not os.environ.get("DELTALENS_BENCH_NO_FAIL"):
        sys.exit(1)


def bench_texts(lm, n: int = 64, tokens: int = 128) -> list[str]:
    """``n`` texts of about ``tokens`` tokens each, built from the bundled prompt sets."""
    from deltalens.data import bundled_prompts

    pool = [r.text for r in bundled_prompts("chat_prompts")] + [
        r.text for r in bundled_prompts("demo_questions")
    ]
    texts, i = [], 0
    while len(texts) < n:
        parts = []
        while len(lm.encode(" ".join(parts))) < tokens:
            parts.append(pool[i % len(pool)])
            i += 1
        ids = lm.encode(" ".join(parts))[:tokens]
        texts.append(lm.tokenizer.decode(ids, skip_special_tokens=True))
    return texts
