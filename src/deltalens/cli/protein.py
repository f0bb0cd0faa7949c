"""``deltalens protein …``: the offline testbed, key-metric scoring, generation, datasets, the study."""

from __future__ import annotations

from pathlib import Path

import typer

from ..protein.datasets import ProteinDatasetConfig as _DS
from ..protein.testbed import TestbedConfig as _TB
from ._common import config_option, console, parse_assignments, split_list, table

protein_app = typer.Typer(
    help="Protein LMs (ZymCTRL-style): testbed model, key-metric scorers, per-iteration datasets, the study.",
    no_args_is_help=True,
)


def build_testbed_cmd(
    families: str = config_option(_TB, "families"),
    emit: int = config_option(_TB, "n_emit"),
    swissprot: bool = config_option(_TB, "swissprot"),
    max_length: int = config_option(_TB, "max_length"),
    layers: int = config_option(_TB, "n_layer"),
    d_model: int = config_option(_TB, "d_model"),
    heads: int = config_option(_TB, "n_head"),
    steps: int = config_option(_TB, "steps"),
    batch_tokens: int = config_option(_TB, "batch_tokens"),
    lr: float = config_option(_TB, "lr"),
    seed: int = config_option(_TB, "seed"),
    threads: int = config_option(_TB, "threads"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Model directory (default: the model cache)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild even if the cache holds it."),
) -> None:
    """Train the tiny ZymCTRL-shaped GPT-2 on Pfam seeds, HMM-emitted sequences and SwissProt (cached)."""
    import time

    from ..protein.testbed import build_testbed

    cfg = _TB(
        families=split_list(families),
        n_emit=emit,
        swissprot=swissprot,
        max_length=max_length,
        n_layer=layers,
        d_model=d_model,
        n_head=heads,
        steps=steps,
        batch_tokens=batch_tokens,
        lr=lr,
        seed=seed,
        threads=threads,
    )
    t = time.time()
    res = build_testbed(cfg, out=out, force=overwrite)
    c = res.corpus
    console.print(
        table(
            f"testbed corpus ({c['n_records']} records, {c['tokens']:,} tokens)",
            ["tag", "records", "seed sequences", "emitted"],
            [
                (
                    t_,
                    n,
                    (c["sources"].get(t_) or {}).get(
                        "seeds", (c["sources"].get(t_) or {}).get("entries", "")
                    ),
                    (c["sources"].get(t_) or {}).get("emitted", ""),
                )
                for t_, n in c["per_tag"].items()
            ],  # fmt: skip
        )
    )
    console.print(
        f"GPT-2 {cfg.n_layer} layers × d={cfg.d_model}, {res.n_params:,} parameters; loss "
        f"{res.losses[0]:.3f} → {res.losses[-1]:.3f} in {len(res.losses)} steps ({res.seconds:.0f} s training; "
        f"this call {time.time() - t:.0f} s)"
    )
    console.print(f"model → {res.path}")


def score_cmd(
    sequences: Path = typer.Argument(..., help="FASTA, CSV/Parquet (sequence column) or ZymCTRL text file."),
    scorer: list[str] = typer.Option(
        ..., "--scorer", help="hmm:NAME | align:REFS.fasta[@metric] | plddt[:DIR] | oracle:…; repeatable."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write every column (.parquet or .csv)."),
    max_length: int | None = typer.Option(None, "--max-length", help="Refuse sequences longer than this."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the score cache."),
) -> None:
    """Score sequences with key-metric scorers: one column per metric."""
    import pandas as pd

    from ..generate import check_output_file
    from ..io import atomic_path
    from ..protein.records import read_records
    from ..protein.scorers import load_protein_scorer

    if out is not None:
        check_output_file(out)
        if out.suffix.lower() not in (".parquet", ".csv"):
            from ..errors import ConfigError

            raise ConfigError(f"--out {out}: use a .parquet or .csv file")
    recs = read_records(sequences, max_length=max_length)
    scs = [load_protein_scorer(s, cache=not no_cache) for s in scorer]
    seqs = [r.sequence for r in recs]
    df = pd.DataFrame({"id": [r.id for r in recs], "tag": [r.tag for r in recs], "sequence": seqs})
    for s in scs:
        for c, v in s.score_sequences(seqs, progress=True).items():
            df[c] = v
    cols = [c for c in df.columns if c not in ("id", "tag", "sequence")]
    console.print(
        table(
            f"{len(df)} sequences from {sequences}",
            ["metric", "mean", "min", "max"],
            [(c, float(df[c].mean()), float(df[c].min()), float(df[c].max())) for c in cols],
        )
    )
    if out is not None:
        with atomic_path(out, out.suffix) as tmp:
            df.to_parquet(tmp) if out.suffix.lower() == ".parquet" else df.to_csv(tmp, index=False)
        console.print(f"scores → {out}")


def generate_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Protein LM (directory, hub id in the cache)."),
    tag: list[str] = typer.Option(..., "--tag", help="Control tag (EC number, family); repeatable."),
    n: int = typer.Option(8, "--n", help="Sequences per tag."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Longest sequence (tokens)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output: .fasta, .txt (ZymCTRL text), .csv or .parquet."
    ),
) -> None:
    """Tag-conditioned generation: ``TAG<sep><start>`` → sequence until ``<end>``."""
    from ..errors import ConfigError
    from ..generate import check_output_file
    from ..protein.lm import check_tags, generate_proteins, load_protein_lm
    from ..protein.records import ProteinRecord, write_fasta, write_table_records, write_text_records

    check_output_file(out)
    suf = out.suffix.lower()
    if suf not in (".fasta", ".fa", ".txt", ".csv", ".parquet"):
        raise ConfigError(f"--out {out}: use .fasta, .txt, .csv or .parquet")
    lm = load_protein_lm(model)
    tags = check_tags(lm, tag)
    gens = generate_proteins(
        lm,
        tags,
        n=n,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        progress=True,
    )
    recs = [ProteinRecord(f"{tags[g.index]}_{g.rollout}", tags[g.index], g.response) for g in gens]
    if suf in (".fasta", ".fa"):
        write_fasta(out, recs)
    elif suf == ".txt":
        write_text_records(out, recs)
    else:
        write_table_records(out, recs)
    lengths = [len(r.sequence) for r in recs]
    console.print(
        f"{len(recs)} sequences ({', '.join(tags)}), length {min(lengths)}–{max(lengths)} "
        f"(mean {sum(lengths) / len(lengths):.1f}) → {out}"
    )


def datasets_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Datasets directory (D<i>.parquet, combined.parquet)."),
    series: Path | None = typer.Option(None, "--series", help="A DPO series directory (its D<i>.jsonl)."),
    model: list[str] | None = typer.Option(
        None, "--model", help="I=SPEC: generate from model M<I>; repeatable."
    ),
    scorer: list[str] = typer.Option(..., "--scorer", help="Key-metric scorer spec; repeatable."),
    tag: list[str] | None = typer.Option(None, "--tag", help="Tags to generate for (with --model)."),
    n: int = config_option(_DS, "n"),
    max_new_tokens: int = config_option(_DS, "max_new_tokens"),
    temperature: float = config_option(_DS, "temperature"),
    seed: int = config_option(_DS, "seed"),
) -> None:
    """Per-iteration datasets: every sequence × every key metric, one Parquet per iteration + combined."""
    from ..errors import ConfigError
    from ..protein.datasets import build_datasets

    cfg = _DS(scorers=list(scorer), tags=list(tag or []), n=n, max_new_tokens=max_new_tokens,
              temperature=temperature, seed=seed)  # fmt: skip
    models = None
    if model:
        raw = parse_assignments(model, "--model", "I=SPEC (e.g. 0=path/to/model)")
        try:
            models = {int(k): v for k, v in raw.items()}
        except ValueError:
            raise ConfigError(
                "--model: write I=SPEC with an integer iteration, e.g. 0=path/to/model"
            ) from None
    if series is not None and not series.is_dir():
        raise ConfigError(f"--series {series}: not a directory")
    res = build_datasets(out, cfg, series=series, models=models)
    cols = res.columns
    console.print(
        table(
            f"per-iteration datasets ({res.source})",
            ["iteration", "sequences", "mean length", *cols],
            [(r["iteration"], r["n"], r["mean_length"], *(r[c] for c in cols)) for r in res.summary_rows],
        )
    )
    console.print(f"datasets → {out} (combined dataframe: {res.combined})")


SUBAPPS = [
    (
        protein_app,
        "protein",
        {
            "build-testbed": build_testbed_cmd,
            "score": score_cmd,
            "generate": generate_cmd,
            "datasets": datasets_cmd,
        },
    )
]


from ..protein.study import ProteinStudyConfig as _ST  # noqa: E402


def study_cmd(
    model: str | None = typer.Option(
        None, "--model", "-m", help="M0: a ZymCTRL-style LM (default: the testbed, built if missing)."
    ),
    out: Path = typer.Option(Path("experiments/protein_study"), "--out", "-o", help="Experiment directory."),
    refs: Path | None = typer.Option(
        None, "--refs", help="Training set of the tag (default: the testbed's)."
    ),
    tag: str = config_option(_ST, "tag"),
    hmm: str | None = config_option(_ST, "hmm"),
    iterations: int = config_option(_ST, "iterations"),
    prompts: int = config_option(_ST, "prompts"),
    samples: int = config_option(_ST, "samples"),
    max_new_tokens: int = config_option(_ST, "max_new_tokens"),
    dpo_lr: float = config_option(_ST, "dpo_lr"),
    dpo_epochs: float = config_option(_ST, "dpo_epochs"),
    beta: float = config_option(_ST, "beta"),
    sft_weight: float = config_option(_ST, "sft_weight"),
    pairs_per_prompt: int = config_option(_ST, "pairs_per_prompt"),
    temperature: float = config_option(_ST, "temperature"),
    select: str = config_option(_ST, "select"),
    identity_weight: float = config_option(_ST, "identity_weight"),
    null_control: bool = config_option(_ST, "null_control"),
    site: str = config_option(_ST, "site"),
    null_groups: int = config_option(_ST, "causal_null_groups"),
    seed: int = config_option(_ST, "seed"),
    skip: str | None = config_option(_ST, "skip"),
) -> None:
    """The protein study: DPO M1…Mn towards a higher HMM score → datasets → SAEs → probes → causal."""
    from ..protein.study import run_study

    cfg = _ST(tag=tag, hmm=hmm, iterations=iterations, prompts=prompts, samples=samples,
              max_new_tokens=max_new_tokens, dpo_lr=dpo_lr, dpo_epochs=dpo_epochs, site=site, select=select,
              identity_weight=identity_weight, beta=beta, sft_weight=sft_weight,
              pairs_per_prompt=pairs_per_prompt, temperature=temperature, null_control=null_control,
              causal_null_groups=null_groups, seed=seed, skip=split_list(skip))  # fmt: skip
    if model is None:
        from ..protein.testbed import build_testbed

        model = build_testbed().path
    res = run_study(model, out, cfg, refs=refs)
    print_study(res)


def print_study(res) -> None:  # noqa: ANN001 - a ProteinStudy
    _iteration_table(
        res.per_iteration, f"M0…M{len(res.per_iteration) - 1}: sequences generated for '{res.tag}'"
    )
    if res.per_iteration_null:
        _iteration_table(res.per_iteration_null, "null control: the same DPO rounds with random preferences")
    _study_rest(res)


def _iteration_table(rows: list, title: str) -> None:
    from ..protein.study import ITERATION_COLUMNS, iteration_rows

    console.print(table(title, [h for h, _ in ITERATION_COLUMNS], iteration_rows(rows)))


def _study_rest(res) -> None:  # noqa: ANN001 - a ProteinStudy
    if res.dpo:
        console.print(
            table(
                "DPO rounds (pairs: the r-th best vs the r-th worst HMM score of each prompt's samples)",
                ["checkpoint", "trained on", "pairs", "chosen mean", "rejected mean", "train loss"],
                [
                    (
                        d["checkpoint"],
                        d["trained_on"],
                        d["pairs"],
                        d["chosen"],
                        d["rejected"],
                        d["train_loss"],
                    )
                    for d in res.dpo
                ],
            )  # fmt: skip
        )
    if res.probes:
        console.print(
            table(
                "probes (high vs low, 4-fold CV AUROC)",
                ["SAE", "metric", "method", "k", "AUROC", "dense", "shuffled labels", "random latents"],
                [
                    (
                        p["sae"],
                        p["metric"],
                        p["method"],
                        p.get("k"),
                        p.get("cv_auroc"),
                        p.get("dense_auroc"),
                        p.get("shuffled_auroc"),
                        p.get("random_latents_auroc"),
                    )
                    for p in res.probes
                ],
            )  # fmt: skip
        )
    if res.causal:
        console.print(
            table(
                "causal: top HMM-probe latents vs matched null groups",
                [
                    "type",
                    "group",
                    "branch",
                    "SAE",
                    "metric",
                    "effect",
                    "95% CI",
                    "null mean ± sd",
                    "z",
                    "outside null",
                ],
                [
                    (
                        c["type"],
                        c["group"],
                        c["branch"],
                        c["sae"],
                        c["metric"],
                        c.get("effect"),
                        f"[{_f(c.get('ci_low'))}, {_f(c.get('ci_high'))}]",
                        f"{_f(c.get('null_mean'))} ± {_f(c.get('null_sd'))}",
                        c.get("z"),
                        c.get("outside_null"),
                    )
                    for c in res.causal
                ],
            )  # fmt: skip
        )
    console.print(f"timings (s): {res.timings}")
    console.print("files: " + ", ".join(f"{k} → {v}" for k, v in res.paths.items()))


def _f(x) -> str:  # noqa: ANN001
    return "–" if x is None else f"{x:.3g}"


SUBAPPS[0][2]["study"] = study_cmd
