"""Report section "SAEs": per evaluated SAE its metrics as an HTML table (with each metric's
definition), then the generic per-area figures and tables. Replaces the generic section of the
same title (``sections_areas``; modules load in name order, so this registration comes last)."""

from __future__ import annotations

from ..experiment import Experiment
from .html import esc, section, table
from .sections_areas import _area


@section(60, "SAEs")
def sae_section(exp: Experiment) -> str | None:
    from ..sae.eval import EVAL_JSON, SAEEval, summary_rows

    root = exp.root / "saes"
    if not root.is_dir():
        return None
    parts = []
    for p in sorted(root.rglob(EVAL_JSON)):
        try:
            ev = SAEEval.load(p.parent)
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not hide the rest
            parts.append(f"<p class=note>{esc(p)}: {esc(exc)}</p>")
            continue
        parts.append(
            table(
                ["metric", "value", "definition"],
                summary_rows(ev),
                caption=f"evaluation of {ev.sae} ({ev.architecture}, {ev.d_in} → {ev.d_sae} at {ev.site})",
            )
        )
    parts.append(_area(exp, "saes") or "")
    return "".join(parts) or None
