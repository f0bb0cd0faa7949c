"""Model diffing: what changed between a base model and its fine-tuned variants.

* :mod:`.organisms` — make fine-tuned variants here (SFT/DPO, LoRA or full) and iterative
  DPO checkpoint series, saved as HF directories with provenance;
* :mod:`.weights` — weight-space diff streamed from safetensors (norms, effective rank,
  logit lens of residual-facing diffs, trait alignment);
* :mod:`.activations` — activation similarity in replay mode and the activation-difference lens;
* :mod:`.outputs` — per-token KL(ft ‖ base), tokens whose probability rose, highest-KL contexts;
* :mod:`.series` — all of the above over a checkpoint series, with trajectory tables.
"""

from .files import ModelFiles, check_compatible
from .lens import load_trait_vectors, stream_logit_lens, topic_hits
from .weights import diff_weights, effective_rank

__all__ = [
    "ModelFiles",
    "check_compatible",
    "diff_weights",
    "effective_rank",
    "load_trait_vectors",
    "stream_logit_lens",
    "topic_hits",
]

