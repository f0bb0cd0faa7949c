"""Protein LMs (ZymCTRL-style: a control tag, a separator, then amino acids) and their key metrics.

* :mod:`.records` — the protein record format (tag + sequence): FASTA, CSV/Parquet, ZymCTRL text;
  validation (alphabet, empty, length);
* :mod:`.scorers` — key-metric scorers usable by ``organism dpo-series``, probes and the causal grid:
  profile-HMM bit score (:mod:`.hmm`, pyhmmer), alignment identity/similarity/coverage to the
  nearest reference (:mod:`.align`, parasail or Biopython), pLDDT (:mod:`.fold`, ESMFold), an
  activity oracle (a user function); cached (:mod:`.cache`);
* :mod:`.lm` — loading a protein LM as any causal LM, tag-conditioned generation, residue positions;
* :mod:`.testbed` — the offline testbed model: a tiny ZymCTRL-shaped GPT-2 trained on the Pfam seeds
  and SwissProt entries that Debian's ``hmmer-examples`` / ``emboss-test`` ship;
* :mod:`.datasets` — per-iteration datasets (one Parquet per iteration + a combined dataframe);
* :mod:`.study` — the protein study end to end.
"""

from __future__ import annotations

from .records import (
    ZYMCTRL,
    ProteinFormat,
    ProteinRecord,
    check_sequence,
    read_fasta,
    read_records,
    write_fasta,
)

__all__ = [
    "ZYMCTRL",
    "ProteinFormat",
    "ProteinRecord",
    "check_sequence",
    "read_fasta",
    "read_records",
    "write_fasta",
]
