"""Loading the bundled model from deltalens's cache vs from its GGUF file.

Baseline: ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` — de-quantising
the GGUF file, what one does without a cache. Measured: ``deltalens.load`` of the same
model once the cache exists, in this process and as a whole new process
(``python -c "import deltalens; deltalens.load(...)"``, imports included).
Target: a second load under 3 s as a whole process.

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
    code = f"import sys; sys.path.insert(0, {str(src)!r}); import deltalens; deltalens.load({NAME!r})"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    t_proc = time.perf_counter() - t

    from transformers import AutoModelForCausalLM

    gguf = BUNDLED[NAME].gguf_path(cache_root())
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    t_gguf = time.perf_counter() - t
    print(f"second load in a new process: {t_proc:.2f} s (target < 3 s): {'PASS' if t_proc < 3 else 'FAIL'}")
    report(
        "cached load vs GGUF de-quantisation",
        t_gguf / t_ours,
        1.0,
        f"deltalens.load {t_ours:.2f} s in-process, {t_proc:.2f} s as a new process; GGUF load {t_gguf:.2f} s",
    )
    if t_proc >= 3:
        sys.exit(1)


if __name__ == "__main__":
    main()
