"""Report section of the protein study (``protein/study.json``): the per-iteration table of the
DPO series and of its random-preference null control, the DPO rounds, the probes and causal
cells of the study, and its figures."""

from __future__ import annotations

from ..experiment import Experiment
from ..protein.study import ITERATION_COLUMNS, iteration_rows
from .html import esc, figures, json_file, section, table

_ITER_COLS = [h for h, _ in ITERATION_COLUMNS]


@section(90, "Protein study")
def protein_section(exp: Experiment) -> str | None:
    data = json_file(exp.root / "protein" / "study.json")
    if not isinstance(data, dict) or data.get("kind") != "protein study":
        return None
    out = [
        f"<p class=note>model {esc(data.get('model'))}, tag {esc(data.get('tag'))}; timings (s) {esc(data.get('timings'))}</p>"
    ]
    out.append(
        table(
            _ITER_COLS,
            iteration_rows(data.get("per_iteration") or []),
            caption="DPO towards a higher HMM score",
        )
    )
    if data.get("per_iteration_null"):
        out.append(
            table(
                _ITER_COLS,
                iteration_rows(data["per_iteration_null"]),
                caption="null control: the same DPO rounds with random preferences",
            )
        )
    if data.get("dpo"):
        out.append(
            table(
                ["checkpoint", "trained on", "pairs", "chosen mean", "rejected mean", "train loss"],
                [
                    (
                        d.get("checkpoint"),
                        d.get("trained_on"),
                        d.get("pairs"),
                        d.get("chosen"),
                        d.get("rejected"),
                        d.get("train_loss"),
                    )
                    for d in data["dpo"]
                ],
                caption="DPO rounds",
            )
        )
    if data.get("probes"):
        out.append(
            table(
                ["SAE", "metric", "method", "k", "CV AUROC", "dense", "shuffled labels", "random latents"],
                [
                    (
                        p.get("sae"),
                        p.get("metric"),
                        p.get("method"),
                        p.get("k"),
                        p.get("cv_auroc"),
                        p.get("dense_auroc"),
                        p.get("shuffled_auroc"),
                        p.get("random_latents_auroc"),
                    )
                    for p in data["probes"]
                ],
                caption="probes (high vs low)",
            )
        )
    if data.get("causal"):
        out.append(
            table(
                [
                    "type",
                    "group",
                    "branch",
                    "SAE",
                    "metric",
                    "effect",
                    "null mean",
                    "null sd",
                    "z",
                    "outside null",
                ],
                [
                    (
                        c.get("type"),
                        c.get("group"),
                        c.get("branch"),
                        c.get("sae"),
                        c.get("metric"),
                        c.get("effect"),
                        c.get("null_mean"),
                        c.get("null_sd"),
                        c.get("z"),
                        c.get("outside_null"),
                    )
                    for c in data["causal"]
                ],
                caption="causal cells vs matched null groups",
            )
        )
    out.append(figures((exp.root / "protein" / "figures").glob("*.png")))
    return "".join(out)
