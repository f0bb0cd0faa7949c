"""The protein study end to end on the offline testbed model.

1. ``build_testbed``: the tiny ZymCTRL-shaped GPT-2 (4 layers, d = 256) trained on the Pfam seeds
   and HMM-emitted sequences of Debian's ``hmmer-examples`` and the SwissProt entries of
   ``emboss-test`` (cached; ``make protein-data`` installs the data);
2. ``run_study``: M1…M3 by DPO towards a higher ``fn3`` profile-HMM bit score, and the same rounds
   with random preferences (the null control); per-iteration
   datasets with the HMM score and the identity to the fn3 training set (memorisation); iterative
   SAEs on both branches; weight metrics and evolution; probes for high/low HMM score and
   identity; ablation / steering of the probes' top latents against matched null groups.

Run: ``PYTHONPATH=src python examples/protein_study.py [experiment_dir]`` (default
``experiments/protein_study``). The same code runs on ZymCTRL on a GPU machine:
``run_study("AI4PD/ZymCTRL", out, ProteinStudyConfig(tag="3.2.1.1", hmm="Alpha-amylase.hmm"),
refs="train.fasta")`` with the model in the local Hugging Face cache.
"""

from __future__ import annotations

import sys
import time


def main(out: str = "experiments/protein_study") -> None:
    from deltalens.cli.protein import print_study
    from deltalens.protein.study import ProteinStudyConfig, run_study
    from deltalens.protein.testbed import build_testbed

    t = time.time()
    tb = build_testbed()
    print(f"testbed: {tb.path} ({tb.n_params:,} parameters, loss {tb.losses[0]:.3f} → {tb.losses[-1]:.3f})")
    res = run_study(tb.path, out, ProteinStudyConfig(tag="fn3"))
    print_study(res)
    print(f"total {time.time() - t:.0f} s")


if __name__ == "__main__":
    main(*sys.argv[1:])
