"""The built-in study stage types: one adapter per CLI command, over the same stage function.

Each adapter's ``inputs`` dataclass holds the command's arguments that are not config fields
(models, data, output name); the config fields are the stage's own config dataclass. Outputs go
where the command writes them inside the study's experiment directory, named after the stage
(``diff/weights/<stage name>/``), so ``deltalens report`` finds them. More adapters (steering,
SAEs, features, probes, causal, circuits, inverse, protein) are in :mod:`.stages_more`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..capture import CaptureConfig
from ..diff.activations import ActivationDiffConfig
from ..diff.organisms import OrganismConfig
from ..diff.outputs import OutputDiffConfig
from ..diff.weights import WeightDiffConfig
from ..errors import DataFormatError
from ..generate import GenerateConfig
from ..sae.train import SAETrainConfig
from ..stage import option
from .registry import StageContext, StageType, register_stage

BASE = "smollm2-135m-instruct"


def _exists(*keys: str):
    def check(outputs: dict[str, Any]) -> None:
        for k in keys:
            p = Path(str(outputs.get(k, "")))
            if not p.exists():
                raise DataFormatError(f"{p}: missing")

    return check


def _loads(cls: Any, key: str = "dir"):
    def check(outputs: dict[str, Any]) -> None:
        cls.load(outputs[key])

    return check


# ---- organism.train ------------------------------------------------------------------------------
@dataclass
class OrganismInputs:
    data: str = option(flag="--data", help="Bundled organism dataset, directory or .jsonl.")
    base: str = option(BASE, flag="--base", help="Base model spec.")
    null: bool = option(False, flag="--null", help="Null organism: the plain ('rejected') answers.")
    target: str = option("chosen", flag="--target", help="Answer field to learn (SFT).")
    shuffle: bool = option(False, flag="--shuffle", help="Shuffle answers across questions.")
    system: str | None = option(None, flag="--system", help="System prompt for every example.")
    limit: int | None = option(None, flag="--limit", help="Use only the first N records.")


def _organism(ctx: StageContext, ins: OrganismInputs, cfg: OrganismConfig) -> dict[str, Any]:
    from ..diff.organisms import read_provenance, train_organism

    path = ctx.exp.organism_dir(ctx.name)
    p = train_organism(
        ins.base,
        ins.data,
        path,
        config=cfg,
        target="rejected" if ins.null else ins.target,
        shuffle_targets=ins.shuffle,
        system=ins.system,
        limit=ins.limit,
        resume=not ctx.replace,
        progress=ctx.progress,
    )
    tr = read_provenance(p)["training"]
    ctx.console.print(
        f"organism {ctx.name}: {tr['n_examples']} examples, {tr['steps']} steps, "
        f"loss {tr['loss_first']:.2f} → {tr['loss_last']:.2f}"
    )
    return {"dir": str(p), "model": str(p)}


def _organism_check(outputs: dict[str, Any]) -> None:
    from ..diff.organisms import read_provenance

    read_provenance(outputs["dir"])


register_stage(
    StageType(
        "organism.train",
        _organism,
        ("dir", "model"),
        OrganismInputs,
        OrganismConfig,
        command="deltalens organism train",
        description="fine-tune a model organism (merged HF directory + provenance)",
        check=_organism_check,
    )
)


# ---- generate ------------------------------------------------------------------------------------
@dataclass
class GenerateInputs:
    model: str = option(BASE, flag="--model", help="Model spec.")
    prompts: str | None = option(
        None, flag="--prompts", help="Prompt file or bundled set (default organism_eval)."
    )
    system: str | None = option(None, flag="--system", help="System prompt for all prompts.")


def _generate(ctx: StageContext, ins: GenerateInputs, cfg: GenerateConfig) -> dict[str, Any]:
    from ..diff._models import prompt_set
    from ..generate import generate, save_generations

    gens = generate(ctx.model(ins.model), prompt_set(ins.prompts), system=ins.system, **cfg.kwargs())
    out = ctx.exp.generations_path(ctx.name)
    save_generations(out, gens)
    ctx.console.print(f"{len(gens)} responses → {out}")
    return {"dir": str(out.parent), "file": str(out)}


register_stage(
    StageType(
        "generate",
        _generate,
        ("dir", "file"),
        GenerateInputs,
        GenerateConfig,
        command="deltalens generate",
        description="generate responses (JSONL under generations/)",
        check=_exists("file"),
    )
)


# ---- capture -------------------------------------------------------------------------------------
@dataclass
class CaptureInputs:
    data: str = option(
        "unrelated", flag="--data", help="Inputs: .txt / .jsonl, or 'unrelated' (bundled text)."
    )
    model: str = option(BASE, flag="--model", help="Model spec.")


def _capture(ctx: StageContext, ins: CaptureInputs, cfg: CaptureConfig) -> dict[str, Any]:
    from ..capture import capture
    from ..diff._models import text_set

    out = ctx.exp.activations_dir(ctx.name, "model", cfg.positions)
    store = capture(
        ctx.model(ins.model),
        text_set(ins.data),
        cfg,
        store=out,
        dataset_name=str(ins.data),
        overwrite=ctx.replace,
        progress=ctx.progress,
    )
    s = store.summary()  # type: ignore[union-attr]
    ctx.console.print(f"store: {s.get('rows')} rows × {len(s.get('sites', []))} sites → {out}")
    return {"dir": str(out), "store": str(out)}


def _store_check(outputs: dict[str, Any]) -> None:
    from ..store import ActivationStore

    ActivationStore(outputs["dir"]).summary()


register_stage(
    StageType(
        "capture",
        _capture,
        ("dir", "store"),
        CaptureInputs,
        CaptureConfig,
        command="deltalens capture",
        description="capture activations into an ActivationStore",
        check=_store_check,
    )
)


# ---- diff.weights / diff.activations / diff.outputs ----------------------------------------------
@dataclass
class PairInputs:
    base: str = option(flag="base", help="Base model spec.")
    ft: str = option(flag="ft", help="Fine-tuned model spec.")


@dataclass
class WeightInputs(PairInputs):
    traits: list[str] | None = option(None, flag="--traits", help="Trait vector files or directories.")


def _weights(ctx: StageContext, ins: WeightInputs, cfg: WeightDiffConfig) -> dict[str, Any]:
    from ..diff.weights import diff_weights

    out = ctx.exp.weight_diff_dir(ctx.name)
    r = diff_weights(ins.base, ins.ft, cfg, traits=ins.traits, out_dir=out, progress=ctx.progress)
    s = r.overview
    ctx.console.print(
        f"{s['n_changed']} of {s['n_tensors']} tensors changed; ‖Δθ‖/‖θ‖ = {s['total_rel']:.3e}"
    )
    return {"dir": str(out)}


@dataclass
class ActivationInputs(PairInputs):
    prompts: str | None = option(
        None, flag="--prompts", help="Prompt file or bundled set (default organism_eval)."
    )
    responses: str | None = option(None, flag="--responses", help="The ft model's responses (JSONL).")
    steering: dict[str, str] | None = option(None, flag="--steering", help="TRAIT: results.jsonl.")
    lens_texts: str | None = option(None, flag="--lens-texts", help="Unrelated text for the difference lens.")


def _activations(ctx: StageContext, ins: ActivationInputs, cfg: ActivationDiffConfig) -> dict[str, Any]:
    from ..data.jsonl import read_jsonl
    from ..diff._models import prompt_set, text_set
    from ..diff.activations import diff_activations

    out = ctx.exp.activation_diff_dir(ctx.name)
    gens = read_jsonl(ins.responses) if ins.responses else None
    r = diff_activations(
        ins.base,
        ins.ft,
        None if gens else prompt_set(ins.prompts),
        cfg,
        generations=gens,
        steering=ins.steering,
        lens_texts=text_set(ins.lens_texts),
        out_dir=out,
        progress=ctx.progress,
    )
    sim = r.per_layer_similarity["mean"]
    ctx.console.print(
        f"replay similarity over {r.n_prompts} prompts: min mean cos {min(sim):.4f} "
        f"(layer {r.layers[sim.index(min(sim))]})"
    )
    if r.lens is not None:
        ctx.console.print(
            "activation-difference lens: "
            + " ".join(
                map(str, [t[0] if isinstance(t, (list, tuple)) else t for t in r.lens.overview["pos"][:12]])
            )
        )
    return {"dir": str(out)}


@dataclass
class OutputInputs(PairInputs):
    data: str | None = option(
        None, flag="--data", help="Texts (.txt/.jsonl); default the bundled unrelated text."
    )


def _outputs(ctx: StageContext, ins: OutputInputs, cfg: OutputDiffConfig) -> dict[str, Any]:
    from ..diff._models import text_set
    from ..diff.outputs import diff_outputs

    out = ctx.exp.output_diff_dir(ctx.name)
    r = diff_outputs(ins.base, ins.ft, text_set(ins.data), cfg, out_dir=out, progress=ctx.progress)
    ctx.console.print(f"mean KL(ft‖base) = {r.mean_kl:.4f} nats/token over {r.n_positions} positions")
    return {"dir": str(out)}


def _diff_check(kind: str):
    def check(outputs: dict[str, Any]) -> None:
        from ..diff.activations import ActivationDiff
        from ..diff.outputs import OutputDiff
        from ..diff.weights import WeightDiff

        {"weights": WeightDiff, "activations": ActivationDiff, "outputs": OutputDiff}[kind].load(
            outputs["dir"]
        )

    return check


for _name, _fn, _ins, _cfg, _what in (
    ("diff.weights", _weights, WeightInputs, WeightDiffConfig, "weight diff: norms, rank, logit lens"),
    (
        "diff.activations",
        _activations,
        ActivationInputs,
        ActivationDiffConfig,
        "replay activation similarity and the activation-difference lens",
    ),
    ("diff.outputs", _outputs, OutputInputs, OutputDiffConfig, "per-token KL and the tokens that rose"),
):
    register_stage(
        StageType(
            _name,
            _fn,
            ("dir",),
            _ins,
            _cfg,
            command=f"deltalens diff {_name.split('.')[1]}",
            description=_what,
            check=_diff_check(_name.split(".")[1]),
        )
    )


# ---- sae.crosscoder ------------------------------------------------------------------------------
@dataclass
class CrosscoderInputs:
    stores: list[str] = option(flag="--store", help="Stores of the same tokens, one per model (base first).")
    site: str | None = option(None, flag="--site", help="Site (default: the stores' first).")


def _crosscoder(ctx: StageContext, ins: CrosscoderInputs, cfg: SAETrainConfig) -> dict[str, Any]:
    from ..sae.crosscoder import train_crosscoder_on_stores

    out = ctx.exp.crosscoder_dir(ctx.name)
    res = train_crosscoder_on_stores(
        ins.stores, cfg.replace(architecture="batchtopk"), site=ins.site, out=out, progress=ctx.progress
    )
    c = res.classes["counts"]
    ctx.console.print(
        "crosscoder latents: "
        + ", ".join(f"{k} {c.get(k, 0)}" for k in ("base-only", "ft-only", "shared", "other", "dead"))
    )
    return {"dir": str(out)}


def _cc_check(outputs: dict[str, Any]) -> None:
    from ..sae.crosscoder import CrosscoderResult

    CrosscoderResult.load(outputs["dir"])


register_stage(
    StageType(
        "sae.crosscoder",
        _crosscoder,
        ("dir",),
        CrosscoderInputs,
        SAETrainConfig,
        command="deltalens sae crosscoder",
        description="BatchTopK crosscoder on two models' activations of the same tokens",
        check=_cc_check,
    )
)


# ---- report --------------------------------------------------------------------------------------
def _report(ctx: StageContext, ins: Any, cfg: Any) -> dict[str, Any]:
    from ..report.html import build_report

    path = build_report(ctx.exp)
    ctx.console.print(f"wrote {path} ({path.stat().st_size / 2**10:.0f} KB)")
    return {"dir": str(path.parent), "html": str(path)}


register_stage(
    StageType(
        "report",
        _report,
        ("dir", "html"),
        command="deltalens report",
        description="the HTML report of the study directory",
        check=_exists("html"),
    )
)

from . import stages_more  # noqa: E402,F401  (the other areas' adapters)
