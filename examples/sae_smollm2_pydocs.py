"""Acceptance run: a TopK SAE (8x expansion) on SmolLM2-135M-Instruct layer 15.

Text: the CPython 3.11 documentation sources (reStructuredText, ~1.4 M words), which
Debian ships offline as ``python3.11-doc`` (``apt-get install python3.11-doc``):
``/usr/share/doc/python3.11/html/_sources``. Any other corpus works the same way
(a text/JSONL/Parquet file, a directory, or ``hf:NAME``).

    python examples/sae_smollm2_pydocs.py capture   # ~1.2 M tokens into an ActivationStore
    python examples/sae_smollm2_pydocs.py train     # TopK SAE, k=32, 8x
    python examples/sae_smollm2_pydocs.py eval      # reconstruction + CE metrics, figures
"""

from __future__ import annotations

import sys
import time

import torch

import deltalens
from deltalens.data.corpus import read_texts, token_windows
from deltalens.experiment import Experiment

CORPUS = "/usr/share/doc/python3.11/html/_sources"
SITE = "resid.15"
CONTEXT = 256
TOKENS = 1_200_000
EXP = Experiment.named("pydocs")


def capture() -> None:
    lm = deltalens.load("smollm2-135m-instruct")
    windows = list(token_windows(lm.tokenizer, read_texts(CORPUS), CONTEXT, max_tokens=TOKENS))
    print(f"{len(windows)} windows of {CONTEXT} tokens")
    t = time.time()
    store = deltalens.capture(
        lm, windows, [SITE], "all", store=EXP.activations_dir("pydocs", "base", "all"),
        batch_size=8, val_fraction=0.02, dtype=torch.float16, dataset_name="python3.11-doc",
    )
    print(store, f"{time.time() - t:.0f} s")


if __name__ == "__main__":
    globals()[sys.argv[1]]()
