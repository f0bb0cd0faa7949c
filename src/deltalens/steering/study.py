"""``deltalens steer summary``: every steer run of one trait joined into the seed's Phase-1 table.

One row per vector source × extraction position × method (the seed's ``inst_md`` …
``nat15_pr``), read from the ``steering.json`` runs under ``steering/<format>/<trait>/``:

* **best layer**, **max Δ at coherence ≥ 80 / ≥ 70**, the coefficient where coherence first
  drops below 80 (:func:`~deltalens.steering.search.checkpoint_summary`);
* **bootstrap CI** of the ≥ 70 Δ over questions: resample the questions with replacement
  (``n_boot`` times), ``Δ* = mean_q∈sample(t_q − b_q)`` with ``t_q`` the best configuration's
  score and ``b_q`` the unsteered baseline's on question ``q``; the 2.5 / 97.5 percentiles;
* **anti-steerable fraction**: ``#{q : t_q − b_q < 0} / #q`` at that configuration (steering
  moved these questions the wrong way);
* **consistency** of the training differences: ``mean_i cos(a⁺_i − a⁻_i, v)`` over the
  extraction pairs ``i`` (positive and negative responses paired by order) at the best
  layer, ``v`` the vector — high consistency predicts steerability;
* the **AxBench harmonic score** (when the judge also scored relevance, i.e. an LLM judge):
  :func:`harmonic_score` of the best configuration;
* the **prompting baseline** row: the steering questions asked under the trait's instruction
  system prompts, no vector (the bar steering has to clear).

"Does extraction position matter": for each method, a paired sign-flip permutation test on the
per-question Δ of the best configuration between every two natural positions
(``[:5]`` vs ``[:10]`` vs ``[:15]``): ``p = P(|mean(s_q·d_q)| ≥ |mean(d_q)|)`` for random
signs ``s_q``, ``d_q`` the per-question difference; Holm-corrected over the pairs.

Runs of different models (weights hash) or judges cannot be joined: one error names both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataFormatError
from ..experiment import Experiment
from ..io import atomic_write
from ..stage import StageConfig, StageResult, option, register_result
from .results import ResultsLog, SteeringRecord
from .runs import MIN_COHERENCE, SteeringRun, _csv

SOURCE_KEYS = {"instruction": "inst", "natural": "nat"}
METHOD_KEYS = {"mean_diff": "md", "probe": "pr", "pca": "pca"}


@dataclass
class SummaryConfig(StageConfig):
    """Settings of ``deltalens steer summary``."""

    n_boot: int = option(2000, flag="--n-boot", help="Bootstrap resamples over questions.")
    n_perm: int = option(10000, flag="--n-perm", help="Sign-flip permutations of the position test.")
    seed: int = option(0, flag="--seed", help="Random seed of the bootstrap and the permutations.")


def _per_question(rec: SteeringRecord) -> dict[str, float]:
    out = {}
    for r in rec.responses:
        v = r.get("trait")
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out[str(r["question"])] = float(v)
    return out


def paired_deltas(rec: SteeringRecord, base: SteeringRecord) -> dict[str, float]:
    """Per question: ``t_q − b_q`` (questions scored in both)."""
    t, b = _per_question(rec), _per_question(base)
    return {q: t[q] - b[q] for q in t if q in b}


def harmonic_score(rec: SteeringRecord) -> float | None:
    """AxBench-style harmonic score: per response ``H = 3 / (1/concept + 1/instruction + 1/fluency)``
    with concept = trait, instruction = relevance, fluency = coherence (0–100; ``H = 0`` when any is
    0), averaged over responses. ``None`` unless the judge scored relevance (LLM judges)."""
    hs = []
    for r in rec.responses:
        vals = [r.get("trait"), r.get("relevance"), r.get("coherence")]
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals):
            continue
        vals = [float(v) for v in vals]
        hs.append(0.0 if min(vals) <= 0 else 3.0 / sum(1.0 / v for v in vals))
    return float(np.mean(hs)) if hs else None


def bootstrap_ci(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile 95 % CI of the mean of ``x`` under resampling with replacement."""
    if len(x) == 0:
        return (float("nan"), float("nan"))
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    means = x[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def sign_flip_p(d: np.ndarray, n_perm: int, rng: np.random.Generator) -> float:
    """Two-sided paired permutation p-value of ``mean(d) ≠ 0`` (exact when 2^n ≤ n_perm)."""
    n = len(d)
    if n == 0:
        return float("nan")
    obs = abs(d.mean())
    if 2**n <= n_perm:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
    else:
        signs = rng.choice([-1, 1], size=(n_perm, n))
    stats = np.abs((signs * d).mean(axis=1))
    return float((stats >= obs - 1e-12).mean())


def holm(ps: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as ``ps``)."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out = [0.0] * len(ps)
    run = 0.0
    for k, i in enumerate(order):
        run = max(run, min(1.0, (len(ps) - k) * ps[i]))
        out[i] = run
    return out


def pair_consistency(
    exp: Experiment, trait: str, variant: str, position: str, layer: int, vector: Any
) -> float | None:
    """``mean_i cos(a⁺_i − a⁻_i, v)`` over extraction pairs (paired by order within polarity)."""
    import torch

    from ..store import ActivationStore

    d = exp.extraction_store_dir(trait, variant, position, "resid")
    st = ActivationStore(d)
    if not st.exists:
        return None
    acts = st.read((layer, "resid")).float()
    seq = np.asarray(st.index(["seq_id"])["seq_id"].to_numpy(), dtype=np.int64)
    n_pos = int(st.manifest.get("n_pos") or 0) or None
    if n_pos is None:  # the extraction store lists positives first, then negatives
        n_pos = len(seq) // 2
    order = np.argsort(seq, kind="stable")
    seq = seq[order]
    acts = acts[torch.from_numpy(order)]
    pos, neg = acts[torch.from_numpy(seq < n_pos)], acts[torch.from_numpy(seq >= n_pos)]
    return mean_pair_cosine(pos, neg, vector)


def mean_pair_cosine(pos: Any, neg: Any, vector: Any) -> float | None:
    """``mean_i cos(pos_i − neg_i, v)`` over the first ``min(len(pos), len(neg))`` pairs."""
    import torch

    k = min(len(pos), len(neg))
    if k == 0:
        return None
    diff = pos[:k].float() - neg[:k].float()
    v = vector.float().reshape(1, -1)
    cos = torch.nn.functional.cosine_similarity(diff, v, dim=1)
    return float(cos.mean())


def find_runs(exp: Experiment, name: str) -> list[SteeringRun]:
    """Every saved steer run of trait ``name`` (both formats) in ``exp``."""
    runs = []
    for fmt in ("instruction", "natural"):
        root = exp.root / "steering" / fmt / name
        for p in sorted(root.glob("*/*/steering.json")):
            runs.append(SteeringRun.load(p.parent))
    if not runs:
        raise DataFormatError(
            f"no steer runs of trait '{name}' under {exp.root / 'steering'}/{{instruction,natural}}/{name}/; "
            "run deltalens steer first"
        )
    return runs


def _check_same(runs: list[SteeringRun]) -> None:
    first = runs[0]
    for r in runs[1:]:
        for what, a, b in (
            ("model", first.baseline.weights_hash, r.baseline.weights_hash),
            ("judge", first.judge, r.judge),
        ):
            if a != b:
                raise DataFormatError(
                    f"cannot join steer runs of different {what}s: {first.log_path.parent / 'steering.json'} "
                    f"({what} {first.baseline.model if what == 'model' else a}, {a}) vs "
                    f"{r.log_path.parent / 'steering.json'} ({r.baseline.model if what == 'model' else b}, {b})"
                )


def _best_record(run: SteeringRun, method: str, min_coh: float) -> SteeringRecord | None:
    ok = [r for r in run.records if r.method == method and r.kind == "single" and r.coherent(min_coh)]
    return max(ok, key=lambda r: r.trait_mean or 0.0) if ok else None


def _short_pos(position: str) -> str:
    inner = position[position.find("[") + 1 : position.rfind("]")]
    return "" if inner in (":", "") else inner.lstrip(":")


@register_result
@dataclass
class TraitSummary(StageResult):
    """The joined Phase-1 table of one trait (see the module docstring)."""

    KIND = "steering summary"
    FILENAME = "summary.json"
    CSV = "summary.csv"

    trait: str
    rows: list[dict[str, Any]]
    prompting: dict[str, Any] | None
    baseline: dict[str, Any]
    position_test: list[dict[str, Any]]
    model: str | None = None
    judge: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    COLUMNS = (
        "key",
        "source",
        "variant",
        "position",
        "method",
        "best_layer",
        "max_delta_coh80",
        "max_delta_coh70",
        "ci70_lo",
        "ci70_hi",
        "coef_coh_below_80",
        "anti_steerable",
        "consistency",
        "harmonic",
        "n_questions",
        "n_configs",
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "trait": self.trait,
            "rows": self.rows,
            "prompting": self.prompting,
            "baseline": self.baseline,
            "position_test": self.position_test,
            "model": self.model,
            "judge": self.judge,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TraitSummary:
        return cls(
            str(d["trait"]),
            list(d["rows"]),
            d.get("prompting"),
            dict(d["baseline"]),
            list(d.get("position_test") or []),
            d.get("model"),
            str(d.get("judge", "")),
            dict(d.get("extra") or {}),
        )

    def save(self, directory: str | Path) -> Path:
        path = super().save(directory)
        atomic_write(Path(directory) / self.CSV, _csv(self.rows, self.COLUMNS))
        return path

    def summary(self) -> dict[str, Any]:
        best = max(self.rows, key=lambda r: r.get("max_delta_coh70") or float("-inf"), default=None)
        return {
            "trait": self.trait,
            "combinations": len(self.rows),
            "best": None if best is None else best["key"],
            "prompting_delta": None if self.prompting is None else self.prompting.get("delta"),
        }


def _only_result(root: Path) -> Path | None:
    found = sorted(root.glob("*/results.json")) if root.is_dir() else []
    return found[0] if len(found) == 1 else None


def summarize_trait(
    exp: Experiment,
    name: str,
    config: SummaryConfig | None = None,
    *,
    weight_diff: str | Path | None = None,
    activation_diff: str | Path | None = None,
) -> TraitSummary:
    """Join every steer run of trait ``name`` in ``exp`` (see the module docstring); saved as
    ``steering/summary/<name>/summary.json`` + ``summary.csv``. With a weight diff (given, or the
    experiment's only ``diff/weights/*/results.json``) and/or an activation similarity result,
    the phase cross-checks (:mod:`deltalens.steering.crosscheck`) are written next to it and
    summarised in ``extra["crosscheck"]``."""
    from ..vectors import VectorSet  # noqa: F401  (vector files are read through load_vector_set)
    from .extraction import load_vector_set

    cfg = config or SummaryConfig()
    name = name.split("/")[-1]
    runs = find_runs(exp, name)
    _check_same(runs)
    rng = np.random.default_rng(cfg.seed)
    rows: list[dict[str, Any]] = []
    per_q: dict[tuple[str, str], dict[str, dict[str, float]]] = {}  # (format, method) → position → deltas
    prompting = None
    for run in runs:
        fmt = run.trait.split("/")[0]
        variant = str(run.config.get("variant", ""))
        position = str(run.config.get("position", ""))
        p = run.extra.get("prompted")
        if p and prompting is None:
            log = ResultsLog(run.log_path)
            rec = log.latest(str(p["key"]))
            d = paired_deltas(rec, run.baseline) if rec is not None else {}
            x = np.array(list(d.values()))
            lo, hi = bootstrap_ci(x, cfg.n_boot, rng)
            prompting = {
                "trait": p["trait"],
                "coherence": p["coherence"],
                "delta": p["delta"],
                "ci_lo": lo,
                "ci_hi": hi,
                "anti_steerable": float((x < 0).mean()) if len(x) else None,
                "harmonic": None if rec is None else harmonic_score(rec),
                "from": run.trait,
            }
        for method, s in sorted(run.checkpoint.items()):
            best = _best_record(run, method, MIN_COHERENCE)
            deltas = paired_deltas(best, run.baseline) if best is not None else {}
            x = np.array(list(deltas.values()))
            lo, hi = bootstrap_ci(x, cfg.n_boot, rng)
            consistency = None
            if s.get("best_layer") is not None:
                try:
                    vs = load_vector_set(
                        exp, run.trait, variant, position, method, "resid", [int(s["best_layer"])]
                    )
                    v = vs[int(s["best_layer"])].vector
                    consistency = pair_consistency(exp, run.trait, variant, position, int(s["best_layer"]), v)
                except DataFormatError:
                    consistency = None
            key = f"{SOURCE_KEYS.get(fmt, fmt)}{_short_pos(position)}_{METHOD_KEYS.get(method, method)}"
            rows.append(
                {
                    "key": key,
                    "source": fmt,
                    "variant": variant,
                    "position": position,
                    "method": method,
                    "best_layer": s.get("best_layer"),
                    "max_delta_coh80": s.get("max_delta_coh80"),
                    "max_delta_coh70": s.get("max_delta_coh70"),
                    "ci70_lo": lo,
                    "ci70_hi": hi,
                    "coef_coh_below_80": s.get("coef_coh_below_80"),
                    "anti_steerable": float((x < 0).mean()) if len(x) else None,
                    "consistency": consistency,
                    "harmonic": None if best is None else harmonic_score(best),
                    "n_questions": len(x),
                    "n_configs": s.get("n_configs"),
                }
            )
            per_q.setdefault((fmt, method), {})[position] = deltas
    rows.sort(key=lambda r: (r["source"] != "instruction", int(_short_pos(r["position"]) or 0), r["method"]))
    tests = []
    for (fmt, method), by_pos in sorted(per_q.items()):
        positions = sorted(by_pos, key=lambda p: int(_short_pos(p) or 0))
        pairs = [(a, b) for i, a in enumerate(positions) for b in positions[i + 1 :]]
        raw = []
        for a, b in pairs:
            qs = [q for q in by_pos[a] if q in by_pos[b]]
            d = np.array([by_pos[a][q] - by_pos[b][q] for q in qs])
            raw.append(
                (a, b, len(qs), float(d.mean()) if len(d) else float("nan"), sign_flip_p(d, cfg.n_perm, rng))
            )
        adj = holm([r[4] for r in raw]) if raw else []
        for (a, b, n, md, p), pa in zip(raw, adj):
            tests.append(
                {
                    "source": fmt,
                    "method": method,
                    "a": a,
                    "b": b,
                    "n": n,
                    "mean_diff": md,
                    "p": p,
                    "p_holm": pa,
                }
            )
    b = runs[0].baseline
    res = TraitSummary(
        name,
        rows,
        prompting,
        {"trait": b.trait_mean, "coherence": b.coherence_mean},
        tests,
        b.model,
        runs[0].judge,
        {"runs": [str(r.log_path.parent) for r in runs]},
    )
    out = exp.root / "steering" / "summary" / name
    w = weight_diff or _only_result(exp.root / "diff" / "weights")
    a = activation_diff or _only_result(exp.root / "diff" / "activations")
    if w is not None:
        from .crosscheck import cross_check

        cc = cross_check(name, [r.layers for r in runs], w, a)
        cc.save(out)
        res.extra["crosscheck"] = cc.summary()
    res.save(out)
    return res
