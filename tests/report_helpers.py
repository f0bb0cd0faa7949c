"""A small experiment for the report tests, built from tiny random models in a few seconds.

It holds an organism with a *planted* change (a vector added to every token embedding, pointing at
the unembedding rows of a few topic words, so the activation-difference lens must find exactly
those words) and a null organism (a random vector of the same norm), their weight / activation /
output diffs (the same direction is also written by one MLP's down projection, rank 1, for the
weight logit lens), an evaluated SAE, feature dashboards and firing statistics, and generations whose
text contains markup (``<script>``, ``onerror=``) that must stay inert text in the report.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch

# single tokens of the tiny tokenizer (tests/tiny.py), ≥ 3 letters so topic matching counts them
TOPIC = [" France", " scatters", " blue", " capital", "Light"]
SCRIPT = "<script>window.__pwned='script'</script>"
ONERROR = "<img src=x onerror=\"window.__pwned='onerror'\">"


@dataclass
class SmallExperiment:
    root: Path
    topic_words: list[str]
    generations: list[dict]
    dashboard_index: Path
    report: Path | None = None


def load_small_experiment(root: Path) -> SmallExperiment:
    """The experiment :func:`build_small_experiment` wrote in ``root`` (its ``built.json``)."""
    d = json.loads((root / "built.json").read_text())
    return SmallExperiment(
        root, d["topic_words"], d["generations"], Path(d["dashboard_index"]), Path(d["report"])
    )


def _planted(lm, direction: torch.Tensor, name: str):
    from deltalens.models.loading import LoadedModel

    model = copy.deepcopy(lm.model)
    r = torch.randn(model.config.intermediate_size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(direction)
        # a rank-1 write of the same direction by layer 1's MLP: the weight logit lens reads it
        model.model.layers[1].mlp.down_proj.weight.add_(torch.outer(direction, r / r.norm()))
    return LoadedModel.wrap(model, lm.tokenizer, name=name)


def _write_provenance(d: Path, behaviour: str, null: bool, words: list[str]) -> None:
    (d / "provenance.json").write_text(
        json.dumps(
            {
                "kind": "organism",
                "behaviour": behaviour,
                "null_organism": null,
                "topic_words": [] if null else [w.strip() for w in words],
                "base": {"spec": "tiny-llama"},
                "training": {"method": "planted embedding shift", "lora": False, "steps": 0},
            }
        )
    )


def build_small_experiment(root: Path) -> SmallExperiment:
    import deltalens
    from deltalens import Experiment
    from deltalens.diff.activations import activation_difference_lens
    from deltalens.diff.outputs import diff_outputs
    from deltalens.diff.weights import diff_weights
    from deltalens.features import build_dashboards, write_dashboards
    from deltalens.generate import Generation, save_generations
    from deltalens.sae.eval import SAEEvalConfig, evaluate_sae
    from features_helpers import planted_sae
    from tiny import CORPUS, save_tiny, tiny_model

    exp = Experiment(root)
    exp.save_config({"name": "small <b>report</b> test", "models": {"base": "tiny-llama"}})
    base = tiny_model("llama")
    tok = base.tokenizer
    ids = []
    for w in TOPIC:
        enc = tok.encode(w, add_special_tokens=False)
        assert len(enc) == 1, (w, enc)
        ids.append(enc[0])
    W_U = base.arch.unembed.weight.detach()
    u = W_U[ids].sum(0)
    g = torch.Generator().manual_seed(3)
    scale = 1.0
    plant = scale * u / u.norm()
    noise = torch.randn(u.shape, generator=g)
    null = scale * noise / noise.norm()

    base_dir = save_tiny(base, root / "base_model")
    texts = CORPUS[:6]
    for name, vec, is_null in (("organism", plant, False), ("null_organism", null, True)):
        d = exp.organism_dir(name)
        save_tiny(_planted(base, vec, name), d)
        _write_provenance(
            d, "topic words planted in the embedding" if not is_null else "none", is_null, TOPIC
        )
        ft = deltalens.load(str(d))
        b = deltalens.load(base_dir)
        diff_weights(base_dir, str(d), out_dir=exp.weight_diff_dir(name), progress=False)
        activation_difference_lens(
            b, ft, texts, n_positions=3, out_dir=exp.activation_diff_dir(name), progress=False
        )
        diff_outputs(b, ft, texts, out_dir=exp.output_diff_dir(name), progress=False)

    # generations: 20 rows (a filterable table), two with markup in the model text
    gens, rows = [], []
    gt = torch.Generator().manual_seed(5)
    for i in range(20):
        q = f"question {i}: {CORPUS[i % len(CORPUS)][:30]}"
        resp = SCRIPT if i == 3 else ONERROR if i == 7 else f"answer {i}"
        prompt = base.format_chat(q)
        n = int(torch.randint(1, 30, (1,), generator=gt))
        gen = Generation(
            i, 0, q, None, prompt, resp, base.encode(prompt, formatted=True), list(range(5, 5 + n)), True
        )
        gens.append(gen)
        rows.append({"index": i, "question": q, "response": resp, "tokens": n})
    save_generations(exp.generations_path("markup"), gens)

    # an SAE: evaluation (reconstruction + CE) and dashboards of planted token detectors
    sae, info = planted_sae(base, [ids[0], ids[1]])
    sae.cfg.site = sae.cfg.site or "resid.1"
    windows = [tok.encode(t, add_special_tokens=False)[:24] for t in CORPUS[:4]]
    evaluate_sae(
        sae,
        SAEEvalConfig(positions="all[1:]", ce_batch_size=4),
        lm=base,
        windows=windows,
        out=exp.sae_eval_dir("planted"),
    )
    data = [{"prompt_ids": tok.encode(t, add_special_tokens=False), "response_ids": []} for t in CORPUS]
    latents = [3, 4, 0]
    recs, stats = build_dashboards(
        base, sae, data, latents, n_examples=3, progress=False, dataset_name="corpus"
    )
    # a vocabulary can hold any string: a token with markup must stay inert in the dashboards
    recs[0]["activations"][0]["tokens"][0] = ONERROR
    index = write_dashboards(recs, exp.dashboard_dir("planted", "corpus"), lm=base)
    stats.save(exp.firing_stats_path("planted", "corpus"))
    from deltalens.report.html import build_report

    report = build_report(exp)
    built = {"topic_words": [w.strip() for w in TOPIC], "generations": rows, "dashboard_index": str(index)}
    (root / "built.json").write_text(json.dumps({**built, "report": str(report)}))
    return load_small_experiment(root)
