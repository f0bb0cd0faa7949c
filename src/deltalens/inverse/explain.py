"""Explain latents: offline explanations, optional LLM explanations, simulation scoring.

For latent ``i`` of a collection (:mod:`.collect`) the prompts are split, by their ``max[s, i]``:
the ``n_explain`` highest are the **explanation set**; the next ``n_score_top`` plus
``n_score_random`` seeded random other prompts are the held-out **scoring set**. One batched
forward pass gives the latent's activation ``a_t`` on every token of both sets (same positions
and truncation as the collection).

**Offline explanation** (no API): from the explanation set, the tokens carrying the most
activation (``Σ_t a_t`` per token string, the ``top_tokens`` largest), the n-grams ending at each
context's peak (the ``ngram``-token span, by count), a short context before the peak, the
tokens the decoder direction promotes (logit effects ``W_U (γ ⊙ W_dec[i])``,
:func:`deltalens.features.dashboard.top_logit_tokens`) and, when given, the prompt an optimiser
found (:mod:`.optimize`). The description reads
``fires on ' Paris', ' France' (as in 'of Paris'); promotes ' capital'; optimised prompt: '…'``.

**LLM explanation** (``explainer="llm"``): the explanation set, each token shown with its
activation scaled to 0–10 (``round(10 a_t / max a)``), goes to an OpenAI-compatible endpoint
through :class:`deltalens.judges.OpenAIJudge.complete`; the reply after ``Explanation:`` is the
description.

**Simulation scoring** (after Bills et al. 2023): a simulator turns the explanation into a
predicted activation ``p_t`` for every token of the scoring set, and the score is the Pearson
correlation over all those tokens,
``r = Σ_t (p_t − p̄)(a_t − ā) / sqrt(Σ_t (p_t − p̄)² · Σ_t (a_t − ā)²)``
(``None`` when either side is constant). Simulators:

* ``offline`` — token overlap: ``p_t = 1`` when the token, stripped and lower-cased, equals a
  string quoted (``'…'`` or ``"…"``) in the input side of the explanation — the part before
  ``promotes`` / ``optimised prompt``, which describe the output side and the search — (when
  nothing is quoted: one of its words of 3+ letters), else ``0``;
* ``llm`` — the endpoint is given the explanation and the numbered tokens of each scoring text
  and answers ``index<TAB>value`` (0–10) per token; missing tokens predict 0.

The result is written as ``explanations.json`` — the file :mod:`deltalens.circuits.descriptions`
reads to fill the ``description`` of circuit nodes and ``top_latents.json`` rows: put it next to
the SAE with :func:`write_for_sae`, and into feature dashboards with :func:`apply_to_dashboards`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, DataFormatError
from ..stage import StageConfig, StageResult, at_least, one_of, option, register_result

EXPLAINERS = ("offline", "llm")
SIMULATORS = ("offline", "llm")
EXPLANATIONS_FILE = "explanations.json"


@dataclass
class ExplainConfig(StageConfig):
    """How explanations are made and scored (recorded in ``explanations.json``)."""

    n_explain: int = option(5, flag="--n-explain", help="Top prompts the explanation is made from.")
    n_score_top: int = option(5, flag="--n-score-top", help="Held-out top prompts of the scoring set.")
    n_score_random: int = option(5, flag="--n-score-random", help="Random prompts of the scoring set.")
    top_tokens: int = option(4, flag="--top-tokens", help="Activating tokens named.")
    ngram: int = option(2, flag="--ngram", help="Length of the n-grams ending at the peak.")
    logit_tokens: int = option(3, flag="--logit-tokens", help="Promoted tokens named (0: none).")
    context: int = option(6, flag="--context", help="Tokens of context before the peak kept.")
    explainer: str = option("offline", flag="--explainer", help="offline, or llm (OpenAI-compatible).")
    simulator: str = option("offline", flag="--simulator", help="offline (token overlap) or llm.")
    judge_model: str | None = option(
        None, flag="--judge-model", help="LLM model (default $DELTALENS_JUDGE_MODEL)."
    )
    judge_base_url: str | None = option(
        None, flag="--judge-base-url", help="Endpoint (default $DELTALENS_JUDGE_BASE_URL)."
    )
    api_key_env: str | None = option(
        "OPENAI_API_KEY", flag="--api-key-env", help="Env variable holding the key."
    )
    batch_size: int = option(16, flag="--batch-size", help="Prompts per forward pass.")
    seed: int = option(0, flag="--seed", help="Seed of the random scoring prompts.")

    def validate(self) -> None:
        for name in ("n_explain", "ngram", "top_tokens", "batch_size"):
            at_least(self, name, 1)
        for name in ("n_score_top", "n_score_random", "logit_tokens", "context"):
            at_least(self, name, 0)
        one_of(self, "explainer", EXPLAINERS)
        one_of(self, "simulator", SIMULATORS)

    def judge(self) -> Any:
        """The :class:`~deltalens.judges.OpenAIJudge` of the LLM settings."""
        from ..judges import OpenAIJudge

        return OpenAIJudge(self.judge_model, self.judge_base_url, api_key_env=self.api_key_env)


@register_result
@dataclass
class ExplainResult(StageResult):
    """One record per latent: ``index``, ``description``, ``source``, ``simulation`` (r and the
    simulator), the offline description and its r, and the evidence (``components``)."""

    KIND: ClassVar[str] = "inverse explanations"
    FILENAME: ClassVar[str] = EXPLANATIONS_FILE

    explanations: list[dict[str, Any]]
    sae: str
    site: str
    config: dict[str, Any]

    def descriptions(self) -> dict[int, str]:
        return {int(e["index"]): str(e["description"]) for e in self.explanations}

    def mean_r(self) -> float | None:
        rs = [e["simulation"]["r"] for e in self.explanations if e["simulation"]["r"] is not None]
        return float(np.mean(rs)) if rs else None

    def summary(self) -> dict[str, Any]:
        return {
            "latents": len(self.explanations),
            "explainer": self.config.get("explainer"),
            "simulator": self.config.get("simulator"),
            "mean_simulation_r": self.mean_r(),
            "first": [f"{e['index']}: {e['description']}"[:100] for e in self.explanations[:5]],
        }


# ---- per-token activations of chosen prompts -------------------------------------------------
def _prompt_sets(coll: Any, latent: int, cfg: ExplainConfig, rng: np.random.Generator) -> tuple[list, list]:
    col = coll.max[:, latent].toarray().ravel()
    order = [int(p) for p in np.argsort(-col, kind="stable") if col[p] > 0]
    explain = order[: cfg.n_explain]
    top = order[cfg.n_explain : cfg.n_explain + cfg.n_score_top]
    rest = np.setdiff1d(np.arange(coll.n_prompts), np.asarray(explain + top, dtype=np.int64))
    rand = (
        rng.choice(rest, size=min(cfg.n_score_random, len(rest)), replace=False).tolist() if len(rest) else []
    )
    return explain, top + [int(p) for p in rand]


def token_activations(
    lm: Any, sae: Any, texts: Sequence[str], latents: Sequence[int], positions: str, max_length: int,
    batch_size: int = 16,
) -> list[tuple[list[int], np.ndarray]]:  # fmt: skip
    """Per text: the selected tokens' ids and their activations ``[T, len(latents)]``."""
    import torch

    from ..features.latents import iter_latents

    idx = torch.as_tensor(list(latents), dtype=torch.long)
    out: list[tuple[list[int], list[np.ndarray]]] = [([], []) for _ in texts]
    for lb in iter_latents(
        lm, [sae], list(texts), positions, batch_size=batch_size, max_length=max_length, progress=False
    ):
        b, f = lb.batch, lb.latents[0][:, idx].float().cpu().numpy()
        for r, s in enumerate(b.seq_ids.tolist()):
            out[s][0].append(int(b.token_ids[r]))
            out[s][1].append(f[r])
    return [(ids, np.asarray(a, dtype=np.float64).reshape(len(ids), len(idx))) for ids, a in out]


# ---- offline explanation -----------------------------------------------------------------------
def _q(s: str) -> str:
    return repr(s)


def offline_explanation(
    tokens: list[list[str]], acts: list[np.ndarray], cfg: ExplainConfig, promotes: list[str], optimized: str | None
) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """The offline description (module docstring) from the explanation set's token strings and
    activations, and its evidence."""
    mass: Counter[str] = Counter()
    grams: Counter[str] = Counter()
    contexts = []
    for toks, a in zip(tokens, acts):
        for t, v in zip(toks, a):
            if v > 0 and t.strip():
                mass[t] += float(v)
        if len(a) and a.max() > 0:
            p = int(np.argmax(a))
            grams["".join(toks[max(0, p - cfg.ngram + 1) : p + 1])] += 1
            contexts.append("".join(toks[max(0, p - cfg.context) : p]) + "«" + toks[p] + "»")
    top = [t for t, _ in mass.most_common(cfg.top_tokens)]
    ngrams = [g for g, _ in grams.most_common(3)]
    parts = []
    if top:
        parts.append("fires on " + ", ".join(map(_q, top)))
        extra = [g for g in ngrams if g.strip() not in {t.strip() for t in top}]
        if extra:
            parts[-1] += " (as in " + ", ".join(map(_q, extra[:2])) + ")"
    if promotes:
        parts.append("promotes " + ", ".join(map(_q, promotes)))
    if optimized:
        parts.append("optimised prompt: " + _q(optimized))
    desc = "; ".join(parts) or "no activating tokens in the collection"
    comp = {
        "top_tokens": top,
        "ngrams": ngrams,
        "contexts": contexts,
        "promotes": promotes,
        "optimized": optimized,
    }
    return desc, comp


# ---- simulation --------------------------------------------------------------------------------
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)+)'|\"((?:[^\"\\]|\\.)+)\"")
_OUTPUT_SIDE = re.compile(r"\b(promotes|optimised prompt)\b", re.I)
_STOP = frozenset("the and for with that this word words token tokens fires feature detects about".split())


def explanation_words(explanation: str) -> set[str]:
    """The offline simulator's word set (module docstring): the quoted strings of the input side
    of the explanation (before ``promotes`` / ``optimised prompt``), stripped and lower-cased; its
    words of 3+ letters (a few stop words left out) when nothing is quoted."""
    text = _OUTPUT_SIDE.split(explanation, maxsplit=1)[0]
    quoted = [(a or b).strip().lower() for a, b in _QUOTED.findall(text)]
    if quoted:
        return {q for q in quoted if q}
    return {w.lower() for w in re.findall(r"[A-Za-z]{3,}", text)} - _STOP


def simulate_offline(explanation: str, tokens: list[list[str]]) -> list[np.ndarray]:
    """Token-overlap predictions ``p_t ∈ {0, 1}`` (module docstring)."""
    words = explanation_words(explanation)
    return [np.asarray([float(t.strip().lower() in words) for t in toks]) for toks in tokens]


SIM_PROMPT = """We are studying a feature of a language model. Its explanation: "{explanation}"

Below is a text split into numbered tokens. For every token predict how strongly the feature activates on it, from 0 (not at all) to 10 (maximally). Reply with one line per token: the token's number, a tab, and the value; nothing else.

{tokens}"""  # noqa: E501

EXPLAIN_PROMPT = """We are studying a feature of a language model. Below are texts where it activates; each token is followed by its activation in brackets (0-10), tokens with 0 shown bare.

{examples}

What does the feature detect? Answer in one short phrase, on one line starting with "Explanation:"."""  # noqa: E501


def simulate_llm(judge: Any, explanation: str, tokens: list[list[str]]) -> list[np.ndarray]:
    """LLM predictions (module docstring); unparsed or missing tokens predict 0."""
    prompts = [
        SIM_PROMPT.format(
            explanation=explanation, tokens="\n".join(f"{j}\t{t!r}" for j, t in enumerate(toks))
        )
        for toks in tokens
    ]
    out = []
    for toks, reply in zip(tokens, judge.complete(prompts)):
        p = np.zeros(len(toks))
        for m in re.finditer(r"^\s*(\d+)\s*[\t:,]\s*(\d+(?:\.\d+)?)", reply or "", re.M):
            j, v = int(m.group(1)), float(m.group(2))
            if 0 <= j < len(toks):
                p[j] = min(max(v, 0.0), 10.0)
        out.append(p)
    return out


def llm_explanation(judge: Any, tokens: list[list[str]], acts: list[np.ndarray]) -> str | None:
    """The LLM's explanation of the explanation set (module docstring), ``None`` on failure."""
    top = max((float(a.max()) for a in acts if len(a)), default=0.0)
    lines = []
    for toks, a in zip(tokens, acts):
        cells = [
            f"{t}[{round(10 * v / top)}]" if top > 0 and round(10 * v / top) > 0 else t
            for t, v in zip(toks, a)
        ]
        lines.append("".join(cells))
    reply = judge.complete([EXPLAIN_PROMPT.format(examples="\n\n".join(lines))], max_tokens=60)[0]
    if not reply:
        return None
    m = re.search(r"Explanation:\s*(.+)", reply)
    text = (m.group(1) if m else reply).strip().splitlines()[0].strip()
    return text or None


def pearson(pred: np.ndarray, real: np.ndarray) -> float | None:
    """``r`` of the module docstring; ``None`` when either side is constant (or empty)."""
    p, a = np.asarray(pred, dtype=np.float64), np.asarray(real, dtype=np.float64)
    if len(p) < 2 or p.std() == 0 or a.std() == 0:
        return None
    return float(np.corrcoef(p, a)[0, 1])


def score_explanation(
    explanation: str, tokens: list[list[str]], acts: list[np.ndarray], simulator: str = "offline", judge: Any = None
) -> float | None:  # fmt: skip
    """Simulation score ``r`` of ``explanation`` on scoring texts (module docstring)."""
    pred = (
        simulate_llm(judge, explanation, tokens)
        if simulator == "llm"
        else simulate_offline(explanation, tokens)
    )
    if not pred:
        return None
    return pearson(np.concatenate(pred), np.concatenate([np.asarray(a) for a in acts]))


# ---- the stage -----------------------------------------------------------------------------------
def explain_latents(
    lm: Any,
    sae: Any,
    coll: Any,
    latents: Sequence[int],
    config: ExplainConfig | None = None,
    *,
    optimized: dict[int, Any] | None = None,
    judge: Any = None,
) -> ExplainResult:
    """Explain and score ``latents`` (module docstring). ``optimized`` maps a latent to its
    :class:`~.optimize.OptimizeResult`; ``judge`` overrides the LLM client of the config."""
    from ..features.dashboard import top_logit_tokens
    from .collect import check_latent

    cfg = config or ExplainConfig()
    ids = [check_latent(i, int(coll.d_sae)) for i in latents]
    if int(sae.d_sae) != int(coll.d_sae):
        raise ConfigError(f"the SAE has {sae.d_sae} latents but the collection was made with {coll.d_sae}")
    if (cfg.explainer == "llm" or cfg.simulator == "llm") and judge is None:
        judge = cfg.judge()
        judge.check()
    rng = np.random.default_rng(cfg.seed)
    sets = {i: _prompt_sets(coll, i, cfg, rng) for i in ids}
    need = sorted({p for e, s in sets.values() for p in e + s})
    ccfg = coll.config
    acts = token_activations(
        lm, sae, [coll.prompts[p] for p in need], ids, ccfg.get("positions", "all[1:]"),
        int(ccfg.get("max_length", 64)), cfg.batch_size,
    ) if need else []  # fmt: skip
    row = {p: k for k, p in enumerate(need)}
    promotes = top_logit_tokens(lm, sae, ids, cfg.logit_tokens) if cfg.logit_tokens else {}
    cache: dict[int, str] = {}

    def tok(v: int) -> str:
        if v not in cache:
            cache[v] = lm.tokenizer.decode([v])
        return cache[v]

    out = []
    for j, i in enumerate(ids):
        ex, sc = sets[i]
        ex_t = [[tok(v) for v in acts[row[p]][0]] for p in ex]
        ex_a = [acts[row[p]][1][:, j] for p in ex]
        sc_t = [[tok(v) for v in acts[row[p]][0]] for p in sc]
        sc_a = [acts[row[p]][1][:, j] for p in sc]
        opt = optimized.get(i) if optimized else None
        opt_text = getattr(opt, "text", None) if opt is not None else None
        desc, comp = offline_explanation(ex_t, ex_a, cfg, promotes.get(i, []), opt_text)
        r_off = score_explanation(desc, sc_t, sc_a, "offline")
        rec: dict[str, Any] = {
            "index": i,
            "description": desc,
            "source": "offline",
            "offline_description": desc,
            "offline_r": r_off,
            "components": comp,
            "explain_prompts": ex,
            "score_prompts": sc,
        }
        if cfg.explainer == "llm":
            text = llm_explanation(judge, ex_t, ex_a)
            if text:
                rec.update(description=text, source=f"llm:{judge.model}")
        r = (
            score_explanation(rec["description"], sc_t, sc_a, cfg.simulator, judge)
            if (cfg.simulator == "llm" or rec["source"] != "offline")
            else r_off
        )
        rec["simulation"] = {
            "r": r,
            "simulator": cfg.simulator if cfg.simulator == "offline" else f"llm:{judge.model}",
            "tokens": int(sum(len(a) for a in sc_a)),
        }
        out.append(rec)
    return ExplainResult(out, str(getattr(coll, "sae", "")), str(getattr(coll, "site", "")), cfg.to_dict())


# ---- where explanations go -------------------------------------------------------------------
def write_for_sae(result: ExplainResult, sae_dir: str | Path) -> Path:
    """Save ``explanations.json`` in the SAE's directory, where circuit commands look for
    latent descriptions (:func:`deltalens.circuits.descriptions.latent_descriptions`)."""
    d = Path(sae_dir)
    if not d.is_dir():
        raise DataFormatError(f"{d}: not an SAE directory")
    return result.save(d)


def apply_to_dashboards(result: ExplainResult, dashboards: str | Path) -> int:
    """Add each explanation to its feature dashboard (Neuronpedia's ``explanations`` list of
    ``{description, typeName, explanationModelName, score}``) and to the dashboard index entry
    (``description``); returns how many dashboards were updated. Files are replaced atomically."""
    from ..io import read_json, write_json

    root = Path(dashboards)
    index_path = root / "index.json" if root.is_dir() else root
    index = read_json(index_path)
    if not isinstance(index, dict) or "features" not in index:
        raise DataFormatError(f"{index_path}: not a feature dashboard index")
    by_id = {int(e["index"]): e for e in result.explanations}
    n = 0
    for entry in index["features"]:
        e = by_id.get(int(entry.get("index", -1)))
        if e is None:
            continue
        f = index_path.parent / str(entry.get("file", f"features/{entry['index']}.json"))
        if not f.is_file():
            continue
        rec = read_json(f)
        expl = {
            "description": e["description"],
            "typeName": "deltalens-" + e["source"].split(":")[0],
            "explanationModelName": e["source"],
            "score": e["simulation"]["r"],
        }
        rec["explanations"] = [expl] + [
            x for x in rec.get("explanations", []) if x.get("typeName") != expl["typeName"]
        ]
        write_json(f, rec, indent=None)
        entry["description"] = e["description"]
        n += 1
    write_json(index_path, index)
    return n
