"""Report section "Model diff": organisms, weight / activation / output diffs, series.

Replaces the generic per-area section of the same title (``sections_areas``; modules load in
name order, so this registration comes last). It reads the typed diff results
(:class:`~deltalens.diff.weights.WeightDiff`, :class:`~deltalens.diff.activations.ActivationDiff`,
:class:`~deltalens.diff.outputs.OutputDiff`, :class:`~deltalens.diff.series.SeriesDiff`). Every
token and generated string is escaped by the table helpers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DeltalensError
from ..experiment import Experiment
from .html import esc, figures, json_file, section, table


def _toks(items: list, n: int = 20) -> str:
    out = []
    for it in items[:n]:
        t = it[0] if isinstance(it, (list, tuple)) else str(it)
        out.append(repr(t) if (not t.isprintable() or t.strip() != t or not t) else t)
    return " ".join(out)


# figures that are drawings of token tables: the report shows the same lists as HTML tables
TABLE_FIGURES = frozenset({"logit_lens.png", "activation_lens.png"})


def _plots(d: Path) -> str:
    return figures(p for p in d.glob("*.png") if p.name not in TABLE_FIGURES)


def _token_columns(cols: dict[str, list], caption: str, n: int = 20) -> str:
    """Token lists side by side (one column per list, rank per row), as an HTML table."""
    cols = {k: v for k, v in cols.items() if v}
    if not cols:
        return ""
    rows = []
    for i in range(min(n, max(len(v) for v in cols.values()))):
        rows.append([i + 1] + [_toks(v[i : i + 1], 1) if i < len(v) else "" for v in cols.values()])
    return table(["rank", *cols], rows, caption=caption, filterable=False)


def anchor(kind: str, name: str) -> str:
    """The anchor id of one diff result's heading (the findings link to it)."""
    return "diff-" + "".join(c if c.isalnum() else "-" for c in f"{kind}-{name}")


def _organisms(exp: Experiment) -> str:
    root = exp.organism_dir("x").parent
    rows = []
    for prov_path in sorted(root.glob("*/provenance.json")) + sorted(root.glob("*/M*/provenance.json")):
        p = json_file(prov_path)
        if not isinstance(p, dict):
            continue
        tr = p.get("training", {})
        rows.append(
            (
                str(prov_path.parent.relative_to(root)),
                p.get("behaviour", ""),
                p.get("base", {}).get("spec", ""),
                f"{tr.get('method', '')} {'LoRA' if tr.get('lora') else 'full'}",
                tr.get("steps"),
                tr.get("loss_first"),
                tr.get("loss_last"),
            )
        )
    if not rows:
        return ""
    return "<h3>Fine-tuned variants</h3>" + table(
        ["variant", "behaviour", "base", "recipe", "steps", "loss first", "loss last"], rows
    )


def _weights(d: Path, r: Any) -> str:
    s = r["summary"]
    out = [
        f"<p>{s['n_changed']} of {s['n_tensors']} tensors changed; ‖Δθ‖/‖θ‖ = {s['total_rel']:.3e}; largest relative "
        f"change at layer {esc(s['top_layer'])}.</p>"
    ]
    out.append(
        table(
            ["tensor", "‖Δθ‖/‖θ‖", "‖Δθ‖_F", "effective rank"],
            [(t["name"], t["rel"], t["fro"], t["effective_rank"]) for t in s["top_by_rel"]],
            caption="largest relative changes",
        )
    )
    ll = r["logit_lens"].get("top_layer_lists") or {}
    if ll:
        cols: dict[str, list] = {}
        for k, v in ll.items():
            cols[f"{k} +"] = v["pos"]
            cols[f"{k} −"] = v["neg"]
        out.append(
            _token_columns(
                cols,
                f"weight logit lens at layer {r['logit_lens']['top_layer']} (largest relative change): top tokens "
                "of each direction read through the unembedding",
            )
        )
    for name, t in r.get("trait_alignment", {}).get("traits", {}).items():
        out.append(
            table(
                ["layer", "cos(resid_mean)", "max |cos| singular vectors"],
                [(L, e["resid_mean"], e["max_abs_sv"]) for L, e in t["layers"].items()],
                caption=f"alignment with trait vectors '{name}'",
            )
        )
    out.append(_plots(d))
    return "".join(out)


def _activations(d: Path, r: Any, lens: Any) -> str:
    out = []
    if r:
        sim = r["per_layer_similarity"]["mean"]
        step = max(1, len(sim) // 10)
        out.append(
            table(
                ["layer", "mean cos", "std", "norm change"],
                [
                    (L, sim[k], r["per_layer_similarity"]["std"][k], r["norm_change"]["mean"][k])
                    for k, L in enumerate(r["layers"])
                    if k % step == 0 or k == len(sim) - 1
                ],
                caption=f"replay similarity ({r['n_prompts']} prompts, identical token ids)",
            )
        )
        if r.get("correlations"):
            out.append(
                table(
                    ["trait", "Pearson r", "p", "layers"],
                    [(k, c["pearson_r"], c["p_value"], c["n_layers"]) for k, c in r["correlations"].items()],
                    caption="similarity vs steering transfer",
                )
            )
    if lens:
        rows = [(f"{lens['summary']['layer']} (middle)", _toks(lens["summary"]["pos"]))]
        if "summary_max" in lens:
            rows.append((f"{lens['summary_max']['layer']} (largest ‖δ‖)", _toks(lens["summary_max"]["pos"])))
        out.append(
            table(["layer", "top tokens of +δ"], rows, caption="activation-difference lens on unrelated text")
        )
        layers = lens["layers"] if isinstance(lens["layers"], dict) else {}
        cols = {}
        for L in dict.fromkeys([lens["summary"]["layer"], lens["summary_max"]["layer"]]):
            rec = layers.get(str(L)) or {}
            for part in ("first_k", "all"):
                if isinstance(rec.get(part), dict):
                    cols[f"L{L} {part.replace('_', ' ')}"] = rec[part].get("pos", [])
        out.append(
            _token_columns(cols, "activation-difference lens: top tokens of +δ per layer and positions")
        )
    out.append(_plots(d))
    return "".join(out)


def _outputs(d: Path, r: Any) -> str:
    out = [
        f"<p>mean KL(ft‖base) = {r['mean_kl']:.4f} nats/token over {r['n_positions']} positions "
        f"({esc(r['positions'])}).</p>"
    ]
    out.append(
        table(
            ["list", "tokens"],
            [
                ("rose most", _toks(r["rose_most"])),
                ("KL contribution", _toks(r["kl_contribution"])),
                ("fell most", _toks(r["fell_most"], 12)),
            ],
        )
    )
    out.append(
        table(
            ["KL", "context", "next", "ft top", "base top"],
            [
                (c["kl"], c["context"], c["next_token"], _toks(c["ft_top"], 3), _toks(c["base_top"], 3))
                for c in r["top_contexts"][:10]
            ],
            caption="highest-KL contexts",
        )
    )
    out.append(_plots(d))
    return "".join(out)


def _series(d: Path, r: Any) -> str:
    cols = ["checkpoint", "reference", "total_rel", "mean_kl", "mean_similarity", "rose_most"]
    out = [table(cols, [[x.get(c) for c in cols] for x in r["rows"]], caption="trajectory")]
    if r.get("scores"):
        out.append(
            table(
                ["checkpoint", "mean score"],
                [(f"M{i}", s) for i, s in enumerate(r["scores"])],
                caption="scorer over the series",
            )
        )
    out.append(_plots(d))
    return "".join(out)


def _load(cls: Any, d: Path) -> Any:
    """The typed result saved in ``d`` (also one written before the results were typed), or None."""
    try:
        return cls.load(d)
    except DeltalensError:
        return None


@section(50, "Model diff")
def diff_section(exp: Experiment) -> str | None:
    from ..diff.activations import ActivationDiff, DifferenceLens
    from ..diff.outputs import OutputDiff
    from ..diff.series import SeriesDiff
    from ..diff.weights import WeightDiff

    parts = [_organisms(exp)]
    for kind in ("weights", "activations", "outputs", "series"):
        root = exp.diff_dir(kind)
        if not root.is_dir():
            continue
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            title = f"<h3 id='{anchor(kind, d.name)}'>{esc(kind)}: {esc(d.name)}</h3>"
            if kind == "weights" and (r := _load(WeightDiff, d)) is not None:
                parts.append(title + _weights(d, r))
            elif kind == "activations":
                r = _load(ActivationDiff, d)
                lens = r.lens if r is not None else _load(DifferenceLens, d)
                if r is not None or lens is not None:
                    parts.append(title + _activations(d, r, lens))
            elif kind == "outputs" and (r := _load(OutputDiff, d)) is not None:
                parts.append(title + _outputs(d, r))
            elif kind == "series" and (r := _load(SeriesDiff, d)) is not None:
                parts.append(title + _series(d, r))
    body = "".join(p for p in parts if p)
    return body or None
