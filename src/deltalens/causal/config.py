"""The settings and inputs of a causal grid: :class:`CausalConfig` (a grid file or CLI flags).

A grid file is YAML or JSON whose top-level keys are the fields below, e.g.::

    name: ocean
    prompts: questions.txt            # or a list of strings
    models: {0: smollm2-135m-instruct, 1: experiments/x/models/ocean}   # or  series: DIR
    saes: {M0D1: experiments/x/saes/topk_resid6}                          # or  sae_root: DIR
    probes: {M0D1: experiments/x/probes/ocean}     # latent groups: top-k of each probe
    groups: [{name: sea, latents: [12, 40, 7]}]    # and/or explicit groups
    metrics: {topic: "keywords@ocean_topic"}       # key metrics: name → scorer spec
    types: [ablation, steering]
    branches: [M0D]
    coefficients: [2, 4]
    null_groups: 8

Unknown keys are refused naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataFormatError
from ..stage import StageConfig, at_least, one_of, option

TYPES = ("ablation", "steering")
BRANCHES = ("MD", "M0D")
ABLATION_MODES = ("zero", "mean")
STEERING_SCALES = ("relative", "raw")
PROBE_DIRECTIONS = ("high", "low", "any")


def _str_keys(d: Any, flag: str) -> dict[str, str]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{flag}: expected a mapping, got {type(d).__name__}")
    return {str(k): str(v) for k, v in d.items()}


@dataclass
class CausalConfig(StageConfig):
    """One causal grid: ``{ablation, steering} × latent groups × iterations × branches × metrics``.

    Ablation cells zero- (or mean-) ablate a group's latents while the fine-tuned model ``M_i``
    of the iteration generates; steering cells add the group's decoder directions while the base
    model ``M_0`` generates. The SAE of iteration ``i`` on branch ``MD`` is ``M<i>D<i>``, on
    branch ``M0D`` it is ``M0D<i>`` (:mod:`deltalens.sae.iterative`)."""

    name: str = option("causal", flag="--name", help="Name of the run: causal/<name>/ in the experiment.")
    prompts: Any = option(
        default_factory=list,
        flag="--prompts",
        help="Prompt file (.txt one per line, .jsonl, .json) or a list.",
    )
    models: dict[str, str] = option(
        default_factory=dict,
        flag="--model",
        help="Model of an iteration: I=SPEC (0 = the base model); repeatable.",
    )
    series: str | None = option(
        None, flag="--series", help="A series directory (M<i>/, series.json) giving the models."
    )
    saes: dict[str, str] = option(
        default_factory=dict,
        flag="--sae",
        help="SAE of a run: M<m>D<d>=PATH (e.g. M1D1=…, M0D1=…); repeatable.",
    )
    sae_root: str | None = option(
        None, flag="--sae-root", help="A directory holding M<m>D<d>/ SAE directories (deltalens sae iterate)."
    )
    probes: dict[str, str] = option(
        default_factory=dict,
        flag="--probes",
        help="Probe fit of an SAE: M<m>D<d>=DIR; its top latents are groups.",
    )
    groups: list[dict[str, Any]] = option(
        default_factory=list,
        flag="--group",
        help="Explicit latent group NAME=ID,ID,… (all SAEs); repeatable.",
    )
    groups_csv: str | None = option(
        None, flag="--groups-csv", help="CSV of latent groups: columns group, latent[, sae, metric]."
    )
    metrics: dict[str, str] = option(
        default_factory=dict,
        flag="--metric",
        help="Key metric NAME=SCORER (keywords:…, regex:…, module:fn); repeatable.",
    )
    types: list[str] = option(default_factory=lambda: list(TYPES), flag="--types", help="ablation, steering.")
    iterations: list[int] = option(
        default_factory=list, flag="--iterations", help="Iterations (default: every one with an SAE)."
    )
    branches: list[str] = option(default_factory=lambda: list(BRANCHES), flag="--branches", help="MD, M0D.")
    top_k: int = option(8, flag="--top-k", help="Latents per group taken from a probe.")
    probe_method: str = option("l1", flag="--probe-method", help="Probe whose top latents form the groups.")
    probe_direction: str = option(
        "high", flag="--probe-direction", help="Latents that predict high / low values of the metric, or any."
    )
    n: int = option(2, flag="--n", help="Rollouts per prompt (samples = prompts × n).")
    max_new_tokens: int = option(48, flag="--max-new-tokens", help="Generation length.")
    do_sample: bool = option(
        True, flag="--sample/--greedy", help="Sample (same seeds in every cell) or greedy."
    )
    temperature: float = option(1.0, flag="--temperature", help="Sampling temperature.")
    top_p: float = option(1.0, flag="--top-p", help="Nucleus sampling mass.")
    seed: int = option(0, flag="--seed", help="Seed of sampling, null groups and statistics.")
    positions: str = option(
        "response", flag="--positions", help="Where latents are edited (position language)."
    )
    ablation: str = option("zero", flag="--ablation", help="zero or mean ablation.")
    coefficients: list[float] = option(
        default_factory=lambda: [4.0],
        flag="--coefficients",
        help="Steering coefficients (a dose–response sweep).",
    )
    steering_scale: str = option(
        "relative",
        flag="--steering-scale",
        help="relative: c × the latent's typical activation × its decoder row; raw: c × the decoder row.",
    )
    null_groups: int = option(
        8, flag="--null-groups", help="Random groups per cell (same size, matched firing)."
    )
    null_bins: int = option(
        10, flag="--null-bins", help="Firing-rate quantile bins used to match null groups."
    )
    bootstrap: int = option(2000, flag="--bootstrap", help="Bootstrap resamples of the effect CI.")
    permutations: int = option(5000, flag="--permutations", help="Sign flips of the permutation test.")
    max_rows: int = option(256, flag="--max-rows", help="Rows per generation batch.")

    def validate(self) -> None:
        self.models = _str_keys(self.models, "--model")
        self.saes = _str_keys(self.saes, "--sae")
        self.probes = _str_keys(self.probes, "--probes")
        self.metrics = _str_keys(self.metrics, "--metric")
        one_of(self, "types", TYPES)
        one_of(self, "branches", BRANCHES)
        one_of(self, "ablation", ABLATION_MODES)
        one_of(self, "steering_scale", STEERING_SCALES)
        one_of(self, "probe_direction", PROBE_DIRECTIONS)
        for name in ("top_k", "n", "max_new_tokens", "max_rows", "null_bins"):
            at_least(self, name, 1)
        for name in ("null_groups", "bootstrap", "permutations"):
            at_least(self, name, 0)
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p!r}")
        if not self.types:
            raise ConfigError("--types: give at least one of " + ", ".join(TYPES))
        if not self.branches:
            raise ConfigError("--branches: give at least one of " + ", ".join(BRANCHES))
        if "steering" in self.types and not self.coefficients:
            raise ConfigError("--coefficients: steering needs at least one coefficient")
        if any(int(i) < 0 for i in self.iterations):
            raise ConfigError(f"--iterations must be ≥ 0, got {self.iterations}")
        self.iterations = [int(i) for i in self.iterations]
        self.coefficients = [float(c) for c in self.coefficients]
        from ..positions import Positions

        try:
            Positions.parse(self.positions)
        except Exception as exc:  # noqa: BLE001 - any parse error is a config error here
            raise ConfigError(f"--positions: {exc}") from None
        for g in self.groups:
            if not isinstance(g, dict) or "name" not in g or "latents" not in g:
                raise ConfigError(f"groups: each group needs 'name' and 'latents', got {g!r}")

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> CausalConfig:
        """A grid file (YAML or JSON; module docstring), with ``overrides`` on top."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise DataFormatError(f"{p}: grid file not found")
        from ..io import read_text

        try:
            data = yaml.safe_load(read_text(p)) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
            raise DataFormatError(f"{where}: invalid YAML/JSON ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(data, dict):
            raise DataFormatError(f"{p}: expected a mapping of settings at the top level")
        base = p.parent
        for key in ("prompts", "series", "sae_root", "groups_csv"):
            v = data.get(key)
            if isinstance(v, str) and not Path(v).is_absolute() and (base / v).exists():
                data[key] = str(base / v)
        for key in ("saes", "probes", "models"):
            v = data.get(key)
            if isinstance(v, dict):
                data[key] = {
                    k: str(base / s)
                    if isinstance(s, str) and not Path(s).is_absolute() and (base / s).exists()
                    else s
                    for k, s in v.items()
                }
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, where=str(p))
