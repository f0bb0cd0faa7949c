"""Circuits with edges on a real model: the bundled capitals task on SmolLM2-135M-Instruct.

1. **EAP-IG edges** between attention heads and MLPs (``deltalens circuit edges --method
   eap-ig``) over the 10 capitals pairs, with faithfulness vs edge budget (CPR / CMD);
2. **EAP-IG vs exact edge patching**: the 40 strongest EAP-IG edges plus 20 drawn at random
   (seeded) from the rest, each patched alone exactly (``component_edges.edge_patching``);
   Pearson r and a scatter figure;
3. **transcoders** at all 30 layers (``deltalens circuit transcoders``, resumed when present),
   trained on 49,152 tokens: a corpus SmolLM2 writes itself about 50 countries, 30 cities and
   12 other topics (19k tokens, cached as ``geography_corpus.jsonl``; the bundled Python
   tutorial names almost no country), then the bundled text — and the **attribution graph**
   of the first capitals prompt (``deltalens circuit graph``): the top path and the top path
   through a feature, replacement / completeness scores, the time to build it, and the graph
   JSON checked against circuit-tracer's frontend schema.

Run: ``PYTHONPATH=src python examples/circuit_graph_real.py [out_dir]`` (default
``experiments/circuit_graph_real``). The transcoders take ~20-30 min on 2 CPU cores the first
time; everything else a few minutes. Figures are copied to ``docs/figures/circuits/``.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path

import torch

from deltalens.circuits import pearson
from deltalens.circuits.component_edges import edge_patching
from deltalens.circuits.edges_pipeline import EdgesConfig, run_edges
from deltalens.circuits.graph_pipeline import GraphConfig, TranscodersConfig, run_graph, train_transcoders
from deltalens.circuits.pipeline import _load_task
from deltalens.plots import scatter

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "experiments/circuit_graph_real")
FIG = Path("docs/figures/circuits")


COUNTRIES = (
    "France Italy Spain Germany Japan China India Brazil Canada Mexico Egypt Kenya Nigeria Russia "
    "Turkey Greece Portugal Norway Sweden Finland Poland Austria Hungary Ireland Argentina Chile Peru "
    "Colombia Australia Indonesia Thailand Vietnam Korea Iran Iraq Israel Morocco Ghana Ethiopia "
    "Netherlands Belgium Switzerland Denmark Cuba Ukraine Romania Pakistan Bangladesh Nepal Philippines"
).split()
CITIES = (
    "Paris Rome Madrid Berlin Tokyo Beijing Delhi London Cairo Moscow Athens Lisbon Oslo Vienna Dublin "
    "Lima Sydney Bangkok Toronto Nairobi Istanbul Warsaw Prague Seoul Amsterdam Brussels Stockholm "
    "Helsinki Budapest Havana"
).split()
TOPICS = (
    "rivers,mountains,the ocean,music,cooking,trains,football,the weather,chemistry,birds,painting,farming"
)


def geography_corpus(path: Path) -> Path:
    """SmolLM2's own paragraphs about countries, cities and other topics (seeded sampling), first,
    then the bundled corpus — one JSONL file for ``--data``; reused when it exists."""
    from deltalens.circuits.graph_pipeline import _default_texts
    from deltalens.generate import generate
    from deltalens.models import load

    if path.is_file():
        return path
    prompts = [
        f"Write a short paragraph about {t} {c}."
        for c in COUNTRIES
        for t in ("the history of", "the geography of")
    ]
    prompts += [f"Describe the city of {c} and the country it is in." for c in CITIES]
    prompts += [f"Write a short paragraph about {t}." for t in TOPICS.split(",")]
    lm = load("smollm2-135m-instruct")
    gens = generate(lm, prompts, max_new_tokens=160, do_sample=True, temperature=0.8, seed=0)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        for text in [g.response for g in gens] + _default_texts():
            fh.write(json.dumps({"text": text}) + "\n")
    tmp.replace(path)
    return path


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    FIG.mkdir(parents=True, exist_ok=True)
    report: dict = {}

    # 1. EAP-IG edges
    t = time.perf_counter()
    cfg = EdgesConfig(method="eap-ig", steps=5, out=OUT / "edges_eap-ig", top_edges=500)
    run = run_edges(cfg)
    c = run.circuit
    report["eap_ig"] = {
        "seconds": time.perf_counter() - t,
        "clean": c.clean,
        "corrupted": c.corrupted,
        "edges": len(c.edges),
        "top_edges": [list(e) for e in c.top_edges(10)],
        "top_path": c.top_path(),
        "cpr": run.budget.cpr if run.budget else None,
        "cmd": run.budget.cmd if run.budget else None,
        "faithfulness": dict(zip(run.budget.budgets, run.budget.faithfulness)) if run.budget else None,
    }
    print(json.dumps(report["eap_ig"], indent=1, default=str))
    shutil.copy(run.out_dir / "circuit.svg", FIG / "capitals_eap_ig.svg")

    # 2. EAP-IG vs exact edge patching
    lm, task, _ = _load_task(cfg)
    top = c.top_edges(40)
    rest = [e for e in c.edges if e not in top]
    random.Random(0).shuffle(rest)
    chosen = top + rest[:20]
    t = time.perf_counter()
    exact = edge_patching(lm, task, [(a, b) for a, b, _ in chosen])
    ig = torch.tensor([w for _, _, w in chosen])
    r = pearson(ig, exact)
    report["exact"] = {
        "edges": [list(e) for e in chosen],
        "exact": exact.tolist(),
        "pearson_r": r,
        "seconds": time.perf_counter() - t,
    }
    print(f"EAP-IG vs exact edge patching over {len(chosen)} edges: r = {r:.3f}")
    scatter(
        exact.tolist(),
        ig.tolist(),
        FIG / "eap_ig_vs_exact.png",
        title=f"SmolLM2 capitals: EAP-IG vs exact edge patching\nr = {r:.3f} over {len(chosen)} edges",
        xlabel="exact: Δ logit diff, edge patched alone",
        ylabel="EAP-IG edge score",
        diagonal=True,
    )

    # 3. transcoders + attribution graph
    tdir = OUT / "transcoders"
    t = time.perf_counter()
    corpus = geography_corpus(OUT / "geography_corpus.jsonl")
    tset, _ = train_transcoders(TranscodersConfig(data=str(corpus), tokens=49152), tdir)
    nm = [m["nmse"] for m in tset.layers.values()]
    report["transcoders"] = {
        "seconds_this_run": time.perf_counter() - t,
        "seconds_recorded": sum(m["seconds"] for m in tset.layers.values()),
        "nmse_mean": sum(nm) / len(nm),
        "nmse_max": max(nm),
        "nmse_per_layer": {k: round(v["nmse"], 3) for k, v in tset.layers.items()},
        "l0_mean": sum(m["l0"] for m in tset.layers.values()) / len(nm),
    }
    print(json.dumps(report["transcoders"], indent=1))
    t = time.perf_counter()
    g = run_graph(GraphConfig(transcoders=tdir, pairs="capitals", pair=0, out=OUT / "graph"))
    report["graph"] = {**g.summary, "wall_seconds": time.perf_counter() - t}
    print(json.dumps(report["graph"], indent=1, default=str))
    shutil.copy(g.out_dir / "circuit.svg", FIG / "capitals_attribution_graph.svg")
    (OUT / "report.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
