"""Report sections of the core: overview, generations, activation stores."""

from __future__ import annotations

from ..experiment import Experiment
from .html import esc, json_file, jsonl_file, section, table


@section(0, "Overview")
def overview(exp: Experiment) -> str | None:
    cfg = exp.load_config()
    rows = [
        (
            k,
            v
            if not isinstance(v, (dict, list))
            else ", ".join(f"{a}: {b}" for a, b in v.items())
            if isinstance(v, dict)
            else ", ".join(map(str, v)),
        )
        for k, v in cfg.items()
    ]
    counts = []
    report = exp.report_dir()
    for sub in sorted(p for p in exp.root.iterdir() if p.is_dir() and p != report):
        files = [f for f in sub.rglob("*") if f.is_file()]
        counts.append((sub.name, len(files), round(sum(f.stat().st_size for f in files) / 2**20, 2)))
    html = table(["setting", "value"], rows, caption="config.yaml") if rows else ""
    html += table(["directory", "files", "MB"], counts, caption="artifacts")
    return html


@section(10, "Generations")
def generations(exp: Experiment) -> str | None:
    d = exp.generations_dir()
    files = sorted(d.glob("*.jsonl")) if d.is_dir() else []
    if not files:
        return None
    out = []
    for f in files:
        recs = jsonl_file(f)
        rows = [
            (r.get("index"), r.get("question", ""), r.get("response", ""), len(r.get("response_ids", [])))
            for r in recs
        ]
        out.append(
            table(
                ["#", "question", "response", "tokens"],
                rows,
                caption=f"{f.name} ({len(recs)} responses)",
                max_rows=50,
            )
        )
    return "".join(out)


@section(15, "Activation stores")
def stores(exp: Experiment) -> str | None:
    d = exp.activations_root()
    manifests = sorted(d.rglob("store.json")) if d.is_dir() else []
    if not manifests:
        return None
    rows = []
    for m in manifests:
        s = json_file(m) or {}
        rows.append(
            (
                str(m.parent.relative_to(exp.root)),
                ", ".join(s.get("sites", [])),
                s.get("positions"),
                s.get("reduce") or "per token",
                s.get("n_rows"),
                s.get("n_sequences"),
                s.get("complete"),
            )
        )
    return table(["store", "sites", "positions", "rows are", "rows", "sequences", "complete"], rows) + (
        f"<p class=note>Read with <code>{esc('deltalens.ActivationStore.open(path)')}</code>.</p>"
    )
