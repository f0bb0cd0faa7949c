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
        lm,
        windows,
        [SITE],
        "all",
        store=EXP.activations_dir("pydocs", "base", "all"),
        batch_size=8,
        val_fraction=0.02,
        dtype=torch.float16,
        dataset_name="python3.11-doc",
    )
    print(store, f"{time.time() - t:.0f} s")


K = int(sys.argv[2]) if len(sys.argv) > 2 else 32
TRAIN_TOKENS = int(float(sys.argv[3])) if len(sys.argv) > 3 else 2_000_000
NAME = f"topk_k{K}_x8_l15"


def train() -> None:
    from deltalens.sae import SAETrainConfig, train_sae

    lm = deltalens.load("smollm2-135m-instruct")
    store = EXP.activations_dir("pydocs", "base", "all")
    cfg = SAETrainConfig(
        architecture="topk",
        expansion=8,
        k=K,
        total_tokens=TRAIN_TOKENS,
        batch_size=1024,
        checkpoint_every_tokens=250_000,
    )
    res = train_sae(
        store,
        cfg,
        site=SITE,
        out=EXP.sae_dir(NAME),
        exclude_token_ids=lm.tokenizer.all_special_ids,
        metadata={"training_data": "python3.11-doc sources, 256-token windows"},
    )
    print(
        res.sae,
        f"{res.tokens} tokens in {res.seconds:.0f} s ({res.tokens_per_second:.0f} tok/s), dead {res.dead_fraction:.3%}",
    )
    _curves(res.history, EXP.sae_eval_dir(NAME) / "training_curves.png")


def _curves(history, path) -> None:
    from deltalens.plots import lines_by_layer

    toks = [h["tokens"] for h in history]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deltalens.plots import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, label in zip(
        axes, ("fvu", "l0", "dead"), ("1 − explained variance (batch)", "L0", "dead latents")
    ):
        ax.plot(toks, [h[key] for h in history])
        ax.set_xlabel("training tokens")
        ax.set_title(label)
    axes[0].set_yscale("log")
    save_figure(fig, path)
    _ = lines_by_layer


def eval() -> None:
    from deltalens.cli._common import console, table
    from deltalens.sae import load_sae
    from deltalens.sae.eval import SAEEvalConfig, evaluate_sae, summary_rows

    lm = deltalens.load("smollm2-135m-instruct")
    sae = load_sae(EXP.sae_dir(NAME))
    store = EXP.activations_dir("pydocs", "base", "all")
    # CE metrics on windows the SAE never saw: the corpus after the captured part
    windows = list(token_windows(lm.tokenizer, read_texts(CORPUS), CONTEXT, max_tokens=TOKENS + 64 * CONTEXT))
    held = windows[-64:]
    t = time.time()
    res = evaluate_sae(
        sae,
        SAEEvalConfig(split="val"),
        activations=store,
        lm=lm,
        windows=held,
        out=EXP.sae_eval_dir(NAME),
        exclude_token_ids=lm.tokenizer.all_special_ids,
        progress=True,
    )
    console.print(
        table(
            f"{NAME}: eval on the store's val split + {len(held)} held-out windows",
            ["metric", "value", "definition"],
            summary_rows(res),
        )
    )
    print(f"eval {time.time() - t:.0f} s → {EXP.sae_eval_dir(NAME)}")


if __name__ == "__main__":
    globals()[sys.argv[1]]()
