"""Experiment directory layout — the one place that builds artifact paths.

::

    experiments/<name>/
      config.yaml
      models/<variant>/                               fine-tuned variants + provenance.json
      models/<series>/M<i>/, D<i>.jsonl               checkpoint series (iterative DPO) and their data
      generations/<name>.jsonl                        generations (demo, inference prompt sets)
      responses/<dataset>/<variant>/{pos,neg}.json    extraction responses
      activations/<dataset>/<variant>/<position>/     ActivationStore
      vectors/<trait>/<variant>/<position>/<component>/<method>/layer<L>.safetensors
                                                      (+ summary.json, control_vector.gguf)
      steering/<trait>/<vector-id>/results.jsonl      vector-id = <variant>/<position>
      steering/<trait>/combinations/results.jsonl
      judges/cache.sqlite                             judge score cache
      judges/<trait-name>/<variant>/trait_classifier.safetensors
      diff/{weights,activations,outputs,series}/<name>/   model diffs (JSON + PNG)
      saes/<name>/                                    SAELens-compatible directories
      features/  probes/  causal/<name>/  circuits/  inverse/
      report/index.html

Position directory names follow the seeds: ``response[:5]`` → ``response__5``,
``response[:]`` → ``response_all`` (:attr:`deltalens.positions.Positions.slug`).
Other modules ask this class for paths; none builds them from strings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .io import atomic_write
from .positions import Positions


def _safe(name: str, what: str) -> str:
    """A relative name (may contain '/'), refusing absolute paths and '..'."""
    s = str(name).strip()
    if not s or s.startswith("/") or any(part in ("..", "") for part in s.split("/")):
        raise ConfigError(f"invalid {what} name {name!r}: use a relative name without '..'")
    return s


def default_root() -> Path:
    """``$DELTALENS_EXPERIMENTS`` or ``./experiments``."""
    return Path(os.environ.get("DELTALENS_EXPERIMENTS", "experiments"))


class Experiment:
    """Paths (and the config file) of one experiment directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def named(cls, name: str, base: str | Path | None = None) -> Experiment:
        """``<base or $DELTALENS_EXPERIMENTS or ./experiments>/<name>``; a path with a '/' is used as is."""
        p = Path(name)
        if p.is_absolute() or name.startswith("."):
            return cls(p)
        return cls((Path(base) if base is not None else default_root()) / _safe(name, "experiment"))

    @property
    def name(self) -> str:
        return self.root.name

    def __repr__(self) -> str:
        return f"Experiment({str(self.root)!r})"

    # ---- config -----------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def load_config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            return {}
        try:
            data = yaml.safe_load(self.config_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.config_path}: invalid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.config_path}: expected a mapping at the top level")
        return data

    def save_config(self, config: dict[str, Any]) -> Path:
        return atomic_write(self.config_path, yaml.safe_dump(config, sort_keys=False))

    # ---- layout -----------------------------------------------------------------------
    def _dir(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def model_dir(self, variant: str) -> Path:
        return self._dir("models", _safe(variant, "variant"))

    def generations_path(self, name: str) -> Path:
        return self._dir("generations", f"{_safe(name, 'generation set')}.jsonl")

    def generations_dir(self) -> Path:
        """``generations/`` (every :meth:`generations_path` is in it)."""
        return self._dir("generations")

    def responses_dir(self, dataset: str, variant: str) -> Path:
        return self._dir("responses", _safe(dataset, "dataset"), _safe(variant, "variant"))

    def activations_dir(self, dataset: str, variant: str, positions: str | Positions) -> Path:
        slug = Positions.parse(positions).slug
        return self._dir("activations", _safe(dataset, "dataset"), _safe(variant, "variant"), slug)

    def activations_root(self) -> Path:
        """``activations/`` (every :meth:`activations_dir` is below it)."""
        return self._dir("activations")

    def vectors_dir(
        self, trait: str, variant: str, positions: str | Positions, component: str, method: str
    ) -> Path:
        slug = Positions.parse(positions).slug
        return self._dir(
            "vectors",
            _safe(trait, "trait"),
            _safe(variant, "variant"),
            slug,
            _safe(component, "component"),
            _safe(method, "method"),
        )

    def vector_path(
        self, trait: str, variant: str, positions: str | Positions, component: str, method: str, layer: int
    ) -> Path:
        return (
            self.vectors_dir(trait, variant, positions, component, method) / f"layer{int(layer)}.safetensors"
        )

    def steering_dir(self, trait: str, vector_id: str) -> Path:
        return self._dir("steering", _safe(trait, "trait"), _safe(vector_id, "vector id"))

    def steering_results(self, trait: str, vector_id: str) -> Path:
        return self.steering_dir(trait, vector_id) / "results.jsonl"

    def extraction_store_dir(
        self, trait: str, variant: str, positions: str | Positions, component: str
    ) -> Path:
        """ActivationStore of per-response mean activations used to fit a trait's vectors."""
        return self.activations_dir(trait, variant, positions) / _safe(component, "component")

    def extraction_summary_path(
        self, trait: str, variant: str, positions: str | Positions, component: str, method: str
    ) -> Path:
        """Per-layer metrics of one vector set (``summary.json`` next to the layer files)."""
        return self.vectors_dir(trait, variant, positions, component, method) / "summary.json"

    def control_vector_path(
        self, trait: str, variant: str, positions: str | Positions, component: str, method: str
    ) -> Path:
        """llama.cpp control vector (GGUF) exported from one vector set."""
        return self.vectors_dir(trait, variant, positions, component, method) / "control_vector.gguf"

    def trait_vectors_dir(self, trait: str) -> Path:
        """Every extraction of a trait: ``vectors/<trait>/``."""
        return self._dir("vectors", _safe(trait, "trait"))

    def extraction_dir(self, trait: str, variant: str, positions: str | Positions, component: str) -> Path:
        """One extraction (all methods): ``extraction.json`` and one directory per method."""
        slug = Positions.parse(positions).slug
        return self._dir(
            "vectors", _safe(trait, "trait"), _safe(variant, "variant"), slug, _safe(component, "component")
        )

    @staticmethod
    def steering_vector_id(variant: str, positions: str | Positions) -> str:
        """The vector id of a steering results directory: ``<variant>/<position slug>``
        (all methods and layers of that extraction share one ``results.jsonl``)."""
        return f"{_safe(variant, 'variant')}/{Positions.parse(positions).slug}"

    def combinations_results(self, trait: str) -> Path:
        """Results of the combination strategies (Phase 2) for a trait."""
        return self.steering_dir(trait, "combinations") / "results.jsonl"

    def judges_dir(self, *parts: str) -> Path:
        return self._dir("judges", *(_safe(p, "judges part") for p in parts))

    def judge_cache_path(self) -> Path:
        """SQLite cache of judge scores shared by every run of the experiment."""
        return self._dir("judges", "cache.sqlite")

    def trait_classifier_path(self, trait_name: str, variant: str) -> Path:
        """The offline judge's trait classifier for a trait, trained on ``variant``'s responses."""
        return self.judges_dir(trait_name, variant) / "trait_classifier.safetensors"

    def diff_dir(self, kind: str, *parts: str) -> Path:
        return self._dir("diff", _safe(kind, "diff kind"), *(_safe(p, "diff part") for p in parts))

    # ---- model diffing: organisms, checkpoint series, diffs ---------------------------------
    def organism_dir(self, name: str) -> Path:
        """A fine-tuned variant (merged HF directory + ``provenance.json``): ``models/<name>``."""
        return self.model_dir(name)

    def series_dir(self, series: str) -> Path:
        """A checkpoint series (iterative DPO): ``models/<series>`` with ``M<i>/`` and ``D<i>.jsonl``."""
        return self.model_dir(series)

    def series_checkpoint(self, series: str, iteration: int) -> Path:
        return self.series_dir(series) / f"M{int(iteration)}"

    def series_data(self, series: str, iteration: int) -> Path:
        """``D<i>``: the sequences checkpoint ``M<i>`` generated, with their scores and the preference
        pairs built from them (which train ``M<i+1>``; ``D<n>`` of the last checkpoint has no pairs).
        One JSON object per line with the generated text under ``"text"`` (see
        :func:`deltalens.diff.organisms.data_record`)."""
        return self.series_dir(series) / f"D{int(iteration)}.jsonl"

    def weight_diff_dir(self, name: str) -> Path:
        return self.diff_dir("weights", name)

    def activation_diff_dir(self, name: str) -> Path:
        return self.diff_dir("activations", name)

    def output_diff_dir(self, name: str) -> Path:
        return self.diff_dir("outputs", name)

    def series_diff_dir(self, name: str) -> Path:
        return self.diff_dir("series", name)

    def sae_dir(self, name: str) -> Path:
        return self._dir("saes", _safe(name, "SAE"))

    def sae_eval_dir(self, name: str) -> Path:
        """Evaluation results (``eval.json`` + figures) of the SAE ``name``."""
        return self.sae_dir(name) / "eval"

    def sae_series_dir(self, series: str) -> Path:
        """Iterative SAEs of one checkpoint series: ``saes/<series>/M<m>D<d>/``."""
        return self._dir("saes", _safe(series, "SAE series"))

    def crosscoder_dir(self, name: str) -> Path:
        return self._dir("saes", "crosscoders", _safe(name, "crosscoder"))

    def features_dir(self, *parts: str) -> Path:
        return self._dir("features", *(_safe(p, "features part") for p in parts))

    # feature analysis (deltalens.features)
    def universal_features_path(self, name: str = "universal_features") -> Path:
        """``features/universal/<name>.csv`` (its ``<name>_activeprompts.jsonl`` sits beside it)."""
        return self.features_dir("universal") / f"{_safe(name, 'table')}.csv"

    def specific_features_path(self, name: str = "specific_features") -> Path:
        """``features/specific/<name>.csv``."""
        return self.features_dir("specific") / f"{_safe(name, 'table')}.csv"

    def firing_stats_path(self, sae: str, dataset: str) -> Path:
        """``features/firing/<sae>/<dataset>.safetensors`` (its table: same stem, ``.parquet``)."""
        return self.features_dir("firing", sae) / f"{_safe(dataset, 'dataset')}.safetensors"

    def weight_metrics_path(self, sae: str) -> Path:
        """``features/weights/<sae>.parquet``."""
        return self.features_dir("weights") / f"{_safe(sae, 'SAE')}.parquet"

    def evolution_dir(self, series: str) -> Path:
        """``features/evolution/<series>/``."""
        return self.features_dir("evolution", series)

    def dashboard_dir(self, sae: str, dataset: str) -> Path:
        """``features/dashboards/<sae>/<dataset>/`` (``index.json`` + ``features/<id>.json``)."""
        return self.features_dir("dashboards", sae, dataset)

    def probes_dir(self, *parts: str) -> Path:
        return self._dir("probes", *(_safe(p, "probes part") for p in parts))

    def circuits_dir(self, *parts: str) -> Path:
        return self._dir("circuits", *(_safe(p, "circuits part") for p in parts))

    def causal_dir(self, *parts: str) -> Path:
        """``causal/<name>/``: a causal grid's results.jsonl, summary.csv, causal.json, figures."""
        return self._dir("causal", *(_safe(p, "causal part") for p in parts))

    def inverse_dir(self, *parts: str) -> Path:
        return self._dir("inverse", *(_safe(p, "inverse part") for p in parts))

    def report_dir(self) -> Path:
        return self._dir("report")
