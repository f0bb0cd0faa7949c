"""Result of a patching sweep (exact, attribution or integrated gradients) over
components × layers × positions, with JSON and heatmap output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import DataFormatError
from ..io import write_json
from ..stage import StageResult, register_result
from .metrics import normalise

PATCH_METHODS = ("activation_patching", "attribution_patching", "integrated_gradients")
DIRECTIONS = ("denoising", "noising")

DIRECTION_HELP = {
    "denoising": "clean activation patched into the corrupted run (how much of the clean behaviour it restores)",
    "noising": "corrupted activation patched into the clean run (how much of the clean behaviour it destroys)",
}


@register_result
@dataclass
class PatchingResult(StageResult):
    """``values[c, l, p]`` = mean metric (over pairs) of the run with component ``c`` of
    layer ``l`` at grid position ``p`` patched — measured (``activation_patching``) or
    first-order estimated (``attribution_patching``, ``integrated_gradients``).

    ``normalised`` = (values − m_corrupt)/(m_clean − m_corrupt): 1 = clean behaviour,
    0 = corrupted, for both directions. ``effect`` = values − metric of the unpatched run
    the patches went into (corrupted for denoising, clean for noising).

    Saved as one JSON file (``results.json`` in a directory, or any ``.json`` path).
    """

    KIND: ClassVar[str] = "circuits.patching"
    FILENAME: ClassVar[str] = "results.json"

    method: str
    direction: str
    metric_name: str
    components: list[str]
    layers: list[int]
    positions: list[int]
    labels: list[str]
    clean: float
    corrupted: float
    values: torch.Tensor  # [C, L, P]
    per_pair: torch.Tensor | None = None  # [C, L, P, n_pairs]
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_grid(
        cls,
        task: Any,
        method: str,
        direction: str,
        components: Sequence[str],
        layers: Sequence[int],
        cols: Sequence[int],
        m_base: torch.Tensor,
        m_src: torch.Tensor,
        values: torch.Tensor,
        t0: float,
        meta: dict[str, Any],
        per_pair: torch.Tensor | None = None,
    ) -> PatchingResult:
        """A result over the (component, layer, position) grid of ``task``: the unpatched
        run is ``m_base`` (corrupted for denoising), the source run ``m_src``."""
        import time

        m_clean, m_corr = (m_src, m_base) if direction == "denoising" else (m_base, m_src)
        labels_all = dict(zip(task.positions, task.position_labels()))
        return cls(
            method=method,
            direction=direction,
            metric_name=task.metric_name,
            components=list(components),
            layers=list(layers),
            positions=list(cols),
            labels=[labels_all.get(c, str(c)) for c in cols],
            clean=float(m_clean.float().mean()),
            corrupted=float(m_corr.float().mean()),
            values=values,
            per_pair=per_pair,
            seconds=time.perf_counter() - t0,
            meta={"task": task.describe(), **meta},
        )

    @property
    def base(self) -> float:
        return self.corrupted if self.direction == "denoising" else self.clean

    @property
    def normalised(self) -> torch.Tensor:
        return normalise(self.values, self.clean, self.corrupted)  # type: ignore[return-value]

    @property
    def effect(self) -> torch.Tensor:
        return self.values - self.base

    def component(self, name: str) -> torch.Tensor:
        """``[L, P]`` normalised values of one component."""
        if name not in self.components:
            raise DataFormatError(f"component {name!r} not in this result ({', '.join(self.components)})")
        return self.normalised[self.components.index(name)]

    def top(self, k: int = 10, components: list[str] | None = None) -> list[dict[str, Any]]:
        """The ``k`` cells with the largest |effect|, as dicts."""
        comps = components or self.components
        rows = []
        for ci, c in enumerate(self.components):
            if c not in comps:
                continue
            for li, layer in enumerate(self.layers):
                for pi, col in enumerate(self.positions):
                    rows.append(
                        {
                            "component": c,
                            "layer": layer,
                            "position": col,
                            "token": self.labels[pi],
                            "effect": float(self.effect[ci, li, pi]),
                            "normalised": float(self.normalised[ci, li, pi]),
                        }
                    )
        rows.sort(key=lambda r: -abs(r["effect"]))
        return rows[:k]

    def position_summary(self, component: str, threshold: float = 0.5) -> list[dict[str, Any]]:
        """Per grid position: the largest |normalised| value of a component and the layers
        where it is at least ``threshold`` (in absolute value) — where information sits."""
        m = self.component(component)
        out = []
        for pi, col in enumerate(self.positions):
            v = m[:, pi]
            j = int(v.abs().argmax())
            hit = [self.layers[li] for li in range(len(self.layers)) if abs(float(v[li])) >= threshold]
            out.append(
                {
                    "position": col,
                    "token": self.labels[pi],
                    "max": float(v[j]),
                    "at_layer": self.layers[j],
                    "layers": _ranges(hit),
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.KIND,
            "schema": self.SCHEMA,
            "method": self.method,
            "direction": self.direction,
            "direction_means": DIRECTION_HELP[self.direction],
            "metric": self.metric_name,
            "normalisation": "(m - m_corrupt) / (m_clean - m_corrupt)",
            "clean": self.clean,
            "corrupted": self.corrupted,
            "components": self.components,
            "layers": self.layers,
            "positions": self.positions,
            "labels": self.labels,
            "values": self.values.tolist(),
            "normalised": self.normalised.tolist(),
            "per_pair": None if self.per_pair is None else self.per_pair.tolist(),
            "seconds": round(self.seconds, 3),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatchingResult:
        if d.get("kind", cls.KIND) != cls.KIND:
            raise DataFormatError(f"not a valid {cls.KIND} (kind is {d.get('kind')!r})")
        pp = d.get("per_pair")
        return cls(
            d["method"],
            d["direction"],
            d["metric"],
            list(d["components"]),
            list(d["layers"]),
            list(d["positions"]),
            list(d["labels"]),
            float(d["clean"]),
            float(d["corrupted"]),
            torch.tensor(d["values"]),
            None if pp is None else torch.tensor(pp),
            float(d.get("seconds", 0.0)),
            dict(d.get("meta", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write the result: ``path`` is a ``.json`` file or a directory (``results.json`` in it)."""
        p = Path(path)
        return write_json(p if p.suffix == ".json" else p / self.FILENAME, self.to_dict())

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "direction": self.direction,
            "metric": self.metric_name,
            "clean": self.clean,
            "corrupted": self.corrupted,
            "components": self.components,
            "layers": len(self.layers),
            "positions": self.labels,
        }

    def heatmaps(self, out_dir: str | Path, prefix: str = "") -> list[Path]:
        """One layer × position heatmap per component (normalised metric, token labels)."""
        from ..plots import heatmap

        out_dir = Path(out_dir)
        paths = []
        what = {
            "activation_patching": "patching",
            "attribution_patching": "attribution",
            "integrated_gradients": "IG",
        }[self.method]
        for ci, c in enumerate(self.components):
            m = self.normalised[ci].numpy()
            p = out_dir / f"{prefix}{c}.png"
            heatmap(
                m,
                p,
                xlabels=self.labels,
                ylabels=[str(layer) for layer in self.layers],
                title=f"{c}: {what}, {self.direction}\n({self.metric_name}, normalised)",
                xlabel="position",
                ylabel="layer",
                colorbar_label="(m − m_corr)/(m_clean − m_corr)",
                center=0.0 if self.direction == "denoising" else 1.0,
            )
            paths.append(p)
        return paths


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two tensors' entries (flattened)."""
    x = a.flatten().double()
    y = b.flatten().double()
    x = x - x.mean()
    y = y - y.mean()
    den = (x.norm() * y.norm()).item()
    return float((x @ y).item() / den) if den > 0 else float("nan")


def _ranges(xs: list[int]) -> str:
    """``[0, 1, 2, 5, 6]`` → ``"0–2, 5–6"``."""
    if not xs:
        return "-"
    out, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:  # type: ignore[list-item]
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}–{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(out)
