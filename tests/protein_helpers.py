"""Tiny protein fixtures built in-test: a profile HMM from a planted family, random sequences,
a tiny ZymCTRL-style tokenizer and GPT-2 (no Debian package or download needed)."""

from __future__ import annotations

import random
from pathlib import Path

AA = "ACDEFGHIKLMNPQRSTVWY"


def random_seq(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(AA) for _ in range(n))


def mutate(rng: random.Random, seq: str, n_sub: int) -> str:
    s = list(seq)
    for i in rng.sample(range(len(s)), n_sub):
        s[i] = rng.choice([a for a in AA if a != s[i]])
    return "".join(s)


def family(seed: int = 0, length: int = 60, n: int = 24, n_sub: int = 12) -> tuple[str, list[str]]:
    """An ancestor and ``n`` members with ``n_sub`` substitutions each (an ungapped family)."""
    rng = random.Random(seed)
    anc = random_seq(rng, length)
    return anc, [mutate(rng, anc, n_sub) for _ in range(n)]


def build_hmm(path: Path, members: list[str], name: str = "planted") -> Path:
    """Build (and calibrate) a profile HMM from an ungapped alignment with pyhmmer; write it."""
    import pyhmmer

    abc = pyhmmer.easel.Alphabet.amino()
    seqs = [pyhmmer.easel.TextSequence(name=f"m{i}".encode(), sequence=s) for i, s in enumerate(members)]
    msa = pyhmmer.easel.TextMSA(name=name.encode(), sequences=seqs).digitize(abc)
    builder = pyhmmer.plan7.Builder(abc, seed=42)
    hmm, _, _ = builder.build_msa(msa, pyhmmer.plan7.Background(abc))
    with open(path, "wb") as fh:
        hmm.write(fh)
    return path


ESM_VOCAB = [
    "<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N",
    "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
]  # fmt: skip


def tiny_esmfold(seed: int = 0):
    """A tiny random ``EsmForProteinFolding`` (1 ESM layer, 1 trunk block): plumbing only."""
    import torch
    from transformers import EsmConfig, EsmForProteinFolding

    sm = dict(
        sequence_dim=32, pairwise_dim=16, ipa_dim=16, resnet_dim=16, num_heads_ipa=2, num_qk_points=2,
        num_v_points=2, num_blocks=1, num_resnet_blocks=1, num_transition_layers=1,
    )  # fmt: skip
    trunk = dict(
        num_blocks=1, sequence_state_dim=32, pairwise_state_dim=16, sequence_head_width=16,
        pairwise_head_width=8, max_recycles=1, structure_module=sm,
    )  # fmt: skip
    cfg = EsmConfig(
        vocab_size=len(ESM_VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, pad_token_id=1, mask_token_id=32, max_position_embeddings=256,
        position_embedding_type="rotary", is_folding_model=True, vocab_list=ESM_VOCAB,
        esmfold_config=dict(trunk=trunk, fp16_esm=False, embed_aa=True, bypass_lm=False, lddt_head_hid_dim=16),
        emb_layer_norm_before=False, token_dropout=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    return EsmForProteinFolding(cfg).eval()


def tiny_protein_lm(directory: Path, tags=("famA", "famB"), layers: int = 2, d: int = 32, records=()) -> Path:
    """A tiny random ZymCTRL-shaped GPT-2 with the testbed tokenizer, saved as an HF directory."""
    from deltalens.protein.testbed import TestbedConfig, build_model, build_tokenizer, save_protein_lm

    tok = build_tokenizer(list(tags))
    model = build_model(TestbedConfig(n_layer=layers, d_model=d, n_head=2), tok)
    return save_protein_lm(model, tok, directory, list(tags), list(records))
