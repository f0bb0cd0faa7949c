"""Loading the bundled model from deltalens's cache vs from its GGUF file.

Baseline: ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` — de-quantising
the GGUF file, what one does without a cache. Measured: ``deltalens.load`` of the same
model once the cache exists (1) in a new Python process, timing the ``load`` call (which
includes importing transformers' model code; ``import torch`` is paid by any script and
reported separately), and (2) again in this process. Target: the call in a new process
takes under 3 s.

    python benchmarks/load.py
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path

from _common import report

import deltalens
from deltalens.models.bundled import BUNDLED
from deltalens.models.loading import cache_root

NAME = "smollm2-135m-instruct"


def main() -> None:
    deltalens.load(NAME)  # make sure the cache exists
    t = time.perf_counter()
    deltalens.load(NAME)
    t_ours = time.perf_counter() - t

    src = Path(__file__).resolve().parents[1] / "src"
    code = (
        f"import sys, time; t0 = time.perf_counter(); sys.path.insert(0, {str(src)!r}); import deltalens; "
        f"t1 = time.perf_counter(); deltalens.load({NAME!r}); t2 = time.perf_counter(); print(t1 - t0, t2 - t1)"
    )
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    t_proc = time.perf_counter() - t
    t_import, t_call = (float(x) for x in out.split()[-2:])

    from transformers import AutoModelForCausalLM

    gguf = BUNDLED[NAME].gguf_path(cache_root())
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    t_gguf = time.perf_counter() - t
    print(
        f"second load in a new process: deltalens.load() {t_call:.2f} s (target < 3 s): "
        f"{'PASS' if t_call < 3 else 'FAIL'} — import deltalens/torch {t_import:.2f} s, whole process {t_proc:.2f} s"
    )
    report(
        "cached load vs GGUF de-quantisation",
        t_gguf / t_call,
        1.0,
        f"deltalens.load {t_call:.2f} s in a new process, {t_ours:.2f} s again in-process; GGUF load {t_gguf:.2f} s",
    )
    if t_call >= 3:
        sys.exit(1)


if __name__ == "__main__":
    main()
