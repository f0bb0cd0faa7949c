"""Circuit commands: ``patch`` (exact activation patching) and ``attribute`` (attribution
patching / integrated gradients, SAE-latent attribution, faithfulness)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ._common import console, parse_floats, parse_layers, split_list, table

PAIRS_HELP = "Pairs: a bundled set (capitals, error_types) or a JSONL file of clean/corrupted pairs."


def _setup(pairs: str, model: str, metric: str, chat: bool, single_token: bool, limit: int | None,
           dtype: str, device: str | None) -> tuple[Any, Any, str]:
    from ..circuits import build_task
    from ..data.pairs import load_pairs
    from ..models import load

    records = load_pairs(pairs)
    lm = load(model, dtype=dtype, device=device)
    task = build_task(lm, records, metric=metric, chat=chat, single_token=single_token, limit=limit)
    return lm, task, Path(pairs).stem


def _out_dir(out: Path | None, experiment: str, task_name: str, kind: str) -> Path:
    if out is not None:
        return out
    from ..experiment import Experiment

    return Experiment.named(experiment).circuits_dir(task_name, kind)


def _print_task(task: Any, lm: Any) -> None:
    m_clean = task.run_metric(lm, "clean")
    m_corr = task.run_metric(lm, "corrupted")
    rows = []
    for i, r in enumerate(task.records[:12]):
        rows.append((r.id if r.id is not None else i, f"{r.clean_answer!r} / {r.corrupted_answer!r}",
                     float(m_clean[i]), float(m_corr[i])))
    r0 = task.records[0]
    console.print(f"pair 0: clean {r0.clean!r} → {r0.clean_answer!r}; corrupted {r0.corrupted!r} → {r0.corrupted_answer!r}",
                  markup=False)
    console.print(table(f"{task.n_pairs} pairs, metric {task.metric_name} "
                        f"({'first answer token' if task.metric_name == 'logit_diff' else 'summed answer log-prob'})"
                        + (", first 12 shown" if task.n_pairs > 12 else ""),
                        ["pair", "answers (clean / corrupted)", "m clean", "m corrupted"], rows))
    console.print(f"mean metric: clean {float(m_clean.mean()):.3f}, corrupted {float(m_corr.mean()):.3f}")


def _print_top(res: Any, k: int = 10) -> None:
    rows = [(r["component"], r["layer"], r["position"], r["token"], r["effect"], r["normalised"]) for r in res.top(k)]
    console.print(table(f"top {k} sites ({res.method}, {res.direction})",
                        ["component", "layer", "pos", "token", "effect", "normalised"], rows))


def patch_cmd(
    pairs: str = typer.Option("capitals", "--pairs", "-p", help=PAIRS_HELP),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    components: str = typer.Option("resid", "--components", "-c", help="Comma list of resid, attn_out, mlp_out."),
    layers: str = typer.Option("all", "--layers", "-l", help="'all', '6', '6,12', '9-19' or '9:20'."),
    direction: str = typer.Option("denoising", "--direction", "-d",
                                  help="denoising (clean → corrupted run) or noising (corrupted → clean run)."),
    metric: str = typer.Option("logit_diff", "--metric", help="logit_diff (first answer token) or logprob_diff (summed)."),
    chat: bool = typer.Option(False, "--chat/--raw", help="Wrap prompts in the chat template (default: raw text)."),
    single_token: bool = typer.Option(False, "--single-token", help="Refuse multi-token answers."),
    limit: int | None = typer.Option(None, "--limit", help="Use only the first N pairs."),
    experiment: str = typer.Option("default", "--experiment", "-e", help="Experiment name or directory."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write here instead of the experiment directory."),
    batch_tokens: int = typer.Option(4096, "--batch-tokens", help="Tokens per batched forward."),
    dtype: str = typer.Option("auto", "--dtype"),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Exact activation patching by layer × position (heatmaps with token labels)."""
    from ..circuits.pipeline import run_patch

    lm, task, name = _setup(pairs, model, metric, chat, single_token, limit, dtype, device)
    _print_task(task, lm)
    out_dir = _out_dir(out, experiment, name, f"patching_{direction}")
    res, figs = run_patch(lm, task, out_dir, split_list(components), parse_layers(layers, lm.n_layers), direction,
                          batch_tokens=batch_tokens)
    _print_top(res)
    console.print(f"{res.meta['n_forward_rows']} patched sequences in {res.seconds:.1f} s → {out_dir}/results.json, "
                  f"{', '.join(p.name for p in figs)}")


def attribute_cmd(
    pairs: str = typer.Option("capitals", "--pairs", "-p", help=PAIRS_HELP),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    components: str = typer.Option("attn_out,mlp_out", "--components", "-c",
                                   help="Comma list of resid, attn_out, mlp_out ('none' for SAE only)."),
    layers: str = typer.Option("all", "--layers", "-l"),
    direction: str = typer.Option("denoising", "--direction", "-d"),
    method: str = typer.Option("attribution", "--method",
                               help="attribution (2 forwards + 1 backward) or ig (integrated gradients)."),
    steps: int = typer.Option(8, "--steps", help="Integrated-gradients steps (1 = plain attribution)."),
    compare_exact: bool = typer.Option(False, "--compare-exact", help="Also run exact patching: Pearson r + scatter."),
    faithfulness: bool = typer.Option(False, "--faithfulness", help="Faithfulness/completeness curve of top-k circuits."),
    ks: str | None = typer.Option(None, "--k", help="k values for the faithfulness curve, e.g. '1,5,10,50'."),
    sae: Path | None = typer.Option(None, "--sae", help="SAE directory (SAELens format) for latent attribution."),
    site_opt: str | None = typer.Option(None, "--sae-site",
                                           help="Site of an SAE that does not record one (default: its own)."),
    force_site: bool = typer.Option(False, "--force-site", help="Splice the SAE at --sae-site even if it was "
                                    "trained elsewhere."),
    mode: str = typer.Option("indirect", "--mode", help="SAE attribution: indirect (all paths) or direct (to logits)."),
    keep_error: bool = typer.Option(True, "--error/--no-error", help="Keep the SAE error term in the splice."),
    top_k: int = typer.Option(25, "--top-k", help="Latents in top_latents.json."),
    latents: str | None = typer.Option(None, "--latents", help="Latents for the activation heatmap (default: top)."),
    metric: str = typer.Option("logit_diff", "--metric"),
    chat: bool = typer.Option(False, "--chat/--raw"),
    single_token: bool = typer.Option(False, "--single-token"),
    limit: int | None = typer.Option(None, "--limit"),
    experiment: str = typer.Option("default", "--experiment", "-e"),
    out: Path | None = typer.Option(None, "--out", "-o"),
    batch_tokens: int = typer.Option(4096, "--batch-tokens"),
    dtype: str = typer.Option("auto", "--dtype"),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Attribution patching / integrated gradients by layer × position, and SAE-latent
    attribution with and without the error term."""
    from ..circuits.pipeline import run_attribute, run_sae_attribute
    from ..errors import ConfigError

    if method not in ("attribution", "ig"):
        raise ConfigError(f"--method must be attribution or ig, not '{method}'")
    k_list = [int(k) for k in parse_floats(ks, "k values")] if ks else None
    lm, task, name = _setup(pairs, model, metric, chat, single_token, limit, dtype, device)
    sae_obj = None
    if sae is not None:
        from ..circuits.sae_attribution import sae_site
        from ..sae import load_sae

        sae_obj = load_sae(sae, device=lm.device)
        site = sae_site(lm, sae_obj, site_opt, force_site)  # refuse a mismatching SAE before any work
    _print_task(task, lm)
    comps = [c for c in split_list(components) if c != "none"]
    if comps:
        out_dir = _out_dir(out, experiment, name, f"{method}_{direction}")
        res = run_attribute(lm, task, out_dir, comps, parse_layers(layers, lm.n_layers), direction, method, steps,
                            compare_exact, faithfulness, k_list, batch_tokens)
        _print_top(res["result"])
        console.print(f"{res['result'].method}: {res['result'].seconds:.2f} s")
        if "r" in res:
            console.print(table("estimate vs exact patching (normalised effects)", ["cells", "Pearson r"],
                                [(k, v) for k, v in res["r"].items()]))
            console.print(f"exact patching: {res['exact'].seconds:.1f} s "
                          f"({res['exact'].seconds / max(res['result'].seconds, 1e-9):.0f}× the estimate)")
        if "faithfulness" in res:
            _print_curve(res["faithfulness"])
        console.print(f"→ {out_dir}: {', '.join(p.name for p in res['figures'])}")
    if sae_obj is not None:
        s = site
        sub = f"sae_{s.component}{s.layer}_{mode}_{direction}" + ("" if keep_error else "_no_error")
        out_dir = out / sub if out is not None else _out_dir(None, experiment, name, sub)
        lat = [int(x) for x in split_list(latents)] if latents else None
        r = run_sae_attribute(lm, task, sae_obj, out_dir, s, direction, mode, keep_error, top_k, lat, faithfulness,
                              k_list, batch_tokens, force_site=force_site)
        print_sae(r["result"])
        if "faithfulness" in r:
            _print_curve(r["faithfulness"])
        console.print(f"→ {out_dir}: {', '.join(p.name for p in r['figures'])}, top_latents.json")


def print_sae(res: Any, k: int = 10) -> None:
    t = res.error_table
    rows = [(name, v["clean"], v["corrupted"], v["difference"], v.get("max_abs_logit_change_clean", 0.0))
            for name, v in (("model", t["model"]), ("SAE + error term", t["with_error"]),
                            ("SAE, no error term", t["without_error"]))]
    console.print(table(f"{res.metric_name} with and without the SAE error term at {res.site}",
                        ["run", "clean", "corrupted", "clean − corrupted", "max |Δ logit| (clean)"], rows))
    top = [(r["latent"], r["position"], r["token"], r["score"], r["score_normalised"], r["activation"],
            r["activation_corrupted"]) for r in res.top(k)]
    console.print(table(f"top {k} latents at {res.site} ({res.mode}, {res.direction}, error term "
                        f"{'kept' if res.keep_error else 'dropped'})",
                        ["latent", "pos", "token", "score", "normalised", "act clean", "act corr"], top))
    if res.error_scores is not None:
        pos = [(p["position"], p["token"], p["sum_abs_latent_score"], p["error_score"]) for p in res.top_positions(5)]
        console.print(table("positions by SAE-node attribution", ["pos", "token", "Σ|latent score|", "error node"], pos))


def _print_curve(curve: Any) -> None:
    rows = [(k, fc, f, c) for k, fc, f, c in zip(curve.ks, curve.f_circuit, curve.faithfulness, curve.completeness)]
    console.print(table(f"faithfulness of top-k {curve.nodes} circuits (F(M) = {curve.f_model:.3f}, "
                        f"F(∅) = {curve.f_empty:.3f})", ["k", "F(C)", "faithfulness", "complement F(M∖C)"], rows))


def register(app: typer.Typer) -> None:
    app.command("patch")(patch_cmd)
    app.command("attribute")(attribute_cmd)
