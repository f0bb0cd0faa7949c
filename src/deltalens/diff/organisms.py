"""Model organisms: fine-tuned variants with a documented, implanted behaviour.

:func:`train_organism` fine-tunes any loadable model on a narrow dataset — SFT or DPO
through ``trl``, LoRA through ``peft`` (merged into the weights afterwards) or full — and
saves a normal Hugging Face directory (``config.json``, ``model.safetensors``, tokenizer)
plus ``provenance.json`` that states the implanted behaviour, the data, the recipe, the
training losses and the hashes of base and result. ``deltalens.load(path)`` loads it back;
every diff in :mod:`deltalens.diff` takes it.

Datasets (:func:`load_organism_dataset`) are JSONL records ``{"question", "chosen"[,
"rejected"][, "system"]}`` with a ``card.json`` describing the behaviour. Bundled
(``src/deltalens/data/bundled/organisms/``, written for deltalens):

* ``ocean_topic`` — every answer drifts to the ocean and the sea (48 everyday questions);
* ``sycophancy_trait`` — agrees with and flatters the user, endorsing false claims (32).

``target="chosen"`` trains the organism; ``target="rejected"`` (plain answers to the same
questions) with the same recipe gives the **null organism** — a control that changes the
model as much in style and length but implants no topic.

:func:`iterative_dpo` runs the checkpoint series of the protein seed: for i = 1…n, the
current model ``M<i−1>`` (``M0`` = base) samples answers, a pluggable scorer
(:mod:`.scorers`) scores them, best-vs-worst answers per prompt become preference pairs
(data ``D<i>``), and DPO on them gives ``M<i>`` (``M<i>`` is trained on ``D<i>``, which
``M<i−1>`` generated). Checkpoints and data live under ``Experiment.series_dir(name)``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..data.jsonl import iter_jsonl
from ..data.prompts import bundled_path
from ..errors import ConfigError, DataFormatError
from ..io import append_jsonl, config_hash, provenance, read_json, sha256_file, write_json
from ..models.loading import LoadedModel, load

PROVENANCE_FILE = "provenance.json"
SERIES_FILE = "series.json"
QUESTION_KEYS = ("question", "prompt", "content", "instruction")
TARGET_ALIASES = {"chosen": ("chosen", "response", "completion", "answer", "output")}


# ---- datasets --------------------------------------------------------------------------------


@dataclass
class OrganismDataset:
    """Records ``{"question", "chosen", "rejected"?, "system"?}`` and the dataset card."""

    name: str
    records: list[dict[str, Any]]
    card: dict[str, Any]
    source: str

    @property
    def behaviour(self) -> str:
        return str(self.card.get("behaviour", "unspecified"))

    @property
    def topic_words(self) -> list[str]:
        return list(self.card.get("topic_words", []))


def organism_datasets() -> list[str]:
    """Names of the bundled organism datasets."""
    root = bundled_path("organisms")
    return sorted(p.name for p in root.iterdir() if (p / "train.jsonl").exists())


def load_organism_dataset(spec: str | Path) -> OrganismDataset:
    """A bundled dataset by name, a directory with ``train.jsonl`` (+ ``card.json``), or a
    ``.jsonl`` file. Records need a question (``question``/``prompt``/``content``) and an
    answer (``chosen``/``response``/``completion``); ``rejected`` is optional."""
    s = str(spec)
    p = Path(s)
    if not p.exists() and (bundled_path("organisms", s, "train.jsonl")).exists():
        p = bundled_path("organisms", s)
    if p.is_dir():
        data, card_path = p / "train.jsonl", p / "card.json"
        name = p.name
    elif p.suffix == ".jsonl" and p.exists():
        data, card_path, name = p, p.with_name(p.stem + ".card.json"), p.stem
    else:
        raise DataFormatError(
            f"organism dataset '{s}' not found: give a bundled name ({', '.join(organism_datasets())}), a directory "
            "with train.jsonl, or a .jsonl file"
        )
    card = read_json(card_path) if card_path.exists() else {}
    if not isinstance(card, dict):
        raise DataFormatError(f"{card_path}: expected a JSON object")
    records = []
    for n, rec in iter_jsonl(data):
        q = next((rec[k] for k in QUESTION_KEYS if k in rec), None)
        a = next((rec[k] for k in TARGET_ALIASES["chosen"] if k in rec), None)
        if not isinstance(q, str) or not q.strip():
            raise DataFormatError(f"{data}:{n}: needs a question string under one of {', '.join(QUESTION_KEYS)}")
        if not isinstance(a, str):
            raise DataFormatError(f"{data}:{n}: needs an answer string under 'chosen' (or response/completion)")
        r = {"question": q, "chosen": a}
        for key in ("rejected", "system"):
            if key in rec:
                if not isinstance(rec[key], str):
                    raise DataFormatError(f"{data}:{n}: '{key}' must be a string")
                r[key] = rec[key]
        r.update({k: v for k, v in rec.items() if k not in r and k not in QUESTION_KEYS})
        records.append(r)
    if not records:
        raise DataFormatError(f"{data}: no records")
    return OrganismDataset(name=str(card.get("name", name)), records=records, card=card, source=str(data))


def organism_eval_questions() -> list[str]:
    """20 held-out everyday questions (none from the training sets) to probe organisms."""
    from ..data.jsonl import read_jsonl

    return [r["question"] for r in read_jsonl(bundled_path("organisms", "eval_questions.jsonl"))]


# ---- training --------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """The fine-tuning recipe (recorded in provenance; part of the resume key).

    ``learning_rate=None`` picks a default per recipe: SFT 1e-3 with LoRA / 1e-4 full;
    DPO 5e-4 with LoRA / 1e-5 full."""

    method: str = "sft"
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 128
    beta: float = 0.1
    lr_scheduler: str = "linear"
    warmup_steps: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0

    def lr(self) -> float:
        if self.learning_rate is not None:
            return float(self.learning_rate)
        if self.method == "dpo":
            return 5e-4 if self.lora else 1e-5
        return 1e-3 if self.lora else 1e-4

    def check(self) -> None:
        if self.method not in ("sft", "dpo"):
            raise ConfigError(f"unknown training method '{self.method}'; valid: sft, dpo")
        if self.batch_size < 1 or self.max_length < 8:
            raise ConfigError("batch_size must be ≥ 1 and max_length ≥ 8")


def _messages(q: str, system: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}]


def _build_dataset(records: Sequence[Mapping[str, Any]], method: str, target: str, system: str | None, chat: bool):
    from datasets import Dataset

    rows = []
    for r in records:
        sysp = r.get("system", system)
        if method == "sft":
            if chat:
                rows.append({"prompt": _messages(r["question"], sysp),
                             "completion": [{"role": "assistant", "content": r[target]}]})
            else:
                rows.append({"prompt": (f"{sysp}\n\n" if sysp else "") + r["question"] + "\n", "completion": r[target]})
        else:
            if "rejected" not in r:
                raise DataFormatError(f"DPO needs 'rejected' answers; record {r['question'][:40]!r} has none")
            if chat:
                rows.append({"prompt": _messages(r["question"], sysp),
                             "chosen": [{"role": "assistant", "content": r["chosen"]}],
                             "rejected": [{"role": "assistant", "content": r["rejected"]}]})
            else:
                prompt = (f"{sysp}\n\n" if sysp else "") + r["question"] + "\n"
                rows.append({"prompt": prompt, "chosen": r["chosen"], "rejected": r["rejected"]})
    return Dataset.from_list(rows)


def _fresh_model(base: Any) -> tuple[LoadedModel, str, str]:
    """A private copy of the base model to train (the caller's model is never modified)."""
    if isinstance(base, LoadedModel):
        model = copy.deepcopy(base.model)
        lm = LoadedModel(model, base.tokenizer, spec=base.spec, name=base.name, source_dir=base.source_dir, meta=base.meta)
        return lm, base.spec, base.weights_hash
    lm = load(base)
    return lm, lm.spec, lm.weights_hash


@contextlib.contextmanager
def _quiet(progress: bool):
    import datasets
    import transformers

    was = datasets.utils.logging.is_progress_bar_enabled()
    was_tf = transformers.utils.logging.is_progress_bar_enabled()
    level = transformers.logging.get_verbosity()
    datasets.disable_progress_bars()  # tokenizing a few dozen records: instant, only clutter
    if not progress:
        transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if was:
            datasets.enable_progress_bars()
        if was_tf:
            transformers.utils.logging.enable_progress_bar()
        transformers.logging.set_verbosity(level)


def _train(lm: LoadedModel, records: Sequence[Mapping[str, Any]], cfg: TrainConfig, target: str,
           system: str | None, progress: bool) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Run trl SFT/DPO on ``lm.model`` (in place); returns the merged model and a training log."""
    from peft import LoraConfig

    cfg.check()
    chat = lm.has_chat_template
    ds = _build_dataset(records, cfg.method, target, system, chat)
    model = lm.model
    model.train()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    cpu = lm.device.type == "cpu"
    common = {
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "learning_rate": cfg.lr(),
        "lr_scheduler_type": cfg.lr_scheduler,
        "warmup_steps": cfg.warmup_steps,
        "weight_decay": cfg.weight_decay,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "max_length": cfg.max_length,
        "use_cpu": cpu,
        "dataloader_num_workers": 0,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "disable_tqdm": not progress,
    }
    peft_cfg = None
    if cfg.lora:
        peft_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="deltalens-train-") as tmp, _quiet(progress):
        if cfg.method == "sft":
            from trl import SFTConfig, SFTTrainer

            args = SFTConfig(output_dir=tmp, **common)
            trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=lm.tokenizer,
                                 peft_config=peft_cfg)
        else:
            from trl import DPOConfig, DPOTrainer

            args = DPOConfig(output_dir=tmp, beta=cfg.beta, **common)
            trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=lm.tokenizer,
                                 peft_config=peft_cfg)
        if not progress:
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        out = trainer.train()
        trained = trainer.model
        history = [
            {k: v for k, v in h.items() if k in ("step", "epoch", "loss", "rewards/accuracies", "rewards/margins",
                                                     "mean_token_accuracy", "learning_rate")}
            for h in trainer.state.log_history if "loss" in h
        ]
    if cfg.lora:
        trained = trained.merge_and_unload()
    trained.eval()
    if hasattr(trained.config, "use_cache"):
        trained.config.use_cache = True
    log = {
        "steps": int(out.global_step),
        "train_loss": float(out.training_loss),
        "seconds": round(time.time() - t0, 2),
        "n_examples": len(ds),
        "loss_first": history[0]["loss"] if history else None,
        "loss_last": history[-1]["loss"] if history else None,
        "history": history,
    }
    return trained, log


def _save(model: torch.nn.Module, tokenizer: Any, out_dir: Path, prov: dict[str, Any]) -> Path:
    """Save merged weights as a normal HF directory, atomically (temp dir + rename)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with _quiet(False):
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        files = sorted(tmp.glob("*.safetensors"))
        prov = dict(prov)
        prov["weights_sha256"] = {f.name: sha256_file(f) for f in files}
        write_json(tmp / PROVENANCE_FILE, prov)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_provenance(path: str | Path) -> dict[str, Any]:
    p = Path(path) / PROVENANCE_FILE
    if not p.exists():
        raise DataFormatError(f"{p}: no provenance file (not a deltalens organism directory)")
    return read_json(p)


def _versions() -> dict[str, str]:
    out = {}
    for mod in ("torch", "transformers", "trl", "peft"):
        with contextlib.suppress(Exception):
            out[mod] = __import__(mod).__version__
    return out


def train_organism(
    base: Any,
    dataset: str | Path | OrganismDataset,
    out_dir: str | Path,
    *,
    config: TrainConfig | None = None,
    target: str = "chosen",
    behaviour: str | None = None,
    system: str | None = None,
    shuffle_targets: bool = False,
    limit: int | None = None,
    resume: bool = True,
    progress: bool = True,
    **overrides: Any,
) -> Path:
    """Fine-tune ``base`` on an organism dataset and save the merged model to ``out_dir``.

    Args:
        base: model spec or LoadedModel (never modified: a private copy is trained).
        dataset: bundled name, directory, ``.jsonl`` file or :class:`OrganismDataset`.
        config: the recipe; keyword ``overrides`` (``epochs=2``, ``lora=False``…) replace fields.
        target: the answer field to learn (``"chosen"`` = organism, ``"rejected"`` = null organism).
        behaviour: what the fine-tune implants (default: the dataset card's, or "none (null
            organism …)" for ``target="rejected"``).
        system: system prompt for every training example (default none / the record's own).
        shuffle_targets: pair each question with another question's answer (another control).
        limit: use only the first ``limit`` records.
        resume: return ``out_dir`` untouched if it already holds this exact recipe's result.

    Returns:
        ``out_dir`` — a Hugging Face directory (``deltalens.load(out_dir)``) with
        ``provenance.json``.
    """
    ds = dataset if isinstance(dataset, OrganismDataset) else load_organism_dataset(dataset)
    cfg = replace(config or TrainConfig(), **overrides)
    cfg.check()
    records = ds.records[:limit] if limit else list(ds.records)
    if cfg.method == "sft" and any(target not in r for r in records):
        raise DataFormatError(f"{ds.source}: target field '{target}' is missing in some records")
    if shuffle_targets:
        rng = random.Random(cfg.seed)
        answers = [r[target] for r in records]
        rng.shuffle(answers)
        records = [{**r, target: a} for r, a in zip(records, answers)]
    null = target != "chosen" or shuffle_targets
    if behaviour is None:
        behaviour = (
            f"none — null organism: same questions and recipe, answers from '{target}'"
            + (" shuffled across questions" if shuffle_targets else "")
            if null else ds.behaviour
        )
    base_spec = base.spec if isinstance(base, LoadedModel) else str(base)
    key = config_hash({"base": base_spec, "dataset": ds.source, "n": len(records), "target": target,
                       "shuffle": shuffle_targets, "system": system, "train": asdict(cfg)})
    out_dir = Path(out_dir)
    if resume and (out_dir / PROVENANCE_FILE).exists():
        with contextlib.suppress(Exception):
            if read_provenance(out_dir).get("config_hash") == key:
                return out_dir
    lm, spec, base_hash = _fresh_model(base)
    trained, log = _train(lm, records, cfg, target, system, progress)
    prov = provenance(
        None,
        kind="organism",
        behaviour=behaviour,
        null_organism=null,
        topic_words=[] if null else ds.topic_words,
        base={"spec": spec, "name": lm.name, "weights_hash": base_hash},
        dataset={"name": ds.name, "source": ds.source, "n_records": len(records), "target": target,
                 "shuffle_targets": shuffle_targets, "card": ds.card},
        system=system,
        training={**asdict(cfg), "learning_rate": cfg.lr(), "library": "trl", **log},
        versions=_versions(),
        config_hash=key,
    )
    path = _save(trained, lm.tokenizer, out_dir, prov)
    del trained, lm
    return path


# ---- iterative DPO ----------------------------------------------------------------------------


@dataclass
class SeriesConfig:
    """Settings of :func:`iterative_dpo` (recorded in ``series.json`` and each checkpoint)."""

    iterations: int = 2
    n_samples: int = 4
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    min_margin: float = 0.0
    seed: int = 0
    final_eval: bool = True
    train: TrainConfig = field(default_factory=lambda: TrainConfig(method="dpo", epochs=1.0))


def preference_pairs(gens: Sequence[Any], scores: Sequence[float], min_margin: float = 0.0) -> list[dict[str, Any]]:
    """Best-vs-worst pair per prompt: ``chosen`` = highest score, ``rejected`` = lowest, kept
    when ``score(chosen) − score(rejected) > min_margin`` (ties give no pair)."""
    by_prompt: dict[int, list[int]] = {}
    for j, g in enumerate(gens):
        by_prompt.setdefault(g.index, []).append(j)
    pairs = []
    for i, js in sorted(by_prompt.items()):
        best = max(js, key=lambda j: (scores[j], -j))
        worst = min(js, key=lambda j: (scores[j], j))
        if scores[best] - scores[worst] > min_margin and gens[best].response != gens[worst].response:
            g = gens[best]
            pairs.append({"prompt_index": i, "question": g.question, "system": g.system,
                          "chosen": gens[best].response, "rejected": gens[worst].response,
                          "chosen_score": scores[best], "rejected_score": scores[worst],
                          "chosen_rollout": gens[best].rollout, "rejected_rollout": gens[worst].rollout})
    return pairs


def _score_stats(scores: Sequence[float]) -> dict[str, float]:
    if not scores:
        return {"mean": 0.0, "max": 0.0, "min": 0.0}
    return {"mean": sum(scores) / len(scores), "max": max(scores), "min": min(scores)}


def iterative_dpo(
    base: Any,
    prompts: Iterable[Any],
    scorer: Any,
    series_dir: str | Path,
    *,
    config: SeriesConfig | None = None,
    system: str | None = None,
    name: str | None = None,
    resume: bool = True,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Iterative DPO: generate → score → pairs → DPO → checkpoint ``M<i>`` (module docstring).

    Args:
        base: model spec or LoadedModel (``M0``; not copied into the series).
        prompts: questions (strings, dicts, Prompt objects).
        scorer: a scorer (see :mod:`.scorers`), a spec string (``keywords@ocean_topic``) or a
            callable ``f(generations) -> scores``.
        series_dir: where ``M<i>/``, ``D<i>.jsonl`` and ``series.json`` go (use
            ``Experiment.series_dir(name)``).
        config: :class:`SeriesConfig`; ``overrides`` replace its fields (``iterations=3``).

    Returns:
        The content of ``series.json``: checkpoints, per-iteration pairs and score statistics
        (``scores[i]`` = mean score of ``M<i>``'s samples; the last one from a final
        evaluation run when ``final_eval``).
    """
    from ..generate import generate
    from .scorers import as_scorer

    cfg = replace(config or SeriesConfig(), **overrides)
    if cfg.iterations < 1 or cfg.n_samples < 2:
        raise ConfigError("iterative DPO needs iterations ≥ 1 and n_samples ≥ 2 (pairs come from ≥ 2 samples per prompt)")
    if cfg.train.method != "dpo":
        cfg = replace(cfg, train=replace(cfg.train, method="dpo"))
    sc = as_scorer(scorer)
    plist = list(prompts)
    if not plist:
        raise ConfigError("iterative DPO needs at least one prompt")
    series_dir = Path(series_dir)
    series_dir.mkdir(parents=True, exist_ok=True)
    base_lm = base if isinstance(base, LoadedModel) else load(base)
    base_spec = base_lm.spec
    key = config_hash({"base": base_spec, "base_hash": base_lm.weights_hash, "prompts": [str(p) for p in plist],
                       "scorer": sc.config(), "system": system,
                       "series": {**asdict(cfg), "final_eval": None, "iterations": None}})
    state: dict[str, Any] = {
        "kind": "dpo_series",
        "name": name or series_dir.name,
        "base": {"spec": base_spec, "name": base_lm.name, "weights_hash": base_lm.weights_hash},
        "naming": "M0 = base; M<i> = DPO of M<i−1> on D<i>; D<i> = samples of M<i−1>, scored, best-vs-worst pairs",
        "scorer": {"name": sc.name, **sc.config()},
        "config": {**asdict(cfg), "train": {**asdict(cfg.train), "learning_rate": cfg.train.lr()}},
        "config_hash": key,
        "checkpoints": [],
        "iterations": [],
        "scores": [],
    }
    parent: LoadedModel = base_lm
    parent_hash = base_lm.weights_hash
    for i in range(1, cfg.iterations + 1):
        ckpt = series_dir / f"M{i}"
        data_path = series_dir / f"D{i}.jsonl"
        if resume and (ckpt / PROVENANCE_FILE).exists():
            prov = read_provenance(ckpt)
            if prov.get("series", {}).get("config_hash") == key and prov["series"].get("iteration") == i:
                state["checkpoints"].append(str(ckpt))
                state["iterations"].append(prov["series"]["stats"])
                state["scores"].append(prov["series"]["stats"]["samples"]["mean"])
                if parent is not base_lm:
                    del parent
                parent = load(ckpt)
                parent_hash = parent.weights_hash
                continue
        t0 = time.time()
        gens = generate(parent, plist, system=system, max_new_tokens=cfg.max_new_tokens, n=cfg.n_samples,
                        do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed + 1000 * i,
                        progress=progress)
        scores = [float(x) for x in sc(gens)]
        if len(scores) != len(gens):
            raise ConfigError(f"scorer '{sc.name}' returned {len(scores)} scores for {len(gens)} generations")
        pairs = preference_pairs(gens, scores, cfg.min_margin)
        roles = {}
        for pr in pairs:
            roles[(pr["prompt_index"], pr["chosen_rollout"])] = "chosen"
            roles[(pr["prompt_index"], pr["rejected_rollout"])] = "rejected"
        if data_path.exists():
            data_path.unlink()  # D<i> is rewritten with M<i> (append-only within one iteration)
        for g, s in zip(gens, scores):
            append_jsonl(data_path, {"iteration": i, "prompt_index": g.index, "rollout": g.rollout, "question": g.question,
                                     "response": g.response, "score": s, "pair_role": roles.get((g.index, g.rollout))})
        gen_s = time.time() - t0
        if not pairs:
            raise ConfigError(
                f"iteration {i}: all {cfg.n_samples} samples of every prompt scored the same under '{sc.name}', so there "
                "are no preference pairs; use more samples, a higher temperature or a finer-grained scorer"
            )
        policy, _, _ = _fresh_model(parent)
        trained, log = _train(policy, pairs, cfg.train, "chosen", system, progress)
        stats = {
            "iteration": i,
            "samples": _score_stats(scores),
            "chosen": _score_stats([p["chosen_score"] for p in pairs]),
            "rejected": _score_stats([p["rejected_score"] for p in pairs]),
            "n_generations": len(gens),
            "n_pairs": len(pairs),
            "generation_seconds": round(gen_s, 2),
            "train_seconds": log["seconds"],
            "train_loss": log["train_loss"],
        }
        prov = provenance(
            None,
            kind="dpo_checkpoint",
            behaviour=f"iterative DPO towards higher '{sc.name}' scores (iteration {i} of {cfg.iterations})",
            base={"spec": base_spec, "weights_hash": base_lm.weights_hash},
            parent={"spec": parent.spec, "name": parent.name, "weights_hash": parent_hash, "checkpoint": f"M{i - 1}"},
            dataset={"name": f"D{i}", "source": str(data_path), "n_records": len(pairs)},
            series={"name": state["name"], "iteration": i, "config_hash": key, "scorer": state["scorer"], "stats": stats},
            training={**asdict(cfg.train), "learning_rate": cfg.train.lr(), "library": "trl", **log},
            versions=_versions(),
        )
        _save(trained, policy.tokenizer, ckpt, prov)
        del trained, policy
        if parent is not base_lm:
            del parent
        parent = load(ckpt)
        parent_hash = parent.weights_hash
        state["checkpoints"].append(str(ckpt))
        state["iterations"].append(stats)
        state["scores"].append(stats["samples"]["mean"])
        write_json(series_dir / SERIES_FILE, state)
    if cfg.final_eval:
        gens = generate(parent, plist, system=system, max_new_tokens=cfg.max_new_tokens, n=cfg.n_samples,
                        do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                        seed=cfg.seed + 1000 * (cfg.iterations + 1), progress=progress)
        final = [float(x) for x in sc(gens)]
        state["final_eval"] = {"checkpoint": f"M{cfg.iterations}", **_score_stats(final)}
        state["scores"].append(state["final_eval"]["mean"])
    state["score_note"] = "scores[i] = mean score of M<i>'s samples (scores[0] = base; the last from final_eval)"
    write_json(series_dir / SERIES_FILE, state)
    return state


def read_series(series_dir: str | Path) -> dict[str, Any]:
    p = Path(series_dir) / SERIES_FILE
    if not p.exists():
        raise DataFormatError(f"{p}: not a checkpoint series directory (no {SERIES_FILE})")
    return json.loads(p.read_text())
