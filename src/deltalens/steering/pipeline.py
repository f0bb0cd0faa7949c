"""High-level runs shared by the CLI and the demo: model variants, judges, steering runs.

* :func:`model_spec_for` — the model of an experiment variant (``config.yaml``'s
  ``models: {variant: spec}``), recorded there on first use.
* :func:`make_judge` — ``offline`` (default), ``openai`` / ``openai:<model>`` or
  ``local:<model spec>``.
* :func:`offline_judge` — the offline judge of a trait: its classifier is trained on the
  trait's *instruction-format* responses from the steered model (generated on first use
  and kept in the experiment), which share the held-out steering questions' format.
* :func:`trait_id`, :func:`split_trait_ref`, :func:`resolve_trait` — trait references as
  the CLI takes them; :func:`default_layers` — the default search range;
  :func:`model_width` — ``d_model`` of a spec without loading it.
* the stages :func:`run_steering` / :func:`run_combinations` live in :mod:`.runs` (re-exported).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..data.traits import FORMATS, TraitSet, load_trait, resolve_trait_path
from ..errors import ConfigError, DataFormatError
from ..experiment import Experiment
from ..io import config_hash, read_json
from ..judges import CoherenceScorer, Judge, OfflineJudge, TraitClassifier
from .extraction import existing_responses, trait_responses

if TYPE_CHECKING:
    from ..models.loading import LoadedModel

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_VARIANT = "instruct"  # the only variant that falls back to DEFAULT_MODEL
MIN_JUDGE_AUROC = 0.7  # below this the offline trait classifier is flagged as uninformative


def model_spec_for(exp: Experiment, variant: str, model: str | None = None, *, record: bool = True) -> str:
    """The model spec of ``variant`` in the experiment (``models`` in config.yaml).

    ``model`` given: used, and recorded for the variant if none is recorded (a different
    recorded spec is an error). Not given: the recorded spec; the default variant
    (``instruct``) falls back to the bundled SmolLM2, any other variant without a recorded
    model is a :class:`ConfigError` naming the key to set (``models.<variant>``).
    ``record=False`` resolves without writing the config.
    """
    cfg = exp.load_config() if exp.config_path.exists() else {}
    models = cfg.get("models") or {}
    if not isinstance(models, dict):
        raise ConfigError(f"{exp.config_path}: 'models' must be a mapping of variant → model spec")
    have = models.get(variant)
    if model is not None and have is not None and str(have) != str(model):
        raise ConfigError(
            f"{exp.config_path}: variant '{variant}' is {have!r}, not {model!r}; use another --model-variant name "
            "or edit the config"
        )
    if model is None and have is None and variant != DEFAULT_VARIANT:
        raise ConfigError(
            f"no model for variant '{variant}': set models.{variant} in {exp.config_path} or pass --model"
        )
    spec = str(model or have or DEFAULT_MODEL)
    if have is None and record:
        exp.root.mkdir(parents=True, exist_ok=True)
        cfg.setdefault("name", exp.name)
        cfg.setdefault("models", {})[variant] = spec
        exp.save_config(cfg)
    return spec


def instruction_counterpart(trait: TraitSet) -> TraitSet | None:
    """The instruction-format dataset of the same trait (itself, or ``../instruction/<name>``)."""
    if trait.format == "instruction":
        return trait
    for cand in (trait.path.parent.parent / "instruction" / trait.name, f"instruction/{trait.name}"):
        try:
            return load_trait(resolve_trait_path(cand))
        except DataFormatError:
            continue
    return None


def offline_judge(
    lm: LoadedModel,
    exp: Experiment,
    trait: TraitSet,
    variant: str,
    *,
    max_new_tokens: int = 48,
    progress: bool = True,
) -> OfflineJudge:
    """The offline judge for ``trait`` on model ``lm`` (classifier trained or loaded; see module docstring)."""
    inst = instruction_counterpart(trait)
    src = inst or trait
    path = exp.trait_classifier_path(trait.name, variant)
    found = existing_responses(lm, exp, src, variant)
    if found is None:
        found = trait_responses(lm, exp, src, variant, max_new_tokens=max_new_tokens, progress=progress)[:2]
    pos, neg = found
    data_sha = config_hash([[g.response for g in pos], [g.response for g in neg]])
    clf = TraitClassifier.load(path) if path.exists() else None
    if (
        clf is None
        or clf.meta.get("responses_sha") != data_sha
        or clf.meta.get("weights_hash") != lm.weights_hash
    ):
        clf = TraitClassifier.fit(
            [g.response for g in pos],
            [g.response for g in neg],
            trait=src.id,
            weights_hash=lm.weights_hash,
            model=lm.name,
            responses_sha=data_sha,
            confounded_by_content=src.format == "natural",
        )
        clf.save(path)
    auroc = clf.meta.get("cv_auroc")
    if auroc is not None and auroc < MIN_JUDGE_AUROC:
        import warnings

        warnings.warn(
            f"the offline judge cannot tell {src.id}'s positive from its negative responses on {lm.name} "
            f"(cross-validated AUROC {auroc:.2f} < {MIN_JUDGE_AUROC}); its trait scores carry no signal — "
            "use an LLM judge (--judge openai or local:<model>) for this trait",
            stacklevel=2,
        )
    return OfflineJudge(clf, CoherenceScorer(lm))


def make_judge(
    spec: str, lm: LoadedModel, exp: Experiment, trait: TraitSet, variant: str, *, progress: bool = True
) -> Judge:
    """A judge by name: ``offline``, ``openai`` / ``openai:<model>``, ``local:<model spec>``."""
    s = (spec or "offline").strip()
    if s == "offline":
        return offline_judge(lm, exp, trait, variant, progress=progress)
    if s == "openai" or s.startswith("openai:"):
        from ..judges import OpenAIJudge

        return OpenAIJudge(model=s.split(":", 1)[1] if ":" in s else None)
    if s.startswith("local:"):
        from ..judges import LocalJudge
        from ..models import load

        return LocalJudge(load(s.split(":", 1)[1]))
    raise ConfigError(f"unknown judge '{spec}'; valid: offline, openai, openai:<model>, local:<model spec>")


def default_layers(n_layers: int) -> list[int]:
    """The seed's default search range: 30 %–60 % of the depth (9–19 of 32 layers)."""
    lo, hi = int(0.3 * n_layers), int(0.6 * n_layers)
    return list(range(lo, max(hi, lo) + 1))


def split_trait_ref(ref: str) -> tuple[str | None, str]:
    """``[experiment/]<format>/<name>`` → (experiment or None, trait spec); ``pv_`` formats accepted."""
    parts = ref.strip().strip("/").split("/")
    if len(parts) >= 3 and not Path(ref).is_dir():
        fmt = parts[-2].replace("pv_", "")
        if fmt in FORMATS:
            return "/".join(parts[:-2]), "/".join(parts[-2:])
    return None, ref


def trait_id(ref: str) -> str:
    """The id vectors and results of a trait are filed under (what ``extract`` records):
    ``<format>/<name>`` of a bundled id, an alias (``pv_natural/x`` → ``natural/x``) or a
    trait directory."""
    try:
        return load_trait(ref).id
    except DataFormatError:
        pass
    parts = str(ref).strip().strip("/").split("/")
    if len(parts) == 2 and parts[0].replace("pv_", "") in FORMATS and parts[1]:
        return f"{parts[0].replace('pv_', '')}/{parts[1]}"
    raise ConfigError(
        f"--trait '{ref}': give a trait id <format>/<name> (format: {', '.join(FORMATS)}) or a trait directory"
    )


def resolve_trait(exp: Experiment, ref: str) -> TraitSet:
    """The trait dataset of ``ref``: a bundled id or directory, or the id an extraction in
    ``exp`` recorded (its dataset directory is read from the extraction's vectors)."""
    try:
        return load_trait(ref)
    except DataFormatError as first:
        try:
            tid = trait_id(ref)
        except ConfigError:
            raise first from None
        from .extraction import ExtractionResult

        for f in sorted(exp.trait_vectors_dir(tid).glob(f"*/*/*/{ExtractionResult.FILENAME}")):
            path = (read_json(f).get("meta") or {}).get("trait_path")
            if path and Path(path).is_dir():
                return load_trait(path)
        raise first from None


def model_width(spec: str) -> int:
    """``d_model`` of a model spec, read from its config (the weights are not loaded)."""
    from transformers import AutoConfig

    from ..models.loading import local_dir

    cfg = AutoConfig.from_pretrained(str(local_dir(spec)))
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(cfg.hidden_size)


from .runs import (  # noqa: E402  (re-exported: the stages of this package)
    CombinationResult,
    CombineConfig,
    SteeringRun,
    SteerRunConfig,
    best_source,
    run_combinations,
    run_steering,
)

__all__ = [
    "DEFAULT_MODEL",
    "CombinationResult",
    "CombineConfig",
    "SteerRunConfig",
    "SteeringRun",
    "best_source",
    "default_layers",
    "make_judge",
    "model_spec_for",
    "model_width",
    "offline_judge",
    "resolve_trait",
    "run_combinations",
    "run_steering",
    "split_trait_ref",
    "trait_id",
]
