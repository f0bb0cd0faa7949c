"""The offline judge: no API, no large model — a trait classifier and a likelihood-based
coherence score.

**Trait** (:class:`TraitClassifier`). Responses are embedded with the bundled MiniLM
(:mod:`deltalens.judges.embed`, 384-d, L2-normalised) and a logistic regression
``f(x) = w·x + b`` is trained to tell the trait's *positive* responses (generated under
the trait-eliciting system prompts) from its *negative* ones. The regularisation ``C``
is chosen by 5-fold cross-validated log-loss; the decision value is then Platt-calibrated
on out-of-fold predictions, ``P(trait | x) = σ(a·f(x) + c)``, and the score is
``100 · P(trait | x)``. The question is not seen by the classifier.

*What it can tell*: whether a response reads more like the model's own trait-eliciting
answers than like its neutral ones — reliable for surface-visible traits (pirate speech,
exuberant enthusiasm), with its cross-validated accuracy and AUROC recorded in the
classifier file. *What it cannot tell*: anything the two response sets do not separate in
embedding space; it does not reason about the question (a sycophantic "yes" to a bad plan
and a correct "yes" to a good one look alike), it can be fooled by surface cues, and on
degenerate text far from both training sets its probability is arbitrary — always read
trait scores together with coherence.

**Coherence** (:class:`CoherenceScorer`). The response is scored under a reference model
(by default the unsteered model itself), conditioned on the chat-formatted question:
``nll = −(1/T) Σ_t log p_ref(r_t | question, r_<t)`` (mean negative log-likelihood per
response token, in nats). With ``rep = 1 − (#distinct token 4-grams)/(#token 4-grams)``
(0 for responses under 8 tokens),

    coherence = 100 · σ((τ − nll) / w) · (1 − rep),    τ = 2.0, w = 0.35 by default,

and 0 for an empty response. The defaults were set on SmolLM2-135M-Instruct: its own
greedy answers have nll ≈ 0.7–0.9 (coherence ≈ 95), answers written under a persona
system prompt but scored without it ≈ 1.2 (≈ 90), steering overshoot ≈ 2–3 nats
(≈ 5–40) before the repetition factor. *What it can tell*: broken grammar, gibberish, off-language
output and loops (steering overshoot) — the failure modes of too-large coefficients.
*What it cannot tell*: whether the answer is relevant or correct, and it under-rates
fluent text in a style the reference model finds unlikely (strong personas score lower
than they would with a human or LLM judge). Greedy loops have a *low* nll (the model
happily repeats), which is what the repetition factor catches.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import DataFormatError
from ..io import load_tensors, read_safetensors_metadata, save_tensors
from .base import Judge, Score, TraitInfo
from .embed import embed, embedder_id

if TYPE_CHECKING:
    from ..models.loading import LoadedModel

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


@dataclass
class TraitClassifier:
    """Calibrated logistic regression on MiniLM embeddings (see the module docstring)."""

    w: torch.Tensor  # [384]
    b: float
    a: float  # Platt slope
    c: float  # Platt intercept
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls, positive: Sequence[str], negative: Sequence[str], *, seed: int = 0, **meta: Any
    ) -> TraitClassifier:
        """Train on positive / negative response texts (≥ 5 of each)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import log_loss, roc_auc_score
        from sklearn.model_selection import StratifiedKFold

        if len(positive) < 5 or len(negative) < 5:
            raise DataFormatError(
                f"the trait classifier needs at least 5 positive and 5 negative responses (got {len(positive)} and {len(negative)})"  # noqa: E501
            )
        x = embed(list(positive) + list(negative)).double().numpy()
        y = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
        folds = list(StratifiedKFold(n_splits=5, shuffle=True, random_state=seed).split(x, y))

        def oof(C: float) -> np.ndarray:
            f = np.zeros(len(y))
            for tr, te in folds:
                clf = LogisticRegression(C=C, max_iter=5000).fit(x[tr], y[tr])
                f[te] = clf.decision_function(x[te])
            return f

        best = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for C in C_GRID:
                f = oof(C)
                loss = log_loss(y, 1 / (1 + np.exp(-f)), labels=[0, 1])
                if best is None or loss < best[0]:
                    best = (loss, C, f)
            _, C, f = best  # type: ignore[misc]
            platt = LogisticRegression(C=1e6, max_iter=5000).fit(f[:, None], y)
            final = LogisticRegression(C=C, max_iter=5000).fit(x, y)
        a, c = float(platt.coef_[0, 0]), float(platt.intercept_[0])
        p_oof = 1 / (1 + np.exp(-(a * f + c)))
        info = {
            "embedder": embedder_id(),
            "C": C,
            "n_pos": len(positive),
            "n_neg": len(negative),
            "cv_accuracy": float(((p_oof > 0.5) == (y > 0.5)).mean()),
            "cv_auroc": float(roc_auc_score(y, f)),
            "cv_brier": float(((p_oof - y) ** 2).mean()),
            **meta,
        }
        return cls(torch.from_numpy(final.coef_[0]).float(), float(final.intercept_[0]), a, c, info)

    def decision(self, emb: torch.Tensor) -> torch.Tensor:
        return emb.double() @ self.w.double() + self.b

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``P(trait | response)`` for each text."""
        if not len(texts):
            return np.zeros(0)
        f = self.decision(embed(list(texts))).numpy()
        return 1 / (1 + np.exp(-(self.a * f + self.c)))

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(self.w.float().numpy().tobytes())
        h.update(np.array([self.b, self.a, self.c], dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        tensors = {"w": self.w.float(), "params": torch.tensor([self.b, self.a, self.c], dtype=torch.float64)}
        return save_tensors(path, tensors, {**self.meta, "format": "deltalens.trait_classifier/1"})

    @classmethod
    def load(cls, path: str | Path) -> TraitClassifier:
        t = load_tensors(path)
        if "w" not in t or "params" not in t:
            raise DataFormatError(f"{path}: not a deltalens trait classifier")
        b, a, c = (float(v) for v in t["params"])
        return cls(t["w"].float(), b, a, c, read_safetensors_metadata(path))


class CoherenceScorer:
    """Likelihood-under-a-reference-model coherence with a repetition penalty (module docstring)."""

    def __init__(
        self, ref: LoadedModel, tau: float = 2.0, width: float = 0.35, ngram: int = 4, batch_size: int = 8
    ):
        self.ref = ref
        self.tau = float(tau)
        self.width = float(width)
        self.ngram = int(ngram)
        self.batch_size = int(batch_size)

    @property
    def id(self) -> str:
        return f"nll:{self.ref.name}:{self.ref.weights_hash}:tau{self.tau:g}:w{self.width:g}:rep{self.ngram}"

    def repetition(self, ids: Sequence[int]) -> float:
        """``1 − distinct n-grams / n-grams`` of a token sequence (0 under 2n tokens)."""
        n = self.ngram
        if len(ids) < 2 * n:
            return 0.0
        grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
        return 1.0 - len(set(grams)) / len(grams)

    @torch.no_grad()
    def nll(self, items: Sequence[tuple[str, str]]) -> list[tuple[float, list[int]]]:
        """Mean per-token NLL of each response given its question, and the response ids."""
        from ..generate import left_pad, position_ids

        lm = self.ref
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        enc = []
        for q, r in items:
            p = lm.encode(lm.format_chat(q), formatted=lm.has_chat_template)
            enc.append((p, lm.encode(r, formatted=True) if r else []))
        out: list[tuple[float, list[int]]] = [(math.nan, [])] * len(enc)
        order = sorted(range(len(enc)), key=lambda i: -(len(enc[i][0]) + len(enc[i][1])))
        for s in range(0, len(order), self.batch_size):
            batch = [i for i in order[s : s + self.batch_size] if enc[i][1]]
            for i in order[s : s + self.batch_size]:
                if not enc[i][1]:
                    out[i] = (math.nan, [])
            if not batch:
                continue
            seqs = [enc[i][0] + enc[i][1] for i in batch]
            ids, mask = left_pad(seqs, pad, lm.device)
            R = max(len(enc[i][1]) for i in batch)
            logits = lm.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids(mask),
                use_cache=False,
                logits_to_keep=R + 1,
            ).logits  # [B, R+1, V]: predictions for the last R tokens are at columns 0..R-1
            logp = torch.log_softmax(logits[:, :-1].float(), -1)
            tgt = ids[:, -R:]
            tok = logp.gather(-1, tgt[..., None])[..., 0]  # [B, R]
            for b, i in enumerate(batch):
                r = len(enc[i][1])
                out[i] = (float(-tok[b, R - r :].mean()), enc[i][1])
        return out

    def score(self, items: Sequence[tuple[str, str]]) -> list[Score]:
        out = []
        for nll, ids in self.nll(items):
            if not ids:
                out.append(Score(0.0, "ok", "empty response"))
                continue
            rep = self.repetition(ids)
            lik = 1.0 / (1.0 + math.exp((nll - self.tau) / self.width))
            out.append(Score(100.0 * lik * (1.0 - rep), "ok", f"nll={nll:.3f} rep={rep:.3f}"))
        return out


class OfflineJudge(Judge):
    """Trait from a :class:`TraitClassifier`, coherence from a :class:`CoherenceScorer`."""

    def __init__(self, classifier: TraitClassifier | None, coherence: CoherenceScorer):
        self.classifier = classifier
        self.coherence = coherence
        cls_id = classifier.fingerprint if classifier is not None else "none"
        self.id = f"offline:{cls_id}:{coherence.id}"

    def prompt(self, kind: str, question: str, trait: TraitInfo | None) -> str:
        return f"{kind}\x00{trait.name if trait else ''}\x00{question}"

    def score_batch(
        self, kind: str, items: Sequence[tuple[str, str]], trait: TraitInfo | None
    ) -> list[Score]:
        if kind == "coherence":
            return self.coherence.score(items)
        if kind == "trait":
            if self.classifier is None:
                raise DataFormatError(
                    "this offline judge has no trait classifier (train one with TraitClassifier.fit)"
                )
            p = self.classifier.predict_proba([r for _, r in items])
            return [Score(100.0 * float(v), "ok") for v in p]
        raise ValueError(f"unknown score kind '{kind}'")
