"""The report's first section: per analysis present, its headline result with its control.

Every statement is computed from a saved result (the file is named in the row), never written by
hand. A *finder* reads one kind of result and returns :class:`Finding` rows; each names the control
it is compared with, or says that the experiment has none (``control=None`` renders as "no control:
…" with the reason). Finders register with :func:`finder`; a finder that fails on a broken artifact
yields one row saying so instead of hiding the others.

Headlines per analysis (the numbers are the fields of the saved results):

- activation-difference lens: ``h/20`` = topic words among the top 20 tokens of ``+δ`` at the layer of
  largest ``‖δ‖``; control = the same count for a null organism (same recipe, no behaviour).
- weight diff: ``‖Δθ‖/‖θ‖`` over all tensors; control = the null organism's value.
- output diff: mean ``KL(ft‖base)`` per token; control = the null organism's value.
- steering: the largest trait ``Δ = trait(steered) − trait(unsteered)`` with coherence ≥ 70;
  control = the unsteered baseline (a prompting baseline when one was run).
- SAE: explained variance ``1 − Σ‖x−x̂‖²/Σ‖x−x̄‖²`` and CE recovered
  ``(CE_abl − CE_sae)/(CE_abl − CE_clean)`` against zero and mean ablation (the controls).
- circuits: faithfulness ``(F(C) − F(∅))/(F(M) − F(∅))`` of the smallest top-k circuit reaching 0.8
  (or the best), next to its complement ``(F(M∖C) − F(∅))/(F(M) − F(∅))``; attribution vs exact
  patching Pearson r.
- causal: the cell with the largest ``|z|`` (effect against the band of matched random groups).
- features: alive / dead latents and universal latents (no control: descriptive statistics).
- probes: the best CV AUROC next to shuffled labels, random latents and the dense baseline.
- inverse: prompts found / optimised (no control unless the run has one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..experiment import Experiment
from .html import esc, fmt, json_file, section, slug


@dataclass(frozen=True)
class Finding:
    """One headline: what was found, what it is compared with, and where the evidence is."""

    analysis: str
    headline: str
    control: str | None
    section: str  # section title the row links to
    source: str  # the saved result the numbers come from (relative to the experiment)
    no_control: str = "none in this experiment"
    anchor: str | None = None  # a finer anchor inside the section

    @property
    def href(self) -> str:
        return "#" + (self.anchor or slug(self.section))


Finder = Callable[[Experiment], list[Finding]]
_FINDERS: list[tuple[int, str, Finder]] = []


def finder(order: int, name: str) -> Callable[[Finder], Finder]:
    """Register a finder (decorator); lower ``order`` comes first in the table."""

    def deco(fn: Finder) -> Finder:
        _FINDERS[:] = [f for f in _FINDERS if f[1] != name]
        _FINDERS.append((order, name, fn))
        return fn

    return deco


def collect(exp: Experiment) -> list[Finding]:
    """Every finding of ``exp``, in finder order."""
    out: list[Finding] = []
    for _, name, fn in sorted(_FINDERS, key=lambda f: f[0]):
        try:
            out += fn(exp)
        except Exception as exc:  # a broken artifact must not hide the other findings
            out.append(Finding(name, f"could not read: {type(exc).__name__}: {exc}", None, "Overview", ""))
    return out


def _rel(exp: Experiment, p: Path) -> str:
    try:
        return str(p.relative_to(exp.root))
    except ValueError:
        return str(p)


# ---- model diff ------------------------------------------------------------------------------


def _organism(exp: Experiment, name: str) -> dict[str, Any]:
    p = json_file(exp.organism_dir(name) / "provenance.json")
    return p if isinstance(p, dict) else {}


def _diff_dirs(exp: Experiment, kind: str) -> list[Path]:
    root = exp.diff_dir(kind)
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _nulls(exp: Experiment, kind: str) -> list[Path]:
    return [d for d in _diff_dirs(exp, kind) if _organism(exp, d.name).get("null_organism")]


@finder(10, "activation-difference lens")
def _lens(exp: Experiment) -> list[Finding]:
    from ..diff.activations import DifferenceLens
    from ..diff.lens import topic_hits
    from .sections_diff import anchor

    def load(d: Path) -> Any:
        return DifferenceLens.load(d) if (d / DifferenceLens.FILENAME).is_file() else None

    out = []
    nulls = _nulls(exp, "activations")
    for d in _diff_dirs(exp, "activations"):
        prov = _organism(exp, d.name)
        if prov.get("null_organism") or (lens := load(d)) is None:
            continue
        words = prov.get("topic_words") or []
        top = lens.summary_max
        n = min(20, len(top["pos"]))
        if words:
            hits = topic_hits(top["pos"][:20], words)
            head = (
                f"{d.name} vs base: activation-difference lens at layer {top['layer']} (largest ‖δ‖) puts "
                f"{len(hits)}/{n} topic tokens in its top {n}"
                + (f" ({', '.join(h.strip() for h in hits[:6])})" if hits else "")
            )
            ctl = []
            for nd in nulls:
                nl = load(nd)
                if nl is not None:
                    nh = topic_hits(nl.summary_max["pos"][:20], words)
                    ctl.append(f"null organism {nd.name}: {len(nh)}/{min(20, len(nl.summary_max['pos']))}")
            control = "; ".join(ctl) or None
        else:
            head = f"{d.name} vs base: top tokens of +δ at layer {top['layer']}: " + " ".join(
                repr(t[0]) for t in top["pos"][:8]
            )
            control = None
        out.append(
            Finding(
                "model diff · activations",
                head,
                control,
                "Model diff",
                _rel(exp, d / DifferenceLens.FILENAME),
                no_control="no null organism was diffed in this experiment",
                anchor=anchor("activations", d.name),
            )
        )
    return out


@finder(12, "weight diff")
def _weights(exp: Experiment) -> list[Finding]:
    from ..diff.weights import WeightDiff
    from .sections_diff import anchor

    def load(d: Path) -> Any:
        return WeightDiff.load(d) if (d / WeightDiff.FILENAME).is_file() else None

    nulls = {d.name: load(d) for d in _nulls(exp, "weights")}
    out = []
    for d in _diff_dirs(exp, "weights"):
        if d.name in nulls or (r := load(d)) is None:
            continue
        s = r["summary"]
        ctl = "; ".join(
            f"null organism {k}: ‖Δθ‖/‖θ‖ = {v['summary']['total_rel']:.3g}" for k, v in nulls.items() if v
        )
        out.append(
            Finding(
                "model diff · weights",
                f"{d.name} vs base: {s['n_changed']}/{s['n_tensors']} tensors changed, ‖Δθ‖/‖θ‖ = "
                f"{s['total_rel']:.3g}, largest relative change at layer {s['top_layer']}",
                ctl or None,
                "Model diff",
                _rel(exp, d / WeightDiff.FILENAME),
                no_control="no null organism was diffed in this experiment",
                anchor=anchor("weights", d.name),
            )
        )
    return out


@finder(14, "output diff")
def _outputs(exp: Experiment) -> list[Finding]:
    from ..diff.lens import topic_hits
    from ..diff.outputs import OutputDiff
    from .sections_diff import anchor

    def load(d: Path) -> Any:
        return OutputDiff.load(d) if (d / OutputDiff.FILENAME).is_file() else None

    nulls = {d.name: load(d) for d in _nulls(exp, "outputs")}
    out = []
    for d in _diff_dirs(exp, "outputs"):
        if d.name in nulls or (r := load(d)) is None:
            continue
        words = _organism(exp, d.name).get("topic_words") or []
        extra = ""
        if words:
            extra = (
                f"; {len(topic_hits(r['rose_most'][:20], words))}/20 topic tokens among those that rose most"
            )
        ctl = "; ".join(f"null organism {k}: {v['mean_kl']:.4g}" for k, v in nulls.items() if v)
        out.append(
            Finding(
                "model diff · outputs",
                f"{d.name} vs base: mean KL(ft‖base) = {r['mean_kl']:.4g} nats/token over {r['n_positions']} "
                f"positions{extra}",
                ctl or None,
                "Model diff",
                _rel(exp, d / OutputDiff.FILENAME),
                no_control="no null organism was diffed in this experiment",
                anchor=anchor("outputs", d.name),
            )
        )
    return out


# ---- steering --------------------------------------------------------------------------------


@finder(20, "steering")
def _steering(exp: Experiment) -> list[Finding]:
    from ..steering.runs import SteeringRun

    root = exp.root / "steering"
    out = []
    for p in sorted(root.rglob("steering.json")) if root.is_dir() else []:
        run = SteeringRun.load(p.parent)
        base = run.baseline
        for method, c in sorted(run.checkpoint.items()):
            best = c.get("at_coh70") or {}
            if best:
                head = (
                    f"best steering of '{run.trait}': {method} L{best['layer']} c{best['coef']:g}, trait Δ "
                    f"{c['max_delta_coh70']:+.1f} at coherence {best['coherence']:.0f}"
                )
            else:
                head = f"'{run.trait}' with {method}: no configuration kept coherence ≥ 70"
            ctl = f"unsteered: trait {fmt(base.trait_mean)}, coherence {fmt(base.coherence_mean)}"
            prompting = (run.extra or {}).get("prompting_baseline")
            if isinstance(prompting, dict) and prompting.get("trait_mean") is not None:
                ctl += f"; prompting baseline: trait {fmt(prompting['trait_mean'])}"
            else:
                ctl += " (no prompting baseline run)"
            out.append(Finding("steering", head, ctl, "Steering", _rel(exp, p)))
    return out


# ---- SAEs ------------------------------------------------------------------------------------


@finder(30, "SAE evaluation")
def _sae(exp: Experiment) -> list[Finding]:
    from ..sae.eval import EVAL_JSON, SAEEval

    root = exp.root / "saes"
    out = []
    for p in sorted(root.rglob(EVAL_JSON)) if root.is_dir() else []:
        ev = SAEEval.load(p.parent)
        r, loss = ev.reconstruction or {}, ev.loss or {}
        bits = [f"{ev.sae} at {ev.site}"]
        if r:
            bits.append(f"EV {r['explained_variance']:.3f}, L0 {r['l0']:.1f}, {r['dead']} dead")
        if loss:
            bits.append(f"CE recovered {loss['ce_recovered_zero']:.3f} / {loss['ce_recovered_mean']:.3f}")
        ctl = (
            f"zero / mean ablation: CE {loss['ce_zero']:.3f} / {loss['ce_mean']:.3f} vs clean "
            f"{loss['ce_clean']:.3f}, with SAE {loss['ce_sae']:.3f}"
            if loss
            else None
        )
        out.append(
            Finding(
                "SAE",
                ": ".join([bits[0], ", ".join(bits[1:])]),
                ctl,
                "SAEs",
                _rel(exp, p),
                no_control="no CE evaluation (reconstruction only)",
            )
        )
    return out


# ---- circuits --------------------------------------------------------------------------------


@finder(40, "circuits")
def _circuits(exp: Experiment) -> list[Finding]:
    root = exp.root / "circuits"
    out = []
    for p in sorted(root.rglob("faithfulness.json")) if root.is_dir() else []:
        d = json_file(p) or {}
        ks, fa, co = d.get("k") or [], d.get("faithfulness") or [], d.get("completeness") or []
        if not ks:
            continue
        i = next((j for j, f in enumerate(fa) if f is not None and f >= 0.8), None)
        reach = i is not None
        i = i if reach else max(range(len(fa)), key=lambda j: fa[j])
        head = (
            f"{_rel(exp, p.parent)}: top {ks[i]} of {d.get('n_nodes')} {d.get('nodes')} nodes recover "
            f"faithfulness {fa[i]:.2f}" + ("" if reach else " (best; 0.8 not reached)")
        )
        ctl = f"complement (model minus circuit) {co[i]:.2f}; F(model) {d['F_model']:.3g}, F(all ablated) {d['F_empty']:.3g}"  # noqa: E501
        corr = json_file(p.parent / "correlation.json") or {}
        r = (corr.get("pearson_r") or {}).get("all") if isinstance(corr.get("pearson_r"), dict) else None
        if r is not None:
            ctl += f"; attribution vs exact patching r = {r:.2f}"
        out.append(Finding("circuits", head, ctl, "Circuits", _rel(exp, p)))
    return out


# ---- causal ----------------------------------------------------------------------------------


@finder(50, "causal")
def _causal(exp: Experiment) -> list[Finding]:
    root = exp.causal_dir()
    out = []
    for p in sorted(root.rglob("causal.json")) if root.is_dir() else []:
        data = json_file(p) or {}
        rows = [r for r in data.get("rows") or [] if r.get("z") is not None and r.get("effect") is not None]
        if data.get("kind") != "causal experiments" or not rows:
            continue
        r = max(rows, key=lambda x: abs(float(x["z"])))
        verb = "ablating" if r.get("type") == "ablation" else "steering with"
        head = (
            f"{verb} latents {r.get('group')} changes {r.get('metric')} by {float(r['effect']):+.3g}"
            f" (95 % CI {fmt(r.get('ci_low'))} … {fmt(r.get('ci_high'))}, z = {float(r['z']):.1f})"
        )
        ctl = (
            f"null band of matched random groups {fmt(r.get('null_low'))} … {fmt(r.get('null_high'))}; "
            + ("outside" if r.get("outside_null") else "inside")
            + f" the band; {sum(1 for x in rows if x.get('outside_null'))}/{len(rows)} cells outside"
        )
        out.append(Finding("causal", head, ctl, "Causal experiments", _rel(exp, p)))
    return out


# ---- features, probes, inverse ---------------------------------------------------------------


@finder(60, "features")
def _features(exp: Experiment) -> list[Finding]:
    from ..features.firing import FiringStats

    out = []
    d = exp.features_dir("firing")
    for f in sorted(d.rglob("*.safetensors")) if d.is_dir() else []:
        s = FiringStats.load(f).summary()
        po = s.get("prompt_only")
        out.append(
            Finding(
                "SAE features",
                f"{_rel(exp, f)}: {s['alive']} of {s['d_sae']} latents fire over {s['n_tokens']} tokens "
                f"({s['dead']} dead{'' if po is None else f', {po} prompt-only'}), mean L0 {s['mean_l0']:.1f}",
                None,
                "SAE features",
                _rel(exp, f),
                no_control="descriptive statistics, nothing to compare with",
            )
        )
    d = exp.features_dir("universal")
    for f in sorted(d.glob("*.csv")) if d.is_dir() else []:
        import csv

        with open(f, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        by_tok: dict[str, int] = {}
        for r in rows:
            by_tok[r.get("token", "")] = by_tok.get(r.get("token", ""), 0) + 1
        out.append(
            Finding(
                "SAE features",
                f"{f.stem}: {len(rows)} universal (latent, token) pairs — "
                + ", ".join(f"{n} at {t!r}" for t, n in sorted(by_tok.items())),
                None,
                "SAE features",
                _rel(exp, f),
                no_control="no shuffled-prompt control run",
            )
        )
    return out


@finder(70, "probes")
def _probes(exp: Experiment) -> list[Finding]:
    root = exp.probes_dir()
    out = []
    for p in sorted(root.rglob("probe.json")) if root.is_dir() else []:
        data = json_file(p) or {}
        probes = [x for x in data.get("probes") or [] if x.get("cv_auroc") is not None]
        if data.get("kind") != "probe fit" or not probes:
            continue
        b = max(probes, key=lambda x: x["cv_auroc"])
        ctl = [
            f"{k} {fmt(b.get(f))}"
            for k, f in (
                ("shuffled labels", "shuffled_auroc"),
                ("random latents", "random_latents_auroc"),
                ("dense probe", "dense_auroc"),
            )
            if b.get(f) is not None
        ]
        out.append(
            Finding(
                "probes",
                f"{p.parent.name}: best probe of {b['metric']} ({b['method']}, k = {fmt(b.get('k'))}) reaches CV "
                f"AUROC {b['cv_auroc']:.3f}",
                "; ".join(ctl) or None,
                "Probes",
                _rel(exp, p),
            )
        )
    return out


@finder(80, "inverse")
def _inverse(exp: Experiment) -> list[Finding]:
    root = exp.inverse_dir()
    out = []
    for p in sorted(root.rglob("optimize_summary.json")) if root.is_dir() else []:
        rows = (json_file(p) or {}).get("rows") or []
        if not rows:
            continue
        found = sum(bool(r.get("found")) for r in rows)
        ctl = (json_file(p) or {}).get("controls")
        out.append(
            Finding(
                "inverse",
                f"{_rel(exp, p.parent.parent)}: optimised prompts found for {found}/{len(rows)} latents "
                "(survive re-tokenisation, activation ≥ collection max, CE ≤ collection p90)",
                None if not ctl else "; ".join(f"{k}: {v}" for k, v in ctl.items()),
                "Inverse problems",
                _rel(exp, p),
            )
        )
    return out


# ---- the section -----------------------------------------------------------------------------


def render(findings: list[Finding]) -> str:
    rows = []
    for f in findings:
        ctl = (
            f"<td class=ctl>{esc(f.control)}</td>"
            if f.control
            else f"<td class=noctl>no control: {esc(f.no_control)}</td>"
        )
        rows.append(
            f"<tr><td>{esc(f.analysis)}</td><td>{esc(f.headline)}</td>{ctl}"
            f"<td><a href='{esc(f.href)}'>{esc(f.section)}</a><div class=note>{esc(f.source)}</div></td></tr>"
        )
    return (
        "<p class=note>What changed and how sure we are: each row is computed from the saved result named "
        "under its link, next to the control it is compared with.</p>"
        "<table class=findings><thead><tr><th>analysis</th><th>finding</th><th>control</th>"
        f"<th>evidence</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


@section(-10, "Findings")
def findings_section(exp: Experiment) -> str | None:
    found = collect(exp)
    return render(found) if found else None
