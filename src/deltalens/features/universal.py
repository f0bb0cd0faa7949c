"""Universal and specific SAE features at chat token types.

For each *source* — an SAE of a model at a layer, named ``{model}_trainer{n}_layer{L}`` —
and each chat *token type* of the model's template (``asst``, ``endheader``,
``newline``: the tokens of the assistant header the template appends before the answer,
see :mod:`deltalens.positions`), every prompt of a prompt set is formatted with the chat
template and run once; the SAE latents at that one token give ``a_p[i]``, the activation
of feature ``i`` on prompt ``p``. With ``N`` prompts and the activation threshold ``τ``:

* ``num_prompts[i]     = #{p : a_p[i] > τ}`` — prompts on which the feature is *active*;
* ``activation_mean[i] = mean{a_p[i] : a_p[i] > τ}`` (0 when never active);
* ``activation_max[i]  = max_p a_p[i]``, ``activation_min[i] = min_p a_p[i]`` over **all**
  prompts (as in the reference scripts, so min is usually 0 for features below 100 %).

**Universal** features are active on at least a fraction ``threshold`` of the prompts:
``num_prompts ≥ ⌈threshold · N⌉`` and ``num_prompts ≥ 1`` (the reference scripts used
``⌊threshold · N⌋``, which admits features just below the threshold).

**Specific** analysis reports ``a_p[i]`` for every prompt and every feature listed in a
features CSV (``feature_id``, ``source``, optional ``token``); with ``record_prompts``
the (feature, prompt) pairs with ``a_p[i] > τ`` are written to the consolidated
``{csv_basename}_activeprompts.jsonl`` next to the CSV.

Output schemas (the feature-analysis seed's):

* universal CSV: :data:`UNIVERSAL_COLUMNS` (``annotation_columns=True`` gives
  :data:`UNIVERSAL_COLUMNS_ANNOTATED`, with the empty ``chat_desc``, ``pt_desc``, ``type``
  columns researchers fill in by hand);
* specific CSV: :data:`SPECIFIC_COLUMNS`;
* JSONL records: :data:`RECORD_KEYS`, in that order.

Every source of a model is analysed from one forward pass per batch (all its layers
and token types together, early exit after the deepest layer); several models are
processed one after the other.
"""

from __future__ import annotations

import csv
import math
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..data.prompts import PromptRecord
from ..errors import ConfigError, DataFormatError, PositionSpecError
from ..hooks import Site
from ..io import atomic_path, atomic_write, to_json, write_json
from ..models.loading import LoadedModel
from ..sae import SAE
from ..stage import StageResult, register_result
from .latents import check_sae_fits, iter_latents, sae_site

UNIVERSAL_COLUMNS = [
    "feature_id",
    "activation_mean",
    "activation_max",
    "activation_min",
    "num_prompts",
    "source",
    "token",
    "link",
]
UNIVERSAL_COLUMNS_ANNOTATED = [
    "feature_id",
    "activation_mean",
    "activation_max",
    "activation_min",
    "num_prompts",
    "chat_desc",
    "pt_desc",
    "type",
    "source",
    "token",
    "link",
]
SPECIFIC_COLUMNS = ["prompt_idx", "prompt", "label", "feature_id", "activation", "source", "token", "link"]
RECORD_KEYS = ("model", "layer", "feature_id", "prompt", "label", "activation", "token_type")
UNIVERSAL_STEM = "universal_features"  # default file stem of a universal result (.csv, .json)
SPECIFIC_STEM = "specific_features"

SOURCE_RE = re.compile(r"^(?P<model>.+)_trainer(?P<trainer>\d+)_layer(?P<layer>\d+)$")
LINK_FIELDS = ("model", "trainer", "layer", "feature_id", "source", "token", "neuronpedia_id")
NEURONPEDIA_LINK = "https://www.neuronpedia.org/{neuronpedia_id}/{feature_id}"


def source_name(model: str, trainer: int, layer: int) -> str:
    """``{model}_trainer{n}_layer{L}``."""
    return f"{model}_trainer{int(trainer)}_layer{int(layer)}"


def parse_source_name(name: str) -> tuple[str, int, int]:
    """``"llama_trainer1_layer15"`` → ``("llama", 1, 15)``; the model part may contain ``_``."""
    m = SOURCE_RE.match(name.strip())
    if not m:
        raise ConfigError(
            f"source name '{name}' does not have the form {{model}}_trainer{{n}}_layer{{L}}, e.g. llama_trainer1_layer15"
        )
    return m.group("model"), int(m.group("trainer")), int(m.group("layer"))


def default_alias(model_name: str) -> str:
    """Short model name used in source names: ``smollm2-135m-instruct`` → ``smollm2``."""
    base = str(model_name).rstrip("/").split("/")[-1].lower()
    head = re.split(r"[-_. ]", base)[0]
    return head or "model"


@dataclass
class FeatureSource:
    """One SAE of one model: the unit of the universal/specific analysis."""

    model: str
    trainer: int
    layer: int
    sae: SAE
    lm: LoadedModel
    site: Site
    link_template: str | None = None

    @property
    def name(self) -> str:
        return source_name(self.model, self.trainer, self.layer)

    @property
    def d_sae(self) -> int:
        return self.sae.d_sae

    def link(self, feature_id: int, token: str) -> str:
        """Link to a feature dashboard: ``link_template`` formatted with :data:`LINK_FIELDS`;
        by default a Neuronpedia URL when the SAE's metadata names its ``neuronpedia_id``,
        else empty."""
        np_id = self.sae.cfg.metadata.get("neuronpedia_id") or ""
        template = self.link_template
        if template is None:
            template = NEURONPEDIA_LINK if np_id else ""
        if not template:
            return ""
        fields = {
            "model": self.model,
            "trainer": self.trainer,
            "layer": self.layer,
            "feature_id": int(feature_id),
            "source": self.name,
            "token": token,
            "neuronpedia_id": np_id,
        }
        return template.format(**fields)


def check_link_template(template: str | None) -> None:
    """Refuse a link template with fields other than :data:`LINK_FIELDS`."""
    if not template:
        return
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"link template '{template}' is not a valid format string ({exc})") from None
    bad = [n for n in names if n.split(".")[0].split("[")[0] not in LINK_FIELDS]
    if bad:
        raise ConfigError(
            f"link template '{template}' uses unknown field(s) {', '.join(bad)}; valid: {', '.join(LINK_FIELDS)}"
        )


def make_sources(
    lm: LoadedModel,
    saes: Sequence[SAE | tuple[str | None, SAE]],
    *,
    model_alias: str | None = None,
    link_template: str | None = None,
    existing: Sequence[FeatureSource] = (),
) -> list[FeatureSource]:
    """Name SAEs of one model as sources.

    Each item is an SAE or ``(name, SAE)``. A given name must have the form
    ``{model}_trainer{n}_layer{L}`` with ``L`` the SAE's layer. Otherwise the model part is
    ``model_alias`` (default: :func:`default_alias` of the model name), ``n`` is the SAE's
    ``metadata["trainer"]`` if set, else the next free number for that model and layer
    (from 0), and ``L`` the layer of the SAE's site.
    """
    check_link_template(link_template)
    alias = model_alias or default_alias(lm.name)
    out: list[FeatureSource] = []
    taken = {s.name for s in existing}
    for item in saes:
        name, sae = item if isinstance(item, tuple) else (None, item)
        site = sae_site(sae)
        check_sae_fits(lm, sae, site)
        if name:
            model, trainer, layer = parse_source_name(name)
            if layer != site.layer:
                raise ConfigError(
                    f"source '{name}' says layer {layer} but its SAE reads {site} (layer {site.layer})"
                )
        else:
            model, layer = alias, site.layer
            meta_trainer = sae.cfg.metadata.get("trainer")
            if meta_trainer is not None and str(meta_trainer).isdigit():
                trainer = int(meta_trainer)
            else:
                trainer = 0
                while source_name(model, trainer, layer) in taken:
                    trainer += 1
        src = FeatureSource(model, trainer, layer, sae, lm, site, link_template)
        if src.name in taken:
            raise ConfigError(f"two SAEs are both named '{src.name}'; name them explicitly (NAME=DIR)")
        taken.add(src.name)
        out.append(src)
    return out


# ---- features CSV -------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureRef:
    """One row of a features CSV."""

    feature_id: int
    source: str
    token: str | None = None
    where: str = ""


def read_features_csv(path: str | Path) -> list[FeatureRef]:
    """Read a features CSV (columns ``feature_id``, ``source``; optional ``token``; any other
    columns — e.g. a universal-analysis output — are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: features CSV not found")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames
        if not cols:
            raise DataFormatError(
                f"{path}: the features CSV is empty (expected a header with feature_id,source)"
            )
        missing = [c for c in ("feature_id", "source") if c not in cols]
        if missing:
            raise DataFormatError(
                f"{path}:1: features CSV needs the column(s) {', '.join(missing)}; found: {', '.join(cols)}"
            )
        out = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            raw = (row.get("feature_id") or "").strip()
            try:
                fv = float(raw)
                if not fv.is_integer():
                    raise ValueError
                fid = int(fv)
            except ValueError:
                raise DataFormatError(f"{where}: feature_id '{raw}' is not an integer") from None
            src = (row.get("source") or "").strip()
            if not src:
                raise DataFormatError(f"{where}: empty source (expected e.g. llama_trainer1_layer15)")
            tok = (row.get("token") or "").strip() or None
            out.append(FeatureRef(fid, src, tok, where))
    if not out:
        raise DataFormatError(f"{path}: the features CSV has a header but no rows")
    return out


def resolve_features(
    refs: Sequence[FeatureRef], sources: Sequence[FeatureSource], token_types: dict[str, list[str]]
) -> dict[tuple[str, str], list[int]]:
    """``(source, token) → feature ids`` (CSV order, duplicates dropped), validated against the
    loaded sources: unknown sources, ids out of range and token types the analysis does
    not cover are refused with the CSV line."""
    by_name = {s.name: s for s in sources}
    keep: dict[tuple[str, str], list[int]] = {}
    for r in refs:
        src = by_name.get(r.source)
        if src is None:
            known = ", ".join(sorted(by_name)) or "none"
            raise DataFormatError(
                f"{r.where}: source '{r.source}' is not one of the SAEs of this run (loaded: {known})"
            )
        if not 0 <= r.feature_id < src.d_sae:
            raise DataFormatError(
                f"{r.where}: feature_id {r.feature_id} is out of range for {r.source} "
                f"(d_sae={src.d_sae}: valid ids 0..{src.d_sae - 1})"
            )
        types = token_types[r.source]
        if r.token is not None and r.token not in types:
            raise DataFormatError(
                f"{r.where}: token '{r.token}' is not analysed for {r.source} (token types: {', '.join(types)})"
            )
        for tok in [r.token] if r.token else types:
            ids = keep.setdefault((r.source, tok), [])
            if r.feature_id not in ids:
                ids.append(r.feature_id)
    return keep


# ---- the scan -------------------------------------------------------------------------------


@dataclass
class TokenScan:
    """Accumulated activations of one source at one token type over the prompt set."""

    source: FeatureSource
    token: str
    n_prompts: int
    activation_threshold: float
    count: torch.Tensor
    act_sum: torch.Tensor
    act_max: torch.Tensor
    act_min: torch.Tensor
    present: torch.Tensor
    kept_ids: list[int] = field(default_factory=list)
    kept: torch.Tensor | None = None
    record: bool = False
    active: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def new(
        cls, source: FeatureSource, token: str, n_prompts: int, thr: float, kept_ids: list[int], record: bool
    ) -> TokenScan:
        d = source.d_sae
        return cls(
            source,
            token,
            n_prompts,
            thr,
            count=torch.zeros(d, dtype=torch.int64),
            act_sum=torch.zeros(d, dtype=torch.float64),
            act_max=torch.full((d,), -math.inf),
            act_min=torch.full((d,), math.inf),
            present=torch.zeros(n_prompts, dtype=torch.bool),
            kept_ids=list(kept_ids),
            kept=torch.zeros(n_prompts, len(kept_ids)) if kept_ids else None,
            record=record,
        )

    def update(self, prompt_idx: torch.Tensor, a: torch.Tensor) -> None:
        """Add the latents ``a`` ``[r, d_sae]`` of prompts ``prompt_idx`` ``[r]``."""
        if not len(prompt_idx):
            return
        a = a.float().cpu()
        act = a > self.activation_threshold
        self.count += act.sum(0)
        self.act_sum += torch.where(act, a, torch.zeros_like(a)).double().sum(0)
        self.act_max = torch.maximum(self.act_max, a.max(0).values)
        self.act_min = torch.minimum(self.act_min, a.min(0).values)
        self.present[prompt_idx] = True
        if self.kept is not None:
            self.kept[prompt_idx] = a[:, self.kept_ids]
        if self.record:
            r, lat = act.nonzero(as_tuple=True)
            self.active.append((prompt_idx[r], lat, a[r, lat]))

    def finish(self) -> None:
        """Prompts in which the token never occurred (e.g. truncated) count as activation 0."""
        if not bool(self.present.all()):
            self.act_max = self.act_max.clamp(min=0)
            self.act_min = self.act_min.clamp(max=0)
        self.act_max = torch.where(torch.isinf(self.act_max), torch.zeros_like(self.act_max), self.act_max)
        self.act_min = torch.where(torch.isinf(self.act_min), torch.zeros_like(self.act_min), self.act_min)

    @property
    def activation_mean(self) -> torch.Tensor:
        return (self.act_sum / self.count.clamp(min=1)).float()

    def active_pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(prompt_idx, feature_id, activation)`` of every active pair (needs ``record``)."""
        if not self.active:
            e = torch.zeros(0, dtype=torch.long)
            return e, e, torch.zeros(0)
        p, f, v = (torch.cat(x) for x in zip(*self.active))
        return p, f, v


def analysed_token_types(lm: LoadedModel, token_types: Sequence[str] | None) -> list[str]:
    """The token types analysed for a model: ``token_types`` (checked against the template)
    or every type the chat template has."""
    available = lm.token_types if lm.tokenizer is not None else {}
    if not available:
        raise PositionSpecError(
            f"{lm.name} has no chat template, so it has no chat token types (asst, endheader, newline)"
        )
    if not token_types:
        return [t for t in ("asst", "endheader", "newline") if t in available]
    out = []
    for t in token_types:
        if t not in available:
            raise PositionSpecError(
                f"token type '{t}' is not in {lm.name}'s chat template (available: {', '.join(sorted(available))})"
            )
        if t not in out:
            out.append(t)
    return out


def prompt_inputs(prompts: Sequence[PromptRecord]) -> list[dict[str, Any]]:
    """Capture inputs for prompts: the chat-formatted user turn, no response."""
    return [{"question": p.text, "system": p.system, "response": ""} for p in prompts]


@torch.no_grad()
def scan_prompts(
    sources: Sequence[FeatureSource],
    prompts: Sequence[PromptRecord],
    *,
    activation_threshold: float = 0.01,
    token_types: Sequence[str] | None = None,
    keep: dict[tuple[str, str], list[int]] | None = None,
    record_active: bool = False,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
) -> list[TokenScan]:
    """Run every prompt once per model and accumulate each (source, token type)."""
    if not prompts:
        raise DataFormatError("no prompts to analyse")
    if not sources:
        raise ConfigError("no SAEs to analyse: give at least one")
    keep = keep or {}
    groups: dict[int, list[FeatureSource]] = {}
    for s in sources:
        groups.setdefault(id(s.lm), []).append(s)
    data = prompt_inputs(prompts)
    scans: list[TokenScan] = []
    for group in groups.values():
        lm = group[0].lm
        types = analysed_token_types(lm, token_types)
        offsets = lm.token_types
        local = {
            (s.name, t): TokenScan.new(
                s, t, len(prompts), activation_threshold, keep.get((s.name, t), []), record_active
            )
            for s in group
            for t in types
        }
        for lb in iter_latents(
            lm,
            [s.sae for s in group],
            data,
            "|".join(types),
            batch_size=batch_size,
            max_length=max_length,
            progress=progress,
            desc=f"{default_alias(lm.name)} prompts",
        ):
            b = lb.batch
            for t in types:
                m = b.token_type_mask(t, offsets)
                pidx = b.seq_ids[m]
                for s, f in zip(group, lb.latents):
                    local[(s.name, t)].update(pidx, f[m.to(f.device)])
        for sc in local.values():
            sc.finish()
        scans.extend(local.values())
    return scans


# ---- results ----------------------------------------------------------------------------------


def _records_path(csv_path: str | Path) -> Path:
    p = Path(csv_path)
    return p.parent / f"{p.stem}_activeprompts.jsonl"


def _write_csv(path: str | Path, frame: Any) -> Path:
    with atomic_path(path, ".csv") as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def _write_records(csv_path: str | Path, records: Sequence[dict[str, Any]]) -> Path:
    path = _records_path(csv_path)
    atomic_write(path, "".join(to_json(r, indent=None) + "\n" for r in records))
    return path


def _record(src: FeatureSource, fid: int, p: PromptRecord, act: float, token: str) -> dict[str, Any]:
    vals = (src.model, src.layer, int(fid), p.text, p.label or "", float(act), token)
    return dict(zip(RECORD_KEYS, vals))


def _table_paths(path: str | Path, default_stem: str) -> tuple[Path, Path]:
    """``(csv, header json)`` of a table result written at ``path``: a ``.csv`` path (the header
    beside it, same stem), a ``.json`` header path, or a directory (``<default_stem>.csv``)."""
    p = Path(path)
    if p.suffix == ".csv":
        return p, p.with_suffix(".json")
    if p.suffix == ".json":
        return p.with_suffix(".csv"), p
    if p.suffix:
        raise ConfigError(
            f"{p}: a feature table is written as .csv (its header as .json beside it), not '{p.suffix}'"
        )
    return p / f"{default_stem}.csv", p / f"{default_stem}.json"


def _read_header(
    cls: type[StageResult], path: str | Path, default_stem: str
) -> tuple[dict[str, Any], Path, Path]:
    csv_path, header = _table_paths(path, default_stem)
    data = cls.read_header(header)
    csv_path = cls.companion(header, csv_path.name)
    return data, csv_path, header


def _read_table(path: Path, columns: Sequence[str], kind: str) -> Any:
    import pandas as pd

    frame = pd.read_csv(
        path,
        keep_default_na=False,
        dtype={"source": str, "token": str, "link": str, "prompt": str, "label": str},
    )
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataFormatError(f"not a valid {kind}: {path} (missing column(s) {', '.join(missing)})")
    return frame[list(columns)]


def _read_records(path: Path) -> list[dict[str, Any]]:
    import json

    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    return out


@register_result
@dataclass
class UniversalFeatures(StageResult):
    """Universal features: ``table`` has :data:`UNIVERSAL_COLUMNS`; ``records`` the active
    (feature, prompt) pairs when prompts were recorded.

    Saved as the seed's CSV (``annotation_columns`` adds the empty hand-annotation columns),
    ``{stem}_activeprompts.jsonl`` when prompts were recorded, and a JSON header
    ``{stem}.json`` (kind, schema, counts, thresholds, provenance)."""

    KIND: ClassVar[str] = "universal features"
    FILENAME: ClassVar[str] = f"{UNIVERSAL_STEM}.json"

    table: Any
    records: list[dict[str, Any]]
    n_prompts: int
    threshold: float
    activation_threshold: float
    recorded: bool = False
    annotation_columns: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the CSV, the records JSONL (when recorded) and the header; returns the header's path."""
        csv_path, header = _table_paths(path, UNIVERSAL_STEM)
        frame = self.table.copy()
        if self.annotation_columns:
            for c in ("chat_desc", "pt_desc", "type"):
                if c not in frame.columns:
                    frame[c] = ""
            frame = frame[UNIVERSAL_COLUMNS_ANNOTATED]
        _write_csv(csv_path, frame)
        jsonl = _write_records(csv_path, self.records) if self.recorded else None
        write_json(
            header,
            {
                "kind": self.KIND,
                "schema": self.SCHEMA,
                "table": csv_path.name,
                "records": jsonl.name if jsonl else None,
                "rows": len(self.table),
                "n_prompts": self.n_prompts,
                "threshold": self.threshold,
                "activation_threshold": self.activation_threshold,
                "recorded": self.recorded,
                "annotation_columns": self.annotation_columns,
                "meta": self.meta,
            },
        )
        return header

    def write(self, path: str | Path, annotation_columns: bool | None = None) -> tuple[Path, Path | None]:
        """:meth:`save` at a CSV path; returns ``(csv, jsonl or None)``."""
        if annotation_columns is not None:
            self.annotation_columns = annotation_columns
        csv_path, _ = _table_paths(path, UNIVERSAL_STEM)
        self.save(csv_path)
        return csv_path, (_records_path(csv_path) if self.recorded else None)

    @classmethod
    def load(cls, path: str | Path) -> UniversalFeatures:
        """Read a saved result: its directory, its CSV or its header."""
        d, csv_path, _ = _read_header(cls, path, UNIVERSAL_STEM)
        table = _read_table(csv_path, UNIVERSAL_COLUMNS, cls.KIND)
        if d.get("annotation_columns"):  # keep what was annotated by hand
            table = _read_table(csv_path, UNIVERSAL_COLUMNS_ANNOTATED, cls.KIND)
        recs = _read_records(_records_path(csv_path)) if d.get("recorded") else []
        return cls(
            table,
            recs,
            int(d["n_prompts"]),
            float(d["threshold"]),
            float(d["activation_threshold"]),
            bool(d.get("recorded")),
            bool(d.get("annotation_columns")),
            dict(d.get("meta") or {}),
        )

    def summary(self) -> dict[str, Any]:
        t = self.table
        return {
            "rows": len(t),
            "prompts": self.n_prompts,
            "threshold": self.threshold,
            "activation_threshold": self.activation_threshold,
            "sources": sorted(set(t["source"])),
            "tokens": sorted(set(t["token"])),
            "active_prompt_records": len(self.records) if self.recorded else None,
        }


@register_result
@dataclass
class SpecificFeatures(StageResult):
    """Specific features: ``table`` has :data:`SPECIFIC_COLUMNS`; ``records`` the pairs with
    activation above the threshold. Saved like :class:`UniversalFeatures` (CSV, records
    JSONL, JSON header)."""

    KIND: ClassVar[str] = "specific features"
    FILENAME: ClassVar[str] = f"{SPECIFIC_STEM}.json"

    table: Any
    records: list[dict[str, Any]]
    n_prompts: int
    activation_threshold: float
    recorded: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        csv_path, header = _table_paths(path, SPECIFIC_STEM)
        _write_csv(csv_path, self.table)
        jsonl = _write_records(csv_path, self.records) if self.recorded else None
        write_json(
            header,
            {
                "kind": self.KIND,
                "schema": self.SCHEMA,
                "table": csv_path.name,
                "records": jsonl.name if jsonl else None,
                "rows": len(self.table),
                "n_prompts": self.n_prompts,
                "activation_threshold": self.activation_threshold,
                "recorded": self.recorded,
                "meta": self.meta,
            },
        )
        return header

    def write(self, path: str | Path) -> tuple[Path, Path | None]:
        """:meth:`save` at a CSV path; returns ``(csv, jsonl or None)``."""
        csv_path, _ = _table_paths(path, SPECIFIC_STEM)
        self.save(csv_path)
        return csv_path, (_records_path(csv_path) if self.recorded else None)

    @classmethod
    def load(cls, path: str | Path) -> SpecificFeatures:
        d, csv_path, _ = _read_header(cls, path, SPECIFIC_STEM)
        table = _read_table(csv_path, SPECIFIC_COLUMNS, cls.KIND)
        recs = _read_records(_records_path(csv_path)) if d.get("recorded") else []
        return cls(
            table,
            recs,
            int(d["n_prompts"]),
            float(d["activation_threshold"]),
            bool(d.get("recorded")),
            dict(d.get("meta") or {}),
        )

    def summary(self) -> dict[str, Any]:
        t = self.table
        return {
            "rows": len(t),
            "prompts": self.n_prompts,
            "activation_threshold": self.activation_threshold,
            "features": int(t.groupby(["source", "token", "feature_id"]).ngroups) if len(t) else 0,
            "active_prompt_records": len(self.records) if self.recorded else None,
        }


UniversalResult = UniversalFeatures  # earlier names
SpecificResult = SpecificFeatures


def universal_from_scans(
    scans: Sequence[TokenScan], prompts: Sequence[PromptRecord], threshold: float, record_prompts: bool
) -> UniversalFeatures:
    import pandas as pd

    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold is a fraction of prompts in [0, 1], got {threshold}")
    rows: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    thr_act = scans[0].activation_threshold if scans else 0.0
    for sc in sorted(scans, key=lambda s: (s.source.name, s.token)):
        need = max(1, math.ceil(threshold * sc.n_prompts - 1e-9))
        ids = torch.nonzero(sc.count >= need).flatten()
        mean = sc.activation_mean
        order = sorted(ids.tolist(), key=lambda i: (-float(mean[i]), i))
        for i in order:
            rows.append(
                {
                    "feature_id": i,
                    "activation_mean": float(mean[i]),
                    "activation_max": float(sc.act_max[i]),
                    "activation_min": float(sc.act_min[i]),
                    "num_prompts": int(sc.count[i]),
                    "source": sc.source.name,
                    "token": sc.token,
                    "link": sc.source.link(i, sc.token),
                }
            )
        if record_prompts and order:
            p, f, v = sc.active_pairs()
            chosen = torch.zeros(sc.source.d_sae, dtype=torch.bool)
            chosen[torch.as_tensor(order)] = True
            sel = chosen[f]
            p, f, v = p[sel], f[sel], v[sel]
            rank = {fid: k for k, fid in enumerate(order)}
            for j in sorted(range(len(p)), key=lambda j: (rank[int(f[j])], int(p[j]))):
                records.append(_record(sc.source, int(f[j]), prompts[int(p[j])], float(v[j]), sc.token))
    table = pd.DataFrame(rows, columns=UNIVERSAL_COLUMNS)
    return UniversalFeatures(table, records, len(prompts), threshold, thr_act, record_prompts)


def specific_from_scans(
    scans: Sequence[TokenScan], prompts: Sequence[PromptRecord], record_prompts: bool
) -> SpecificFeatures:
    import pandas as pd

    rows: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    thr_act = scans[0].activation_threshold if scans else 0.0
    for sc in scans:
        if sc.kept is None:
            continue
        for j, fid in enumerate(sc.kept_ids):
            link = sc.source.link(fid, sc.token)
            col = sc.kept[:, j]
            for pi, p in enumerate(prompts):
                a = float(col[pi])
                rows.append(
                    {
                        "prompt_idx": pi,
                        "prompt": p.text,
                        "label": p.label or "",
                        "feature_id": fid,
                        "activation": a,
                        "source": sc.source.name,
                        "token": sc.token,
                        "link": link,
                    }
                )
                if record_prompts and a > sc.activation_threshold:
                    records.append(_record(sc.source, fid, p, a, sc.token))
    table = pd.DataFrame(rows, columns=SPECIFIC_COLUMNS)
    return SpecificFeatures(table, records, len(prompts), thr_act, record_prompts)


@dataclass
class AnalysisResult:
    universal: UniversalFeatures | None
    specific: SpecificFeatures | None
    scans: list[TokenScan]


def analyse(
    sources: Sequence[FeatureSource],
    prompts: Sequence[PromptRecord],
    *,
    universal: bool = True,
    features: Sequence[FeatureRef] | None = None,
    threshold: float = 0.3,
    activation_threshold: float = 0.01,
    token_types: Sequence[str] | None = None,
    record_prompts: bool = False,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
) -> AnalysisResult:
    """Universal and/or specific analysis from one pass over the prompts (see module docstring).

    Args:
        sources: named SAEs (:func:`make_sources`), of one or several models.
        prompts: the prompt set (:func:`deltalens.data.read_prompts`).
        universal: find universal features.
        features: rows of a features CSV (:func:`read_features_csv`) for the specific analysis.
        threshold: minimum fraction of prompts on which a universal feature is active.
        activation_threshold: ``τ``: a feature is active on a prompt when ``a > τ``.
        token_types: token types to analyse (default: every type the model's template has).
        record_prompts: also collect the active (feature, prompt) pairs as JSONL records.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold is a fraction of prompts in [0, 1], got {threshold}")
    if activation_threshold < 0:
        raise ConfigError(f"activation threshold must be >= 0, got {activation_threshold}")
    if not universal and features is None:
        raise ConfigError(
            "nothing to do: ask for the universal analysis or give features for the specific one"
        )
    types_by_source = {s.name: analysed_token_types(s.lm, token_types) for s in sources}
    keep = resolve_features(features, sources, types_by_source) if features is not None else {}
    scans = scan_prompts(
        sources,
        prompts,
        activation_threshold=activation_threshold,
        token_types=token_types,
        keep=keep,
        record_active=universal and record_prompts,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
    )
    uni = universal_from_scans(scans, prompts, threshold, record_prompts) if universal else None
    spec = specific_from_scans(scans, prompts, record_prompts) if features is not None else None
    return AnalysisResult(uni, spec, scans)


def universal_features(
    sources: Sequence[FeatureSource], prompts: Sequence[PromptRecord], **kw: Any
) -> UniversalFeatures:
    """Universal features only (see :func:`analyse` for the options)."""
    res = analyse(sources, prompts, universal=True, features=None, **kw)
    assert res.universal is not None
    return res.universal


def specific_features(
    sources: Sequence[FeatureSource],
    prompts: Sequence[PromptRecord],
    features: Sequence[FeatureRef] | Iterable[FeatureRef],
    **kw: Any,
) -> SpecificFeatures:
    """Activations of the listed features on every prompt (see :func:`analyse`)."""
    res = analyse(sources, prompts, universal=False, features=list(features), **kw)
    assert res.specific is not None
    return res.specific
