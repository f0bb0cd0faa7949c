"""The offline testbed: a tiny ZymCTRL-shaped GPT-2 trained on public protein data.

Corpus (:func:`build_corpus`), all from Debian packages that install offline:

* the Pfam seed alignments shipped by ``hmmer-examples`` (tutorial: ``fn3``, ``globins4``;
  testsuite: ``RRM_1``, ``Caudal_act``; ``Pkinase`` (260 columns) on request with
  ``--families``), ungapped; ``globins45.fa`` joins ``globins4``; ``2OG-FeII_Oxy_3`` has a
  profile but no seed alignment, so only emitted sequences;
* ``n_emit`` sequences per family sampled from its profile HMM (pyhmmer, what ``hmmemit``
  writes) to reach a useful corpus size;
* the SwissProt entries of ``emboss-test`` (tag ``swissprot``).

The family name is the control tag: each training text is ``TAG<sep><start>SEQUENCE<end>``.
Sequences longer than ``max_length`` residues are left out.

Tokenizer (:func:`build_tokenizer`): one token per residue (the 20 amino acids and ``X``), the
ZymCTRL specials ``<pad> <unk> <|endoftext|> <sep> <start> <end>`` and one token per tag (special:
matched whole, dropped when a response is decoded); ``eos`` = ``<end>``. Model: GPT-2, 4 layers,
d = 256, 4 heads, 512 positions. Training: next-token cross-entropy on whole texts (AdamW,
cosine schedule with warm-up, length-bucketed batches), ``steps`` steps.

:func:`build_testbed` writes an HF directory (``config.json``, ``model.safetensors``, tokenizer,
``generation_config.json`` stopping at ``<end>``, ``protein_lm.json`` with the format and tags,
``train.fasta`` with every training record, ``testbed.json`` with the recipe and the losses)
under ``$DELTALENS_CACHE/models/protein-testbed-<hash>``; a second call with the same recipe and
data returns it at once. The build is atomic (temp dir + rename).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataFormatError
from ..io import config_hash, provenance, sha256_file, write_json
from ..stage import StageConfig, StageResult, at_least, option, register_result
from .records import (
    STANDARD,
    ProteinFormat,
    ProteinRecord,
    read_fasta,
    read_stockholm,
    read_swissprot,
    write_fasta,
)

DEFAULT_FAMILIES = ("fn3", "globins4", "RRM_1", "Caudal_act", "2OG-FeII_Oxy_3")
SWISSPROT = Path("/usr/share/EMBOSS/test/swiss/seq.dat")
GLOBINS45 = "tutorial/globins45.fa"
SPECIALS = ("<pad>", "<unk>", "<|endoftext|>", "<sep>", "<start>", "<end>")
TESTBED_JSON = "testbed.json"
TRAIN_FASTA = "train.fasta"


@dataclass
class TestbedConfig(StageConfig):
    """Recipe of the testbed model (part of its cache key)."""

    __test__ = False  # not a pytest class

    families: list[str] = option(
        default_factory=lambda: list(DEFAULT_FAMILIES),
        flag="--families",
        help="Pfam families (hmmer-examples names) whose seeds and emitted sequences are the corpus.",
    )
    n_emit: int = option(300, flag="--emit", help="Sequences emitted from each family's HMM.")
    swissprot: bool = option(
        True, flag="--swissprot/--no-swissprot", help="Add the emboss-test SwissProt entries."
    )
    max_length: int = option(220, flag="--max-length", help="Longest sequence kept (residues).")
    n_layer: int = option(4, flag="--layers", help="Transformer blocks.")
    d_model: int = option(256, flag="--d-model", help="Hidden size.")
    n_head: int = option(4, flag="--heads", help="Attention heads.")
    steps: int = option(300, flag="--steps", help="Optimiser steps.")
    batch_tokens: int = option(4096, flag="--batch-tokens", help="Tokens per batch (about).")
    lr: float = option(1e-3, flag="--lr", help="Peak learning rate.")
    warmup: int = option(20, flag="--warmup", help="Warm-up steps.")
    seed: int = option(0, flag="--seed", help="Seed of emission, shuffling and initialisation.")
    threads: int = option(2, flag="--threads", help="torch CPU threads.")

    def validate(self) -> None:
        for f in ("n_emit", "warmup"):
            at_least(self, f, 0)
        for f in ("max_length", "n_layer", "d_model", "n_head", "steps", "batch_tokens", "threads"):
            at_least(self, f, 1)
        if self.d_model % self.n_head:
            raise ConfigError(f"--d-model {self.d_model} must be a multiple of --heads {self.n_head}")
        if not self.families:
            raise ConfigError("--families: give at least one family")


@register_result
@dataclass
class TestbedResult(StageResult):
    """``testbed.json``: what was trained, on what, and how it went."""

    __test__ = False

    KIND = "protein testbed model"
    FILENAME = TESTBED_JSON

    path: str
    config: dict[str, Any]
    key: str
    corpus: dict[str, Any]
    losses: list[float]
    seconds: float
    n_params: int
    provenance: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "records": self.corpus.get("n_records"),
            "tags": self.corpus.get("tags"),
            "params": self.n_params,
            "loss_first": self.losses[0] if self.losses else None,
            "loss_last": self.losses[-1] if self.losses else None,
            "seconds": self.seconds,
        }


# ---- corpus -------------------------------------------------------------------------------------


def build_corpus(
    cfg: TestbedConfig, examples_dir: str | Path | None = None
) -> tuple[list[ProteinRecord], dict]:
    """Training records and a description of their sources (module docstring)."""
    from .hmm import EXAMPLES_DIR, example_alignments, example_hmms, load_hmm

    root = Path(examples_dir) if examples_dir else EXAMPLES_DIR
    hmms, stos = example_hmms(root), example_alignments(root)
    if not hmms:
        raise ConfigError(
            f"no profile HMMs under {root}: install the protein data (make protein-data, or apt-get install "
            "hmmer-examples emboss-test)"
        )
    records: list[ProteinRecord] = []
    sources: dict[str, Any] = {}
    for fam in cfg.families:
        if fam not in hmms:
            raise ConfigError(
                f"--families: no profile HMM named {fam!r} under {root} (have {', '.join(hmms)})"
            )
        hmm = load_hmm(str(hmms[fam]))
        seeds = read_stockholm(stos[fam], tag=fam) if fam in stos else []
        if fam == "globins4" and (root / GLOBINS45).is_file():
            seeds += [ProteinRecord(r.id, fam, r.sequence) for r in read_fasta(root / GLOBINS45)]
        from .hmm import emit_sequences

        emitted = emit_sequences(hmm, cfg.n_emit, seed=cfg.seed * 1000 + len(sources) + 1)
        fam_recs = [r for r in seeds if len(r) <= cfg.max_length]
        fam_recs += [
            ProteinRecord(f"{fam}_emit{i}", fam, s)
            for i, s in enumerate(emitted)
            if 0 < len(s) <= cfg.max_length
        ]
        sources[fam] = {
            "hmm": str(hmms[fam]),
            "seed_alignment": str(stos.get(fam, "")),
            "seeds": len([r for r in seeds if len(r) <= cfg.max_length]),
            "emitted": len(fam_recs) - len([r for r in seeds if len(r) <= cfg.max_length]),
        }
        records += fam_recs
    if cfg.swissprot and SWISSPROT.is_file():
        sp = [r for r in read_swissprot(SWISSPROT) if len(r) <= cfg.max_length]
        records += sp
        sources["swissprot"] = {"file": str(SWISSPROT), "entries": len(sp)}
    bad = [r.tag for r in records if r.tag and all(c in STANDARD for c in r.tag)]
    if bad:
        raise ConfigError(f"tag {bad[0]!r} is made of amino-acid letters only and would be read as residues")
    return records, sources


# ---- tokenizer and model ------------------------------------------------------------------------


def build_tokenizer(tags: Sequence[str]) -> Any:
    """The testbed tokenizer (module docstring), a ``PreTrainedTokenizerFast``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_list = list(SPECIALS) + list(STANDARD) + ["X"] + list(tags)
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab_list)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIALS) + list(tags))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<end>", model_max_length=512
    )


def build_model(cfg: TestbedConfig, tokenizer: Any) -> Any:
    """A randomly initialised GPT-2 of the testbed's shape."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    end = tokenizer.convert_tokens_to_ids("<end>")
    conf = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        bos_token_id=end,
        eos_token_id=end,
        pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(cfg.seed)
    return GPT2LMHeadModel(conf)


def _batches(lengths: Sequence[int], batch_tokens: int, rng: random.Random) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    out, cur, width = [], [], 0
    for i in order:
        width = max(width, lengths[i])
        if cur and width * (len(cur) + 1) > batch_tokens:
            out.append(cur)
            cur, width = [], lengths[i]
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def train_lm(model: Any, texts: Sequence[list[int]], cfg: TestbedConfig, pad_id: int, progress: bool = True):
    """Next-token cross-entropy on ``texts`` (token-id lists); returns the loss of every step."""
    import torch
    from tqdm.auto import tqdm

    rng = random.Random(cfg.seed)
    lengths = [len(t) for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / max(cfg.warmup, 1)
        p = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))

    model.train()
    losses: list[float] = []
    bar = tqdm(total=cfg.steps, desc="train testbed", unit="step", disable=not progress, leave=False)
    batches: list[list[int]] = []
    for step in range(cfg.steps):
        if not batches:
            batches = _batches(lengths, cfg.batch_tokens, rng)
            rng.shuffle(batches)
        idx = batches.pop()
        L = max(lengths[i] for i in idx)
        ids = torch.full((len(idx), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), L), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : lengths[i]] = torch.tensor(texts[i])
            mask[r, : lengths[i]] = 1
        labels = ids.masked_fill(mask == 0, -100)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(round(float(out.loss.detach()), 4))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    model.eval()
    return losses


# ---- the build ----------------------------------------------------------------------------------


def save_protein_lm(
    model: Any,
    tokenizer: Any,
    directory: str | Path,
    tags: Sequence[str],
    records: Sequence[ProteinRecord] = (),
) -> Path:
    """Save a protein LM as an HF directory that stops generating at ``<end>``, with
    ``protein_lm.json`` (format, tags) and, when given, its training records (``train.fasta``)."""
    d = Path(directory)
    end_ids = sorted(
        {tokenizer.convert_tokens_to_ids("<end>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    )
    model.generation_config.eos_token_id = end_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # a response is residues only: specials and tags are never sampled (so response[k] = residue k)
    never = [t for t in SPECIALS if t not in ("<end>", "<|endoftext|>")] + list(tags)
    model.generation_config.suppress_tokens = [tokenizer.convert_tokens_to_ids(t) for t in never]
    model.save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    write_json(
        d / "protein_lm.json",
        {
            "format": ProteinFormat().to_dict(),
            "tags": list(tags),
            "alphabet": "standard",
            "residue_tokens": True,
        },
    )
    if records:
        write_fasta(d / TRAIN_FASTA, records)
    return d


def testbed_dir(key: str) -> Path:
    from ..models.loading import cache_root

    return cache_root() / "models" / f"protein-testbed-{key}"


def build_testbed(
    config: TestbedConfig | None = None,
    *,
    out: str | Path | None = None,
    examples_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> TestbedResult:
    """Build (or find in the cache) the testbed model (module docstring); returns its record."""
    import torch

    cfg = config or TestbedConfig()
    records, sources = build_corpus(cfg, examples_dir)
    data_hash = config_hash({"records": [(r.tag, r.sequence) for r in records]})
    key = config_hash({"config": cfg.to_dict(), "data": data_hash, "format": 2})
    target = Path(out) if out else testbed_dir(key)
    if not force and (target / TESTBED_JSON).is_file():
        res = TestbedResult.load(target)
        if res.key == key:
            return res
        if out:
            raise ConfigError(
                f"{target} holds a testbed built from another recipe or data; use another --out or --overwrite"
            )
    tags = sorted({r.tag for r in records})
    tok = build_tokenizer(tags)
    fmt = ProteinFormat()
    texts = [tok(fmt.text(r.tag, r.sequence), add_special_tokens=False)["input_ids"] for r in records]
    unk = tok.unk_token_id
    for r, t in zip(records, texts):
        if unk in t:
            raise DataFormatError(f"record {r.id!r} ({r.tag}) has a token the testbed vocabulary lacks")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    try:
        model = build_model(cfg, tok)
        losses = train_lm(model, texts, cfg, tok.pad_token_id, progress)
    finally:
        torch.set_num_threads(threads)
    seconds = round(time.time() - t0, 1)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_protein_lm(model, tok, tmp, tags, records)
        n_params = sum(p.numel() for p in model.parameters())
        res = TestbedResult(
            path=str(target),
            config=cfg.to_dict(),
            key=key,
            corpus={
                "n_records": len(records),
                "tags": tags,
                "per_tag": {t: sum(r.tag == t for r in records) for t in tags},
                "sources": sources,
                "tokens": sum(len(t) for t in texts),
                "data_hash": data_hash,
            },
            losses=losses,
            seconds=seconds,
            n_params=int(n_params),
            provenance=provenance(
                None, stage="protein build-testbed", weights_sha256=sha256_file(tmp / "model.safetensors")
            ),
        )
        res.save(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return res


def training_records(model_dir: str | Path, tag: str | None = None) -> list[ProteinRecord]:
    """The testbed's training records (its ``train.fasta``), optionally of one tag."""
    p = Path(model_dir) / TRAIN_FASTA
    if not p.is_file():
        raise DataFormatError(f"{p}: no training set beside the model (not a testbed directory)")
    recs = read_fasta(p)
    return [r for r in recs if tag is None or r.tag == tag]
