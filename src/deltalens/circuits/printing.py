"""Terminal tables of circuits results (shared by ``deltalens attribute`` and the demo)."""

from __future__ import annotations

from typing import Any

from ..console import console, table


def print_sae(res: Any, k: int = 10) -> None:
    """The error-term table and the top-k latents of an SAE attribution."""
    t = res.error_table
    rows = [
        (name, v["clean"], v["corrupted"], v["difference"], v.get("max_abs_logit_change_clean", 0.0))
        for name, v in (
            ("model", t["model"]),
            ("SAE + error term", t["with_error"]),
            ("SAE, no error term", t["without_error"]),
        )
    ]
    console.print(
        table(
            f"{res.metric_name} with and without the SAE error term at {res.site}",
            ["run", "clean", "corrupted", "clean − corrupted", "max |Δ logit| (clean)"],
            rows,
        )
    )
    top = [
        (
            r["latent"],
            r["position"],
            r["token"],
            r["score"],
            r["score_normalised"],
            r["activation"],
            r["activation_corrupted"],
        )
        for r in res.top(k)
    ]
    console.print(
        table(
            f"top {k} latents at {res.site} ({res.mode}, {res.direction}, error term "
            f"{'kept' if res.keep_error else 'dropped'})",
            ["latent", "pos", "token", "score", "normalised", "act clean", "act corr"],
            top,
        )
    )
    if res.error_scores is not None:
        pos = [
            (p["position"], p["token"], p["sum_abs_latent_score"], p["error_score"])
            for p in res.top_positions(5)
        ]
        console.print(
            table("positions by SAE-node attribution", ["pos", "token", "Σ|latent score|", "error node"], pos)
        )


def print_curve(curve: Any) -> None:
    """A faithfulness curve as a table."""
    rows = [
        (k, fc, f, c)
        for k, fc, f, c in zip(curve.ks, curve.f_circuit, curve.faithfulness, curve.completeness)
    ]
    console.print(
        table(
            f"faithfulness of top-k {curve.nodes} circuits (F(M) = {curve.f_model:.3f}, "
            f"F(∅) = {curve.f_empty:.3f})",
            ["k", "F(C)", "faithfulness", "complement F(M∖C)"],
            rows,
        )
    )
