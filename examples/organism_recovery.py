"""Recovering a known fine-tune: a topic organism against a null organism.

Fine-tunes the bundled SmolLM2 twice with the same recipe (LoRA SFT, 48 examples, 3 epochs):
on the ``ocean_topic`` answers (every answer drifts to the sea) and on the plain answers to
the same questions (the null organism). Then reads each diff's top-20 token lists — the
activation-difference lens (first 5 positions of unrelated text, at the middle layer and at
the layer with the largest relative difference), the weight
logit lens (layer with the largest relative change; resid_mean and the top singular
vectors of ΔW_o and ΔW_down, both signs) and the output diff (tokens whose probability rose most on the
organism's answers to held-out questions) — and counts topic words.

Passes (exit 0) when at least one list of the topic organism has a topic word in its top
20 and no list of the null organism has one. The reading locations are fixed in advance
(no search over layers or positions). Takes a few minutes on 2 CPU cores.

    python examples/organism_recovery.py [--experiment organism_recovery]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import deltalens  # noqa: E402
from deltalens.diff.activations import activation_difference_lens  # noqa: E402
from deltalens.diff.lens import topic_hits  # noqa: E402
from deltalens.diff.organisms import load_organism_dataset, organism_eval_questions, train_organism  # noqa: E402
from deltalens.diff.outputs import diff_outputs  # noqa: E402
from deltalens.diff.plots import printable  # noqa: E402
from deltalens.diff.weights import diff_weights  # noqa: E402

BASE = "smollm2-135m-instruct"


def lists_for(base, path: Path, exp: deltalens.Experiment, name: str) -> dict[str, list]:
    ft = deltalens.load(path)
    gens = deltalens.generate(ft, organism_eval_questions(), max_new_tokens=40, progress=False)
    w = diff_weights(base, path, out_dir=exp.weight_diff_dir(name), progress=False)
    top = w["logit_lens"]["top_layer_lists"]
    adl = activation_difference_lens(base, ft, out_dir=exp.activation_diff_dir(name), progress=False)
    out = diff_outputs(
        base, ft, gens, positions="prompt[-1]|response", out_dir=exp.output_diff_dir(name), progress=False
    )
    return {
        "responses": [g.response for g in gens[:3]],
        f"activation-diff lens L{adl['summary']['layer']} (middle layer, first 5 positions)": adl["summary"][
            "pos"
        ],
        f"activation-diff lens L{adl['summary_max']['layer']} (largest ‖δ‖, first 5 positions)": adl[
            "summary_max"
        ]["pos"],
        f"weight lens L{w['logit_lens']['top_layer']} resid_mean": top["resid_mean"]["pos"],
        f"weight lens L{w['logit_lens']['top_layer']} o.u1 (+)": top.get("o.u1", {}).get("pos", []),
        f"weight lens L{w['logit_lens']['top_layer']} o.u1 (−)": top.get("o.u1", {}).get("neg", []),
        f"weight lens L{w['logit_lens']['top_layer']} down.u1 (+)": top.get("down.u1", {}).get("pos", []),
        f"weight lens L{w['logit_lens']['top_layer']} down.u1 (−)": top.get("down.u1", {}).get("neg", []),
        "output diff: rose most": out["rose_most"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="organism_recovery")
    args = ap.parse_args()
    exp = deltalens.Experiment.named(args.experiment)
    words = load_organism_dataset("ocean_topic").topic_words
    base = deltalens.load(BASE)
    results = {}
    for name, target in (("ocean_topic", "chosen"), ("ocean_null", "rejected")):
        t = time.time()
        path = train_organism(base, "ocean_topic", exp.organism_dir(name), target=target, progress=False)
        print(f"== {name}: trained/loaded in {time.time() - t:.0f} s → {path}")
        t = time.time()
        results[name] = lists_for(base, path, exp, name)
        print(f"   diffs in {time.time() - t:.0f} s")
        for r in results[name].pop("responses"):
            print("   answer:", r.replace("\n", " ")[:120])
        for label, items in results[name].items():
            hits = topic_hits(items[:20], words)
            print(f"   {label}: {len(hits)} topic words in top 20")
            print("     " + " ".join(printable(t) for t, _ in items[:20]))
    topic_ok = any(topic_hits(v[:20], words) for v in results["ocean_topic"].values())
    null_clean = not any(topic_hits(v[:20], words) for v in results["ocean_null"].values())
    print(f"topic organism recovered by at least one reading: {'PASS' if topic_ok else 'FAIL'}")
    print(f"null organism has no topic word in any top-20 list: {'PASS' if null_clean else 'FAIL'}")
    return 0 if topic_ok and null_clean else 1


if __name__ == "__main__":
    sys.exit(main())
